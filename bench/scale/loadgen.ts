/**
 * Load generator of the scale benchmark (forked by scale/server.ts with an
 * IPC channel): each launch it receives becomes a simulated worker rank, a
 * real gRPC client of the worker gateway with no torch behind it. Like a
 * real rank it registers with the job token, opens its session, sends
 * heartbeats at the assignment's interval when nothing else went up in it
 * (step reports are liveness), a step report every 1/rate
 * seconds and a GetPlan call every `plan-every` steps (the loader fetches
 * its plan that many steps ahead). By default every rank has a connection
 * of its own, as separate worker processes would; --ranks-per-connection
 * shares one among several (a node's ranks behind one connection), which
 * lightens the generator. A --probe generator hosts a few ranks alone, so
 * their latencies are not inflated by a busy generator; it marks their
 * step reports and asks for the plan every step.
 *
 *   (forked) loadgen.js --rate 1 --plan-every 4 [--ranks-per-connection 8] [--probe]
 */
import { credentials, Metadata, status, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import { parseArgs } from "node:util";
import { Phase, WorkerGatewayClient, type Assignment, type Command, type PlanResponse, type WorkerMessage } from "../../orchestrator/src/gen/clipfleet/v1/worker.js";
import { ORCHESTRATOR_VERSION } from "../../orchestrator/src/jobs/index.js";
import { PROBE_KEY, SENT_AT_KEY, wallMs, type FromLoadgen, type LoadgenStats, type ToLoadgen } from "./protocol.js";

interface Options {
  readonly rate: number;
  readonly planEvery: number;
  /** Ranks sharing one connection (1: a connection per rank, as separate processes have). */
  readonly ranksPerConnection: number;
  /** Mark step reports as the latency probe's (SENT_AT_KEY's twin PROBE_KEY). */
  readonly probe: boolean;
}

/** Connections of this generator, each shared by up to ranksPerConnection ranks. */
class Channels {
  private readonly pool: { client: WorkerGatewayClient; users: number; assigned: number }[] = [];

  constructor(private readonly perConnection: number) {}

  /** A client for a new rank: the newest connection while it has room, else a fresh one. */
  acquire(address: string): { client: WorkerGatewayClient; release: () => void } {
    let c = this.pool.at(-1);
    if (!c || c.assigned >= this.perConnection) {
      c = {
        client: new WorkerGatewayClient(address, credentials.createInsecure(), {
          // The Python agent's keepalive settings.
          "grpc.keepalive_time_ms": 10_000,
          "grpc.keepalive_timeout_ms": 5_000,
          "grpc.keepalive_permit_without_calls": 1,
          // Without it grpc-js shares one connection among all clients of the same target.
          "grpc.use_local_subchannel_pool": 1,
        }),
        users: 0,
        assigned: 0,
      };
      this.pool.push(c);
    }
    const entry = c;
    entry.users += 1;
    entry.assigned += 1;
    return {
      client: entry.client,
      release: () => {
        entry.users -= 1;
        if (entry.users > 0) return;
        // The last rank on it is gone: close it, and never hand it out again.
        entry.client.close();
        const i = this.pool.indexOf(entry);
        if (i >= 0) this.pool.splice(i, 1);
      },
    };
  }
}

/** What the generator counts between "window" and "stats". */
class Counters {
  reportsSent = 0;
  heartbeatsSent = 0;
  planRttMs: number[] = [];
  readonly registerRttMs: number[] = [];
  readonly errors: string[] = [];
  since = performance.now();
  cpu = process.cpuUsage();

  reset(): void {
    this.reportsSent = 0;
    this.heartbeatsSent = 0;
    this.planRttMs = [];
    this.since = performance.now();
    this.cpu = process.cpuUsage();
  }

  error(what: string): void {
    if (this.errors.length < 20) this.errors.push(what);
  }
}

/** One simulated rank. */
class SimRank {
  private readonly client: WorkerGatewayClient;
  private readonly release: () => void;
  private readonly md = new Metadata();
  private stream: ClientDuplexStream<WorkerMessage, Command> | null = null;
  private readonly timers: NodeJS.Timeout[] = [];
  private step = 0;
  private stopped = false;
  private exited = false;
  /** When this rank last wrote to its session (performance.now()): like the worker, it skips heartbeats while reports flow. */
  private lastSentMs = 0;

  constructor(
    readonly key: string,
    private readonly env: Readonly<Record<string, string>>,
    token: string,
    private readonly opts: Options,
    private readonly counters: Counters,
    channels: Channels,
    private readonly onExit: (code: number | null, signal: string | null) => void,
  ) {
    this.md.set("authorization", `Bearer ${token}`);
    ({ client: this.client, release: this.release } = channels.acquire(env.CLIPFLEET_ADDR ?? ""));
  }

  async start(): Promise<void> {
    const a = await this.register();
    if (this.stopped) return;
    const stream = this.client.session(this.md);
    this.stream = stream;
    stream.on("data", (cmd: Command) => {
      if (cmd.body?.$case === "fenced") this.quiet();
    });
    stream.on("error", (err: ServiceError) => {
      if (!this.stopped) this.counters.error(`session of ${this.key}: ${err.message}`);
      this.quiet();
    });
    stream.on("end", () => this.quiet());
    stream.write({ body: { $case: "hello", value: { sessionId: a.sessionId } } });
    const beat = Math.max(100, a.heartbeatIntervalSeconds * 1000);
    this.timers.push(
      setInterval(() => {
        // The worker's rule (agent.py heartbeat_due): a heartbeat only after an interval with nothing sent.
        if (performance.now() - this.lastSentMs < beat) return;
        this.write({ body: { $case: "heartbeat", value: { phase: Phase.PHASE_TRAINING, gpuUtilization: 0, gpuMemoryBytes: 0 } } });
        this.counters.heartbeatsSent += 1;
      }, beat),
    );
    const period = 1000 / this.opts.rate;
    // Spread the ranks over the period, as ranks of real jobs are not in phase with each other.
    const first = setTimeout(() => {
      this.tick(a);
      this.timers.push(setInterval(() => this.tick(a), period));
    }, Math.random() * period);
    this.timers.push(first);
  }

  private register(): Promise<Assignment> {
    const env = this.env;
    const req = {
      jobId: env.CLIPFLEET_JOB_ID ?? "",
      stage: env.CLIPFLEET_STAGE ?? "",
      attempt: Number(env.CLIPFLEET_ATTEMPT),
      rank: Number(env.CLIPFLEET_RANK),
      hostname: "simulated",
      pid: process.pid,
      runtimeVersion: ORCHESTRATOR_VERSION,
      pythonVersion: "none",
      torchVersion: "none",
      cudaDevices: 0,
    };
    const deadline = Date.now() + 120_000;
    return new Promise((resolve, reject) => {
      const attempt = (delay: number): void => {
        if (this.stopped) {
          reject(new Error("stopped before registering"));
          return;
        }
        const t0 = wallMs();
        this.client.register(req, this.md, { deadline: Date.now() + 60_000 }, (err, a) => {
          if (!err) {
            this.counters.registerRttMs.push(wallMs() - t0);
            resolve(a);
            return;
          }
          // UNAVAILABLE: the server's accept queue overflowed; retry as the Python agent does.
          if (err.code === status.UNAVAILABLE && Date.now() < deadline && !this.stopped) {
            setTimeout(() => attempt(Math.min(2000, delay * 2)), delay);
            return;
          }
          reject(err);
        });
      };
      attempt(200);
    });
  }

  private tick(a: Assignment): void {
    if (this.stopped || this.step + a.startStep >= a.totalSteps) return;
    const index = a.startStep + this.step; // 0-based step about to complete
    if (this.step % this.opts.planEvery === 0) this.fetchPlan(a, index);
    this.step += 1;
    const period = 1 / this.opts.rate;
    this.write({
      body: {
        $case: "step",
        value: {
          step: index + 1,
          epoch: 0,
          sampleInEpoch: 0,
          loss: 4,
          lr: 1e-3,
          temperature: 14,
          gradNorm: 1,
          samplesPerSecond: a.globalBatch / period,
          stepSeconds: period,
          dataWaitSeconds: 0.001,
          computeSeconds: period,
          skippedSamples: 0,
          nanSkipped: false,
          samples: [],
          extra: this.opts.probe ? { [SENT_AT_KEY]: wallMs(), [PROBE_KEY]: 1 } : { [SENT_AT_KEY]: wallMs() },
          outOfRangeLabels: 0,
          skippedByReason: {},
          shardBytesFetched: 0,
          shardCacheHits: 0,
          shardCacheMisses: 0,
          shardFetchSeconds: 0,
        },
      },
    });
    this.counters.reportsSent += 1;
  }

  private fetchPlan(a: Assignment, fromStep: number): void {
    if (fromStep >= a.totalSteps) return;
    const t0 = wallMs();
    this.client.getPlan({ sessionId: a.sessionId, fromStep, count: this.opts.planEvery, split: "train" }, this.md, (err: ServiceError | null, _r?: PlanResponse) => {
      if (err) {
        if (!this.stopped) this.counters.error(`GetPlan of ${this.key}: ${err.message}`);
        return;
      }
      this.counters.planRttMs.push(wallMs() - t0);
    });
  }

  private write(m: WorkerMessage): void {
    if (this.stopped || !this.stream) return;
    this.lastSentMs = performance.now();
    this.stream.write(m);
  }

  /** The orchestrator ended the session (fenced, or its teardown): stop sending, wait for the kill. */
  private quiet(): void {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
  }

  /** A signal from the launcher: terminating ones end the rank as a killed process would end. */
  signal(sig: string): void {
    if (sig !== "SIGKILL" && sig !== "SIGTERM") return; // SIGCONT, SIGUSR2 (stack dump): nothing to do
    if (this.exited) return;
    this.exited = true;
    this.quiet();
    this.stream?.cancel();
    this.release();
    this.onExit(null, sig);
  }
}

function main(): void {
  const { values } = parseArgs({
    options: {
      rate: { type: "string", default: "1" },
      "plan-every": { type: "string", default: "4" },
      "ranks-per-connection": { type: "string", default: "1" },
      probe: { type: "boolean", default: false },
    },
  });
  const opts: Options = { rate: Number(values.rate), planEvery: Number(values["plan-every"]), ranksPerConnection: Number(values["ranks-per-connection"]), probe: values.probe };
  const channels = new Channels(opts.ranksPerConnection);
  const counters = new Counters();
  const ranks = new Map<string, SimRank>();
  const send = (m: FromLoadgen): void => {
    // With a callback a send racing the parent's exit fails quietly instead of emitting 'error'.
    if (process.connected) process.send?.(m, undefined, {}, () => undefined);
  };
  process.on("message", (m: ToLoadgen) => {
    switch (m.type) {
      case "launch": {
        const r = new SimRank(m.key, m.env, m.token, opts, counters, channels, (code, signal) => {
          ranks.delete(m.key);
          send({ type: "exit", key: m.key, code, signal });
        });
        ranks.set(m.key, r);
        r.start().catch((err: unknown) => {
          counters.error(`${m.key}: ${err instanceof Error ? err.message : String(err)}`);
          r.signal("SIGKILL");
        });
        return;
      }
      case "signal":
        ranks.get(m.key)?.signal(m.signal);
        return;
      case "window":
        counters.reset();
        return;
      case "stats": {
        const cpu = process.cpuUsage(counters.cpu);
        const stats: LoadgenStats = {
          ranks: ranks.size,
          reportsSent: counters.reportsSent,
          heartbeatsSent: counters.heartbeatsSent,
          planRttMs: counters.planRttMs,
          registerRttMs: counters.registerRttMs,
          errors: counters.errors,
          cpuSeconds: (cpu.user + cpu.system) / 1e6,
          windowSeconds: (performance.now() - counters.since) / 1000,
        };
        send({ type: "stats", stats });
        return;
      }
    }
  });
  // The orchestrator process going away ends the generator.
  process.on("disconnect", () => process.exit(0));
}

main();
