/**
 * The access log: every control call that changes something (and every
 * refused call), one JSON line each in <state-dir>/access.log, mode 0600.
 * Appends are synchronous so lines keep their order and survive a crash
 * right after the call.
 */
import { appendFileSync } from "node:fs";
import type { ControlMethod } from "./roles.js";
import type { Identity } from "./identity.js";

/** One line of the access log. */
export interface AccessRecord {
  readonly tsMs: number;
  readonly identity: string;
  readonly role: string;
  readonly method: ControlMethod;
  /** The job (or node) the call named, "" when none. */
  readonly target: string;
  /** "ok", or the error code the call ended with. */
  readonly outcome: string;
}

export class AccessLog {
  constructor(private readonly path: string | null) {}

  record(identity: Identity | null, method: ControlMethod, target: string, outcome: string, tsMs: number): void {
    if (!this.path) return;
    const rec: AccessRecord = { tsMs, identity: identity?.name ?? "(none)", role: identity?.role ?? "", method, target: target.slice(0, 128), outcome };
    appendFileSync(this.path, JSON.stringify(rec) + "\n", { mode: 0o600 });
  }
}
