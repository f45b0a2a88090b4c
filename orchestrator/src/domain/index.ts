/** domain: pure types and rules shared by every other module. */
export * from "./errors.js";
export * from "./ids.js";
export * from "./job.js";
export * from "./spec.js";
export * from "./states.js";
