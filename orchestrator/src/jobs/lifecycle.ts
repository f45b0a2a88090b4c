/**
 * The one transition function. Every change of a stage's state (and so of
 * its job's) goes through `transition`, which checks the transition table,
 * derives the job state, and returns the events to publish. Pure: the
 * ledger (ledger.ts) persists the result before anyone acts on it.
 */
import {
  canTransition,
  EVENT_SCHEMA_VERSION,
  FailedPreconditionError,
  isTerminal,
  jobStateOf,
  NotFoundError,
  type JobEvent,
  type JobRecord,
  type JobState,
  type StageRecord,
} from "../domain/index.js";

/** How many events a job record keeps (the event bus carries all of them). */
export const RECENT_EVENTS_KEPT = 200;

export interface TransitionResult {
  readonly job: JobRecord;
  readonly events: JobEvent[];
}

/** Extra facts attached to a transition's event. */
export interface TransitionFacts {
  readonly attempt?: number;
  readonly rank?: number;
  readonly data?: Record<string, unknown>;
  /** Mutations to apply to the stage together with the transition (same write). */
  readonly update?: (stage: StageRecord) => void;
  /**
   * Do nothing when the stage has already ended (checked in the same serialised
   * write): for ends two paths may reach at once, e.g. a cancel racing a failure.
   */
  readonly unlessTerminal?: boolean;
}

/**
 * Move `stageName` of `job` to `to`, for `reason`. Returns a new record (the
 * input is not modified) and the events: one for the stage and, when the
 * job's derived state changes, one for the job (stage "").
 */
export function transition(
  job: JobRecord,
  stageName: string,
  to: JobState,
  reason: string,
  nowMs: number,
  facts: TransitionFacts = {},
): TransitionResult {
  const next = structuredClone(job);
  const stage = next.stages.find((s) => s.name === stageName);
  if (!stage) throw new NotFoundError(`job ${job.id} has no stage "${stageName}"`);
  const from = stage.state;
  if (!canTransition(from, to)) {
    throw new FailedPreconditionError(`job ${job.id} stage ${stageName}: cannot go from ${from} to ${to}`);
  }
  stage.state = to;
  stage.reason = reason;
  if (to === "STARTING" && stage.startedAtMs === null) stage.startedAtMs = nowMs;
  if (to === "SUCCEEDED" || to === "FAILED" || to === "CANCELLED") stage.endedAtMs = nowMs;
  if (to === "PENDING") stage.endedAtMs = null;
  facts.update?.(stage);

  const events: JobEvent[] = [];
  events.push(
    makeEvent(next, {
      stage: stageName,
      type: "state",
      state: to,
      reason,
      tsMs: nowMs,
      attempt: facts.attempt ?? currentAttempt(stage),
      rank: facts.rank ?? -1,
      data: { from, ...(facts.data ?? {}) },
    }),
  );
  const jobState = jobStateOf(next.stages.map((s) => s.state));
  // Why the job waits for slots means nothing once it is over (status would still show it).
  if (isTerminal(jobState)) next.pendingReason = "";
  if (jobState !== next.state) {
    const jobFrom = next.state;
    next.state = jobState;
    next.reason = jobReason(next.stages, jobState, stageName, reason);
    events.push(
      makeEvent(next, { stage: "", type: "state", state: jobState, reason: next.reason, tsMs: nowMs, attempt: 0, rank: -1, data: { from: jobFrom } }),
    );
  }
  next.updatedAtMs = nowMs;
  return { job: next, events };
}

/** Record a non-transition fact (checkpoint committed, evaluation result, failure detail) as an event. */
export function note(
  job: JobRecord,
  stageName: string,
  type: string,
  reason: string,
  nowMs: number,
  facts: TransitionFacts = {},
): TransitionResult {
  const next = structuredClone(job);
  const stage = next.stages.find((s) => s.name === stageName);
  if (stageName !== "" && !stage) throw new NotFoundError(`job ${job.id} has no stage "${stageName}"`);
  if (stage) facts.update?.(stage);
  const event = makeEvent(next, {
    stage: stageName,
    type,
    state: stage ? stage.state : next.state,
    reason,
    tsMs: nowMs,
    attempt: facts.attempt ?? (stage ? currentAttempt(stage) : 0),
    rank: facts.rank ?? -1,
    data: facts.data ?? {},
  });
  next.updatedAtMs = nowMs;
  return { job: next, events: [event] };
}

/**
 * The job's reason when its state changes. A single stage's reason is the
 * job's; a pipeline that has ended says so for the whole pipeline ("all 3
 * stages succeeded", "stage seg failed: ..."), not in the words of whichever
 * stage happened to end last (an eval stage's "finished 0 steps").
 */
export function jobReason(stages: readonly StageRecord[], jobState: JobState, stageName: string, reason: string): string {
  if (stages.length < 2 || !isTerminal(jobState)) return reason;
  if (jobState === "SUCCEEDED") return `all ${stages.length} stages succeeded`;
  const ended = stages.filter((s) => s.state === jobState);
  const first = ended.find((s) => s.name === stageName) ?? ended[0];
  if (!first) return reason;
  const verb = jobState === "FAILED" ? "failed" : "cancelled";
  const others = ended.length - 1;
  const done = stages.filter((s) => s.state === "SUCCEEDED").length;
  return (
    `stage ${first.name} ${verb}${first.reason ? `: ${first.reason}` : ""}` +
    (others > 0 ? ` (and ${others} other stage${others === 1 ? "" : "s"})` : "") +
    `; ${done} of ${stages.length} stages succeeded`
  );
}

type EventFields = Omit<JobEvent, "schemaVersion" | "seq" | "jobId">;

/** Assigns the job's next sequence number and keeps the record's recent-event window bounded. */
function makeEvent(job: JobRecord, fields: EventFields): JobEvent {
  const event: JobEvent = { schemaVersion: EVENT_SCHEMA_VERSION, seq: job.nextEventSeq, jobId: job.id, ...fields };
  job.nextEventSeq += 1;
  job.recentEvents.push(event);
  if (job.recentEvents.length > RECENT_EVENTS_KEPT) job.recentEvents.splice(0, job.recentEvents.length - RECENT_EVENTS_KEPT);
  return event;
}

function currentAttempt(stage: StageRecord): number {
  return stage.attempts.at(-1)?.number ?? 0;
}
