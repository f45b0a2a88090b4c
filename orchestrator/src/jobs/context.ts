/**
 * What every room of the job machinery shares: the injected dependencies,
 * the ledger, time, the job log, background work, and the table of live
 * attempts. Code below the facade never calls up into it: it may only ask
 * for a scheduling pass (`wake`) or a graceful stop of a job (`requestStop`),
 * two hooks the facade connects once.
 */
import type { ManifestSigner } from "../checkpoints/index.js";
import { systemTimers, type Clock, type StageSpec, type Timers } from "../domain/index.js";
import type { EventBus } from "../events/index.js";
import { resolvePython, type Launcher, type SlurmLauncher } from "../launcher/index.js";
import type { Metrics } from "../metrics/index.js";
import type { Scheduler } from "../scheduler/index.js";
import type { Presets, SpecPolicy } from "../spec/index.js";
import type { Attempt } from "./attempt.js";
import type { JobLedger } from "./ledger.js";
import type { JobLogs } from "./logs.js";
import type { RankRuntime } from "./runtime.js";

/** What the service needs from the world; the composition root (main.ts) provides it. */
export interface JobServiceDeps {
  readonly ledger: JobLedger;
  readonly bus: EventBus;
  readonly scheduler: Scheduler;
  readonly launchers: { readonly local: Launcher; readonly ssh: Launcher | null; readonly slurm?: SlurmLauncher | null };
  readonly metrics: Metrics;
  readonly logs: JobLogs;
  readonly clock: Clock;
  /** Timers on the same time as `clock` (default: Node's); unit tests pass a fake clock's. */
  readonly timers?: Timers;
  readonly presets: Presets;
  readonly stateDir: string;
  /** The state dir's manifest signing key: signs every commit and import, verifies every manifest before use. */
  readonly manifestKey: ManifestSigner;
  /** Directory holding clipfleet_worker on this machine (local launches, synthetic data). */
  readonly workerRuntimeDir: string;
  /** Interpreter preference from the CLI or CLIPFLEET_PYTHON (the spec's worker.python wins). */
  readonly python: string | null;
  /** Finds an interpreter with torch (default: the launcher's probe, which runs it); tests pass their own. */
  readonly resolvePython?: (explicit: string | null) => Promise<string>;
  /** Address workers dial (host:port of the worker gateway), known once the server listens. */
  readonly gatewayAddress: () => string;
  /** PEM of the CA that signed the worker gateway's certificate, when it serves TLS (ranks get it as CLIPFLEET_TLS_CA). */
  readonly gatewayCa?: string | null;
  /** Generates a synthetic dataset (python -m clipfleet_worker synth). */
  readonly synthesize: (python: string, synth: NonNullable<StageSpec["data"]["synth"]>, log: (line: string) => void) => Promise<void>;
  /**
   * Checks open_clip weights (an export directory or a weights file) against a stage's model JSON with
   * the worker runtime; resolves to the weights file. Absent: open_clip weights cannot be taken here.
   */
  readonly checkOpenClip?: (python: string, ref: string, modelJson: string) => Promise<string>;
  /** task recaption: checks that a plugin entry point imports in the worker interpreter; rejects naming `field`. Absent: not checked. */
  readonly checkPlugin?: (python: string, entryPoint: string, field: string) => Promise<void>;
  /**
   * Embedded mode (`clipfleet run`/`resume` without a server): only jobs in
   * this set are scheduled; interrupted jobs outside it are marked FAILED
   * (resumable) instead of being restarted behind the user's back.
   */
  readonly scope: Set<string> | null;
  /** What a spec may reach (a server's policy); null: none (an embedded orchestrator runs its user's own specs). */
  readonly policy?: SpecPolicy | null;
  /** Test hook (CLIPFLEET_DELETE_GATE=PATH): `delete` waits here after its tombstone, so a test can kill the orchestrator midway. */
  readonly deleteGate?: (jobId: string) => Promise<void>;
  /** How often the watchdog looks at heartbeats and progress. */
  readonly watchdogIntervalMs?: number;
}

/** The key of a stage in the live tables. */
export function stageKey(jobId: string, stage: string): string {
  return `${jobId}/${stage}`;
}

/**
 * The live attempts (one per stage at most) and the sessions of their ranks.
 * An attempt is added once it is persisted as STARTING and removed when it
 * is released; a rank's session id is forgotten when its attempt ends, so a
 * late call with it is fenced.
 */
export class LiveAttempts {
  private readonly byStage = new Map<string, Attempt>();
  private readonly sessions = new Map<string, { attempt: Attempt; rank: RankRuntime }>();
  /** When a stage's last failure happened, until its next attempt starts (the recovery-time metric). */
  private readonly recovering = new Map<string, number>();
  /** Stages waiting for a cluster allocation (Slurm) before their attempt exists: how to give it up. */
  private readonly allocating = new Map<string, { controller: AbortController; done: Promise<unknown> }>();

  /** A stage starts waiting for its allocation; the signal aborts the wait (cancel, shutdown). */
  allocationStarted(jobId: string, stage: string, done: Promise<unknown>): AbortSignal {
    const controller = new AbortController();
    const key = stageKey(jobId, stage);
    this.allocating.set(key, { controller, done });
    void done.catch(() => undefined).finally(() => {
      if (this.allocating.get(key)?.controller === controller) this.allocating.delete(key);
    });
    return controller.signal;
  }

  /** True while the stage waits for (or starts on) its cluster allocation. */
  isAllocating(jobId: string, stage: string): boolean {
    return this.allocating.has(stageKey(jobId, stage));
  }

  /** Gives up a stage's allocation wait; resolves once its allocation is released (nothing left in the cluster's queue). */
  async abortAllocation(jobId: string, stage: string): Promise<void> {
    const w = this.allocating.get(stageKey(jobId, stage));
    if (!w) return;
    w.controller.abort();
    await w.done.catch(() => undefined);
  }

  /** Gives up every allocation wait (shutdown). */
  async abortAllocations(): Promise<void> {
    const all = [...this.allocating.values()];
    for (const w of all) w.controller.abort();
    await Promise.all(all.map((w) => w.done.catch(() => undefined)));
  }

  add(a: Attempt): void {
    this.byStage.set(stageKey(a.jobId, a.stage), a);
    for (const r of a.ranks) this.sessions.set(r.sessionId, { attempt: a, rank: r });
  }

  get(jobId: string, stage: string): Attempt | undefined {
    return this.byStage.get(stageKey(jobId, stage));
  }

  has(jobId: string, stage: string): boolean {
    return this.byStage.has(stageKey(jobId, stage));
  }

  values(): IterableIterator<Attempt> {
    return this.byStage.values();
  }

  session(id: string): { attempt: Attempt; rank: RankRuntime } | undefined {
    return this.sessions.get(id);
  }

  /** Fences the attempt's sessions: their ids are unknown from now on. */
  forgetSessions(a: Attempt): void {
    for (const r of a.ranks) this.sessions.delete(r.sessionId);
  }

  /** Removes the attempt if it is still the stage's live one. */
  remove(a: Attempt): void {
    const key = stageKey(a.jobId, a.stage);
    if (this.byStage.get(key) === a) this.byStage.delete(key);
  }

  markRecovering(jobId: string, stage: string, sinceMs: number): void {
    this.recovering.set(stageKey(jobId, stage), sinceMs);
  }

  /** The stage's recovery start, once: the new attempt takes it over. */
  takeRecovering(jobId: string, stage: string): number | null {
    const key = stageKey(jobId, stage);
    const since = this.recovering.get(key) ?? null;
    this.recovering.delete(key);
    return since;
  }
}

/** The shared context of the job machinery's rooms. */
export class JobContext {
  readonly ledger: JobLedger;
  readonly metrics: Metrics;
  readonly scheduler: Scheduler;
  readonly timers: Timers;
  readonly live = new LiveAttempts();
  private wakeHook: () => void = () => undefined;
  private stopHook: (jobId: string) => void = () => undefined;

  constructor(readonly deps: JobServiceDeps) {
    this.ledger = deps.ledger;
    this.metrics = deps.metrics;
    this.scheduler = deps.scheduler;
    this.timers = deps.timers ?? systemTimers;
  }

  now(): number {
    return this.deps.clock.now();
  }

  /** An interpreter with torch for local ranks and tools (worker.python, then --python, then the defaults). */
  resolvePython(explicit: string | null): Promise<string> {
    return (this.deps.resolvePython ?? resolvePython)(explicit);
  }

  /** A line of the orchestrator's own in the job's log. */
  log(jobId: string, stage: string, attempt: number, line: string): void {
    this.deps.logs.append(jobId, { tsMs: this.now(), stage, attempt, rank: -1, stream: "orchestrator", line });
  }

  /**
   * Set when the orchestrator shuts down: ranks killed on the way out must not
   * start endings that write to a store and a bus being closed (the next start
   * reconciles those attempts as lost).
   */
  closing = false;

  /** Runs work started by an event (a message, an exit, a timer); a bug in it is logged, never thrown into the event. */
  background(a: Attempt, work: () => Promise<void>): void {
    if (this.closing) return;
    work().catch((err: unknown) => {
      const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
      this.log(a.jobId, a.stage, a.attempt, `internal error: ${msg}`);
      process.stderr.write(`clipfleet: internal error in job ${a.jobId}: ${msg}\n`);
    });
  }

  /** Connects the two upward hooks (the facade does, once). */
  connect(hooks: { wake: () => void; requestStop: (jobId: string) => void }): void {
    this.wakeHook = hooks.wake;
    this.stopHook = hooks.requestStop;
  }

  /** Asks for a scheduling pass soon (slots were freed, a stage may start). Never runs one synchronously. */
  wake(): void {
    this.wakeHook();
  }

  /** Asks for a graceful stop of a job (checkpoint first), as `cancel --checkpoint` does. */
  requestStop(jobId: string): void {
    this.stopHook(jobId);
  }
}
