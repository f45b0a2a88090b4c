/**
 * The job service: the facade of the job machinery and the one place that
 * wires its rooms. It serves the control API (submit, cancel, resume, ...),
 * the worker gateway (through gateway.ts), the metrics' scrape-time view,
 * and the start-up reconciliation. The rooms, each owning its own state:
 *
 *   admission   submit's validation and data checks
 *   dispatch    the scheduling pass and its queue
 *   launch      building and starting an attempt
 *   attempt     one live attempt's lifecycle and supervisor
 *   gateway     register, sessions, plans
 *   recaption   task recaption's shard leases and their commits
 *   progress    step reports to metrics, history and the store
 *   commit      checkpoint reports to committed checkpoints
 *   ending      failure, stop and success of an attempt
 *
 * The rpc layer calls into this class and nothing else changes a job.
 */
import {
  ACTIVE_STATES,
  checkJobRef,
  resolveJobRef,
  type JobRefResolution,
  FailedPreconditionError,
  isTerminal,
  NotFoundError,
  type AttemptRecord,
  type CheckpointRecord,
  type JobEvent,
  type JobRecord,
  type JobSpec,
  type SlurmNode,
  type StageRecord,
  type TimerHandle,
} from "../domain/index.js";
import type { Assignment, LeaseReply, LeaseRequest, PlanRequest, PlanResponse, RegisterRequest, ShardsRequest, ShardsResponse, WorkerMessage } from "../gen/clipfleet/v1/worker.js";
import type { MetricsSource } from "../metrics/index.js";
import type { Scheduler } from "../scheduler/index.js";
import { Admission, type AdmissionCheck, type SubmitInput } from "./admission.js";
import type { AttemptHooks } from "./attempt.js";
import { dropFinishedSpares } from "./spares.js";
import { CheckpointRefs } from "./checkpoint-refs.js";
import { CheckpointCommit } from "./commit.js";
import { JobContext, type JobServiceDeps } from "./context.js";
import { Datasets } from "./datasets.js";
import { Deletion, type DeleteResult } from "./deletion.js";
import { Dispatcher } from "./dispatch.js";
import { Ending } from "./ending.js";
import { Gateway } from "./gateway.js";
import { Launch } from "./launch.js";
import type { LogEntry } from "./logs.js";
import { Progress } from "./progress.js";
import { Recaption } from "./recaption.js";
import { interruptedView, newestCommitted, stageSpecOf } from "./records.js";
import { rankState, type SessionHandle } from "./runtime.js";
import { readStepHistory, stepHistoryPath, type StepPointRecord } from "./step-history.js";

const PROGRESS_PERSIST_INTERVAL_MS = 5000;

export class JobService implements MetricsSource {
  private readonly ctx: JobContext;
  private readonly datasets: Datasets;
  private readonly progress: Progress;
  private readonly ending: Ending;
  private readonly gateway: Gateway;
  private readonly recaption: Recaption;
  private readonly dispatcher: Dispatcher;
  private readonly admission: Admission;
  private readonly refs: CheckpointRefs;
  private readonly deletion: Deletion;
  private timers: TimerHandle[] = [];
  /** Set by start({ orphaned: true }): no orchestrator runs these jobs, so unfinished ones are shown interrupted. */
  private orphaned = false;

  constructor(private readonly deps: JobServiceDeps) {
    const ctx = new JobContext(deps);
    this.ctx = ctx;
    this.datasets = new Datasets(ctx);
    const refs = new CheckpointRefs(ctx.ledger, deps.manifestKey);
    this.refs = refs;
    this.progress = new Progress(ctx, this.datasets);
    this.ending = new Ending(ctx, this.progress);
    const commit = new CheckpointCommit(ctx, this.progress);
    const ending = this.ending;
    const progress = this.progress;
    const hooks: AttemptHooks = {
      formed: (a) => {
        ctx.metrics.goodput.running(a.jobId, ctx.now());
        void ctx.ledger.transition(a.jobId, a.stage, "RUNNING", `all ${a.worldSize} ranks ${a.spec.command ? "started" : "connected"}`, { attempt: a.attempt }).catch((err: unknown) => ending.internalError(a, err));
      },
      step: (a, rank, rep, now) => progress.step(a, rank, rep, now),
      heartbeat: (a, rank, hb) => progress.heartbeat(a, rank, hb),
      eval: (a, rank, result) => progress.eval(a, rank, result, (err) => ending.internalError(a, err)),
      checkpointWritten: (a, rank, rep) => commit.written(a, rank, rep, (err) => ending.internalError(a, err)),
      failed: (a, cause, failedAtMs) => ending.failed(a, cause, failedAtMs),
      finished: (a) => ctx.background(a, () => ending.succeed(a)),
      stopRequested: (a) => ctx.requestStop(a.jobId),
      preemptRequested: (a, reason) => ctx.background(a, () => ending.preempt(a, reason)),
    };
    this.gateway = new Gateway(ctx);
    this.recaption = new Recaption(ctx, (a, rank, rep, now) => progress.step(a, rank, rep, now));
    this.dispatcher = new Dispatcher(ctx, new Launch(ctx, this.datasets, refs, hooks));
    this.admission = new Admission(ctx, this.datasets, refs);
    this.deletion = new Deletion(ctx);
    ctx.connect({
      wake: () => this.dispatcher.wake(),
      requestStop: (jobId) => {
        const job = ctx.ledger.get(jobId);
        const a = job.stages.map((s) => ctx.live.get(jobId, s.name)).find((x) => x !== undefined);
        void this.cancel(jobId, { checkpoint: true, graceSeconds: null }).catch((err: unknown) => (a ? ending.internalError(a, err) : undefined));
      },
    });
  }

  // ---------------------------------------------------------------- start-up

  /**
   * Loads every job from the store and reconciles those that were active when
   * the previous orchestrator died: their workers are gone or fenced, so the
   * attempt is over; the stage restarts from its last committed checkpoint.
   * `orphaned` (with reconcile false): a read-only look at the records of an
   * orchestrator known to be gone (its state-dir lock was stale); unfinished
   * jobs are shown interrupted (interruptedView), nothing is changed.
   */
  async start(opts: { reconcile: boolean; orphaned?: boolean } = { reconcile: true }): Promise<void> {
    const jobs = await this.ctx.ledger.load();
    this.orphaned = !opts.reconcile && opts.orphaned === true;
    if (!opts.reconcile) return;
    // `clipfleet resume PREFIX`: the scope names the job as the user did; reconcile must know it is in scope.
    for (const ref of [...(this.deps.scope ?? [])]) {
      if (this.ctx.ledger.has(ref)) continue;
      try {
        this.deps.scope?.add(resolveJobRef(ref, jobs).job.id);
      } catch {
        // unknown or ambiguous: resume itself says so
      }
    }
    for (const job of jobs) {
      for (const stage of job.stages) {
        if (ACTIVE_STATES.has(stage.state) || stage.state === "RESTARTING") await this.reconcile(job, stage);
      }
    }
    const watchdogMs = this.deps.watchdogIntervalMs ?? 500;
    this.timers = [this.ctx.timers.every(watchdogMs, () => this.watch()), this.ctx.timers.every(PROGRESS_PERSIST_INTERVAL_MS, () => void this.progress.flush())];
    // Spares of stages that ended without their attempt's ending (a cancel during the backoff, a deletion).
    this.timers.push(this.ctx.timers.every(PROGRESS_PERSIST_INTERVAL_MS, () => void dropFinishedSpares(this.ctx, [this.deps.launchers.local, this.deps.launchers.ssh])));
    this.dispatcher.wake();
  }

  /** A stage that was active when the previous orchestrator died: its attempt is lost. */
  private async reconcile(job: JobRecord, stage: StageRecord): Promise<void> {
    const { ledger } = this.ctx;
    const lost = stage.attempts.at(-1);
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
      await ledger.transition(job.id, stage.name, "CANCELLED", "cancelled (orchestrator restarted)", { update: closeAttempt });
    } else if (this.deps.scope && !this.deps.scope.has(job.id)) {
      await ledger.transition(
        job.id,
        stage.name,
        "FAILED",
        `interrupted: the orchestrator running it died; \`clipfleet resume ${job.id}\` continues from the last committed checkpoint`,
        { update: closeAttempt },
      );
    } else if (stage.state !== "RESTARTING") {
      await ledger.transition(job.id, stage.name, "RESTARTING", `orchestrator restarted: attempt ${lost?.number ?? 0} lost`, { update: closeAttempt });
    } else {
      await ledger.update(job.id, (j) => {
        const s = j.stages.find((x) => x.name === stage.name);
        if (s) closeAttempt(s);
      });
    }
  }

  /** Heartbeats, hangs and start-up time, checked on a timer: each attempt says whether it is overdue. */
  private watch(): void {
    const now = this.now();
    for (const a of this.ctx.live.values()) {
      const overdue = a.overdue(now);
      if (overdue) a.fail(overdue.cause, overdue.failedAtMs);
    }
  }

  /**
   * First step of a shutdown: no scheduling pass, no timer, no ending and no
   * rank launched after this resolves (a pass in flight is waited for, and a
   * launch in it starts no further rank). Ranks already running are the
   * launchers' to kill next; only then `close()`.
   */
  async quiesce(): Promise<void> {
    this.ctx.closing = true;
    for (const t of this.timers) t.cancel();
    const allocations = this.ctx.live.abortAllocations();
    await this.dispatcher.close();
    await allocations;
  }

  /**
   * Last step of a shutdown, once the servers are closed and the ranks are
   * gone: persists the last progress and closes the ledger (every queued write
   * lands, later ones are refused), so the store and the bus can be closed.
   */
  async close(): Promise<void> {
    await this.quiesce();
    await this.progress.flush();
    await this.ctx.ledger.close();
  }

  // ---------------------------------------------------------------- control API

  /** Validates a spec, checks its data, persists the job as PENDING. Nothing is persisted on bad input. */
  async submit(input: SubmitInput): Promise<JobRecord> {
    const job = await this.admission.submit(input);
    this.deps.scope?.add(job.id);
    this.dispatcher.wake();
    return job;
  }

  /**
   * A dry run of submit for a spec validated by the caller (`clipfleet validate`): every problem
   * submit would refuse it for (placement, data, init checkpoints, policy), and each stage's
   * data counted. Nothing is persisted, generated or scheduled.
   */
  check(spec: JobSpec, where: string): Promise<AdmissionCheck> {
    return this.admission.check(spec, where);
  }

  /**
   * The same dry run for a spec as submit receives it (ValidateJob, `validate --server`):
   * validated here first, as submit would, then checked. Nothing is persisted or generated.
   */
  checkInput(input: SubmitInput): Promise<AdmissionCheck> {
    return this.admission.checkInput(input);
  }

  /** A job as persisted, with the live progress of its running attempts laid over it (not persisted). */
  get(id: string): JobRecord {
    const job = this.progress.liveView(this.ctx.ledger.get(id));
    return this.orphaned ? interruptedView(job) : job;
  }

  list(): JobRecord[] {
    const jobs = this.ctx.ledger.list();
    return this.orphaned ? jobs.map(interruptedView) : jobs;
  }

  /**
   * The job a reference names: its id, a job name (the newest of that name)
   * or a unique prefix of an id (domain resolveJobRef). NOT_FOUND names the
   * reference; an ambiguous prefix lists the candidates.
   */
  /** True when `id` is a job whose deletion began and did not finish (hidden from get, list and references). */
  deleting(id: string): boolean {
    const { ledger } = this.ctx;
    return ledger.has(id) && ledger.getTombstoned(id).deletingSinceMs !== undefined;
  }

  resolve(ref: string): JobRefResolution<JobRecord> {
    checkJobRef(ref);
    if (this.ctx.ledger.has(ref)) return { job: this.get(ref), by: "id", sameName: 0 };
    const r = resolveJobRef(ref, this.ctx.ledger.list());
    return { ...r, job: this.get(r.job.id) };
  }

  /**
   * Cancels a job: queued stages end at once; running ones get a stop command
   * (after a checkpoint when asked), then SIGTERM after the grace period, then
   * SIGKILL. Resolves when no process of the job is alive.
   */
  async cancel(id: string, opts: { checkpoint: boolean; graceSeconds: number | null }): Promise<JobRecord> {
    const { ledger } = this.ctx;
    const job = ledger.get(id);
    if (isTerminal(job.state)) return job;
    await ledger.update(id, (j) => {
      j.cancelRequested = { checkpoint: opts.checkpoint, atMs: this.now() };
    });
    const waits: Promise<void>[] = [];
    for (const stage of ledger.get(id).stages) {
      if (stage.state === "PENDING" || stage.state === "RESTARTING") {
        this.dispatcher.unqueue(id, stage.name);
        // Waiting for a Slurm allocation: cancelled there too before cancel returns.
        waits.push(this.ctx.live.abortAllocation(id, stage.name));
        await ledger.transition(id, stage.name, "CANCELLED", "cancelled by user", { unlessTerminal: true });
        continue;
      }
      const a = this.ctx.live.get(id, stage.name);
      if (a && (stage.state === "STARTING" || stage.state === "RUNNING")) {
        waits.push(this.ending.stop(a, { checkpoint: opts.checkpoint && stage.state === "RUNNING", reason: "cancelled by user", graceSeconds: opts.graceSeconds }));
      } else if (a) {
        waits.push(a.allExited);
      }
    }
    await Promise.all(waits);
    return ledger.get(id);
  }

  /**
   * Resumes a FAILED or CANCELLED job from its last committed checkpoints:
   * finished stages are kept, failed and cancelled ones go back to PENDING
   * with a fresh restart budget.
   */
  async resume(id: string): Promise<JobRecord> {
    const { ledger } = this.ctx;
    const job = ledger.get(id);
    this.deps.scope?.add(id);
    if (job.state === "SUCCEEDED") throw new FailedPreconditionError(`job ${id} already SUCCEEDED; nothing to resume`);
    if (!isTerminal(job.state)) {
      if (job.stages.some((s) => this.ctx.live.has(id, s.name) || s.state === "PENDING" || s.state === "RESTARTING")) {
        this.dispatcher.wake();
        return job;
      }
      throw new FailedPreconditionError(`job ${id} is ${job.state}; only FAILED or CANCELLED jobs can be resumed`);
    }
    // Refused before anything changes: a manifest this orchestrator did not sign is never resumed from.
    for (const stage of job.stages) {
      if (stage.state === "FAILED" || stage.state === "CANCELLED") this.refs.checkSigned(job, stage, stageSpecOf(job, stage.name));
    }
    await ledger.update(id, (j) => {
      j.cancelRequested = null;
    });
    for (const stage of job.stages) {
      if (stage.state !== "FAILED" && stage.state !== "CANCELLED") continue;
      await ledger.transition(id, stage.name, "PENDING", "resumed by user", {
        update: (s) => {
          s.restarts = 0;
          s.preemptions = 0;
          s.error = "";
          s.notBeforeMs = null;
        },
      });
    }
    this.dispatcher.wake();
    return ledger.get(id);
  }

  /**
   * Removes an ended job: record, logs, step history, metric series and
   * (unless kept) its checkpoint directories; refuses a live job. Finishes a
   * delete that was interrupted (see deletion.ts).
   */
  delete(id: string, opts: { keepCheckpoints: boolean }): Promise<DeleteResult> {
    return this.deletion.delete(id, opts);
  }

  /**
   * A job's checkpoints for ListCheckpoints, each committed one with why it
   * would be refused (its manifest is unsigned, not this orchestrator's, or
   * another's), or null: signatures are checked on every listing.
   */
  checkpoints(id: string): { record: CheckpointRecord; untrusted: string | null }[] {
    const job = this.get(id);
    return job.stages.flatMap((s) => s.checkpoints.map((record) => ({ record, untrusted: record.status === "committed" ? this.refs.problem(record, job.id, s.name) : null })));
  }

  /** Asks every rank of the job's running stage to checkpoint soon; returns the step. */
  requestCheckpoint(id: string): { stage: string; step: number } {
    const job = this.ctx.ledger.get(id);
    for (const stage of job.stages) {
      const a = this.ctx.live.get(id, stage.name);
      if (!a?.formed) continue;
      const step = a.nextSafeStep();
      a.requestCheckpoint(step);
      this.ctx.log(id, stage.name, a.attempt, `checkpoint requested at step ${step}`);
      return { stage: stage.name, step };
    }
    throw new FailedPreconditionError(`job ${id} has no running stage to checkpoint (state ${job.state})`);
  }

  /** Log lines of a job, then (when following) new ones until the job ends. */
  readLogs(id: string, filter: (e: LogEntry) => boolean): Promise<LogEntry[]> {
    this.ctx.ledger.get(id);
    return this.deps.logs.read(id, filter);
  }

  followLogs(id: string, listener: (e: LogEntry) => void): () => void {
    return this.deps.logs.follow(id, listener);
  }

  /** Subscribe to a job's events (all of them, as published). */
  subscribe(id: string, handler: (e: JobEvent) => void): () => void {
    this.ctx.ledger.get(id);
    const unsub = this.deps.bus.subscribe(id, handler);
    return () => void unsub();
  }

  /** Cordons (schedulable false) or uncordons a node; a cordoned node gets no new ranks. */
  setNodeSchedulable(name: string, schedulable: boolean): ReturnType<Scheduler["nodes"]>[number] {
    if (!this.ctx.scheduler.hasNode(name)) throw new NotFoundError(`node ${name} is not in the inventory`);
    this.ctx.scheduler.setCordoned(name, !schedulable);
    if (schedulable) this.dispatcher.wake();
    const status = this.nodes().find((n) => n.node.name === name);
    if (!status) throw new NotFoundError(`node ${name} is not in the inventory`);
    return status;
  }

  /** Nodes with their free slots and quarantine state. */
  nodes(): ReturnType<Scheduler["nodes"]> {
    return this.ctx.scheduler.nodes(this.now());
  }

  /**
   * The nodes of the Slurm partition of a `launcher: slurm` inventory, as
   * sinfo shows them now (state, CPUs and GPUs in use); empty without one.
   * The scheduler's own positions (slurm-1..N) are in nodes().
   */
  async clusterNodes(): Promise<SlurmNode[]> {
    const slurm = this.deps.launchers.slurm;
    const options = this.ctx.scheduler.nodes(this.now()).find((n) => n.node.slurm)?.node.slurm;
    if (!slurm || !options) return [];
    const seen = new Set<string>();
    return (await slurm.partitionNodes(options.partition)).filter((n) => !seen.has(n.name) && seen.add(n.name));
  }

  /** The data audit of a job's stages with data.audit (see Datasets.audit). */
  audit(id: string): ReturnType<Datasets["audit"]> {
    return this.datasets.audit(this.ctx.ledger.get(id));
  }

  /** Rank 0's step reports of a job's stages (every attempt), and the attempts that produced them. */
  stepHistory(id: string, stage: string, maxPoints: number): { points: StepPointRecord[]; attempts: { stage: string; attempt: AttemptRecord }[] } {
    this.progress.history.flush();
    const job = this.ctx.ledger.get(id);
    if (stage) stageSpecOf(job, stage);
    const stages = job.stages.filter((s) => !stage || s.name === stage);
    return {
      points: stages.flatMap((s) => readStepHistory(stepHistoryPath(this.deps.stateDir, id, s.name), maxPoints)),
      attempts: stages.flatMap((s) => s.attempts.map((attempt) => ({ stage: s.name, attempt }))),
    };
  }

  // ---------------------------------------------------------------- worker gateway

  /** A rank's first call: authenticate, fence, and hand out its assignment. */
  register(token: string | null, req: RegisterRequest): Assignment {
    return this.gateway.register(token, req);
  }

  /** Binds a session stream to its rank; returns the handlers of the stream's messages. */
  openSession(token: string | null, handle: SessionHandle): { onMessage: (msg: WorkerMessage) => void; onClose: (why: string) => void } {
    return this.gateway.openSession(token, handle);
  }

  /** The samples a rank reads in a range of steps. */
  plan(token: string | null, req: PlanRequest): PlanResponse {
    return this.gateway.plan(token, req);
  }

  /** A page of a stage's shard list (GetShards). */
  shards(token: string | null, req: ShardsRequest): ShardsResponse {
    return this.gateway.shards(token, req);
  }

  /** task recaption: commit a rank's output shard (persisted first), then lease it the next input shard. */
  lease(token: string | null, req: LeaseRequest): Promise<LeaseReply> {
    const s = this.gateway.bind(token, req.sessionId);
    return this.recaption.lease(s.attempt, s.rank, req);
  }

  // ---------------------------------------------------------------- metrics view (computed at scrape time)

  jobsByState(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const j of this.ctx.ledger.list()) out[j.state] = (out[j.state] ?? 0) + 1;
    return out;
  }

  jobs(): ReturnType<MetricsSource["jobs"]> {
    return this.ctx.ledger.list().map((j) => ({ job: j.id, name: j.name, state: j.state, updatedAtMs: j.updatedAtMs }));
  }

  ranks(): ReturnType<MetricsSource["ranks"]> {
    const now = this.now();
    const out: ReturnType<MetricsSource["ranks"]> = [];
    for (const a of this.ctx.live.values()) {
      for (const r of a.ranks) {
        out.push({
          job: a.jobId,
          stage: a.stage,
          rank: r.rank,
          node: r.node.name,
          state: rankState(r),
          heartbeatAgeSeconds: r.registered ? (now - r.lastHeartbeatMs) / 1000 : null,
          step: r.step,
        });
      }
    }
    return out;
  }

  nodeSlots(): ReturnType<MetricsSource["nodeSlots"]> {
    return this.nodes().map((n) => ({
      node: n.node.name,
      slots: n.node.slots,
      freeSlots: n.freeSlots,
      cordoned: n.state === "cordoned",
      quarantined: n.quarantinedUntilMs !== null,
    }));
  }

  newestCheckpoints(): ReturnType<MetricsSource["newestCheckpoints"]> {
    const out: ReturnType<MetricsSource["newestCheckpoints"]> = [];
    for (const job of this.ctx.ledger.list()) {
      if (isTerminal(job.state)) continue;
      for (const s of job.stages) {
        const c = newestCommitted(s);
        if (c) out.push({ job: job.id, stage: s.name, committedAtMs: c.committedAtMs, sizeBytes: c.sizeBytes });
      }
    }
    return out;
  }

  now(): number {
    return this.ctx.now();
  }
}
