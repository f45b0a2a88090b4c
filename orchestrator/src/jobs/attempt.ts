/**
 * One live attempt of a stage: its gang of ranks, and the supervisor that
 * turns what the ranks say and do (messages, exits, silence) into decisions.
 * The attempt's lifecycle is a closed union with one transition function
 * (`nextPhase`); what an attempt decides is carried out by the hooks it is
 * given (the commit, the ending, the progress sink), which never call back
 * into it except through its own methods.
 */
import { autoIntervalS } from "../checkpoints/index.js";
import { addShardCache, addSkips, InvalidArgumentError, truncateHead, type ShardCacheStats, type StageSpec, type Timers, type TimerHandle } from "../domain/index.js";
import type { Manifest, DataPlan } from "../data/index.js";
import type { CheckpointRef, CheckpointWritten, EvalResult, Heartbeat, StepReport, WorkerMessage } from "../gen/clipfleet/v1/worker.js";
import type { ExitInfo } from "../launcher/index.js";
import type { Placement } from "../scheduler/index.js";
import { boundedReport, causeOfExit, causeOfPreemptExit, causeOfReport, hangBoundSeconds, isSecondary, type FailureCause } from "./policy.js";
import type { RankRuntime, SessionHandle } from "./runtime.js";

/** How long a secondary failure signal waits for the primary one. */
export const SETTLE_MS = 1500;

/** A graceful stop's agreed step, whether ranks checkpoint there first, and whether it is a preemption (the stage restarts). */
export interface StopAt {
  readonly step: number;
  readonly checkpoint: boolean;
  readonly preempt?: boolean;
}

/** How an attempt came to end. */
export type EndReason = "failed" | "succeeded" | "stopped";

/**
 * Where an attempt is in its life. Every state:
 * - starting: ranks launched; not every rank has opened its session yet.
 * - running: the gang formed (every rank connected); it trains or evaluates.
 * - stopping: a graceful stop of a formed gang: ranks stop at `stopAt.step`
 *   (saving first when asked) and exit; their exits and closed sessions are
 *   expected, so they are not failures. In a preemption's stop
 *   (`stopAt.preempt`) only a clean exit is: a rank killed or crashing before
 *   the checkpoint is committed fails the attempt.
 * - ending: the attempt is over (failed, succeeded, or stopped) and being torn
 *   down and recorded; every later signal of its ranks is ignored, their
 *   calls are fenced.
 * - closed: released: its slots are free and it is out of the live table.
 */
export type AttemptPhase =
  | { readonly kind: "starting" }
  | { readonly kind: "running" }
  | { readonly kind: "stopping"; readonly stopAt: StopAt }
  | { readonly kind: "ending"; readonly why: EndReason }
  | { readonly kind: "closed" };

/** What can happen to an attempt's lifecycle. */
export type AttemptEvent =
  | { readonly type: "formed" }
  | { readonly type: "stop"; readonly stopAt: StopAt }
  | { readonly type: "end"; readonly why: EndReason }
  | { readonly type: "close" };

/**
 * The one transition function: the next phase, or null when the event does
 * not apply (it is then ignored: the first ending wins, a gang forms once).
 * A stop before the gang formed ends the attempt at once: there is nothing
 * to save, and a rank that registers late must be fenced rather than move
 * the stage from STOPPING back to RUNNING.
 */
export function nextPhase(p: AttemptPhase, e: AttemptEvent): AttemptPhase | null {
  switch (e.type) {
    case "formed":
      return p.kind === "starting" ? { kind: "running" } : null;
    case "stop":
      if (p.kind === "starting") return { kind: "ending", why: "stopped" };
      return p.kind === "running" ? { kind: "stopping", stopAt: e.stopAt } : null;
    case "end":
      return p.kind === "starting" || p.kind === "running" || p.kind === "stopping" ? { kind: "ending", why: e.why } : null;
    case "close":
      return p.kind === "ending" ? { kind: "closed" } : null;
  }
}

/** What an attempt's decisions are carried out by (wired by the job service). */
export interface AttemptHooks {
  /** Every rank connected: persist RUNNING. */
  formed(a: Attempt): void;
  /** A step report of a rank (metrics, step history, progress). */
  step(a: Attempt, rank: RankRuntime, rep: StepReport, now: number): void;
  heartbeat(a: Attempt, rank: RankRuntime, hb: Heartbeat): void;
  eval(a: Attempt, rank: RankRuntime, result: EvalResult): void;
  /** A rank wrote its checkpoint files (the commit collects every rank's). */
  checkpointWritten(a: Attempt, rank: RankRuntime, rep: CheckpointWritten): void;
  /** The attempt failed: tear it down and restart or fail the stage (`failedAtMs`: when it really failed). */
  failed(a: Attempt, cause: FailureCause, failedAtMs?: number): void;
  /** Every rank finished. */
  finished(a: Attempt): void;
  /** A rank asks for the job to stop (it saves first). */
  stopRequested(a: Attempt, reason: string): void;
  /** A rank received the preemption signal: stop the gang at one step with a checkpoint, then restart the stage. */
  preemptRequested(a: Attempt, reason: string): void;
}

/** What an attempt needs of the world: time, timers and the job's log. */
export interface AttemptEnv {
  now(): number;
  readonly timers: Timers;
  log(jobId: string, stage: string, attempt: number, line: string): void;
}

/** The facts an attempt starts with and keeps (built by launch.ts). */
export interface AttemptFacts {
  readonly jobId: string;
  readonly stage: string;
  readonly attempt: number;
  readonly spec: StageSpec;
  readonly placement: Placement;
  readonly ranks: readonly RankRuntime[];
  readonly plan: DataPlan | null;
  readonly manifest: Manifest | null;
  readonly valManifest: Manifest | null;
  readonly totalSteps: number;
  readonly stepsPerEpoch: number;
  readonly startStep: number;
  readonly masterAddr: string;
  readonly masterPort: number;
  readonly checkpointRoot: string;
  readonly runDir: string;
  readonly resume: CheckpointRef | undefined;
  readonly init: CheckpointRef | undefined;
  /** task train-captioner: the CLIP of eval.clip, verified. */
  readonly evalClip: CheckpointRef | undefined;
  readonly python: string;
  /** sha256 of the canonical stage spec: the assignment's and every manifest's configSha256. */
  readonly configSha256: string;
  /** When the previous attempt's failure was detected (for the recovery-time metric). */
  readonly recoveringSince: number | null;
  /** Samples the stage's earlier attempts skipped. */
  readonly skippedBefore: number;
  /** skippedBefore by reason. */
  readonly skippedByReasonBefore: Readonly<Record<string, number>>;
  /** The shard cache counters of the stage's earlier attempts. */
  readonly shardCacheBefore: ShardCacheStats | undefined;
  /** Earlier attempts of this stage (torchrun's TORCHELASTIC_RESTART_COUNT). */
  readonly restartCount: number;
}

/** Most step reports one coalesced message may carry (the worker sends at most 64). */
export const MAX_STEP_BATCH = 256;

/** Whether an object has an own enumerable key, without allocating (the hot path's maps are mostly empty). */
export function hasKeys(o: object): boolean {
  for (const k in o) if (Object.hasOwn(o, k)) return true;
  return false;
}

/** Step durations kept per rank for the hang bound's p99. */
const STEP_SECONDS_KEPT = 200;

/** Phase names of the wire's Phase enum, by number. */
const PHASES = ["unspecified", "starting", "rendezvous", "loading", "training", "checkpointing", "evaluating", "stopping"];

/** A live attempt and its supervisor. */
export class Attempt {
  readonly startedMs: number;
  /** Resolves when every process of the attempt has exited (or could not be started). */
  readonly allExited: Promise<void>;
  /** Resolves at rank 0's first step report (warm spares are topped up then, spares.ts). */
  readonly firstStep: Promise<void>;

  /** Recovery clock: set until the first step of this attempt is observed. */
  recoveringSince: number | null;
  lastCommitMs: number;
  lastCommittedStep: number;
  /** The slowest rank's save stall at the last commit (every: auto); null until one is committed. */
  saveCostS: number | null = null;
  lastStepEventMs = 0;
  lastReport: StepReport | null = null;
  /** Samples done so far where a step is not one global batch (recaption: a step is a committed shard); null: step x batch. */
  samplesDone: number | null = null;
  /** Loss of the attempt's first reported step. */
  firstLoss: number | null = null;
  /** Undecodable samples skipped by this attempt's ranks. */
  skippedSamples = 0;
  /** skippedSamples by reason (bounded, see addSkips). */
  readonly skippedByReason: Record<string, number> = {};
  /** This attempt's ranks' shard cache counters. */
  shardCache: ShardCacheStats = addShardCache(undefined, undefined);

  private phaseNow: AttemptPhase = { kind: "starting" };
  /** The step of a requested checkpoint (on demand or timed) not yet committed. */
  private checkpointAt: number | null = null;
  /** A secondary failure signal waiting out the settle window for the primary cause. */
  private settling: TimerHandle | null = null;
  private exits = 0;
  /** Ranks whose session is open (rank.session set). */
  private sessionsOpen = 0;
  private resolveAllExited: () => void = () => undefined;
  private resolveFirstStep: () => void = () => undefined;
  /** Waiters for a commit at or after a step (a preemption waits for its checkpoint). */
  private commitWaiters: { step: number; resolve: () => void }[] = [];

  constructor(
    readonly facts: AttemptFacts,
    private readonly env: AttemptEnv,
    private readonly hooks: AttemptHooks,
  ) {
    this.recoveringSince = facts.recoveringSince;
    this.startedMs = env.now();
    this.lastCommitMs = this.startedMs;
    this.lastCommittedStep = facts.startStep;
    this.allExited = new Promise<void>((r) => (this.resolveAllExited = r));
    this.firstStep = new Promise<void>((r) => (this.resolveFirstStep = r));
  }

  get jobId(): string {
    return this.facts.jobId;
  }

  get stage(): string {
    return this.facts.stage;
  }

  /** The attempt's number (job-wide; it fences the ranks of earlier attempts). */
  get attempt(): number {
    return this.facts.attempt;
  }

  get spec(): StageSpec {
    return this.facts.spec;
  }

  get ranks(): readonly RankRuntime[] {
    return this.facts.ranks;
  }

  get totalSteps(): number {
    return this.facts.totalSteps;
  }

  // ------------------------------------------------------------ lifecycle

  get phase(): AttemptPhase {
    return this.phaseNow;
  }

  /** Applies a lifecycle event; false when it does not apply (see nextPhase). */
  apply(e: AttemptEvent): boolean {
    const next = nextPhase(this.phaseNow, e);
    if (!next) return false;
    this.phaseNow = next;
    if (next.kind === "ending") this.settling?.cancel();
    return true;
  }

  /** Over (ending or closed): signals are ignored, rank calls fenced. */
  get over(): boolean {
    return this.phaseNow.kind === "ending" || this.phaseNow.kind === "closed";
  }

  /** Every rank connected and the attempt is not over. */
  get formed(): boolean {
    return this.phaseNow.kind === "running" || this.phaseNow.kind === "stopping";
  }

  get worldSize(): number {
    return this.ranks.length;
  }

  get globalBatch(): number {
    return this.spec.train.batch_size;
  }

  /** The furthest step any rank completed (ranks are in lockstep within one step). */
  get lastStep(): number {
    return Math.max(this.facts.startStep, ...this.ranks.map((r) => r.step));
  }

  /** A step every rank can still reach: ranks are in lockstep within one step of each other. */
  nextSafeStep(): number {
    // A command stage may not say how long it runs (totalSteps 0): then nothing caps the step.
    return this.totalSteps > 0 || this.spec.command === null ? Math.min(this.totalSteps, this.lastStep + 2) : this.lastStep + 2;
  }

  /** Counts a rank's process exit (or failed start); resolves allExited with the last one. */
  processGone(): void {
    this.exits += 1;
    if (this.exits === this.ranks.length) this.resolveAllExited();
  }

  // ------------------------------------------------------------ checkpoints on request

  /** Asks every rank to checkpoint at `step` (on demand, or the timed cadence). */
  requestCheckpoint(step: number): void {
    this.checkpointAt = step;
    this.broadcast({ $case: "checkpointAt", value: { step } });
  }

  /**
   * A checkpoint was committed: the cadence restarts, and a request at or
   * before it is served. saveCostS: the slowest rank's stall (every: auto).
   */
  committed(step: number, atMs: number, saveCostS?: number): void {
    this.lastCommitMs = atMs;
    if (saveCostS !== undefined && Number.isFinite(saveCostS)) this.saveCostS = saveCostS;
    this.lastCommittedStep = Math.max(this.lastCommittedStep, step);
    if (this.checkpointAt !== null && step >= this.checkpointAt) this.checkpointAt = null;
    const due = this.commitWaiters.filter((w) => this.lastCommittedStep >= w.step);
    this.commitWaiters = this.commitWaiters.filter((w) => this.lastCommittedStep < w.step);
    for (const w of due) w.resolve();
  }

  /**
   * Resolves once this attempt has committed a checkpoint at or after `step`
   * (a commit may land after the ranks' exits: the manifest is written once
   * the last report is in). Never rejects; callers bound the wait.
   */
  committedAt(step: number): Promise<void> {
    if (this.lastCommittedStep >= step) return Promise.resolve();
    return new Promise<void>((resolve) => this.commitWaiters.push({ step, resolve }));
  }

  /**
   * The timer's interval: checkpoint.every_minutes, or with `every: auto`
   * Young-Daly from the save cost this attempt measured and the stage's
   * restarts (0 until a save was measured: save at once to measure it).
   */
  checkpointIntervalMs(now: number): number | null {
    const c = this.spec.checkpoint;
    if (c.every === "auto") {
      return 1000 * autoIntervalS({ saveCostS: this.saveCostS, failures: this.facts.restartCount, observedS: (now - this.startedMs) / 1000, mtbfPriorS: c.mtbf_prior_hours * 3600 });
    }
    return c.every_minutes ? c.every_minutes * 60_000 : null;
  }

  /**
   * checkpoint.every_minutes (or every: auto): the step at which ranks should save now, or
   * null (no cadence, a request pending, a stop under way, not yet due, or
   * the run ends before it).
   */
  timedCheckpointDue(now: number): number | null {
    const intervalMs = this.checkpointIntervalMs(now);
    if (intervalMs === null || this.checkpointAt !== null || this.phaseNow.kind === "stopping" || this.over) return null;
    if (now - this.lastCommitMs < intervalMs) return null;
    const step = this.nextSafeStep();
    return step < this.totalSteps || (this.totalSteps === 0 && this.spec.command !== null) ? step : null;
  }

  /** Sends a command to every rank with an open session. */
  broadcast(body: NonNullable<Parameters<SessionHandle["send"]>[0]["body"]>): void {
    for (const r of this.ranks) r.session?.send({ body });
  }

  // ------------------------------------------------------------ what ranks say and do

  /** A rank opened its session stream; the gang forms when the last one does. */
  sessionOpened(rank: RankRuntime, handle: SessionHandle): void {
    if (rank.session === null) this.sessionsOpen += 1;
    rank.session = handle;
    rank.lastHeartbeatMs = this.env.now();
    // A count, not a pass over the ranks: a pass per session is O(ranks^2) for a 16,384-rank gang.
    if (this.phaseNow.kind !== "starting" || this.sessionsOpen < this.ranks.length) return;
    this.apply({ type: "formed" });
    const now = this.env.now();
    for (const r of this.ranks) r.lastProgressMs = now;
    this.hooks.formed(this);
  }

  /**
   * task command: every process was started. A command's ranks need not
   * connect (a plain script never does), so the gang is formed now; ranks
   * that use the API still register and are then watched like built-in ones.
   */
  launched(): void {
    if (this.phaseNow.kind !== "starting") return;
    this.apply({ type: "formed" });
    const now = this.env.now();
    for (const r of this.ranks) r.lastProgressMs = now;
    this.hooks.formed(this);
  }

  /** A rank's session stream closed: a failure unless the attempt is ending, stopping, or the rank finished. */
  sessionClosed(rank: RankRuntime, handle: SessionHandle, why: string): void {
    if (rank.session === handle) {
      rank.session = null;
      this.sessionsOpen -= 1;
    }
    if (this.over || rank.finished || this.phaseNow.kind === "stopping") return;
    this.log(`rank ${rank.rank} session closed: ${why}`);
    this.fail(rank.failure ?? { kind: "session", rank: rank.rank });
  }

  /** One message of a bound session. */
  message(rank: RankRuntime, body: NonNullable<WorkerMessage["body"]>): void {
    const now = this.env.now();
    rank.lastHeartbeatMs = now;
    switch (body.$case) {
      case "hello":
        return;
      case "heartbeat":
        rank.phase = PHASES[body.value.phase] ?? "unknown";
        this.hooks.heartbeat(this, rank, body.value);
        return;
      case "step":
        this.step(rank, body.value, now);
        return;
      case "steps":
        // Reports that queued on the worker, coalesced into one message: each handled as if sent alone.
        if (body.value.reports.length > MAX_STEP_BATCH) {
          throw new InvalidArgumentError(`steps: ${body.value.reports.length} reports in one message (at most ${MAX_STEP_BATCH})`, "steps");
        }
        for (const rep of body.value.reports) this.step(rank, rep, now);
        return;
      case "checkpoint":
        this.hooks.checkpointWritten(this, rank, body.value);
        return;
      case "eval":
        this.hooks.eval(this, rank, body.value);
        return;
      case "failure": {
        const f = boundedReport(body.value);
        this.log(`rank ${rank.rank} reported ${f.kind}: ${f.message}`);
        // The report comes before the rank closes its session and exits: it is the cause to act on.
        const cause = causeOfReport(rank.rank, f, this.attempt, now);
        rank.failure = cause;
        this.fail(cause);
        return;
      }
      case "finished":
        rank.finished = body.value;
        rank.phase = "finished";
        if (this.ranks.every((r) => r.finished) && !this.over) this.hooks.finished(this);
        return;
      case "stopRequested":
        this.log(`rank ${rank.rank} asks to stop: ${body.value.reason}`);
        this.hooks.stopRequested(this, body.value.reason);
        return;
      case "preemptRequested": {
        // A rank's words: bounded before they reach a log line, an event and the store.
        const reason = truncateHead(body.value.reason || `preemption signal on rank ${rank.rank}`, 200);
        this.log(`rank ${rank.rank} asks for a preemption: ${reason}`);
        this.hooks.preemptRequested(this, reason);
        return;
      }
    }
  }

  /** One step report of a rank (the hot path: every rank, every step). */
  private step(rank: RankRuntime, rep: StepReport, now: number): void {
    rank.step = rep.step;
    rank.lastProgressMs = now;
    rank.phase = "training";
    // A NaN duration would make the hang bound NaN, and no hang would ever be detected.
    // The last STEP_SECONDS_KEPT durations, as a ring indexed by step (no shifting of the array).
    if (Number.isFinite(rep.stepSeconds) && rep.stepSeconds >= 0) {
      if (rank.stepSeconds.length < STEP_SECONDS_KEPT) rank.stepSeconds.push(rep.stepSeconds);
      else rank.stepSeconds[rep.step % STEP_SECONDS_KEPT] = rep.stepSeconds;
    }
    this.skippedSamples += rep.skippedSamples;
    if (hasKeys(rep.skippedByReason)) addSkips(this.skippedByReason, rep.skippedByReason);
    if (rep.shardCacheHits > 0 || rep.shardCacheMisses > 0 || rep.shardBytesFetched > 0) {
      const seconds = Number.isFinite(rep.shardFetchSeconds) && rep.shardFetchSeconds > 0 ? rep.shardFetchSeconds : 0;
      this.shardCache = addShardCache(this.shardCache, { bytesFetched: rep.shardBytesFetched, hits: rep.shardCacheHits, misses: rep.shardCacheMisses, fetchSeconds: seconds });
    }
    if (rank.rank === 0) {
      // Rank 0 speaks for the stage: the loss is all-reduced, so every rank has the same.
      this.lastReport = rep;
      if (Number.isFinite(rep.loss)) this.firstLoss ??= rep.loss;
      this.resolveFirstStep();
    }
    this.hooks.step(this, rank, rep, now);
    if (rank.rank === 0) {
      const due = this.timedCheckpointDue(now);
      if (due !== null) this.requestCheckpoint(due);
    }
  }

  /** A rank's process is gone (from its launcher). */
  exited(rank: RankRuntime, exit: ExitInfo): void {
    rank.exit = exit;
    rank.phase = "exited";
    const how = exit.lost ? `was lost: ${exit.lost}` : exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.code}`;
    this.log(`rank ${rank.rank} (pid ${rank.proc?.pid ?? "?"}) ${how}`);
    if (this.over) return;
    if (this.phaseNow.kind === "stopping") {
      // A stop in progress waits for every exit; a preemption's, for clean ones (a dead rank never saves).
      if (!this.phaseNow.stopAt.preempt) return;
      const cause = causeOfPreemptExit(rank.rank, rank.node.name, exit, rank.failure);
      if (cause) this.fail(cause);
      return;
    }
    if (this.spec.command) {
      // A command's success is its exit code; its failure, the traceback on its stderr when it printed one.
      if (exit.code === 0 && !exit.lost) {
        rank.finished ??= { step: rank.step, finalParamsSha256: "", metrics: {} };
        if (this.ranks.every((r) => r.finished)) this.hooks.finished(this);
        return;
      }
      // A non-zero exit of the program itself (not a signal, not a lost node) is the script's doing, not
      // the node's: with no traceback, the exit code is its fingerprint for the repeated-user-error rule.
      if (exit.code !== null && !exit.lost && !rank.failure) {
        const tb = rank.stderr?.failure(rank.step) ?? { kind: "exit", message: `exited with code ${exit.code}`, traceback: "", step: rank.step, fingerprint: `exit-${exit.code}` };
        rank.failure = causeOfReport(rank.rank, tb, this.attempt, this.env.now());
      }
    }
    const cause = causeOfExit(rank.rank, rank.node.name, exit, rank.finished !== null, rank.failure);
    if (cause) this.fail(cause);
  }

  /**
   * Acts on a failure signal. A secondary one (a collective that broke because a
   * peer died, a dropped session) waits a moment for the primary cause, which
   * usually arrives right after (the peer's exit): the restart is the same, but
   * the reason and the node blamed must be the right ones.
   */
  fail(cause: FailureCause, failedAtMs?: number): void {
    if (this.over) return;
    if (!isSecondary(cause)) {
      this.hooks.failed(this, cause, failedAtMs);
      return;
    }
    if (this.settling) return;
    this.settling = this.env.timers.after(SETTLE_MS, () => {
      if (!this.over) this.hooks.failed(this, cause, failedAtMs);
    });
  }

  /**
   * The watchdog's question, a pure function of the attempt and the time:
   * ranks that never connected within failure.startup_timeout, a rank silent
   * for longer than heartbeat_timeout, or one with no step progress for
   * longer than the hang bound. Null when all is well (or the attempt is
   * stopping or over: its exits are expected).
   */
  overdue(now: number): { cause: FailureCause; failedAtMs?: number } | null {
    const f = this.spec.failure;
    if (this.phaseNow.kind === "starting") {
      if (this.spec.command) return null; // formed once launched: its ranks need not connect
      const missing = this.ranks.filter((r) => !r.session).map((r) => r.rank);
      if (missing.length > 0 && now - this.startedMs > f.startup_timeout * 1000) {
        return { cause: { kind: "startup", missing, seconds: f.startup_timeout } };
      }
      return null;
    }
    if (this.phaseNow.kind !== "running") return null;
    for (const r of this.ranks) {
      if (r.finished) continue;
      // A command's rank is watched once it uses the API (registers); before that, only its exit tells.
      if (this.spec.command && !r.registered) continue;
      const silent = (now - r.lastHeartbeatMs) / 1000;
      if (silent > f.heartbeat_timeout) return { cause: { kind: "heartbeat", rank: r.rank, silentSeconds: silent }, failedAtMs: r.lastHeartbeatMs };
      // The bound is at least hang_min_seconds: only a rank stalled longer pays for its percentile
      // (a sort of its step times; for every rank of a 10,000-rank gang every 0.5 s, it blocked the loop).
      if ((r.phase === "training" || r.phase === "registered") && (now - r.lastProgressMs) / 1000 > f.hang_min_seconds) {
        const stalled = (now - r.lastProgressMs) / 1000;
        const bound = hangBoundSeconds(f, r.stepSeconds);
        if (stalled > bound) return { cause: { kind: "hang", rank: r.rank, stalledSeconds: stalled, boundSeconds: bound }, failedAtMs: r.lastProgressMs };
      }
    }
    return null;
  }

  private log(line: string): void {
    this.env.log(this.jobId, this.stage, this.attempt, line);
  }
}
