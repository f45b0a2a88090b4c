/**
 * Pure decisions about failures: whether to restart, after how long, with
 * how many ranks; and what counts as the user's own bug. Kept apart from the
 * machinery so each rule has a unit test with no processes and no clock.
 */
import { MAX_FAILURE_MESSAGE_BYTES, MAX_TRACEBACK_BYTES, truncateHead, truncateTail, type FailureRecord, type FailureSpec, type StageRecord } from "../domain/index.js";
import type { ExitInfo } from "../launcher/index.js";

/** Why an attempt ended badly. */
export type FailureCause =
  | { kind: "exit"; rank: number; code: number | null; signal: string | null }
  | { kind: "session"; rank: number }
  | { kind: "heartbeat"; rank: number; silentSeconds: number }
  | { kind: "hang"; rank: number; stalledSeconds: number; boundSeconds: number }
  | { kind: "startup"; missing: number[]; seconds: number }
  | { kind: "exception"; rank: number; failure: FailureRecord }
  /** A collective failed in this rank because a peer died or vanished: a consequence, not a bug. */
  | { kind: "collective"; rank: number; message: string }
  | { kind: "node"; rank: number; node: string; message: string }
  | { kind: "checkpoint"; message: string }
  | { kind: "orchestrator"; message: string }
  /** Not worth retrying: a wrong environment or input (version mismatch, unreadable data). */
  | { kind: "fatal"; message: string };

export type Decision =
  | { action: "restart"; delayMs: number; reason: string }
  | { action: "fail"; reason: string; error: string };

/** One line for events and status. */
export function describeCause(c: FailureCause): string {
  switch (c.kind) {
    case "exit":
      return c.signal ? `rank ${c.rank} was killed by ${c.signal}` : `rank ${c.rank} exited with code ${c.code}`;
    case "session":
      return `rank ${c.rank} lost its session`;
    case "heartbeat":
      return `rank ${c.rank} sent no heartbeat for ${c.silentSeconds.toFixed(1)} s`;
    case "hang":
      return `rank ${c.rank} made no step progress for ${c.stalledSeconds.toFixed(1)} s (bound ${c.boundSeconds.toFixed(1)} s): hung`;
    case "startup":
      return `ranks ${c.missing.join(", ")} did not register within ${c.seconds} s`;
    case "exception":
      return `rank ${c.rank} raised ${c.failure.message} at step ${c.failure.step}`;
    case "collective":
      return `rank ${c.rank}: a collective failed (${c.message.split("\n")[0]?.slice(0, 160) ?? ""})`;
    case "node":
      return `node ${c.node} failed (rank ${c.rank}): ${c.message}`;
    case "checkpoint":
      return c.message;
    case "orchestrator":
      return c.message;
    case "fatal":
      return c.message;
  }
}

/**
 * Exponential backoff: backoff_seconds * 2^(restarts), capped at
 * backoff_max_seconds. `restarts` is the number of restarts already made.
 */
export function backoffMs(spec: Pick<FailureSpec, "backoff_seconds" | "backoff_max_seconds">, restarts: number): number {
  const s = Math.min(spec.backoff_max_seconds, spec.backoff_seconds * 2 ** Math.min(restarts, 30));
  return Math.round(s * 1000);
}

/**
 * The same Python exception (same fingerprint) at the same step as an earlier
 * failure of this stage: a bug in the user's code or data, not bad luck.
 */
export function repeatedUserError(previous: readonly FailureRecord[], failure: FailureRecord): FailureRecord | null {
  return previous.find((p) => p.attempt !== failure.attempt && p.fingerprint === failure.fingerprint && p.step === failure.step) ?? null;
}

/**
 * What to do after an attempt failed for `cause`. `stage.failures` already
 * includes this failure. `progressed`: the attempt completed a step beyond the
 * one it resumed from; its failure restarts at once (backoff is for crash
 * loops, and an attempt that trained is not one: waiting only loses goodput).
 */
export function decide(stage: StageRecord, spec: FailureSpec, cause: FailureCause, progressed = false): Decision {
  const reason = describeCause(cause);
  if (cause.kind === "fatal") return { action: "fail", reason, error: "" };
  if (cause.kind === "exception") {
    const prior = repeatedUserError(stage.failures, cause.failure);
    if (prior) {
      return {
        action: "fail",
        reason: `${reason}, the same error as attempt ${prior.attempt}: not retried`,
        error: cause.failure.traceback,
      };
    }
  }
  if (stage.restarts >= spec.max_restarts) {
    return {
      action: "fail",
      reason: `${reason}; restart budget exhausted (${stage.restarts}/${spec.max_restarts})`,
      error: cause.kind === "exception" ? cause.failure.traceback : "",
    };
  }
  return { action: "restart", delayMs: progressed ? 0 : backoffMs(spec, stage.restarts), reason };
}

/**
 * What to do once a preemption's checkpoint is committed and its ranks have
 * exited: restart at once (no backoff: nothing failed, and the resources come
 * back when the launcher gets them), unless the stage already had
 * `max_preemptions` (null: no bound). A preemption never spends max_restarts.
 * `preemptions` is the stage's count before this one.
 */
export function decidePreemption(preemptions: number, spec: Pick<FailureSpec, "max_preemptions">, reason: string): Decision {
  if (spec.max_preemptions !== null && preemptions >= spec.max_preemptions) {
    return { action: "fail", reason: `preempted (${reason}); preemption bound reached (${preemptions}/${spec.max_preemptions}): \`clipfleet resume\` continues from the checkpoint`, error: "" };
  }
  return { action: "restart", delayMs: 0, reason: `preempted (${reason})` };
}

/**
 * An exit of a rank while the gang stops for a preemption: a clean exit (0)
 * is what the stop asks for; anything else (killed, lost, a non-zero code)
 * means the rank died before its checkpoint at the stop step was committed,
 * which is a failure (the restart budget applies), not a preemption.
 */
export function causeOfPreemptExit(rank: number, node: string, exit: ExitInfo, reported: FailureCause | null): FailureCause | null {
  if (exit.code === 0 && !exit.lost) return null;
  return causeOfExit(rank, node, exit, false, reported);
}

/** Nearest-rank percentile of a sample (p in [0, 1]); 0 for an empty one. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[idx] ?? 0;
}

/** The hang bound: max(hang_min_seconds, hang_factor x p99 step time). */
export function hangBoundSeconds(spec: Pick<FailureSpec, "hang_min_seconds" | "hang_factor">, stepSeconds: readonly number[]): number {
  return Math.max(spec.hang_min_seconds, spec.hang_factor * percentile(stepSeconds, 0.99));
}

/** A failure a rank reported (WorkerFailure), before it closes its session and exits. */
export interface ReportedFailure {
  readonly kind: string;
  readonly message: string;
  readonly traceback: string;
  readonly step: number;
  readonly fingerprint: string;
}

/** A rank's report with its message and traceback cut to the limits (the worker cuts them too; a rank is not trusted to). */
export function boundedReport(f: ReportedFailure): ReportedFailure {
  return {
    kind: truncateHead(f.kind, 64),
    message: truncateHead(f.message, MAX_FAILURE_MESSAGE_BYTES),
    traceback: truncateTail(f.traceback, MAX_TRACEBACK_BYTES),
    step: f.step,
    fingerprint: truncateHead(f.fingerprint, 128),
  };
}

/**
 * The cause a rank's own report stands for: bad data or config is not worth
 * retrying, a corrupt checkpoint is the checkpoint's fault, a broken
 * collective is a consequence of a peer, anything else is an exception of
 * the user's code (a repeat of it at the same step fails the stage).
 */
export function causeOfReport(rank: number, f: ReportedFailure, attempt: number, atMs: number): FailureCause {
  if (f.kind === "data" || f.kind === "config") return { kind: "fatal", message: `rank ${rank}: ${f.message}` };
  if (f.kind === "checkpoint_corrupt") return { kind: "checkpoint", message: `rank ${rank}: ${f.message}` };
  if (f.kind === "collective") return { kind: "collective", rank, message: f.message };
  const record: FailureRecord = { attempt, step: f.step, rank, kind: f.kind, message: f.message, fingerprint: f.fingerprint, traceback: f.traceback, atMs };
  return { kind: "exception", rank, failure: record };
}

/**
 * The cause a rank's exit stands for, or null when the exit is expected (a
 * clean exit after the rank said it finished). A lost SSH connection is the
 * node's failure (it counts towards quarantine), not the rank's. Killed by a
 * signal or lost with its node is the primary cause whatever the rank said
 * before; otherwise what the rank reported (its exception) explains the exit.
 */
export function causeOfExit(rank: number, node: string, exit: ExitInfo, finished: boolean, reported: FailureCause | null): FailureCause | null {
  if (exit.code === 0 && finished) return null;
  if (exit.lost) return { kind: "node", rank, node: exit.lostNode ?? node, message: exit.lost };
  const cause: FailureCause = { kind: "exit", rank, code: exit.code, signal: exit.signal };
  return exit.signal ? cause : (reported ?? cause);
}

/** Signals that are consequences of another failure more often than causes: they wait for the primary one. */
export function isSecondary(cause: FailureCause): boolean {
  return cause.kind === "collective" || cause.kind === "session";
}

/** The node to blame for a failure (its failures count towards quarantine), if one is clear. */
export function failureNode(cause: FailureCause, nodeOfRank: (rank: number) => string | null): string | null {
  switch (cause.kind) {
    case "node":
      return cause.node;
    case "exit":
    case "session":
    case "heartbeat":
      return nodeOfRank(cause.rank);
    default:
      return null;
  }
}
