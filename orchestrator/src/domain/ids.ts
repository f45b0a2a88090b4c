/** Identifiers: short, sortable by creation time, safe in paths and NATS subjects. */
import { randomBytes } from "node:crypto";

/** A job id like `j-20261123-155955-a1b2c3` (UTC time, then random hex). */
export function newJobId(now: Date): string {
  const iso = now.toISOString(); // 2026-11-23T15:59:55.123Z
  const stamp = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}-${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}`;
  return `j-${stamp}-${randomBytes(3).toString("hex")}`;
}

/** A per-job secret for worker authentication (256 bits). */
export function newToken(): string {
  return randomBytes(32).toString("base64url");
}

const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;

/** True when `id` can be a job id (it ends up in file names and NATS subjects). */
export function isValidJobId(id: string): boolean {
  return JOB_ID.test(id);
}
