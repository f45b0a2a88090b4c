/**
 * The persisted truth about a job: what the store keeps and every view
 * (control API, CLI, metrics) is derived from. Plain JSON-serialisable data;
 * only jobs/ changes it, through its one transition function.
 */
import type { JobSpec } from "./spec.js";
import type { JobState } from "./states.js";

/** Schema version of persisted records and of published events. */
export const RECORD_SCHEMA_VERSION = 1;
export const EVENT_SCHEMA_VERSION = 1;

/** Where one rank of an attempt ran, and what it is doing. */
export interface RankRecord {
  rank: number;
  node: string;
  host: string;
  slot: number;
  pid: number | null;
  /** launching | registered | running | exited | lost */
  state: "launching" | "registered" | "running" | "exited" | "lost";
  step: number;
  lastHeartbeatMs: number | null;
  phase: string;
  exitCode: number | null;
  signal: string | null;
}

/** How an attempt ended. */
export type AttemptOutcome = "running" | "succeeded" | "failed" | "cancelled" | "preempted" | "lost";

/** One try at running a stage: a gang of ranks from launch to teardown. */
export interface AttemptRecord {
  number: number;
  startedAtMs: number;
  endedAtMs: number | null;
  outcome: AttemptOutcome;
  reason: string;
  worldSize: number;
  resumedFromStep: number;
  lastStep: number;
  ranks: RankRecord[];
  /** Rendezvous handed to the ranks. */
  masterAddr: string;
  masterPort: number;
}

/** A file of a checkpoint, as reported by the rank that wrote it. */
export interface FileDigestRecord {
  path: string;
  sha256: string;
  size: number;
}

/** A checkpoint the orchestrator knows of; only `committed` ones are ever resumed from. */
export interface CheckpointRecord {
  stage: string;
  step: number;
  dir: string;
  attempt: number;
  status: "committed" | "corrupt" | "deleted";
  reason: string;
  committedAtMs: number;
  files: FileDigestRecord[];
  sizeBytes: number;
  manifestSha256: string;
  cursor: { epoch: number; sampleInEpoch: number };
}

/** Live progress of a stage, updated from step reports (persisted periodically). */
export interface ProgressRecord {
  step: number;
  totalSteps: number;
  epoch: number;
  sampleInEpoch: number;
  samplesSeen: number;
  loss: number | null;
  firstLoss: number | null;
  lr: number;
  temperature: number;
  samplesPerSecond: number;
  stepSeconds: number;
  skippedSamples: number;
  /** skippedSamples by reason (see SKIP_REASONS); absent in records of earlier versions. */
  skippedByReason?: Record<string, number>;
  worldSize: number;
  /** The ranks' shard cache counters over every attempt; absent in records written before they existed. */
  shardCache?: ShardCacheStats;
}

/** What the workers' node-local shard caches did for a stage (StepReport fields 17-20, summed). */
export interface ShardCacheStats {
  bytesFetched: number;
  hits: number;
  misses: number;
  fetchSeconds: number;
}

/** The sum of two stages' or attempts' shard cache counters. */
export function addShardCache(a: ShardCacheStats | undefined, b: ShardCacheStats | undefined): ShardCacheStats {
  return {
    bytesFetched: (a?.bytesFetched ?? 0) + (b?.bytesFetched ?? 0),
    hits: (a?.hits ?? 0) + (b?.hits ?? 0),
    misses: (a?.misses ?? 0) + (b?.misses ?? 0),
    fetchSeconds: (a?.fetchSeconds ?? 0) + (b?.fetchSeconds ?? 0),
  };
}

/** A failure of user code, kept to recognise the same one happening again. */
export interface FailureRecord {
  attempt: number;
  step: number;
  rank: number;
  kind: string;
  message: string;
  fingerprint: string;
  traceback: string;
  atMs: number;
}

/**
 * A manifest signed by this orchestrator and kept in a record rather than
 * beside its files: an init checkpoint imported at submit (the files are
 * the source directory's, hashed then). The store need not be trusted.
 */
export interface SignedManifestRecord {
  /** The manifest's JSON text, exactly as signed. */
  text: string;
  /** Base64 of the Ed25519 signature of `text`'s UTF-8 bytes. */
  signature: string;
}

/** task recaption: one committed output shard (the commit: written, fsynced, renamed into place, digest reported, persisted). */
export interface RecaptionShardRecord {
  /** Index of the input shard in the stage's manifest. */
  readonly shard: number;
  readonly input: string;
  readonly output: string;
  readonly sha256: string;
  readonly bytes: number;
  readonly samples: number;
  readonly attempt: number;
  readonly rank: number;
  readonly committedAtMs: number;
  /** Seconds the rank spent on the shard. */
  readonly seconds: number;
}

export interface StageRecord {
  name: string;
  state: JobState;
  reason: string;
  startedAtMs: number | null;
  endedAtMs: number | null;
  attempts: AttemptRecord[];
  restarts: number;
  /** Restarts after a preemption (apart from `restarts`; docs/preemption.md); absent in records of earlier versions. */
  preemptions?: number;
  checkpoints: CheckpointRecord[];
  progress: ProgressRecord;
  failures: FailureRecord[];
  /** Evaluation and final metrics by name (e.g. "retrieval/i2t_R@1", "seg/mIoU"). */
  metrics: Record<string, number>;
  finalParamsSha256: string;
  /** Traceback of the failure that ended the stage, when it was the user's code. */
  error: string;
  /** Earliest time a restart may start (backoff), ms since epoch. */
  notBeforeMs: number | null;
  /** The latest evaluation's warnings (a metric left out and why); absent in records of earlier versions. */
  warnings?: string[];
  /** Val samples the latest evaluation skipped, by reason; absent in records of earlier versions. */
  evalSkippedByReason?: Record<string, number>;
  /** The stage's imported init checkpoint (`init: {checkpoint: DIR, import: true}`); absent otherwise and in records of earlier versions. */
  initImport?: SignedManifestRecord;
  /** task recaption: the committed output shards, at most one per input shard; absent for other tasks. */
  recaption?: RecaptionShardRecord[];
}

/** A job event: every transition and notable fact, in order. Published on the event bus. */
export interface JobEvent {
  schemaVersion: number;
  seq: number;
  jobId: string;
  stage: string;
  /** state | attempt | checkpoint | eval | warning | failure | preemption | step | node */
  type: string;
  state: JobState;
  reason: string;
  tsMs: number;
  attempt: number;
  rank: number;
  data: Record<string, unknown>;
}

export interface JobRecord {
  schemaVersion: number;
  id: string;
  name: string;
  state: JobState;
  reason: string;
  pendingReason: string;
  createdAtMs: number;
  updatedAtMs: number;
  priority: number;
  spec: JobSpec;
  /** Monotonic attempt counter across the job's stages (fencing). */
  nextAttempt: number;
  stages: StageRecord[];
  /** Sequence number of the next event. */
  nextEventSeq: number;
  /** The most recent events (bounded); the full stream goes to the event bus. */
  recentEvents: JobEvent[];
  /** Set when a user asked to cancel; the cancel completes when no stage is active. */
  cancelRequested: { checkpoint: boolean; atMs: number } | null;
  /** Who submitted the job (the client identity's name); absent in records written before it was kept. */
  submittedBy?: string;
  /**
   * Set (a tombstone) before `delete` removes any file: the job is hidden from
   * every read from then on, and a delete interrupted midway is finished by the next.
   */
  deletingSinceMs?: number;
}

/**
 * Why a stage ran more than once, from how its attempts ended: restarts after
 * a failure (`failed`, `lost`: the orchestrator or a resume started it again),
 * user stops (`cancelled`) and preemptions (`preempted`), each counted only
 * when a later attempt followed. The one place these are told apart; the
 * stage's `restarts` counter is the failure budget, reset by `resume`.
 */
export interface AttemptTally {
  /** Attempts that ended `failed` or `lost` and were followed by another. */
  failureRestarts: number;
  /** Attempts a user stopped (`cancelled`) that were followed by another (resumed). */
  userStops: number;
  /** Attempts that ended `preempted` and were followed by another. */
  preemptions: number;
}

/**
 * The tally of a stage's attempts (any order; sorted by number here). The
 * last attempt counts too when the stage is waiting to start again
 * (`RESTARTING`, or `PENDING` after a resume): its successor is on the way.
 */
export function attemptTally(attempts: readonly Pick<AttemptRecord, "number" | "outcome">[], stageState?: JobState): AttemptTally {
  const sorted = [...attempts].sort((a, b) => a.number - b.number);
  const again = stageState === "RESTARTING" || stageState === "PENDING";
  const tally: AttemptTally = { failureRestarts: 0, userStops: 0, preemptions: 0 };
  for (const a of again ? sorted : sorted.slice(0, -1)) {
    if (a.outcome === "failed" || a.outcome === "lost") tally.failureRestarts += 1;
    else if (a.outcome === "cancelled") tally.userStops += 1;
    else if (a.outcome === "preempted") tally.preemptions += 1;
  }
  return tally;
}

/** "1 restart after a failure, 2 user stops (resumed)", or "" when the stage ran once. */
export function describeTally(t: AttemptTally): string {
  const parts: string[] = [];
  if (t.failureRestarts) parts.push(`${t.failureRestarts} restart${t.failureRestarts === 1 ? "" : "s"} after a failure`);
  if (t.userStops) parts.push(`${t.userStops} user stop${t.userStops === 1 ? "" : "s"} (resumed)`);
  if (t.preemptions) parts.push(`${t.preemptions} preemption${t.preemptions === 1 ? "" : "s"} (resumed)`);
  return parts.join(", ");
}
