/**
 * The scale benchmark's orchestrator process: a real orchestrator composed
 * in-process the way main.ts embed() composes it (file store, in-process
 * events, scheduler, job service, gRPC and metrics servers), except that
 * its launcher is the SimulatedLauncher, whose ranks are gRPC clients run
 * by forked load generators (scale/loadgen.ts). It submits jobs totalling
 * --ranks ranks over an inventory of simulated nodes, waits until every
 * gang runs, then measures a window: step reports handled per second,
 * report latency (client send to handled here), GetPlan round trips,
 * CPU seconds per 1,000 reports, resident memory, event-loop delay, and
 * /metrics scrapes from a separate process. Prints one JSON line. With
 * --profile FILE it also writes a CPU profile of the window (V8 inspector).
 *
 *   node dist/bench/scale/server.js --ranks 1000 --gang 2500 --rate 1 --window 20 --data DIR --state-dir DIR [--profile FILE]
 */
import { execFile, fork, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { loadOrCreateSigningKey } from "../../orchestrator/src/checkpoints/index.js";
import { systemClock } from "../../orchestrator/src/domain/index.js";
import { openEventBus } from "../../orchestrator/src/events/index.js";
import { JobLedger, JobLogs, JobService } from "../../orchestrator/src/jobs/index.js";
import { runSynth } from "../../orchestrator/src/launcher/index.js";
import { PRESETS_PATH, WORKER_RUNTIME_DIR } from "../../orchestrator/src/main.js";
import { Metrics, serveMetrics } from "../../orchestrator/src/metrics/index.js";
import { startWorkerServer } from "../../orchestrator/src/rpc/index.js";
import { parseInventory, Scheduler } from "../../orchestrator/src/scheduler/index.js";
import { loadPresets } from "../../orchestrator/src/spec/index.js";
import { openStore } from "../../orchestrator/src/store/index.js";
import { quantile } from "../lib/results.js";
import { SimulatedLauncher } from "./launcher.js";
import { PROBE_KEY, SENT_AT_KEY, wallMs, type FromLoadgen, type LoadgenStats, type ToLoadgen } from "./protocol.js";

const HERE = dirname(fileURLToPath(import.meta.url));
/** Slots per simulated node. */
const NODE_SLOTS = 100;

/** What one scale run measured (the JSON line). */
export interface ScaleResult {
  readonly ranks: number;
  readonly jobs: number;
  readonly rate: number;
  readonly offeredPerSecond: number;
  readonly windowSeconds: number;
  /** Seconds from submit to RUNNING (every rank registered and connected), per job. */
  readonly gangStartSeconds: number[];
  readonly reportsHandled: number;
  readonly reportsPerSecond: number;
  readonly heartbeatsPerSecond: number;
  /** Probe ranks' step reports: client write to handled by the job service. */
  readonly reportLatencyMs: { p50: number; p99: number; max: number; samples: number };
  /** The same over every rank (inflated by the busy generators' own scheduling). */
  readonly allReportLatencyMs: { p50: number; p99: number; max: number; samples: number };
  /** Probe ranks' GetPlan round trips. */
  readonly planRttMs: { p50: number; p99: number; max: number; samples: number };
  readonly allPlanRttMs: { p50: number; p99: number; max: number; samples: number };
  readonly ranksPerConnection: number;
  readonly registerRttMs: { p50: number; p99: number; max: number };
  readonly cpuSecondsPer1000Reports: number;
  readonly cpuUtilisation: number;
  readonly rssBytes: number;
  readonly rssPeakBytes: number;
  readonly heapUsedBytes: number;
  readonly eventLoopDelayMs: { p50: number; p99: number; max: number };
  readonly scrapeSeconds: number[];
  readonly scrapeBytes: number[];
  readonly scrapeSeries: number;
  readonly clientsSent: number;
  readonly clientsCpuSeconds: number;
  readonly failures: string[];
  readonly errors: string[];
}

/** Counts what the job service handles, by decorating its session handlers (bench-only probe). */
class ReportProbe {
  counting = false;
  reports = 0;
  heartbeats = 0;
  latencies: number[] = [];
  /** Latencies of the probe ranks' reports only. */
  probeLatencies: number[] = [];

  /** Wraps service.openSession so each message is timed after the service has handled it. */
  attach(service: JobService): void {
    const open = service.openSession.bind(service);
    service.openSession = (token, handle) => {
      const binding = open(token, handle);
      return {
        onMessage: (msg) => {
          binding.onMessage(msg);
          if (!this.counting) return;
          const body = msg.body;
          if (body?.$case === "step") {
            this.reports += 1;
            const sent = body.value.extra[SENT_AT_KEY];
            if (sent === undefined) return;
            const ms = wallMs() - sent;
            this.latencies.push(ms);
            if (body.value.extra[PROBE_KEY] !== undefined) this.probeLatencies.push(ms);
          } else if (body?.$case === "heartbeat") this.heartbeats += 1;
        },
        onClose: binding.onClose,
      };
    };
  }

  reset(): void {
    this.reports = 0;
    this.heartbeats = 0;
    this.latencies = [];
    this.probeLatencies = [];
    this.counting = true;
  }
}

function pcts(xs: readonly number[]): { p50: number; p99: number; max: number; samples: number } {
  if (xs.length === 0) return { p50: NaN, p99: NaN, max: NaN, samples: 0 };
  return { p50: quantile(xs, 0.5), p99: quantile(xs, 0.99), max: xs.reduce((a, b) => Math.max(a, b), -Infinity), samples: xs.length };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The pretraining spec of one simulated job (never trains: nothing reads its data but the plan). */
function jobSpec(name: string, workers: number, perRank: number, data: string, shards: number): string {
  return JSON.stringify({
    name,
    task: "pretrain",
    model: { image: "vit-tiny", text: { preset: "text-tiny", context_length: 48 }, embed_dim: 64, tokenizer: "byte" },
    data: { train: `${data}/train-{00000..${String(shards - 1).padStart(5, "0")}}.tar`, captions: { alt: 0.5, vecap: 0.5 } },
    train: { steps: 1_000_000, batch_size: workers * perRank, lr: 1e-3, warmup_steps: 2 },
    cluster: { workers },
    checkpoint: { every_steps: null, final: false },
  });
}

/** Asks every generator for its stats of the window. */
function collect(gens: readonly ChildProcess[]): Promise<LoadgenStats[]> {
  return Promise.all(
    gens.map(
      (g) =>
        new Promise<LoadgenStats>((resolve) => {
          const on = (m: FromLoadgen): void => {
            if (m.type !== "stats") return;
            g.off("message", on);
            resolve(m.stats);
          };
          g.on("message", on);
          tell(g, { type: "stats" });
        }),
    ),
  );
}

function tell(g: ChildProcess, m: ToLoadgen): void {
  if (g.connected) g.send(m);
}

/** Scrapes /metrics `count` times from a separate process (so the client's work is not counted here). */
function scrape(url: string, count: number): Promise<{ seconds: number[]; bytes: number[]; series: number }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [join(HERE, "scrape.js"), url, String(count)], { maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err) reject(new Error(`scrape.js failed: ${err.message}`));
      else resolve(JSON.parse(stdout.trim()) as { seconds: number[]; bytes: number[]; series: number });
    });
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      ranks: { type: "string", default: "100" },
      gang: { type: "string", default: "2500" },
      "per-rank": { type: "string", default: "1" },
      rate: { type: "string", default: "1" },
      "plan-every": { type: "string", default: "4" },
      warmup: { type: "string", default: "5" },
      window: { type: "string", default: "20" },
      loadgens: { type: "string", default: "1" },
      "ranks-per-connection": { type: "string", default: "1" },
      "probe-ranks": { type: "string", default: "20" },
      scrapes: { type: "string", default: "5" },
      python: { type: "string", default: "/usr/bin/python3" },
      data: { type: "string" },
      shards: { type: "string", default: "64" },
      "state-dir": { type: "string" },
      /** Write a CPU profile of the measurement window here (summarise with dist/bench/profile-summary.js). */
      profile: { type: "string" },
    },
  });
  const ranks = Number(values.ranks);
  const jobs = Math.ceil(ranks / Number(values.gang));
  const perJob = ranks / jobs;
  if (!Number.isInteger(perJob)) throw new Error(`--ranks ${ranks} does not split evenly into ${jobs} gangs of at most ${values.gang}`);
  const rate = Number(values.rate);
  const stateDir = values["state-dir"];
  const data = values.data;
  if (!stateDir || !data) throw new Error("--state-dir and --data are required");

  const forkGen = (args: string[]): ChildProcess =>
    fork(join(HERE, "loadgen.js"), ["--rate", String(rate), ...args], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const gens = Array.from({ length: Number(values.loadgens) }, () => forkGen(["--plan-every", values["plan-every"], "--ranks-per-connection", values["ranks-per-connection"]]));
  // The first ranks of the first job run alone in the probe generator: their latencies are the server's.
  const probeRanks = Math.min(Number(values["probe-ranks"]), ranks);
  const probeGen = forkGen(["--plan-every", "1", "--ranks-per-connection", "1", "--probe"]);
  const allGens = [probeGen, ...gens];
  let dealt = 0;
  let firstJob: string | null = null;
  const nodeCount = Math.ceil(ranks / NODE_SLOTS);
  const inventory = ["nodes:", ...Array.from({ length: nodeCount }, (_, i) => `  - {name: sim-${String(i).padStart(3, "0")}, host: 127.0.0.1, launcher: local, slots: ${NODE_SLOTS}}`)].join("\n");

  // Composition as in main.ts embed(), with the simulated launcher for local nodes.
  const clock = systemClock;
  const store = await openStore("file", stateDir);
  const bus = await openEventBus(null);
  const metrics = new Metrics({});
  const scheduler = new Scheduler(parseInventory(inventory, "bench-inventory.yaml"), clock);
  const launcher = new SimulatedLauncher(allGens, (req) => {
    firstJob ??= req.jobId;
    if (req.jobId === firstJob && req.rank < probeRanks) return probeGen;
    return gens[dealt++ % gens.length] ?? probeGen;
  });
  const logs = new JobLogs(stateDir);
  const ledger = new JobLedger(store, bus, clock);
  let gateway = "";
  const service = new JobService({
    ledger,
    bus,
    scheduler,
    launchers: { local: launcher, ssh: null },
    metrics,
    logs,
    clock,
    presets: loadPresets(PRESETS_PATH),
    stateDir,
    manifestKey: await loadOrCreateSigningKey(stateDir),
    workerRuntimeDir: WORKER_RUNTIME_DIR,
    python: values.python,
    gatewayAddress: () => gateway,
    synthesize: (python, synth, log) => runSynth(python, WORKER_RUNTIME_DIR, synth, log),
    scope: null,
  });
  metrics.setSource(service);
  const probe = new ReportProbe();
  probe.attach(service);
  const metricsServer = await serveMetrics(metrics, "127.0.0.1:0");
  // Only the worker gateway: the load is ranks' reports (the control API is not exercised here).
  const rpc = await startWorkerServer("127.0.0.1:0", service, null);
  gateway = rpc.address;
  await service.start({ reconcile: false });

  // From the ledger's records (service.get() clones a job with its thousands of ranks).
  const stateOf = (id: string): string => service.list().find((j) => j.id === id)?.stages[0]?.state ?? "?";
  // One job after the other, each once the previous gang runs (jobs arrive over time, not in one burst).
  // A gang that fails to start is measured and reported as it is: this machine's limit.
  const ids: string[] = [];
  const gangSeconds: number[] = [];
  const startProblems: string[] = [];
  for (let j = 0; j < jobs && startProblems.length === 0; j++) {
    const t0 = performance.now();
    const job = await service.submit({ specJson: jobSpec(`scale-${j}`, perJob, Number(values["per-rank"]), data, Number(values.shards)), specPath: "bench-scale.json", baseDir: stateDir });
    ids.push(job.id);
    for (;;) {
      const state = stateOf(job.id);
      if (state === "RUNNING") {
        gangSeconds.push((performance.now() - t0) / 1000);
        break;
      }
      if (state === "FAILED" || state === "RESTARTING") {
        startProblems.push(`${job.id} ${state} before its gang ran: ${service.list().find((x) => x.id === job.id)?.stages[0]?.reason ?? ""}`);
        break;
      }
      if (performance.now() - t0 > 5 * 60_000) {
        startProblems.push(`${job.id} not running after 5 min (${state})`);
        break;
      }
      await sleep(50);
    }
  }
  await sleep(Number(values.warmup) * 1000);

  // The measurement window.
  let rssPeak = 0;
  const rssTimer = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 250);
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  for (const g of allGens) tell(g, { type: "window" });
  const profiler = values.profile ? new Session() : null;
  if (profiler) {
    profiler.connect();
    await profiler.post("Profiler.enable");
    await profiler.post("Profiler.start");
  }
  probe.reset();
  const cpu0 = process.cpuUsage();
  const w0 = performance.now();
  await sleep(Number(values.window) * 1000);
  const cpu = process.cpuUsage(cpu0);
  const windowSeconds = (performance.now() - w0) / 1000;
  probe.counting = false;
  if (profiler && values.profile) {
    const { profile } = await profiler.post("Profiler.stop");
    writeFileSync(values.profile, JSON.stringify(profile));
    profiler.disconnect();
  }
  loop.disable();
  clearInterval(rssTimer);
  const mem = process.memoryUsage();
  const [probeStats, ...clients] = await collect(allGens);
  if (!probeStats) throw new Error("no probe statistics");
  // Scrapes while the load goes on, after the window (their cost is not in the CPU figure).
  const scraped = await scrape(`http://${metricsServer.address}/metrics`, Number(values.scrapes));
  const failures = [
    ...startProblems,
    ...ids.filter((id) => stateOf(id) !== "RUNNING").map((id) => `${id} ${stateOf(id)} after the window: ${service.list().find((j) => j.id === id)?.stages[0]?.reason ?? ""}`),
  ];

  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const result: ScaleResult = {
    ranks,
    jobs,
    rate,
    offeredPerSecond: ranks * rate,
    windowSeconds,
    gangStartSeconds: gangSeconds,
    reportsHandled: probe.reports,
    reportsPerSecond: probe.reports / windowSeconds,
    heartbeatsPerSecond: probe.heartbeats / windowSeconds,
    reportLatencyMs: pcts(probe.probeLatencies),
    allReportLatencyMs: pcts(probe.latencies),
    planRttMs: pcts(probeStats.planRttMs),
    allPlanRttMs: pcts([probeStats, ...clients].flatMap((c) => c.planRttMs)),
    ranksPerConnection: Number(values["ranks-per-connection"]),
    registerRttMs: pcts([probeStats, ...clients].flatMap((c) => c.registerRttMs)),
    cpuSecondsPer1000Reports: probe.reports > 0 ? (cpuSeconds / probe.reports) * 1000 : NaN,
    cpuUtilisation: cpuSeconds / windowSeconds,
    rssBytes: mem.rss,
    rssPeakBytes: Math.max(rssPeak, mem.rss),
    heapUsedBytes: mem.heapUsed,
    eventLoopDelayMs: { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
    scrapeSeconds: scraped.seconds,
    scrapeBytes: scraped.bytes,
    scrapeSeries: scraped.series,
    clientsSent: [probeStats, ...clients].reduce((a, c) => a + c.reportsSent, 0),
    clientsCpuSeconds: [probeStats, ...clients].reduce((a, c) => a + c.cpuSeconds, 0),
    failures,
    errors: [probeStats, ...clients].flatMap((c) => c.errors).slice(0, 20),
  };

  // Cancel the jobs (their ranks are stopped through the launcher), then close like embed().close().
  await Promise.all(ids.map((id) => service.cancel(id, { checkpoint: false, graceSeconds: 0 })));
  await service.quiesce();
  await rpc.close();
  await launcher.close();
  await service.close();
  await metricsServer.close();
  logs.closeAll();
  await bus.close();
  await store.close();
  for (const g of allGens) g.kill();
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`scale: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
