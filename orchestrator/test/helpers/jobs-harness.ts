/**
 * A harness for the job machinery with no processes and no real time: the
 * real JobService, ledger, scheduler, metrics and event bus, over an
 * in-memory store, a fake launcher whose "processes" exit when told (or
 * when signalled), fake session streams that record the commands sent down
 * them, fake ranks that speak the worker protocol, and a fake clock whose
 * timers fire only when a test advances it (the model: temporal's
 * mock-native-worker). Waiting is for conditions, never for time.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadOrCreateSigningKey } from "../../src/checkpoints/index.js";
import type { Clock, JobRecord, TimerHandle, Timers } from "../../src/domain/index.js";
import { InProcessEventBus } from "../../src/events/index.js";
import type { Assignment, Command, WorkerMessage } from "../../src/gen/clipfleet/v1/worker.js";
import { JobLedger, JobLogs, JobService, ORCHESTRATOR_VERSION, type SessionHandle, type SubmitInput } from "../../src/jobs/index.js";
import type { ExitInfo, LaunchedProcess, LaunchRequest, Launcher } from "../../src/launcher/index.js";
import { Metrics } from "../../src/metrics/index.js";
import { parseInventory, Scheduler } from "../../src/scheduler/index.js";
import { loadPresets } from "../../src/spec/index.js";
import { tarBytes } from "../unit/data-helpers.js";
import { MemoryStore } from "./memory-store.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
/** The presets file both sides read. */
export const PRESETS = join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json");

/** Lets promises, immediates and pending file I/O run: yields to the event loop a few times. */
export async function drain(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((r) => setImmediate(r));
}

/** Yields to the event loop until `cond` holds; fails naming `what` when it never does (a bug, not a timing). */
export async function until(cond: () => boolean, what: string, maxTurns = 20_000): Promise<void> {
  for (let i = 0; i < maxTurns; i++) {
    if (cond()) return;
    await new Promise<void>((r) => setImmediate(r));
  }
  assert.fail(`never happened: ${what}`);
}

interface FakeTimer {
  at: number;
  seq: number;
  fn: () => void;
  every: number | null;
  cancelled: boolean;
}

/** A clock and its timers: time moves only in advance(), which fires due timers in order. */
export class FakeClock implements Clock, Timers {
  private t: number;
  private seq = 0;
  private readonly timers: FakeTimer[] = [];

  constructor(startMs = 1_790_000_000_000) {
    this.t = startMs;
  }

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): TimerHandle {
    return this.arm(ms, fn, null);
  }

  every(ms: number, fn: () => void): TimerHandle {
    return this.arm(ms, fn, ms);
  }

  /** Moves time forward by `ms`, firing every timer that falls due on the way, in time order. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await drain();
      const due = this.timers.filter((x) => !x.cancelled && x.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!due) break;
      this.t = Math.max(this.t, due.at);
      if (due.every !== null) due.at += Math.max(1, due.every);
      else due.cancelled = true;
      due.fn();
    }
    this.t = end;
    await drain();
  }

  private arm(ms: number, fn: () => void, every: number | null): TimerHandle {
    const timer: FakeTimer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn, every, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  }
}

/** A rank "process": alive until it exits by itself (a test says so) or a signal ends it. */
export class FakeProcess implements LaunchedProcess {
  readonly signals: NodeJS.Signals[] = [];
  readonly exited: Promise<ExitInfo>;
  private resolveExit: (e: ExitInfo) => void = () => undefined;
  private gone = false;
  /** A stopped process (SIGSTOP) ignores SIGTERM until continued, as a real one does. */
  stopped = false;

  constructor(
    readonly pid: number,
    readonly req: LaunchRequest,
  ) {
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  get alive(): boolean {
    return !this.gone;
  }

  signal(sig: NodeJS.Signals): Promise<void> {
    this.signals.push(sig);
    if (sig === "SIGSTOP") this.stopped = true;
    if (sig === "SIGCONT") this.stopped = false;
    if (sig === "SIGKILL" || (sig === "SIGTERM" && !this.stopped)) this.exit({ code: null, signal: sig });
    return Promise.resolve();
  }

  /** The process ends (its launcher reports it). */
  exit(info: ExitInfo): void {
    if (this.gone) return;
    this.gone = true;
    this.req.onExit(info);
    this.resolveExit(info);
  }
}

/** A launcher that starts FakeProcesses and remembers them; `failNext` makes the next launch throw. */
export class FakeLauncher implements Launcher {
  readonly kind = "local" as const;
  readonly procs: FakeProcess[] = [];
  failNext: string | null = null;
  /** While set, a launch waits for it (a slow node): the test decides when the process exists. */
  hold: Promise<void> | null = null;
  /** Launches called so far, finished or not. */
  calls = 0;
  private pid = 1000;

  async launch(req: LaunchRequest): Promise<LaunchedProcess> {
    this.calls += 1;
    if (this.hold) await this.hold;
    if (this.failNext) {
      const msg = this.failNext;
      this.failNext = null;
      return Promise.reject(new Error(msg));
    }
    const p = new FakeProcess(this.pid++, req);
    this.procs.push(p);
    return p;
  }

  freePort(): Promise<number> {
    return Promise.resolve(29500);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** The processes of one attempt, by rank. */
  of(attempt: number): FakeProcess[] {
    return this.procs.filter((p) => p.req.attempt === attempt).sort((a, b) => a.req.rank - b.req.rank);
  }
}

type CommandBody = NonNullable<Command["body"]>;
type CommandValue<K> = Extract<CommandBody, { $case: K }> extends { value: infer V } ? V : never;

/** A session stream's server side as the rpc layer would hand it over; records every command. */
export class FakeSession implements SessionHandle {
  readonly commands: Command[] = [];
  ended = false;

  send(cmd: Command): void {
    this.commands.push(cmd);
  }

  end(): void {
    this.ended = true;
  }

  /** The commands of one kind, in order. */
  sent<K extends CommandBody["$case"]>(kind: K): CommandValue<K>[] {
    return this.commands.filter((c) => c.body?.$case === kind).map((c) => (c.body as { value: unknown }).value as CommandValue<K>);
  }
}

/** One rank of a launched attempt, speaking the worker protocol to the service as a worker would. */
export class FakeRank {
  assignment: Assignment | null = null;
  readonly session = new FakeSession();
  private binding: ReturnType<JobService["openSession"]> | null = null;

  constructor(
    readonly service: JobService,
    readonly proc: FakeProcess,
  ) {}

  get rank(): number {
    return this.proc.req.rank;
  }

  /** Register, then open the session stream with hello. */
  connect(): Assignment {
    const req = this.proc.req;
    const token = req.secrets.CLIPFLEET_TOKEN ?? null;
    this.assignment = this.service.register(token, {
      jobId: req.jobId,
      stage: req.stage,
      attempt: req.attempt,
      rank: req.rank,
      hostname: "fake",
      pid: this.proc.pid,
      runtimeVersion: ORCHESTRATOR_VERSION,
      pythonVersion: "3.11",
      torchVersion: "1.13",
      cudaDevices: 0,
    });
    this.binding = this.service.openSession(token, this.session);
    this.send({ $case: "hello", value: { sessionId: this.assignment.sessionId } });
    return this.assignment;
  }

  send(body: NonNullable<WorkerMessage["body"]>): void {
    assert.ok(this.binding, `rank ${this.rank} has no session`);
    this.binding.onMessage({ body });
  }

  heartbeat(): void {
    this.send({ $case: "heartbeat", value: { phase: 4, gpuUtilization: 0, gpuMemoryBytes: 0 } });
  }

  step(step: number, loss = 4 - step * 0.01, skippedByReason: Record<string, number> = {}): void {
    this.send({
      $case: "step",
      value: {
        step,
        epoch: 0,
        sampleInEpoch: step * 8,
        loss,
        lr: 1e-3,
        temperature: 14.3,
        gradNorm: 1,
        samplesPerSecond: 100,
        stepSeconds: 0.1,
        dataWaitSeconds: 0.01,
        computeSeconds: 0.09,
        nanSkipped: false,
        samples: [],
        extra: {},
        outOfRangeLabels: 0,
        skippedSamples: Object.values(skippedByReason).reduce((a, n) => a + n, 0),
        skippedByReason,
        shardBytesFetched: 0,
        shardCacheHits: 0,
        shardCacheMisses: 0,
        shardFetchSeconds: 0,
      },
    });
  }

  /** Writes this rank's checkpoint file into the attempt's directory and reports it, as a worker does. */
  checkpoint(step: number): void {
    const a = this.assignment;
    assert.ok(a);
    const dir = join(a.checkpointRoot, `step-${String(step).padStart(8, "0")}-a${a.attempt}`);
    mkdirSync(dir, { recursive: true });
    const name = `rank${this.rank}.pt`;
    const data = Buffer.from(`weights of rank ${this.rank} at step ${step}`);
    writeFileSync(join(dir, name), data);
    this.send({
      $case: "checkpoint",
      value: {
        step,
        dir,
        files: [{ path: name, sha256: createHash("sha256").update(data).digest("hex"), size: data.length }],
        saveSeconds: 0.01,
        writeSeconds: 0.01,
        cursor: { epoch: 0, sampleInEpoch: step * 8 },
      },
    });
  }

  finish(step: number): void {
    this.send({ $case: "finished", value: { step, finalParamsSha256: "f".repeat(64), metrics: {} } });
  }

  /** The stream closes from the worker's side (or the connection drops). */
  closeSession(why = "connection lost"): void {
    this.binding?.onClose(why);
  }
}

/** Submits `overrides`, launches attempt 1 and connects both ranks: the stage is RUNNING. */
export async function runningJob(h: Harness, overrides: Record<string, unknown> = {}): Promise<{ id: string; ranks: FakeRank[] }> {
  const job = await h.submit(overrides);
  const ranks = await h.launched(1);
  for (const r of ranks) r.connect();
  await h.stageIn(job.id, "RUNNING");
  return { id: job.id, ranks };
}

/** Every rank reports steps from..to. */
export function stepAll(ranks: readonly FakeRank[], from: number, to: number): void {
  for (let s = from; s <= to; s++) for (const r of ranks) r.step(s);
}

/** What a test gets: the service over fakes, the clock, the launcher, and a spec maker. */
export interface Harness {
  readonly service: JobService;
  readonly clock: FakeClock;
  readonly launcher: FakeLauncher;
  readonly metrics: Metrics;
  readonly dir: string;
  /** The submit input of a 2-rank pretrain spec on the harness's shard (overrides merged at the top level). */
  input(overrides?: Record<string, unknown>): SubmitInput;
  /** Submits input(overrides). */
  submit(overrides?: Record<string, unknown>): Promise<JobRecord>;
  /** The job's record as the service shows it. */
  job(id: string): JobRecord;
  /** Waits until the attempt is launched (every rank's process exists); returns its fake ranks. */
  launched(attempt: number, worldSize?: number): Promise<FakeRank[]>;
  /** Waits until the job's single stage is in `state`. */
  stageIn(id: string, state: string): Promise<void>;
  close(): Promise<void>;
}

/** Builds a harness in a fresh temp dir: two local nodes of 2 slots each, one tiny shard of 64 samples. */
export async function jobsHarness(opts: { nodes?: number; slotsPerNode?: number } = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), "clipfleet-jobs-"));
  const shards = join(dir, "shards");
  mkdirSync(shards);
  const samples = Array.from({ length: 64 }, (_, i) => [
    { name: `s${String(i).padStart(4, "0")}.jpg`, data: Buffer.from([0xff, 0xd8, 0xff, 0xd9]) },
    { name: `s${String(i).padStart(4, "0")}.txt`, data: `caption ${i}` },
  ]).flat();
  writeFileSync(join(shards, "00000.tar"), tarBytes(samples));
  const clock = new FakeClock();
  const store = new MemoryStore();
  const bus = new InProcessEventBus();
  const ledger = new JobLedger(store, bus, clock);
  const nodeCount = opts.nodes ?? 2;
  const slots = opts.slotsPerNode ?? 2;
  const inventory = Array.from({ length: nodeCount }, (_, i) => `  - {name: n${i}, host: 127.0.0.1, launcher: local, slots: ${slots}}`).join("\n");
  const scheduler = new Scheduler(parseInventory(`nodes:\n${inventory}\n`, join(dir, "inventory.yaml")), clock);
  const metrics = new Metrics({ scrapeCacheMs: 0, defaultMetrics: false });
  const launcher = new FakeLauncher();
  const service = new JobService({
    ledger,
    bus,
    scheduler,
    launchers: { local: launcher, ssh: null },
    metrics,
    logs: new JobLogs(join(dir, "state")),
    clock,
    timers: clock,
    presets: loadPresets(PRESETS),
    stateDir: join(dir, "state"),
    manifestKey: await loadOrCreateSigningKey(join(dir, "state")),
    workerRuntimeDir: dir,
    python: "/usr/bin/python3",
    resolvePython: (explicit) => Promise.resolve(explicit ?? "/usr/bin/python3"),
    gatewayAddress: () => "127.0.0.1:7070",
    synthesize: () => Promise.reject(new Error("no synthetic data in unit tests")),
    scope: null,
    watchdogIntervalMs: 500,
  });
  metrics.setSource(service);
  await service.start();
  const ranksOf = new Map<number, FakeRank[]>();
  const harness: Harness = {
    service,
    clock,
    launcher,
    metrics,
    dir,
    input: (overrides = {}) => ({
      specJson: JSON.stringify({
        name: "unit",
        task: "pretrain",
        data: { train: "shards/{00000..00000}.tar" },
        model: { image: "vit-tiny", text: { preset: "text-tiny" }, embed_dim: 64, tokenizer: "byte" },
        train: { steps: 20, batch_size: 8 },
        cluster: { workers: 2 },
        checkpoint: { every_steps: 10, every_minutes: null },
        failure: { max_restarts: 3, backoff_seconds: 1, heartbeat_timeout: 10, hang_min_seconds: 30, startup_timeout: 60, grace_seconds: 5 },
        ...overrides,
      }),
      specPath: join(dir, "unit.yaml"),
      baseDir: dir,
    }),
    submit: (overrides = {}) => service.submit(harness.input(overrides)),
    job: (id) => service.get(id),
    launched: async (attempt, worldSize = 2) => {
      await until(() => launcher.of(attempt).length === worldSize && service.list().some((j) => j.stages.some((s) => s.attempts.some((a) => a.number === attempt && a.ranks.every((r) => r.pid !== null)))), `attempt ${attempt} launched`);
      let ranks = ranksOf.get(attempt);
      if (!ranks) {
        ranks = launcher.of(attempt).map((p) => new FakeRank(service, p));
        ranksOf.set(attempt, ranks);
      }
      return ranks;
    },
    stageIn: (id, state) => until(() => service.get(id).stages[0]?.state === state, `job ${id} stage in ${state} (it is ${service.get(id).stages[0]?.state ?? "?"}: ${service.get(id).stages[0]?.reason ?? ""})`),
    close: async () => {
      await service.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return harness;
}
