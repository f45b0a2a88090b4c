/**
 * The closed set of job and stage states, and the table of allowed
 * transitions. jobs/ applies transitions through one function
 * (jobs/lifecycle.ts); this module only says what is legal.
 */

/**
 * - PENDING: accepted and persisted; waiting for its needs or for free slots
 *   (the job's pendingReason says which).
 * - STARTING: ranks placed and launched; waiting for every rank to register
 *   and the process group to form.
 * - RUNNING: every rank registered; training or evaluating.
 * - RESTARTING: an attempt failed (or was preempted); its gang is torn down
 *   and the stage waits out its backoff (none after a preemption) before a
 *   new attempt from the last committed checkpoint.
 * - STOPPING: a graceful stop (cancel with --checkpoint, SIGTERM) or a
 *   preemption is in progress: ranks save, then exit within the grace period.
 * - SUCCEEDED: every step ran; final checkpoint committed; results recorded.
 * - FAILED: out of restarts, a repeated user error, or an unrecoverable
 *   input; the reason (and traceback, when there is one) is kept.
 * - CANCELLED: stopped by a user; no process of it is alive.
 */
export type JobState =
  | "PENDING"
  | "STARTING"
  | "RUNNING"
  | "RESTARTING"
  | "STOPPING"
  | "SUCCEEDED"
  | "FAILED"
  | "CANCELLED";

export const JOB_STATES: readonly JobState[] = [
  "PENDING",
  "STARTING",
  "RUNNING",
  "RESTARTING",
  "STOPPING",
  "SUCCEEDED",
  "FAILED",
  "CANCELLED",
];

export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

/** States in which a stage holds slots and has (or is about to have) processes. */
export const ACTIVE_STATES: ReadonlySet<JobState> = new Set(["STARTING", "RUNNING", "STOPPING"]);

export function isTerminal(state: JobState): boolean {
  return TERMINAL_STATES.has(state);
}

/**
 * Allowed stage transitions. Leaving a terminal state is only possible through
 * `resume` (FAILED/CANCELLED -> PENDING); SUCCEEDED is final.
 */
export const STAGE_TRANSITIONS: Readonly<Record<JobState, readonly JobState[]>> = {
  PENDING: ["STARTING", "FAILED", "CANCELLED"],
  STARTING: ["RUNNING", "RESTARTING", "STOPPING", "SUCCEEDED", "FAILED", "CANCELLED"],
  RUNNING: ["SUCCEEDED", "RESTARTING", "STOPPING", "FAILED", "CANCELLED"],
  RESTARTING: ["STARTING", "FAILED", "CANCELLED", "PENDING"],
  STOPPING: ["CANCELLED", "FAILED", "SUCCEEDED", "RESTARTING"],
  SUCCEEDED: [],
  FAILED: ["PENDING"],
  CANCELLED: ["PENDING"],
};

export function canTransition(from: JobState, to: JobState): boolean {
  return STAGE_TRANSITIONS[from].includes(to);
}

/**
 * A job's state is a function of its stages' states (a single-stage job has
 * exactly its stage's state). Precedence: a failure or cancellation anywhere
 * ends the job once nothing is active; otherwise the most advanced activity wins.
 */
export function jobStateOf(stages: readonly JobState[]): JobState {
  const has = (s: JobState): boolean => stages.includes(s);
  const active = stages.some((s) => !isTerminal(s) && s !== "PENDING");
  if (stages.length > 0 && stages.every((s) => s === "SUCCEEDED")) return "SUCCEEDED";
  if (!active && has("FAILED")) return "FAILED";
  if (!active && has("CANCELLED")) return "CANCELLED";
  if (has("STOPPING")) return "STOPPING";
  if (has("RESTARTING")) return "RESTARTING";
  if (has("RUNNING")) return "RUNNING";
  // A pipeline that has finished a stage is running, whether its next stage is starting or queued.
  if (has("SUCCEEDED")) return "RUNNING";
  if (has("STARTING")) return "STARTING";
  return "PENDING";
}
