/**
 * Roles and what each may call. A viewer reads; an operator also runs jobs
 * (which runs code on the fleet's nodes, by design, as a Slurm user's job
 * does); an admin also changes the fleet (cordons nodes). The table names
 * every ControlService method, so a new method cannot be added without
 * deciding who may call it (the compiler refuses a missing entry).
 */
import type { ControlServiceServer } from "../gen/clipfleet/v1/control.js";

export type Role = "viewer" | "operator" | "admin";

/** Lowest first. */
export const ROLES: readonly Role[] = ["viewer", "operator", "admin"];

/** The lowest role allowed to call each ControlService method (named as grpc-js names its handler). */
export const METHOD_ROLES = {
  submit: "operator",
  // A dry run of submit tells what submit tells (which paths exist on the server, their sample counts,
  // whether a spec fits the fleet), so it needs submit's role.
  validateJob: "operator",
  getJob: "viewer",
  listJobs: "viewer",
  cancelJob: "operator",
  deleteJob: "operator",
  resumeJob: "operator",
  requestCheckpoint: "operator",
  streamLogs: "viewer",
  watch: "viewer",
  listCheckpoints: "viewer",
  listNodes: "viewer",
  audit: "viewer",
  getServerInfo: "viewer",
  stepHistory: "viewer",
  setNodeSchedulable: "admin",
} as const satisfies Record<string, Role>;

/** A ControlService method. */
export type ControlMethod = keyof typeof METHOD_ROLES;

/** The service's own method names (grpc-js adds an index signature to the type). */
type ServiceMethod = keyof { [K in keyof ControlServiceServer as string extends K ? never : number extends K ? never : K]: true };
/** Compile-time: a method of the service without a role here is an error. */
const EVERY_METHOD_HAS_A_ROLE: [Exclude<ServiceMethod, ControlMethod>] extends [never] ? true : Exclude<ServiceMethod, ControlMethod> = true;
void EVERY_METHOD_HAS_A_ROLE;

/** Whether `role` may call `method`. */
export function allows(role: Role, method: ControlMethod): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(METHOD_ROLES[method]);
}

/** Calls that change something: each one is written to the access log. A dry run (validateJob) changes nothing. */
export function changesState(method: ControlMethod): boolean {
  return METHOD_ROLES[method] !== "viewer" && method !== "validateJob";
}

/** A role named in a certificate or a flag, or null. */
export function parseRole(s: string | undefined): Role | null {
  return (ROLES as readonly string[]).includes(s ?? "") ? (s as Role) : null;
}
