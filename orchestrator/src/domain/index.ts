/** domain: pure types and rules shared by every other module. */
export * from "./clock.js";
export * from "./errors.js";
export * from "./ids.js";
export * from "./job.js";
export * from "./job-ref.js";
export * from "./limits.js";
export * from "./node.js";
export * from "./preemption.js";
export * from "./shard-patterns.js";
export * from "./spec.js";
export * from "./states.js";
