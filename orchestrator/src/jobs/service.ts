/**
 * The job service: the one place that drives jobs. It accepts specs, places
 * stages on nodes (through the scheduler), starts and watches attempts,
 * commits checkpoints, detects failures and decides restarts. The rpc layer
 * calls into it and nothing else changes a job.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  ACTIVE_STATES,
  type AttemptRecord,
  FailedPreconditionError,
  FencedError,
  InvalidArgumentError,
  isTerminal,
  newJobId,
  newToken,
  NotFoundError,
  RECORD_SCHEMA_VERSION,
  UnauthenticatedError,
  type CheckpointRecord,
  type Clock,
  type FailureRecord,
  type JobEvent,
  type JobRecord,
  type JobSpec,
  type NodeSpec,
  type AttemptOutcome,
  type ProgressRecord,
  type RankRecord,
  type StageRecord,
  type StageSpec,
} from "../domain/index.js";
import {
  checkpointDirName,
  commitManifest,
  readManifest,
  removeCheckpointDir,
  sha256Hex,
  retentionVictims,
  uncommittedDirs,
  verifyCheckpoint,
  type CheckpointManifest,
} from "../checkpoints/index.js";
import { Audit, DataPlan, peekCaptionSources, resolveManifest, trajectoryOf, type AuditReport, type Manifest } from "../data/index.js";
import type { EventBus } from "../events/index.js";
import type {
  Assignment,
  CheckpointRef,
  CheckpointWritten,
  PlanRequest,
  PlanResponse,
  RegisterRequest,
  StepReport,
  WorkerFailure,
  WorkerMessage,
} from "../gen/clipfleet/v1/worker.js";
import { resolvePython, type ExitInfo, type Launcher } from "../launcher/index.js";
import type { Metrics, MetricsSource } from "../metrics/index.js";
import type { Placement, PlacementRequest, Scheduler } from "../scheduler/index.js";
import { canonicalJson, parseSpec, type Presets } from "../spec/index.js";
import { type JobLedger } from "./ledger.js";
import { type JobLogs, type LogEntry } from "./logs.js";
import { appendStepPoint, readStepHistory, stepHistoryPath, stepPointOf, type StepPointRecord } from "./step-history.js";
import { decide, describeCause, hangBoundSeconds, type FailureCause } from "./policy.js";
import type { AttemptRuntime, RankRuntime, SessionHandle } from "./runtime.js";

/** Version of the orchestrator; a worker runtime of another version is refused at registration. */
export const ORCHESTRATOR_VERSION = "0.1.0";

/** What the service needs from the world; the composition root (main.ts) provides it. */
export interface JobServiceDeps {
  readonly ledger: JobLedger;
  readonly bus: EventBus;
  readonly scheduler: Scheduler;
  readonly launchers: { readonly local: Launcher; readonly ssh: Launcher | null };
  readonly metrics: Metrics;
  readonly logs: JobLogs;
  readonly clock: Clock;
  readonly presets: Presets;
  readonly stateDir: string;
  /** Directory holding clipfleet_worker on this machine (local launches, synthetic data). */
  readonly workerRuntimeDir: string;
  /** Interpreter preference from the CLI or CLIPFLEET_PYTHON (the spec's worker.python wins). */
  readonly python: string | null;
  /** Address workers dial (host:port of the worker gateway), known once the server listens. */
  readonly gatewayAddress: () => string;
  /** Generates a synthetic dataset (python -m clipfleet_worker synth). */
  readonly synthesize: (python: string, synth: NonNullable<StageSpec["data"]["synth"]>, log: (line: string) => void) => Promise<void>;
  /**
   * Embedded mode (`clipfleet run`/`resume` without a server): only jobs in
   * this set are scheduled; interrupted jobs outside it are marked FAILED
   * (resumable) instead of being restarted behind the user's back.
   */
  readonly scope: Set<string> | null;
  /** How often the watchdog looks at heartbeats and progress. */
  readonly watchdogIntervalMs?: number;
}

/** Input of submit: the spec as JSON plus where it came from. */
export interface SubmitInput {
  readonly specJson: string;
  readonly specPath: string;
  readonly baseDir: string;
}

const STEP_EVENT_INTERVAL_MS = 250;
const PROGRESS_PERSIST_INTERVAL_MS = 5000;
const STACK_DUMP_WAIT_MS = 1500;
/** How long a secondary failure signal waits for the primary one. */
const SETTLE_MS = 1500;
const EXIT_WAIT_MS = 15000;

export class JobService implements MetricsSource {
  private readonly ledger: JobLedger;
  private readonly attempts = new Map<string, AttemptRuntime>(); // key: job/stage
  private readonly sessions = new Map<string, { rt: AttemptRuntime; rank: RankRuntime }>();
  private readonly manifests = new Map<string, Promise<Manifest>>();
  private readonly queued = new Set<string>(); // job/stage keys in the scheduler queue
  private readonly synthRuns = new Map<string, Promise<void>>();
  private tickScheduled = false;
  private passRunning = false;
  private passAgain = false;
  private wakeTimer: NodeJS.Timeout | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private progressTimer: NodeJS.Timeout | null = null;
  private readonly dirtyProgress = new Set<string>();
  private closed = false;

  constructor(private readonly deps: JobServiceDeps) {
    this.ledger = deps.ledger;
  }

  // ---------------------------------------------------------------- start-up

  /**
   * Loads every job from the store and reconciles those that were active when
   * the previous orchestrator died: their workers are gone or fenced, so the
   * attempt is over; the stage restarts from its last committed checkpoint.
   */
  async start(opts: { reconcile: boolean } = { reconcile: true }): Promise<void> {
    const jobs = await this.ledger.load();
    if (!opts.reconcile) return;
    for (const job of jobs) {
      for (const stage of job.stages) {
        if (!ACTIVE_STATES.has(stage.state) && stage.state !== "RESTARTING") continue;
        const lost = stage.attempts.at(-1);
        const reason = `orchestrator restarted: attempt ${lost?.number ?? 0} lost`;
        const closeAttempt = (s: StageRecord): void => {
          const a = s.attempts.at(-1);
          if (a && a.outcome === "running") {
            a.outcome = "lost";
            a.reason = "orchestrator restarted";
            a.endedAtMs = this.now();
          }
          s.notBeforeMs = null;
        };
        if (job.cancelRequested) {
          await this.ledger.transition(job.id, stage.name, "CANCELLED", "cancelled (orchestrator restarted)", { update: closeAttempt });
        } else if (this.deps.scope && !this.deps.scope.has(job.id)) {
          await this.ledger.transition(
            job.id,
            stage.name,
            "FAILED",
            `interrupted: the orchestrator running it died; \`clipfleet resume ${job.id}\` continues from the last committed checkpoint`,
            { update: closeAttempt },
          );
        } else if (stage.state !== "RESTARTING") {
          await this.ledger.transition(job.id, stage.name, "RESTARTING", reason, { update: closeAttempt });
        } else {
          await this.ledger.update(job.id, (j) => {
            const s = j.stages.find((x) => x.name === stage.name);
            if (s) closeAttempt(s);
          });
        }
      }
    }
    this.watchdog = setInterval(() => this.watch(), this.deps.watchdogIntervalMs ?? 500);
    this.progressTimer = setInterval(() => void this.flushProgress(), PROGRESS_PERSIST_INTERVAL_MS);
    this.kick();
  }

  /** Stops timers and kills every process still running (the orchestrator is going away). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.watchdog) clearInterval(this.watchdog);
    if (this.progressTimer) clearInterval(this.progressTimer);
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    await this.flushProgress();
    await this.ledger.drain();
  }

  // ---------------------------------------------------------------- control API

  /** Validates a spec, checks its data, persists the job as PENDING. Nothing is persisted on bad input. */
  async submit(input: SubmitInput): Promise<JobRecord> {
    let raw: unknown;
    try {
      raw = JSON.parse(input.specJson);
    } catch (err) {
      throw new InvalidArgumentError(`${input.specPath || "spec"}: not valid JSON: ${(err as Error).message}`);
    }
    const where = input.specPath || "spec";
    const spec = parseSpec(raw, { specPath: where, baseDir: input.baseDir, presets: this.deps.presets });
    for (const st of spec.stages) {
      const why = this.deps.scheduler.unsatisfiable({ ...this.placementRequest("", st, 0, 0), allowShrink: true });
      if (why) throw new InvalidArgumentError(`${where}: ${stageField(st, "cluster.workers")}: ${why}`, "cluster.workers");
    }
    await this.preflight(spec, where);
    const now = this.now();
    const job = newJobRecord(spec, newJobId(new Date(now)), now);
    const event: JobEvent = {
      schemaVersion: 1,
      seq: 0,
      jobId: job.id,
      stage: "",
      type: "state",
      state: "PENDING",
      reason: "submitted",
      tsMs: now,
      attempt: 0,
      rank: -1,
      data: { name: spec.name, stages: spec.stages.map((s) => s.name) },
    };
    job.recentEvents.push(event);
    job.nextEventSeq = 1;
    await this.ledger.create(job, [event]);
    this.deps.scope?.add(job.id);
    this.log(job.id, "", 0, `job ${job.id} (${spec.name}) submitted with ${spec.stages.length} stage(s)`);
    this.kick();
    return job;
  }

  /** A job as persisted, with the live progress of its running attempts laid over it (not persisted). */
  get(id: string): JobRecord {
    const job = this.ledger.get(id);
    const live = job.stages.filter((s) => this.attempts.has(stageKey(id, s.name)));
    if (live.length === 0) return job;
    const view = structuredClone(job);
    for (const s of view.stages) {
      const rt = this.attempts.get(stageKey(id, s.name));
      if (!rt) continue;
      this.applyProgress(s, rt);
      const a = s.attempts.find((x) => x.number === rt.attempt);
      for (const r of a?.ranks ?? []) {
        const lr = rt.ranks[r.rank];
        if (lr) Object.assign(r, rankRecordFields(lr));
      }
    }
    return view;
  }

  list(): JobRecord[] {
    return this.ledger.list();
  }

  /**
   * Cancels a job: queued stages end at once; running ones get a stop command
   * (after a checkpoint when asked), then SIGTERM after the grace period, then
   * SIGKILL. Resolves when no process of the job is alive.
   */
  async cancel(id: string, opts: { checkpoint: boolean; graceSeconds: number | null }): Promise<JobRecord> {
    const job = this.ledger.get(id);
    if (isTerminal(job.state)) return job;
    await this.ledger.update(id, (j) => {
      j.cancelRequested = { checkpoint: opts.checkpoint, atMs: this.now() };
    });
    const waits: Promise<void>[] = [];
    for (const stage of this.ledger.get(id).stages) {
      const key = stageKey(id, stage.name);
      if (stage.state === "PENDING" || stage.state === "RESTARTING") {
        this.unqueue(key);
        await this.ledger.transition(id, stage.name, "CANCELLED", "cancelled by user", { unlessTerminal: true });
        continue;
      }
      const rt = this.attempts.get(key);
      if (rt && (stage.state === "STARTING" || stage.state === "RUNNING")) {
        waits.push(this.stopAttempt(rt, { checkpoint: opts.checkpoint && stage.state === "RUNNING", reason: "cancelled by user", graceSeconds: opts.graceSeconds }));
      } else if (rt) {
        waits.push(rt.allExited);
      }
    }
    await Promise.all(waits);
    return this.ledger.get(id);
  }

  /**
   * Resumes a FAILED or CANCELLED job from its last committed checkpoints:
   * finished stages are kept, failed and cancelled ones go back to PENDING
   * with a fresh restart budget.
   */
  async resume(id: string): Promise<JobRecord> {
    const job = this.ledger.get(id);
    this.deps.scope?.add(id);
    if (job.state === "SUCCEEDED") throw new FailedPreconditionError(`job ${id} already SUCCEEDED; nothing to resume`);
    if (!isTerminal(job.state)) {
      if (job.stages.some((s) => this.attempts.has(stageKey(id, s.name)) || s.state === "PENDING" || s.state === "RESTARTING")) {
        this.kick();
        return job;
      }
      throw new FailedPreconditionError(`job ${id} is ${job.state}; only FAILED or CANCELLED jobs can be resumed`);
    }
    await this.ledger.update(id, (j) => {
      j.cancelRequested = null;
    });
    for (const stage of job.stages) {
      if (stage.state !== "FAILED" && stage.state !== "CANCELLED") continue;
      await this.ledger.transition(id, stage.name, "PENDING", "resumed by user", {
        update: (s) => {
          s.restarts = 0;
          s.error = "";
          s.notBeforeMs = null;
        },
      });
    }
    this.kick();
    return this.ledger.get(id);
  }

  /** Asks every rank of the job's running stages to checkpoint soon; returns the step. */
  requestCheckpoint(id: string): { stage: string; step: number } {
    const job = this.ledger.get(id);
    for (const stage of job.stages) {
      const rt = this.attempts.get(stageKey(id, stage.name));
      if (!rt || !rt.running || rt.ending) continue;
      const step = this.nextSafeStep(rt);
      rt.checkpointAt = step;
      for (const r of rt.ranks) r.session?.send({ body: { $case: "checkpointAt", value: { step } } });
      this.log(id, stage.name, rt.attempt, `checkpoint requested at step ${step}`);
      return { stage: stage.name, step };
    }
    throw new FailedPreconditionError(`job ${id} has no running stage to checkpoint (state ${job.state})`);
  }

  /** Log lines of a job, then (when following) new ones until the job ends. */
  readLogs(id: string, filter: (e: LogEntry) => boolean): Promise<LogEntry[]> {
    this.ledger.get(id);
    return this.deps.logs.read(id, filter);
  }

  followLogs(id: string, listener: (e: LogEntry) => void): () => void {
    return this.deps.logs.follow(id, listener);
  }

  /** Subscribe to a job's events (all of them, as published). */
  subscribe(id: string, handler: (e: JobEvent) => void): () => void {
    this.ledger.get(id);
    const unsub = this.deps.bus.subscribe(id, handler);
    return () => void unsub();
  }

  /** Cordons (schedulable false) or uncordons a node; a cordoned node gets no new ranks. */
  setNodeSchedulable(name: string, schedulable: boolean): ReturnType<Scheduler["nodes"]>[number] {
    if (!this.deps.scheduler.hasNode(name)) throw new NotFoundError(`node ${name} is not in the inventory`);
    this.deps.scheduler.setCordoned(name, !schedulable);
    if (schedulable) this.kick();
    const status = this.nodes().find((n) => n.node.name === name);
    if (!status) throw new NotFoundError(`node ${name} is not in the inventory`);
    return status;
  }

  /** Nodes with their free slots and quarantine state. */
  nodes(): ReturnType<Scheduler["nodes"]> {
    return this.deps.scheduler.nodes(this.now());
  }

  /**
   * The data audit of a job's stages with data.audit: per epoch, samples
   * consumed once, twice or never, counting only the steps of the final
   * trajectory (steps redone after a restart replace the lost ones).
   */
  async audit(id: string): Promise<{ jobId: string; stages: (AuditReport & { stage: string })[] }> {
    const job = this.ledger.get(id);
    const stages: (AuditReport & { stage: string })[] = [];
    for (const stage of job.stages) {
      const spec = stageSpecOf(job, stage.name);
      if (!spec.data.audit || spec.task === "eval" || spec.data.train.length === 0) continue;
      const manifest = await this.manifest(spec.data.train, spec.data.fraction);
      const audit = new Audit(new DataPlan({ manifest, seed: spec.seed, batchSize: spec.train.batch_size, shuffle: spec.data.shuffle, fraction: spec.data.fraction }));
      const file = this.auditPath(id, stage.name);
      if (existsSync(file)) {
        for (const line of readFileSync(file, "utf8").split("\n")) {
          if (!line) continue;
          try {
            const r = JSON.parse(line) as { a: number; s: number; ids: number[] };
            audit.record(r.a, r.s, r.ids);
          } catch {
            // a line torn by a crash mid-write
          }
        }
      }
      stages.push({ stage: stage.name, ...audit.finalize(trajectoryOf(stage.attempts)) });
    }
    if (stages.length === 0) throw new FailedPreconditionError(`job ${id} has no stage with data.audit: true`);
    return { jobId: id, stages };
  }

  private auditPath(jobId: string, stage: string): string {
    const dir = join(this.deps.stateDir, "jobs", jobId, "audit");
    mkdirSync(dir, { recursive: true });
    return join(dir, `${stage}.jsonl`);
  }

  /** Rank 0's step reports of a job's stages (every attempt), and the attempts that produced them. */
  stepHistory(id: string, stage: string, maxPoints: number): { points: StepPointRecord[]; attempts: { stage: string; attempt: AttemptRecord }[] } {
    const job = this.ledger.get(id);
    if (stage) stageSpecOf(job, stage);
    const stages = job.stages.filter((s) => !stage || s.name === stage);
    return {
      points: stages.flatMap((s) => readStepHistory(stepHistoryPath(this.deps.stateDir, id, s.name), maxPoints)),
      attempts: stages.flatMap((s) => s.attempts.map((attempt) => ({ stage: s.name, attempt }))),
    };
  }

  // ---------------------------------------------------------------- metrics view

  jobsByState(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const j of this.ledger.list()) out[j.state] = (out[j.state] ?? 0) + 1;
    return out;
  }

  jobs(): ReturnType<MetricsSource["jobs"]> {
    return this.ledger.list().map((j) => ({ job: j.id, state: j.state, updatedAtMs: j.updatedAtMs }));
  }

  ranks(): ReturnType<MetricsSource["ranks"]> {
    const now = this.now();
    const out: ReturnType<MetricsSource["ranks"]> = [];
    for (const rt of this.attempts.values()) {
      for (const r of rt.ranks) {
        out.push({
          job: rt.jobId,
          stage: rt.stage,
          rank: r.rank,
          node: r.node.name,
          state: rankState(r),
          heartbeatAgeSeconds: r.registered ? (now - r.lastHeartbeatMs) / 1000 : null,
        });
      }
    }
    return out;
  }

  newestCheckpoints(): ReturnType<MetricsSource["newestCheckpoints"]> {
    const out: ReturnType<MetricsSource["newestCheckpoints"]> = [];
    for (const job of this.ledger.list()) {
      if (isTerminal(job.state)) continue;
      for (const s of job.stages) {
        const c = newestCommitted(s);
        if (c) out.push({ job: job.id, stage: s.name, committedAtMs: c.committedAtMs, sizeBytes: c.sizeBytes });
      }
    }
    return out;
  }

  now(): number {
    return this.deps.clock.now();
  }

  /** Live rank details of a stage's current attempt (for status). */
  liveRanks(jobId: string, stage: string): RankRuntime[] {
    return this.attempts.get(stageKey(jobId, stage))?.ranks ?? [];
  }

  // ---------------------------------------------------------------- worker gateway

  /** A rank's first call: authenticate, fence, and hand out its assignment. */
  register(token: string | null, req: RegisterRequest): Assignment {
    const job = this.authenticate(req.jobId, token);
    const rt = this.attempts.get(stageKey(job.id, req.stage));
    if (!rt || rt.attempt !== req.attempt || rt.ending) {
      throw new FencedError(`attempt ${req.attempt} of ${job.id}/${req.stage} is over`);
    }
    const rank = rt.ranks[req.rank];
    if (!rank) throw new InvalidArgumentError(`rank ${req.rank} out of range (world size ${rt.worldSize})`);
    if (rank.registered) throw new FencedError(`rank ${req.rank} of attempt ${req.attempt} already registered`);
    if (req.runtimeVersion !== ORCHESTRATOR_VERSION) {
      const msg = `worker runtime ${req.runtimeVersion || "(unknown)"} on ${req.hostname} does not match orchestrator ${ORCHESTRATOR_VERSION}`;
      this.background(rt, () => this.failAttempt(rt, { kind: "fatal", message: msg }));
      throw new FailedPreconditionError(msg);
    }
    rank.registered = true;
    rank.hostname = req.hostname;
    rank.pid = req.pid;
    rank.lastHeartbeatMs = this.now();
    rank.lastProgressMs = this.now();
    rank.phase = "registered";
    this.log(job.id, rt.stage, rt.attempt, `rank ${req.rank} registered from ${req.hostname} pid ${req.pid} (python ${req.pythonVersion}, torch ${req.torchVersion}, ${req.cudaDevices} CUDA devices)`);
    return this.assignment(rt, rank);
  }

  /** Binds a session stream to its rank; returns the handlers of the stream's messages. */
  openSession(
    token: string | null,
    handle: SessionHandle,
  ): { onMessage: (msg: WorkerMessage) => void; onClose: (why: string) => void } {
    let bound: { rt: AttemptRuntime; rank: RankRuntime } | null = null;
    return {
      onMessage: (msg) => {
        const body = msg.body;
        if (!body) return;
        if (!bound) {
          if (body.$case !== "hello") throw new InvalidArgumentError("the first message of a session must be hello");
          const s = this.sessions.get(body.value.sessionId);
          if (!s) throw new FencedError(`unknown or expired session ${body.value.sessionId}`);
          this.authenticate(s.rt.jobId, token);
          if (s.rt.ending) throw new FencedError(`attempt ${s.rt.attempt} is over`);
          bound = s;
          s.rank.session = handle;
          s.rank.lastHeartbeatMs = this.now();
          this.onSessionOpen(s.rt);
          return;
        }
        this.onWorkerMessage(bound.rt, bound.rank, body);
      },
      onClose: (why) => {
        if (!bound) return;
        const { rt, rank } = bound;
        if (rank.session === handle) rank.session = null;
        if (rt.ending || rank.finished || rt.stopAt) return;
        this.log(rt.jobId, rt.stage, rt.attempt, `rank ${rank.rank} session closed: ${why}`);
        this.fail(rt, rank.failure ?? { kind: "session", rank: rank.rank });
      },
    };
  }

  /** The samples a rank reads in a range of steps. */
  plan(token: string | null, req: PlanRequest): PlanResponse {
    const s = this.sessions.get(req.sessionId);
    if (!s) throw new FencedError(`unknown or expired session ${req.sessionId}`);
    this.authenticate(s.rt.jobId, token);
    const { rt, rank } = s;
    if (!rt.plan) throw new FailedPreconditionError(`stage ${rt.stage} has no training data plan`);
    const end = Math.min(rt.totalSteps, req.fromStep + Math.min(req.count, 1024));
    const steps = [];
    for (let t = req.fromStep; t < end; t++) {
      const sl = rt.plan.slice(t, rank.rank, rt.worldSize);
      steps.push({ step: t, epoch: sl.epoch, sampleInEpoch: sl.sampleInEpoch, shards: sl.shards, indices: sl.indices, sampleIds: sl.sampleIds });
    }
    return { steps };
  }

  private authenticate(jobId: string, token: string | null): JobRecord {
    if (!token) throw new UnauthenticatedError("missing job token (authorization metadata)");
    let job: JobRecord;
    try {
      job = this.ledger.get(jobId);
    } catch {
      throw new UnauthenticatedError("invalid job token");
    }
    const a = Buffer.from(job.token);
    const b = Buffer.from(token);
    if (a.length !== b.length || !timingSafeEqual(a, b)) throw new UnauthenticatedError("invalid job token");
    return job;
  }

  private assignment(rt: AttemptRuntime, rank: RankRuntime): Assignment {
    const stageSpecJson = JSON.stringify(rt.spec);
    return {
      sessionId: rank.sessionId,
      rank: rank.rank,
      worldSize: rt.worldSize,
      localRank: rank.localRank,
      localWorldSize: rank.localWorldSize,
      groupRank: rank.groupRank,
      masterAddr: rt.masterAddr,
      masterPort: rt.masterPort,
      backend: backendOf(rt.spec, rank.node),
      configJson: stageSpecJson,
      configSha256: sha256Hex(Buffer.from(canonicalJson(rt.spec), "utf8")),
      resume: rt.resume,
      cursor: rt.plan ? toProtoCursor(rt.plan.cursorAt(rt.startStep)) : undefined,
      startStep: rt.startStep,
      totalSteps: rt.totalSteps,
      stepsPerEpoch: rt.stepsPerEpoch,
      globalBatch: rt.globalBatch,
      perRankBatch: Math.floor(rt.globalBatch / rt.worldSize),
      heartbeatIntervalSeconds: Math.max(0.2, Math.min(2, rt.spec.failure.heartbeat_timeout / 5)),
      fenceSeconds: rt.spec.failure.fence_seconds,
      trainShards: rt.manifest?.shards.map((s) => ({ url: s.url, samples: s.samples })) ?? [],
      valShards: rt.valManifest?.shards.map((s) => ({ url: s.url, samples: s.samples })) ?? [],
      checkpointRoot: rt.checkpointRoot,
      attempt: rt.attempt,
      stage: rt.stage,
      init: rt.init,
      runDir: rt.runDir,
    };
  }

  // ---------------------------------------------------------------- worker messages

  private onSessionOpen(rt: AttemptRuntime): void {
    if (rt.running || rt.ending) return;
    if (!rt.ranks.every((r) => r.session !== null)) return;
    rt.running = true;
    const now = this.now();
    for (const r of rt.ranks) r.lastProgressMs = now;
    void this.ledger
      .transition(rt.jobId, rt.stage, "RUNNING", `all ${rt.worldSize} ranks connected`, { attempt: rt.attempt })
      .catch((err: unknown) => this.internalError(rt, err));
  }

  private onWorkerMessage(rt: AttemptRuntime, rank: RankRuntime, body: NonNullable<WorkerMessage["body"]>): void {
    const now = this.now();
    rank.lastHeartbeatMs = now;
    switch (body.$case) {
      case "hello":
        return;
      case "heartbeat": {
        rank.phase = phaseName(body.value.phase);
        if (body.value.gpuMemoryBytes > 0) {
          this.deps.metrics.gpuUtil.set({ job: rt.jobId, stage: rt.stage, rank: String(rank.rank) }, body.value.gpuUtilization);
          this.deps.metrics.gpuMemory.set({ job: rt.jobId, stage: rt.stage, rank: String(rank.rank) }, body.value.gpuMemoryBytes);
        }
        return;
      }
      case "step":
        this.onStep(rt, rank, body.value, now);
        return;
      case "checkpoint":
        this.onCheckpointWritten(rt, rank, body.value);
        return;
      case "eval": {
        const metrics = body.value.metrics;
        for (const [k, v] of Object.entries(metrics)) this.deps.metrics.evalResult.set({ job: rt.jobId, stage: rt.stage, metric: k }, v);
        void this.ledger
          .note(rt.jobId, rt.stage, "eval", `evaluation at step ${body.value.step}`, {
            attempt: rt.attempt,
            rank: rank.rank,
            data: { step: body.value.step, split: body.value.split, metrics },
            update: (s) => Object.assign(s.metrics, metrics),
          })
          .catch((err: unknown) => this.internalError(rt, err));
        return;
      }
      case "failure":
        this.onFailureReport(rt, rank, body.value);
        return;
      case "finished": {
        rank.finished = body.value;
        rank.phase = "finished";
        if (rt.ranks.every((r) => r.finished)) this.background(rt, () => this.succeed(rt));
        return;
      }
      case "stopRequested": {
        this.log(rt.jobId, rt.stage, rt.attempt, `rank ${rank.rank} asks to stop: ${body.value.reason}`);
        void this.cancel(rt.jobId, { checkpoint: true, graceSeconds: null }).catch((err: unknown) => this.internalError(rt, err));
        return;
      }
    }
  }

  private onStep(rt: AttemptRuntime, rank: RankRuntime, rep: StepReport, now: number): void {
    const m = this.deps.metrics;
    const labels = { job: rt.jobId, stage: rt.stage };
    rank.step = rep.step;
    rank.lastProgressMs = now;
    rank.phase = "training";
    rank.stepSeconds.push(rep.stepSeconds);
    if (rank.stepSeconds.length > 200) rank.stepSeconds.shift();
    m.stepDuration.observe({ ...labels, rank: String(rank.rank) }, rep.stepSeconds);
    if (rep.samples.length > 0) {
      appendFileSync(this.auditPath(rt.jobId, rt.stage), JSON.stringify({ a: rt.attempt, s: rep.step - 1, ids: rep.samples }) + "\n");
    }
    m.dataWait.inc({ ...labels, rank: String(rank.rank) }, rep.dataWaitSeconds);
    if (rep.skippedSamples > 0) {
      m.skipped.inc(labels, rep.skippedSamples);
      rt.skippedSamples += rep.skippedSamples;
    }
    if (rank.rank !== 0) return;

    // Rank 0 speaks for the stage: the loss is all-reduced, so every rank has the same.
    if (rt.recoveringSince !== null) {
      m.recovery.observe(labels, (now - rt.recoveringSince) / 1000);
      rt.recoveringSince = null;
    }
    if (rep.nanSkipped) m.nanSkipped.inc(labels);
    m.step.set(labels, rep.step);
    m.loss.set(labels, rep.loss);
    m.lr.set(labels, rep.lr);
    m.temperature.set(labels, rep.temperature);
    m.samplesPerSecond.set(labels, rep.samplesPerSecond);
    m.samplesSeen.inc(labels, rt.globalBatch);
    rt.samplesSeen += rt.globalBatch;
    rt.lastReport = rep;
    rt.firstLoss ??= rep.loss;
    appendStepPoint(stepHistoryPath(this.deps.stateDir, rt.jobId, rt.stage), stepPointOf(rt.stage, rt.attempt, rep, now));
    this.dirtyProgress.add(stageKey(rt.jobId, rt.stage));
    if (now - rt.lastStepEventMs >= STEP_EVENT_INTERVAL_MS || rep.step >= rt.totalSteps) {
      rt.lastStepEventMs = now;
      const job = this.ledger.get(rt.jobId);
      void this.ledger.publishTransient({
        schemaVersion: 1,
        seq: 0,
        jobId: rt.jobId,
        stage: rt.stage,
        type: "step",
        state: job.stages.find((s) => s.name === rt.stage)?.state ?? job.state,
        reason: "",
        tsMs: now,
        attempt: rt.attempt,
        rank: 0,
        data: this.progressData(rt, rep),
      });
    }
    this.maybeTimedCheckpoint(rt, now);
  }

  private progressData(rt: AttemptRuntime, rep: StepReport): Record<string, unknown> {
    const remaining = Math.max(0, rt.totalSteps - rep.step);
    return {
      step: rep.step,
      totalSteps: rt.totalSteps,
      epoch: rep.epoch,
      loss: rep.loss,
      lr: rep.lr,
      temperature: rep.temperature,
      samplesPerSecond: rep.samplesPerSecond,
      stepSeconds: rep.stepSeconds,
      etaSeconds: remaining * rep.stepSeconds,
      worldSize: rt.worldSize,
    };
  }

  /** every_minutes cadence: the orchestrator picks a step all ranks will reach and asks them to save there. */
  private maybeTimedCheckpoint(rt: AttemptRuntime, now: number): void {
    const minutes = rt.spec.checkpoint.every_minutes;
    if (!minutes || rt.checkpointAt !== null || rt.stopAt) return;
    if (now - rt.lastCommitMs < minutes * 60_000) return;
    const step = this.nextSafeStep(rt);
    if (step >= rt.totalSteps) return;
    rt.checkpointAt = step;
    for (const r of rt.ranks) r.session?.send({ body: { $case: "checkpointAt", value: { step } } });
  }

  /** A step every rank can still reach: ranks are in lockstep within one step of each other. */
  private nextSafeStep(rt: AttemptRuntime): number {
    const maxStep = Math.max(rt.startStep, ...rt.ranks.map((r) => r.step));
    return Math.min(rt.totalSteps, maxStep + 2);
  }

  private onCheckpointWritten(rt: AttemptRuntime, rank: RankRuntime, rep: CheckpointWritten): void {
    let reports = rt.pendingCheckpoints.get(rep.step);
    if (!reports) {
      reports = new Map();
      rt.pendingCheckpoints.set(rep.step, reports);
    }
    reports.set(rank.rank, rep);
    this.deps.metrics.checkpointSave.observe({ job: rt.jobId, stage: rt.stage }, rep.saveSeconds);
    if (reports.size < rt.worldSize) return;
    rt.pendingCheckpoints.delete(rep.step);
    void this.commit(rt, rep.step, [...reports.values()]).catch((err: unknown) => this.internalError(rt, err));
  }

  /** Phase two: every rank has reported its files; write the manifest and record the checkpoint. */
  private async commit(rt: AttemptRuntime, step: number, reports: CheckpointWritten[]): Promise<void> {
    const expectedDir = join(rt.checkpointRoot, checkpointDirName(step, rt.attempt));
    const dirs = new Set(reports.map((r) => r.dir));
    if (dirs.size !== 1 || !dirs.has(expectedDir)) {
      throw new Error(`ranks reported checkpoint dirs ${[...dirs].join(", ")} for step ${step}, expected ${expectedDir}`);
    }
    const files = reports.flatMap((r) => r.files.map((f) => ({ path: f.path, sha256: f.sha256, size: f.size })));
    const cursor = reports[0]?.cursor ?? { epoch: 0, sampleInEpoch: 0 };
    const now = this.now();
    const manifest: CheckpointManifest = {
      schemaVersion: 1,
      jobId: rt.jobId,
      stage: rt.stage,
      task: rt.spec.task,
      step,
      attempt: rt.attempt,
      worldSize: rt.worldSize,
      configSha256: sha256Hex(Buffer.from(canonicalJson(rt.spec), "utf8")),
      cursor: { epoch: cursor.epoch, sampleInEpoch: cursor.sampleInEpoch },
      imageTower: rt.spec.model.image,
      files,
      committedAtMs: now,
    };
    const manifestSha256 = await commitManifest(expectedDir, manifest);
    const record: CheckpointRecord = {
      stage: rt.stage,
      step,
      dir: expectedDir,
      attempt: rt.attempt,
      status: "committed",
      reason: "",
      committedAtMs: now,
      files,
      sizeBytes: files.reduce((a, f) => a + f.size, 0),
      manifestSha256,
      cursor: manifest.cursor,
    };
    rt.lastCommitMs = now;
    rt.lastCommittedStep = Math.max(rt.lastCommittedStep, step);
    if (rt.checkpointAt !== null && step >= rt.checkpointAt) rt.checkpointAt = null;
    this.deps.metrics.checkpointsCommitted.inc({ job: rt.jobId, stage: rt.stage });
    const job = await this.ledger.note(rt.jobId, rt.stage, "checkpoint", `checkpoint committed at step ${step}`, {
      attempt: rt.attempt,
      data: { step, dir: expectedDir, sizeBytes: record.sizeBytes, manifestSha256 },
      update: (s) => {
        s.checkpoints.push(record);
        this.applyProgress(s, rt);
      },
    });
    for (const r of rt.ranks) r.session?.send({ body: { $case: "committed", value: { step, dir: expectedDir } } });
    await this.retain(job, rt.stage, rt.spec);
  }

  /** Retention: delete superseded committed checkpoints beyond keep_last (never the newest). */
  private async retain(job: JobRecord, stageName: string, spec: StageSpec): Promise<void> {
    const stage = job.stages.find((s) => s.name === stageName);
    if (!stage) return;
    const victims = retentionVictims(stage.checkpoints, spec.checkpoint);
    if (victims.length === 0) return;
    for (const v of victims) removeCheckpointDir(v.dir);
    const dirs = new Set(victims.map((v) => v.dir));
    await this.ledger.update(job.id, (j) => {
      const s = j.stages.find((x) => x.name === stageName);
      for (const c of s?.checkpoints ?? []) {
        if (dirs.has(c.dir) && c.status === "committed") {
          c.status = "deleted";
          c.reason = "retention";
        }
      }
    });
  }

  private onFailureReport(rt: AttemptRuntime, rank: RankRuntime, f: WorkerFailure): void {
    const record: FailureRecord = {
      attempt: rt.attempt,
      step: f.step,
      rank: rank.rank,
      kind: f.kind,
      message: f.message,
      fingerprint: f.fingerprint,
      traceback: f.traceback,
      atMs: this.now(),
    };
    this.log(rt.jobId, rt.stage, rt.attempt, `rank ${rank.rank} reported ${f.kind}: ${f.message}`);
    const cause: FailureCause =
      f.kind === "data" || f.kind === "config"
        ? { kind: "fatal", message: `rank ${rank.rank}: ${f.message}` }
        : f.kind === "checkpoint_corrupt"
          ? { kind: "checkpoint", message: `rank ${rank.rank}: ${f.message}` }
          : f.kind === "collective"
            ? { kind: "collective", rank: rank.rank, message: f.message }
            : { kind: "exception", rank: rank.rank, failure: record };
    // The report comes before the rank closes its session and exits: it is the cause to act on.
    rank.failure = cause;
    this.fail(rt, cause);
  }

  /**
   * Acts on a failure signal. A secondary one (a collective that broke because a
   * peer died, a dropped session) waits a moment for the primary cause, which
   * usually arrives right after (the peer's exit): the restart is the same, but
   * the reason and the node blamed must be the right ones.
   */
  private fail(rt: AttemptRuntime, cause: FailureCause, failedAtMs?: number): void {
    if (rt.ending) return;
    if (!isSecondary(cause)) {
      this.background(rt, () => this.failAttempt(rt, cause, failedAtMs));
      return;
    }
    if (rt.secondary) return;
    rt.secondary = cause;
    setTimeout(() => {
      if (!rt.ending) this.background(rt, () => this.failAttempt(rt, cause, failedAtMs));
    }, SETTLE_MS);
  }

  private onExit(rt: AttemptRuntime, rank: RankRuntime, exit: ExitInfo): void {
    rank.exit = exit;
    rank.phase = "exited";
    const how = exit.lost ? `was lost: ${exit.lost}` : exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.code}`;
    this.log(rt.jobId, rt.stage, rt.attempt, `rank ${rank.rank} (pid ${rank.proc?.pid ?? "?"}) ${how}`);
    if (rt.ending) return;
    if (exit.code === 0 && rank.finished) return;
    if (rt.stopAt) return; // a stop in progress: stopAttempt waits for every exit
    // A lost SSH connection is the node's failure (it counts towards quarantine), not the rank's.
    const cause: FailureCause = exit.lost ? { kind: "node", rank: rank.rank, node: rank.node.name, message: exit.lost } : { kind: "exit", rank: rank.rank, code: exit.code, signal: exit.signal };
    // Killed by a signal or lost with its node: the primary cause, whatever the rank said before.
    this.fail(rt, exit.lost || exit.signal ? cause : (rank.failure ?? cause));
  }

  // ---------------------------------------------------------------- watchdog

  /** Heartbeats, hangs and start-up time, checked on a timer. */
  private watch(): void {
    const now = this.now();
    for (const rt of this.attempts.values()) {
      if (rt.ending || rt.stopAt) continue;
      const f = rt.spec.failure;
      if (!rt.running) {
        const missing = rt.ranks.filter((r) => !r.session).map((r) => r.rank);
        if (missing.length > 0 && now - rt.startedMs > f.startup_timeout * 1000) {
          this.background(rt, () => this.failAttempt(rt, { kind: "startup", missing, seconds: f.startup_timeout }));
        }
        continue;
      }
      for (const r of rt.ranks) {
        if (r.finished) continue;
        const silent = (now - r.lastHeartbeatMs) / 1000;
        if (silent > f.heartbeat_timeout) {
          this.background(rt, () => this.failAttempt(rt, { kind: "heartbeat", rank: r.rank, silentSeconds: silent }, r.lastHeartbeatMs));
          break;
        }
        if (r.phase === "training" || r.phase === "registered") {
          const stalled = (now - r.lastProgressMs) / 1000;
          const bound = hangBoundSeconds(f, r.stepSeconds);
          if (stalled > bound) {
            this.background(rt, () => this.failAttempt(rt, { kind: "hang", rank: r.rank, stalledSeconds: stalled, boundSeconds: bound }, r.lastProgressMs));
            break;
          }
        }
      }
    }
  }

  // ---------------------------------------------------------------- ending attempts

  /**
   * An attempt failed: dump stacks when it hung, tear the gang down (nothing
   * survives; later calls of its ranks are fenced), then restart with backoff
   * or fail, per the stage's policy.
   */
  private async failAttempt(rt: AttemptRuntime, cause: FailureCause, failedAtMs?: number): Promise<void> {
    if (rt.ending) return;
    rt.ending = true;
    const detectedAt = this.now();
    const labels = { job: rt.jobId, stage: rt.stage };
    const reason = describeCause(cause);
    this.deps.metrics.detect.observe(labels, Math.max(0, (detectedAt - (failedAtMs ?? detectedAt)) / 1000));
    const stageState = this.ledger.get(rt.jobId).stages.find((s) => s.name === rt.stage)?.state ?? "RUNNING";
    this.deps.metrics.failures.inc({ ...labels, state: stageState });
    this.log(rt.jobId, rt.stage, rt.attempt, `attempt ${rt.attempt} failed: ${reason}`);
    if (cause.kind === "hang" || cause.kind === "heartbeat") await this.dumpStacks(rt);
    await this.teardown(rt, "attempt failed: " + reason);

    if (cause.kind === "exception") {
      await this.ledger.note(rt.jobId, rt.stage, "failure", `rank ${cause.rank}: ${cause.failure.message}`, {
        attempt: rt.attempt,
        rank: cause.rank,
        data: { step: cause.failure.step, kind: cause.failure.kind, fingerprint: cause.failure.fingerprint },
        update: (s) => {
          s.failures.push(cause.failure);
          if (s.failures.length > 50) s.failures.splice(0, s.failures.length - 50);
        },
      });
    }
    const job = this.ledger.get(rt.jobId);
    const stage = job.stages.find((s) => s.name === rt.stage);
    if (!stage) return;
    const lastStep = Math.max(rt.startStep, ...rt.ranks.map((r) => r.step));
    const closeAttempt = (s: StageRecord, outcome: "failed" | "cancelled"): void => this.closeAttempt(s, rt, outcome, reason, lastStep);
    if (job.cancelRequested) {
      await this.ledger.transition(rt.jobId, rt.stage, "CANCELLED", "cancelled by user", { attempt: rt.attempt, unlessTerminal: true, update: (s) => closeAttempt(s, "cancelled") });
    } else {
      const quarantine = { after: rt.spec.failure.quarantine_after, seconds: rt.spec.failure.quarantine_seconds, windowSeconds: rt.spec.failure.quarantine_seconds };
      const failedNode = failureNode(rt, cause);
      if (failedNode && this.deps.scheduler.recordFailure(failedNode, this.now(), quarantine)) {
        this.log(rt.jobId, rt.stage, rt.attempt, `node ${failedNode} quarantined for ${quarantine.seconds} s after ${quarantine.after} failures`);
      }
      const decision = decide(stage, rt.spec.failure, cause);
      if (decision.action === "fail") {
        await this.ledger.transition(rt.jobId, rt.stage, "FAILED", decision.reason, {
          attempt: rt.attempt,
          data: { cause: cause.kind },
          update: (s) => {
            closeAttempt(s, "failed");
            s.error = decision.error;
          },
        });
      } else {
        const committed = Math.max(rt.lastCommittedStep, newestCommitted(stage)?.step ?? 0);
        const lost = Math.max(0, lastStep - committed);
        this.deps.metrics.restarts.inc(labels);
        this.deps.metrics.stepsLost.inc(labels, lost);
        await this.ledger.transition(rt.jobId, rt.stage, "RESTARTING", `${decision.reason}; restarting in ${(decision.delayMs / 1000).toFixed(1)} s from step ${committed}`, {
          attempt: rt.attempt,
          data: { cause: cause.kind, stepsLost: lost, resumeStep: committed, delayMs: decision.delayMs, detectedAtMs: detectedAt },
          update: (s) => {
            closeAttempt(s, "failed");
            s.restarts += 1;
            s.notBeforeMs = this.now() + decision.delayMs;
          },
        });
        this.recoveringSince.set(stageKey(rt.jobId, rt.stage), failedAtMs ?? detectedAt);
      }
    }
    this.release(rt);
    this.kick();
  }

  private readonly recoveringSince = new Map<string, number>();

  /** Before killing a hung gang: every rank prints the Python stack of each thread (faulthandler on SIGUSR1). */
  private async dumpStacks(rt: AttemptRuntime): Promise<void> {
    this.log(rt.jobId, rt.stage, rt.attempt, "asking every rank for a stack dump (SIGUSR1) before teardown");
    await Promise.all(
      rt.ranks.map(async (r) => {
        if (!r.proc || r.exit) return;
        await r.proc.signal("SIGCONT").catch(() => undefined);
        await r.proc.signal("SIGUSR1").catch(() => undefined);
      }),
    );
    await new Promise((res) => setTimeout(res, STACK_DUMP_WAIT_MS));
  }

  /** Signals every rank process of the attempt that is still running (its whole process group). */
  private async signalRanks(rt: AttemptRuntime, sig: NodeJS.Signals): Promise<void> {
    await Promise.all(rt.ranks.map((r) => (r.proc && !r.exit ? r.proc.signal(sig).catch(() => undefined) : Promise.resolve())));
  }

  /** Kill every process of the attempt and wait until they are gone. */
  private async teardown(rt: AttemptRuntime, why: string): Promise<void> {
    for (const r of rt.ranks) {
      r.session?.send({ body: { $case: "fenced", value: { reason: why } } });
      this.sessions.delete(r.sessionId);
    }
    await this.signalRanks(rt, "SIGKILL");
    await withTimeout(rt.allExited, EXIT_WAIT_MS);
    for (const r of rt.ranks) r.session?.end();
  }

  /**
   * Graceful stop: ranks stop after an agreed step (checkpointing first when
   * asked); SIGTERM after the grace period, SIGKILL 5 s later.
   */
  private async stopAttempt(rt: AttemptRuntime, opts: { checkpoint: boolean; reason: string; graceSeconds: number | null }): Promise<void> {
    if (rt.ending) {
      await rt.allExited;
      return;
    }
    const grace = (opts.graceSeconds ?? rt.spec.failure.grace_seconds) * 1000;
    const step = this.nextSafeStep(rt);
    rt.stopAt = { step, checkpoint: opts.checkpoint };
    // A gang that has not formed has nothing to save: the attempt ends now, so a rank that
    // registers late is fenced instead of moving the stage from STOPPING to RUNNING.
    const formed = rt.running;
    if (!formed) rt.ending = true;
    await this.ledger.transition(rt.jobId, rt.stage, "STOPPING", `${opts.reason}${opts.checkpoint && formed ? `; checkpoint at step ${step}` : ""}`, { attempt: rt.attempt });
    if (!formed) {
      await this.teardown(rt, opts.reason);
    } else {
      for (const r of rt.ranks) {
        r.session?.send({ body: { $case: "stopAt", value: { step: opts.checkpoint ? step : 0, checkpoint: opts.checkpoint, reason: opts.reason } } });
      }
    }
    const exitedInTime = formed ? await withTimeout(rt.allExited, grace) : true;
    if (!exitedInTime) {
      this.log(rt.jobId, rt.stage, rt.attempt, `ranks still running ${grace / 1000} s after the stop command: SIGTERM`);
      await this.signalRanks(rt, "SIGTERM");
      if (!(await withTimeout(rt.allExited, 5000))) {
        this.log(rt.jobId, rt.stage, rt.attempt, "ranks still running 5 s after SIGTERM: SIGKILL");
        await this.signalRanks(rt, "SIGKILL");
        await withTimeout(rt.allExited, EXIT_WAIT_MS);
      }
    }
    rt.ending = true;
    for (const r of rt.ranks) this.sessions.delete(r.sessionId);
    const lastStep = Math.max(rt.startStep, ...rt.ranks.map((r) => r.step));
    const saved = opts.checkpoint && rt.lastCommittedStep >= step;
    await this.ledger.transition(rt.jobId, rt.stage, "CANCELLED", saved ? `${opts.reason}; checkpoint committed at step ${rt.lastCommittedStep}` : opts.reason, {
      unlessTerminal: true,
      attempt: rt.attempt,
      update: (s) => this.closeAttempt(s, rt, "cancelled", opts.reason, lastStep),
    });
    this.release(rt);
    this.kick();
  }

  /** Records how an attempt ended on its stage record (inside a ledger update), with the ranks' last facts and the progress. */
  private closeAttempt(s: StageRecord, rt: AttemptRuntime, outcome: AttemptOutcome, reason: string, lastStep: number): void {
    const a = s.attempts.find((x) => x.number === rt.attempt);
    if (a) {
      a.outcome = outcome;
      a.reason = reason;
      a.endedAtMs = this.now();
      a.lastStep = lastStep;
      for (const r of a.ranks) {
        const live = rt.ranks[r.rank];
        if (live) Object.assign(r, rankRecordFields(live));
      }
    }
    this.applyProgress(s, rt);
  }

  /** Every rank finished: wait for clean exits, record results, free the slots, start what was waiting. */
  private async succeed(rt: AttemptRuntime): Promise<void> {
    if (rt.ending) return;
    rt.ending = true;
    const clean = await withTimeout(rt.allExited, rt.spec.failure.grace_seconds * 1000);
    if (!clean) await this.teardown(rt, "finished; stragglers killed");
    for (const r of rt.ranks) this.sessions.delete(r.sessionId);
    const fin = rt.ranks[0]?.finished;
    const metrics = { ...(fin?.metrics ?? {}) };
    await this.ledger.transition(rt.jobId, rt.stage, "SUCCEEDED", `finished ${fin?.step ?? rt.totalSteps} steps`, {
      attempt: rt.attempt,
      data: { finalParamsSha256: fin?.finalParamsSha256 ?? "", metrics },
      update: (s) => {
        this.closeAttempt(s, rt, "succeeded", "finished", fin?.step ?? rt.totalSteps);
        Object.assign(s.metrics, metrics);
        s.finalParamsSha256 = fin?.finalParamsSha256 ?? "";
      },
    });
    this.deps.metrics.jobFinished(rt.jobId, this.now());
    this.release(rt);
    this.kick();
  }

  private release(rt: AttemptRuntime): void {
    const key = stageKey(rt.jobId, rt.stage);
    if (this.attempts.get(key) === rt) this.attempts.delete(key);
    this.deps.scheduler.release(rt.jobId, rt.stage);
    const job = this.ledger.get(rt.jobId);
    if (isTerminal(job.state)) {
      this.deps.metrics.jobFinished(rt.jobId, this.now());
    }
  }

  /** Runs work started by an event (a message, an exit, a timer); a bug in it is logged and fails the attempt. */
  private background(rt: AttemptRuntime, work: () => Promise<void>): void {
    work().catch((err: unknown) => {
      const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
      this.log(rt.jobId, rt.stage, rt.attempt, `internal error: ${msg}`);
      process.stderr.write(`clipfleet: internal error in job ${rt.jobId}: ${msg}\n`);
    });
  }

  private internalError(rt: AttemptRuntime, err: unknown): void {
    const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
    this.log(rt.jobId, rt.stage, rt.attempt, `internal error: ${msg}`);
    this.background(rt, () => this.failAttempt(rt, { kind: "orchestrator", message: `internal error: ${err instanceof Error ? err.message : String(err)}` }));
  }

  // ---------------------------------------------------------------- scheduling

  /** Runs a scheduling pass soon (coalescing bursts of triggers). */
  kick(): void {
    if (this.tickScheduled || this.closed) return;
    this.tickScheduled = true;
    setImmediate(() => {
      this.tickScheduled = false;
      // One pass at a time: a pass awaits launches, and a second one meanwhile would see
      // a stage that is neither queued nor started and queue it twice. Run again after.
      if (this.passRunning) {
        this.passAgain = true;
        return;
      }
      this.passRunning = true;
      void this.schedulePass()
        .catch((err: unknown) => {
          process.stderr.write(`clipfleet: scheduling pass failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
        })
        .finally(() => {
          this.passRunning = false;
          if (this.passAgain) {
            this.passAgain = false;
            this.kick();
          }
        });
    });
  }

  private async schedulePass(): Promise<void> {
    const now = this.now();
    let wakeAt = Infinity;
    for (const job of this.ledger.list()) {
      if (isTerminal(job.state) || job.cancelRequested) continue;
      if (this.deps.scope && !this.deps.scope.has(job.id)) continue;
      for (const stage of job.stages) {
        const key = stageKey(job.id, stage.name);
        if (this.queued.has(key) || this.attempts.has(key)) continue;
        const spec = stageSpecOf(job, stage.name);
        if (stage.state === "PENDING") {
          if (!needsMet(job, spec)) continue;
        } else if (stage.state === "RESTARTING") {
          if (stage.notBeforeMs !== null && stage.notBeforeMs > now) {
            wakeAt = Math.min(wakeAt, stage.notBeforeMs);
            continue;
          }
        } else continue;
        this.deps.scheduler.enqueue({
          ...this.placementRequest(job.id, spec, job.priority, now),
          // After a failure the stage may continue with fewer ranks if its node is gone (global batch unchanged).
          allowShrink: stage.state === "RESTARTING" && spec.cluster.min_workers < spec.cluster.workers,
        });
        this.queued.add(key);
      }
    }
    const { placements, waiting } = this.deps.scheduler.schedule(now);
    for (const p of placements) {
      this.queued.delete(stageKey(p.jobId, p.stage));
      await this.startAttempt(p).catch(async (err: unknown) => {
        this.deps.scheduler.release(p.jobId, p.stage);
        await this.failBeforeStart(p.jobId, p.stage, err);
      });
    }
    for (const w of waiting) {
      const job = this.ledger.has(w.jobId) ? this.ledger.get(w.jobId) : null;
      if (job && !isTerminal(job.state) && job.pendingReason !== w.reason) {
        await this.ledger.update(w.jobId, (j) => {
          // A cancel may have ended the job since this pass looked: a finished job waits for nothing.
          if (!isTerminal(j.state)) j.pendingReason = w.reason;
        });
      }
    }
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    this.wakeTimer = null;
    if (wakeAt !== Infinity && !this.closed) {
      this.wakeTimer = setTimeout(() => this.kick(), Math.max(0, wakeAt - this.now()) + 5);
    }
  }

  private placementRequest(jobId: string, spec: StageSpec, priority: number, now: number): PlacementRequest {
    return {
      jobId,
      stage: spec.name,
      workers: spec.cluster.workers,
      minWorkers: spec.cluster.min_workers,
      allowedWorldSizes: allowedWorldSizes(spec),
      gpusPerWorker: spec.cluster.gpus_per_worker,
      nodeSelector: spec.cluster.node_selector,
      priority,
      enqueuedAtMs: now,
    };
  }

  private unqueue(key: string): void {
    if (!this.queued.delete(key)) return;
    const [jobId, stage] = splitKey(key);
    this.deps.scheduler.release(jobId, stage);
  }

  private async failBeforeStart(jobId: string, stage: string, err: unknown): Promise<void> {
    const msg = err instanceof Error ? err.message : String(err);
    this.log(jobId, stage, 0, `could not start: ${msg}`);
    const s = this.ledger.get(jobId).stages.find((x) => x.name === stage);
    if (!s) return;
    if (s.state === "PENDING" || s.state === "RESTARTING") {
      await this.ledger.transition(jobId, stage, "FAILED", `could not start: ${msg}`);
    }
  }

  // ---------------------------------------------------------------- starting attempts

  /** Launch a placed gang: choose the checkpoint to resume, persist STARTING, start one process per rank. */
  private async startAttempt(p: Placement): Promise<void> {
    const job = this.ledger.get(p.jobId);
    const spec = stageSpecOf(job, p.stage);
    const stageRec = job.stages.find((s) => s.name === p.stage);
    if (!stageRec) throw new NotFoundError(`stage ${p.stage}`);
    const attempt = job.nextAttempt;
    const worldSize = p.ranks.length;
    const python = await this.pythonFor(spec, p.ranks[0]?.node ?? null);

    const manifest = spec.data.train.length > 0 ? await this.manifest(spec.data.train, spec.data.fraction) : null;
    const valManifest = spec.data.val.length > 0 ? await this.manifest(spec.data.val, 1, "data.val") : null;
    const globalBatch = spec.train.batch_size;
    const plan =
      manifest && spec.task !== "eval"
        ? new DataPlan({ manifest, seed: spec.seed, batchSize: globalBatch, shuffle: spec.data.shuffle, fraction: spec.data.fraction })
        : null;
    const stepsPerEpoch = plan?.stepsPerEpoch ?? 0;
    const totalSteps = spec.task === "eval" ? 0 : (spec.train.steps ?? Math.floor((spec.train.epochs ?? 1) * stepsPerEpoch));

    const resume = await this.pickResume(job, stageRec);
    const init = spec.init.kind === "checkpoint" ? await this.resolveInit(job, spec) : undefined;
    const checkpointRoot = join(spec.checkpoint.dir ?? join(this.deps.stateDir, "checkpoints"), job.id, p.stage);
    const runDir = join(this.deps.stateDir, "jobs", job.id, "stages", p.stage);
    mkdirSync(checkpointRoot, { recursive: true });
    mkdirSync(runDir, { recursive: true });
    // Directories of earlier attempts without a committed manifest are garbage.
    for (const dir of uncommittedDirs(checkpointRoot, new Set())) removeCheckpointDir(dir);

    const rank0 = p.ranks[0];
    if (!rank0) throw new Error("empty placement");
    const masterLauncher = this.launcherFor(rank0.node);
    const masterPort = await masterLauncher.freePort(rank0.node);
    const startStep = resume ? Number(resume.step) : 0;
    const now = this.now();

    let resolveAll: () => void = () => undefined;
    const allExited = new Promise<void>((r) => (resolveAll = r));
    const ranks: RankRuntime[] = p.ranks.map((pr, i) => ({
      rank: i,
      node: pr.node,
      launcher: this.launcherFor(pr.node),
      slot: pr.slot,
      localRank: pr.localRank,
      localWorldSize: pr.localWorldSize,
      groupRank: pr.groupRank,
      device: pr.device,
      sessionId: randomBytes(12).toString("hex"),
      proc: null,
      session: null,
      registered: false,
      finished: null,
      exit: null,
      lastHeartbeatMs: now,
      lastProgressMs: now,
      step: startStep,
      phase: "launching",
      stepSeconds: [],
      hostname: pr.node.host,
      pid: null,
      failure: null,
    }));
    const rt: AttemptRuntime = {
      jobId: job.id,
      stage: p.stage,
      attempt,
      spec,
      ranks,
      worldSize,
      globalBatch,
      plan,
      manifest,
      valManifest,
      totalSteps,
      stepsPerEpoch,
      startStep,
      masterAddr: rank0.node.address,
      masterPort,
      checkpointRoot,
      runDir,
      startedMs: now,
      resume,
      init,
      python,
      pendingCheckpoints: new Map(),
      ending: false,
      running: false,
      lastCommitMs: now,
      lastCommittedStep: startStep,
      stopAt: null,
      checkpointAt: null,
      recoveringSince: this.recoveringSince.get(stageKey(job.id, p.stage)) ?? null,
      secondary: null,
      lastStepEventMs: 0,
      lastReport: null,
      firstLoss: null,
      skippedSamples: 0,
      skippedBefore: stageRec.progress.skippedSamples,
      samplesSeen: startStep * globalBatch,
      allExited,
    };
    this.recoveringSince.delete(stageKey(job.id, p.stage));

    // Persist before acting: the attempt exists in the store before any process does.
    // Attempt numbers count across the job's stages (they fence workers); in a pipeline a stage's
    // first start may be "attempt 5", so say which start of this stage it is.
    const ordinal = stageRec.attempts.length + 1;
    const label = ordinal === attempt ? `attempt ${attempt}` : `attempt ${attempt} (${ordinal === 1 ? "first start" : `start ${ordinal}`} of this stage)`;
    await this.ledger.transition(job.id, p.stage, "STARTING", `${label}: ${worldSize} rank(s) on ${describePlacement(p)}${resume ? `, resuming from step ${startStep}` : ""}`, {
      attempt,
      data: { worldSize, resumeStep: startStep, nodes: p.ranks.map((r) => r.node.name) },
      update: (s) => {
        s.attempts.push({
          number: attempt,
          startedAtMs: now,
          endedAtMs: null,
          outcome: "running",
          reason: "",
          worldSize,
          resumedFromStep: startStep,
          lastStep: startStep,
          masterAddr: rt.masterAddr,
          masterPort,
          ranks: ranks.map((r) => ({ rank: r.rank, node: r.node.name, host: r.node.host, slot: r.slot, ...rankRecordFields(r) })),
        });
        s.notBeforeMs = null;
        s.progress.totalSteps = totalSteps;
        s.progress.worldSize = worldSize;
      },
    });
    await this.ledger.update(job.id, (j) => {
      j.nextAttempt = attempt + 1;
      j.pendingReason = "";
    });
    this.attempts.set(stageKey(job.id, p.stage), rt);
    for (const r of ranks) this.sessions.set(r.sessionId, { rt, rank: r });
    this.deps.metrics.attemptStarted(job.id, p.stage, totalSteps);

    let exits = 0;
    const onRankExit = (): void => {
      exits += 1;
      if (exits === ranks.length) resolveAll();
    };
    for (const r of ranks) {
      try {
        r.proc = await r.launcher.launch({
          jobId: job.id,
          stage: p.stage,
          attempt,
          rank: r.rank,
          node: r.node,
          python: r.node.launcher === "local" ? python : (r.node.python ?? "python3"),
          workdir: r.node.launcher === "local" ? this.deps.workerRuntimeDir : (r.node.workdir ?? "."),
          env: this.rankEnv(rt, r),
          secrets: { CLIPFLEET_TOKEN: job.token },
          onOutput: (stream, line) => this.deps.logs.append(job.id, { tsMs: this.now(), stage: p.stage, attempt, rank: r.rank, stream, line }),
          onExit: (e) => {
            this.onExit(rt, r, e);
            onRankExit();
          },
        });
        r.pid = r.proc.pid;
      } catch (err) {
        onRankExit();
        r.exit = { code: null, signal: null };
        const msg = err instanceof Error ? err.message : String(err);
        this.background(rt, () => this.failAttempt(rt, r.node.launcher === "ssh" ? { kind: "node", rank: r.rank, node: r.node.name, message: msg } : { kind: "fatal", message: `could not start rank ${r.rank}: ${msg}` }));
        return;
      }
    }
    await this.ledger.update(job.id, (j) => {
      const a = j.stages.find((s) => s.name === p.stage)?.attempts.find((x) => x.number === attempt);
      for (const rr of a?.ranks ?? []) rr.pid = ranks[rr.rank]?.pid ?? null;
    });
  }

  /** torchrun's environment plus how to reach the orchestrator. */
  private rankEnv(rt: AttemptRuntime, r: RankRuntime): Record<string, string> {
    const env: Record<string, string> = {
      ...rt.spec.worker.env,
      CLIPFLEET_ADDR: this.deps.gatewayAddress(),
      CLIPFLEET_JOB_ID: rt.jobId,
      CLIPFLEET_STAGE: rt.stage,
      CLIPFLEET_ATTEMPT: String(rt.attempt),
      CLIPFLEET_RANK: String(r.rank),
      RANK: String(r.rank),
      LOCAL_RANK: String(r.localRank),
      WORLD_SIZE: String(rt.worldSize),
      LOCAL_WORLD_SIZE: String(r.localWorldSize),
      GROUP_RANK: String(r.groupRank),
      MASTER_ADDR: rt.masterAddr,
      MASTER_PORT: String(rt.masterPort),
      PYTHONUNBUFFERED: "1",
    };
    if (r.device !== null) env.CUDA_VISIBLE_DEVICES = String(r.device);
    else env.CUDA_VISIBLE_DEVICES = "";
    // A CPU slot is a core: a rank gets one intra-op thread per slot it holds, so ranks of
    // different jobs sharing a node do not oversubscribe it. GPU ranks get a few for the host side.
    const threads = rt.spec.train.threads ?? (r.node.gpus > 0 ? 4 : 1);
    env.OMP_NUM_THREADS = String(threads);
    env.CLIPFLEET_THREADS = String(threads);
    return env;
  }

  private launcherFor(node: NodeSpec): Launcher {
    if (node.launcher === "local") return this.deps.launchers.local;
    if (!this.deps.launchers.ssh) throw new InvalidArgumentError(`node ${node.name} needs the SSH launcher, which is not configured`);
    return this.deps.launchers.ssh;
  }

  private async pythonFor(spec: StageSpec, node: NodeSpec | null): Promise<string> {
    if (node && node.launcher === "ssh") return spec.worker.python ?? node.python ?? "python3";
    return resolvePython(spec.worker.python ?? this.deps.python ?? node?.python ?? null);
  }

  /**
   * The newest committed checkpoint of the stage that is intact. A corrupt
   * one is marked (the event says why) and the previous one is tried.
   */
  private async pickResume(job: JobRecord, stage: StageRecord): Promise<CheckpointRef | undefined> {
    const candidates = stage.checkpoints.filter((c) => c.status === "committed").sort((a, b) => b.step - a.step);
    for (const c of candidates) {
      const problem = await verifyCheckpoint(c);
      if (problem === null) return toCheckpointRef(c);
      await this.ledger.note(job.id, stage.name, "checkpoint", `checkpoint at step ${c.step} is corrupt (${problem}); using the previous committed one`, {
        data: { step: c.step, dir: c.dir, problem },
        update: (s) => {
          const rec = s.checkpoints.find((x) => x.dir === c.dir);
          if (rec) {
            rec.status = "corrupt";
            rec.reason = problem;
          }
        },
      });
    }
    return undefined;
  }

  /** The committed checkpoint a fine-tune or eval stage starts from. */
  private async resolveInit(job: JobRecord | null, spec: StageSpec): Promise<CheckpointRef> {
    if (spec.init.kind !== "checkpoint") throw new Error("unreachable");
    const ref = spec.init.ref;
    let record: CheckpointRecord | undefined;
    const own = job?.stages.find((s) => s.name === ref);
    if (own) {
      record = newestCommitted(own);
      if (!record) throw new InvalidArgumentError(`init.checkpoint: stage ${ref} has no committed checkpoint`);
    } else {
      const [jobId, stageName] = ref.includes(":") ? ref.split(":", 2) : [ref, undefined];
      if (jobId && this.ledger.has(jobId)) {
        const other = this.ledger.get(jobId);
        const st = stageName ? other.stages.find((s) => s.name === stageName) : [...other.stages].reverse().find((s) => newestCommitted(s));
        record = st ? newestCommitted(st) : undefined;
        if (!record) throw new InvalidArgumentError(`init.checkpoint: job ${ref} has no committed checkpoint`);
      } else {
        const m = readManifest(ref);
        if (!m) throw new InvalidArgumentError(`init.checkpoint: ${ref} is neither a job, a stage of this job, nor a committed checkpoint directory`);
        record = {
          stage: m.stage,
          step: m.step,
          dir: ref,
          attempt: m.attempt,
          status: "committed",
          reason: "",
          committedAtMs: m.committedAtMs,
          files: m.files,
          sizeBytes: m.files.reduce((a, f) => a + f.size, 0),
          manifestSha256: "",
          cursor: m.cursor,
        };
      }
    }
    const problem = await verifyCheckpoint(record);
    if (problem) throw new InvalidArgumentError(`init.checkpoint: ${record.dir} is corrupt: ${problem}`);
    const manifest = readManifest(record.dir);
    if (manifest && !sameImageTower(manifest.imageTower, spec.model.image)) {
      throw new InvalidArgumentError(
        `init.checkpoint: ${record.dir} holds image tower ${towerName(manifest.imageTower)}, the stage needs ${towerName(spec.model.image)}`,
      );
    }
    return toCheckpointRef(record);
  }

  // ---------------------------------------------------------------- data

  /** Before a job is accepted: generate synthetic data when asked, read manifests, check caption sources. */
  private async preflight(spec: JobSpec, where: string): Promise<void> {
    const localNodes = this.deps.scheduler.nodes().filter((n) => n.node.launcher === "local");
    for (const st of spec.stages) {
      // Fail before anything runs when this machine has no interpreter with torch for local ranks.
      if (localNodes.length > 0) await resolvePython(st.worker.python ?? this.deps.python);
      // A checkpoint from outside this pipeline must exist, be committed and intact, and fit the image tower.
      if (st.init.kind === "checkpoint" && !spec.stages.some((x) => x.name === (st.init as { ref: string }).ref)) {
        await this.resolveInit(null, st);
      }
      if (st.data.synth) await this.ensureSynth(st);
      // Manifest errors start with the field they name (data.train, data.val).
      const inStage = (err: unknown): never => {
        throw new InvalidArgumentError(`${where}: ${stageField(st, "")}${(err as Error).message}`);
      };
      if (st.data.train.length > 0) {
        const m = await this.manifest(st.data.train, st.data.fraction).catch(inStage);
        if (st.task === "pretrain") {
          const sources = await peekCaptionSources(m);
          for (const source of Object.keys(st.data.captions)) {
            if ((st.data.captions[source] ?? 0) > 0 && !sources.has(source)) {
              throw new InvalidArgumentError(
                `${where}: ${stageField(st, "data.captions")}: no sample has a "${source}" caption (the shards have: ${[...sources].sort().join(", ") || "none"})`,
                "data.captions",
              );
            }
          }
        }
      }
      if (st.data.val.length > 0) {
        await this.manifest(st.data.val, 1, "data.val").catch(inStage);
      }
    }
  }

  private async ensureSynth(st: StageSpec): Promise<void> {
    const synth = st.data.synth;
    if (!synth) return;
    if (existsSync(join(synth.out, "sizes.json"))) return;
    let run = this.synthRuns.get(synth.out);
    if (!run) {
      const python = await resolvePython(st.worker.python ?? this.deps.python);
      run = this.deps.synthesize(python, synth, (line) => process.stderr.write(`synth: ${line}\n`));
      this.synthRuns.set(synth.out, run);
      run.finally(() => this.synthRuns.delete(synth.out)).catch(() => undefined);
    }
    await run;
  }

  /** The (cached) manifest of a shard list; `field` names the spec field in error messages. */
  private manifest(patterns: readonly string[], fraction: number, field = "data.train"): Promise<Manifest> {
    const key = JSON.stringify([patterns, fraction, field]);
    let m = this.manifests.get(key);
    if (!m) {
      m = resolveManifest([...patterns], { fraction, field });
      this.manifests.set(key, m);
      m.catch(() => this.manifests.delete(key));
    }
    return m;
  }

  // ---------------------------------------------------------------- progress

  private applyProgress(s: StageRecord, rt: AttemptRuntime): void {
    const rep = rt.lastReport;
    const p: ProgressRecord = s.progress;
    p.totalSteps = rt.totalSteps;
    p.worldSize = rt.worldSize;
    if (!rep) return;
    p.step = rep.step;
    p.epoch = rep.epoch;
    p.sampleInEpoch = rep.sampleInEpoch;
    p.samplesSeen = rep.step * rt.globalBatch;
    p.loss = rep.loss;
    if (p.firstLoss === null) p.firstLoss = rt.firstLoss;
    p.lr = rep.lr;
    p.temperature = rep.temperature;
    p.samplesPerSecond = rep.samplesPerSecond;
    p.stepSeconds = rep.stepSeconds;
    p.skippedSamples = rt.skippedBefore + rt.skippedSamples;
    const a = s.attempts.find((x) => x.number === rt.attempt);
    if (a) a.lastStep = rep.step;
  }

  /** Persists the progress of stages that reported steps since the last flush. */
  private async flushProgress(): Promise<void> {
    const keys = [...this.dirtyProgress];
    this.dirtyProgress.clear();
    for (const key of keys) {
      const rt = this.attempts.get(key);
      if (!rt || rt.ending) continue;
      await this.ledger
        .update(rt.jobId, (j) => {
          const s = j.stages.find((x) => x.name === rt.stage);
          if (s) {
            this.applyProgress(s, rt);
            const a = s.attempts.find((x) => x.number === rt.attempt);
            for (const r of a?.ranks ?? []) {
              const live = rt.ranks[r.rank];
              if (live) Object.assign(r, rankRecordFields(live));
            }
          }
        })
        .catch(() => undefined);
    }
  }

  private log(jobId: string, stage: string, attempt: number, line: string): void {
    this.deps.logs.append(jobId, { tsMs: this.now(), stage, attempt, rank: -1, stream: "orchestrator", line });
  }
}

// ---------------------------------------------------------------- helpers

/** Signals that are consequences of another failure more often than causes. */
function isSecondary(cause: FailureCause): boolean {
  return cause.kind === "collective" || cause.kind === "session";
}

/** The node to blame for a failure (its failures count towards quarantine), if one is clear. */
function failureNode(rt: AttemptRuntime, cause: FailureCause): string | null {
  switch (cause.kind) {
    case "node":
      return cause.node;
    case "exit":
    case "session":
    case "heartbeat":
      return rt.ranks[cause.rank]?.node.name ?? null;
    default:
      return null;
  }
}

function stageKey(jobId: string, stage: string): string {
  return `${jobId}/${stage}`;
}

function splitKey(key: string): [string, string] {
  const i = key.indexOf("/");
  return [key.slice(0, i), key.slice(i + 1)];
}

function stageSpecOf(job: JobRecord, stage: string): StageSpec {
  const s = job.spec.stages.find((x) => x.name === stage);
  if (!s) throw new NotFoundError(`job ${job.id} has no stage "${stage}"`);
  return s;
}

/** A spec field as users write it: `cluster.workers` for a single-stage spec, `stages.NAME.cluster.workers` in a pipeline ("" gives the prefix). */
function stageField(st: StageSpec, field: string): string {
  const prefix = st.name === "main" ? "" : `stages.${st.name}.`;
  return field ? `${prefix}${field}` : prefix;
}

function needsMet(job: JobRecord, spec: StageSpec): boolean {
  return spec.needs.every((n) => job.stages.find((s) => s.name === n)?.state === "SUCCEEDED");
}

/** World sizes a stage may run at: from workers down to min_workers, those dividing the global batch. */
export function allowedWorldSizes(spec: StageSpec): number[] {
  const out: number[] = [];
  for (let w = spec.cluster.workers; w >= spec.cluster.min_workers; w--) {
    if (spec.train.batch_size % w === 0) out.push(w);
  }
  return out;
}

function newestCommitted(s: StageRecord): CheckpointRecord | undefined {
  return s.checkpoints.filter((c) => c.status === "committed").sort((a, b) => b.step - a.step)[0];
}

function toCheckpointRef(c: CheckpointRecord): CheckpointRef {
  return { dir: c.dir, step: c.step, files: c.files.map((f) => ({ path: f.path, sha256: f.sha256, size: f.size })), manifestSha256: c.manifestSha256 };
}

function toProtoCursor(c: { epoch: number; sampleInEpoch: number }): { epoch: number; sampleInEpoch: number } {
  return { epoch: c.epoch, sampleInEpoch: c.sampleInEpoch };
}

function backendOf(spec: StageSpec, node: NodeSpec): string {
  if (spec.cluster.backend !== "auto") return spec.cluster.backend;
  return node.gpus > 0 && spec.cluster.gpus_per_worker > 0 ? "nccl" : "gloo";
}

function rankState(r: RankRuntime): RankRecord["state"] | "finished" {
  if (r.exit) return "exited";
  if (r.finished) return "finished";
  if (r.session) return "running";
  if (r.registered) return "registered";
  return "launching";
}

function rankRecordFields(r: RankRuntime): {
  pid: number | null;
  state: RankRecord["state"];
  step: number;
  lastHeartbeatMs: number | null;
  phase: string;
  exitCode: number | null;
  signal: string | null;
} {
  const st = rankState(r);
  return {
    pid: r.pid,
    state: st === "finished" ? "exited" : st,
    step: r.step,
    lastHeartbeatMs: r.registered ? r.lastHeartbeatMs : null,
    phase: r.phase,
    exitCode: r.exit?.code ?? null,
    signal: r.exit?.signal ?? null,
  };
}

const PHASES = ["unspecified", "starting", "rendezvous", "loading", "training", "checkpointing", "evaluating", "stopping"];

function phaseName(p: number): string {
  return PHASES[p] ?? "unknown";
}

function describePlacement(p: Placement): string {
  const byNode = new Map<string, number>();
  for (const r of p.ranks) byNode.set(r.node.name, (byNode.get(r.node.name) ?? 0) + 1);
  return [...byNode].map(([n, c]) => `${n}x${c}`).join(", ");
}

function sameImageTower(a: StageSpec["model"]["image"], b: StageSpec["model"]["image"]): boolean {
  const keys: (keyof StageSpec["model"]["image"])[] = ["family", "width", "depth", "heads", "patch", "layers", "widths", "mlp_ratio"];
  return keys.every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));
}

function towerName(t: StageSpec["model"]["image"]): string {
  const shape = t.family === "vit" ? `vit width ${t.width} depth ${t.depth} patch ${t.patch}` : `mci layers [${t.layers.join(",")}] widths [${t.widths.join(",")}]`;
  return t.preset ? `${t.preset} (${shape})` : shape;
}

function withTimeout(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    void p.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** A fresh job record for a validated spec. */
export function newJobRecord(spec: JobSpec, id: string, nowMs: number): JobRecord {
  return {
    schemaVersion: RECORD_SCHEMA_VERSION,
    id,
    name: spec.name,
    state: "PENDING",
    reason: "submitted",
    pendingReason: "",
    createdAtMs: nowMs,
    updatedAtMs: nowMs,
    priority: spec.priority,
    spec,
    token: newToken(),
    nextAttempt: 1,
    stages: spec.stages.map((s) => ({
      name: s.name,
      state: "PENDING",
      reason: s.needs.length > 0 ? `waiting for ${s.needs.join(", ")}` : "waiting for slots",
      startedAtMs: null,
      endedAtMs: null,
      attempts: [],
      restarts: 0,
      checkpoints: [],
      progress: {
        step: 0,
        totalSteps: 0,
        epoch: 0,
        sampleInEpoch: 0,
        samplesSeen: 0,
        loss: null,
        firstLoss: null,
        lr: 0,
        temperature: 0,
        samplesPerSecond: 0,
        stepSeconds: 0,
        skippedSamples: 0,
        worldSize: 0,
      },
      failures: [],
      metrics: {},
      finalParamsSha256: "",
      error: "",
      notBeforeMs: null,
    })),
    nextEventSeq: 0,
    recentEvents: [],
    cancelRequested: null,
  };
}
