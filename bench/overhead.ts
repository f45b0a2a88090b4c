/**
 * Benchmark 1, orchestration overhead: training throughput of the tiny CLIP
 * job (2 ranks, gloo, same seed, data order and steps) under `clipfleet run`
 * against the same worker code started by hand with torchrun's environment
 * and no orchestrator (bench/baseline_train.py). The two run alternately,
 * in pairs, so drift in the shared machine's load hits both alike; the
 * figure is the median of the per-pair ratios of steady-state throughput:
 * the global batch over the median step time after the first steps (their
 * warm-up excluded). Both sides also account for the CPU their processes
 * spend per steady-state step (Linux /proc), which is what explains a gap:
 * on a machine whose cores the ranks fill, every CPU millisecond another
 * process takes delays a rank, and the all-reduce makes the other wait.
 *
 * Each pair is a triple: `clipfleet run` is also run with --tls-dir (the
 * ranks' reports, heartbeats and plan requests over TLS), and the figure
 * "TLS on vs off" is the median of the per-triple throughput ratios.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { resolveManifest } from "../orchestrator/src/data/index.js";
import { freePort } from "../tests/helpers/cli.js";
import { BENCH_SRC, BIN, PYTHON, runProcess, sleep, WORKER_RUNTIME } from "./lib/proc.js";
import { figure, median, type Figure } from "./lib/results.js";
import { parseSummary, readSteps, resolvedStage, steadyStepSeconds, writeTinySpec } from "./lib/spec.js";

/** What one orchestrated or by-hand run measured. */
interface RunMeasure {
  readonly steadyStepSeconds: number;
  readonly samplesPerSecond: number;
  readonly finalParamsSha256: string;
  /** CPU milliseconds per steady-state step of the ranks together, and of the orchestrator (0 by hand). */
  readonly workerCpuMsPerStep: number;
  readonly orchestratorCpuMsPerStep: number;
}

/** One configuration of the benchmark (the global batch sets the step time). */
interface Config {
  readonly batch: number;
  readonly pairs: number;
  readonly steps: number;
  readonly warmup: number;
}

/** Sizes of the benchmark (quick: one short pair, so `make test` keeps it working). */
export function overheadPlan(quick: boolean): Config[] {
  if (quick) return [{ batch: 64, pairs: 1, steps: 20, warmup: 5 }];
  // The issue's tiny job, then 4x the work per step with the same messages per step.
  return [
    { batch: 64, pairs: 7, steps: 80, warmup: 10 },
    { batch: 256, pairs: 3, steps: 40, warmup: 8 },
  ];
}

/**
 * The long run: the pairs' runs are 80 steps, the first 15 s of a fresh
 * orchestrator process, while V8 still compiles its hot paths (perf put a
 * fifth of the orchestrator's CPU there) and the heap grows to its working
 * size. A job runs for hours: its CPU per step is that of later steps, so
 * `clipfleet run` also trains a longer job, its CPU accounted from the
 * middle on. Quick: a miniature, so the code path stays alive.
 */
export function longRunPlan(quick: boolean): Config & { runs: number } {
  return quick ? { batch: 64, pairs: 1, steps: 30, warmup: 15, runs: 1 } : { batch: 64, pairs: 1, steps: 600, warmup: 300, runs: 2 };
}

/** Runs the pairs of every configuration and the long run; returns the figures and the per-run measurements. */
export async function benchOverhead(quick: boolean, work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const figures: Figure[] = [];
  const details: unknown[] = [];
  let handStepSeconds: number[] = [];
  for (const c of overheadPlan(quick)) {
    const r = await runConfig(c, join(work, `batch-${c.batch}`));
    figures.push(...r.figures);
    details.push(r.details);
    if (c.batch === 64) handStepSeconds = r.handStepSeconds;
  }
  const long = await runLong(longRunPlan(quick), join(work, "long"), handStepSeconds);
  figures.push(...long.figures);
  details.push(long.details);
  return { figures, details };
}

/** `clipfleet run` of the long job, CPU per step from its middle on; the bound against the pairs' by-hand step time. */
async function runLong(c: Config & { runs: number }, work: string, handStepSeconds: number[]): Promise<{ figures: Figure[]; details: unknown }> {
  mkdirSync(work, { recursive: true });
  const spec = writeTinySpec(work, { name: "overhead-long", steps: c.steps, batch: c.batch, everySteps: null, finalCheckpoint: false, shuffle: false });
  const runs: RunMeasure[] = [];
  for (let i = 0; i < c.runs; i++) runs.push(await runOrchestrated(spec, join(work, `run-${i}`), c, ""));
  const hand = handStepSeconds.length > 0 ? median(handStepSeconds) : null;
  const tag = `batch ${c.batch}, steps ${c.warmup}-${c.steps - 2} of ${c.steps}`;
  const figures = [
    figure({
      benchmark: "overhead",
      figure: `orchestrator process CPU per step, ${tag}`,
      unit: "ms",
      values: runs.map((r) => r.orchestratorCpuMsPerStep),
      target: "<= 1.4",
      note: "the `clipfleet run` process after its warm-up (JIT compilation, heap growth), as through the rest of a long job",
    }),
    ...(hand === null
      ? []
      : [
          figure({
            benchmark: "overhead",
            figure: `throughput bound from CPU accounting, ${tag}`,
            unit: "x",
            values: runs.map((r) => 1 - r.orchestratorCpuMsPerStep / 1000 / hand),
            target: ">= 0.98",
            note: "1 - CPU per step of the long run / the pairs' median by-hand step time (batch 64)",
          }),
        ]),
  ];
  return { figures, details: { long: c, runs, handStepSeconds: hand } };
}

async function runConfig(c: Config, work: string): Promise<{ figures: Figure[]; details: unknown; handStepSeconds: number[] }> {
  mkdirSync(work, { recursive: true });
  const spec = writeTinySpec(work, { name: "overhead", steps: c.steps, batch: c.batch, everySteps: null, finalCheckpoint: false, shuffle: false });
  const stage = await resolvedStage(spec);
  const data = stage.data as { train: string[]; val: string[] };
  const train = await resolveManifest(data.train);
  const val = await resolveManifest(data.val, { field: "data.val" });
  const jobFile = join(work, "baseline-job.json");
  writeFileSync(
    jobFile,
    JSON.stringify({
      config: stage,
      train_shards: train.shards.map((s) => [s.url, s.samples]),
      val_shards: val.shards.map((s) => [s.url, s.samples]),
      total_steps: c.steps,
      global_batch: c.batch,
      steps_per_epoch: Math.floor(train.totalSamples / c.batch),
      work_dir: join(work, "baseline"),
    }),
  );

  const tlsDir = join(work, "tls");
  const certs = await runProcess(process.execPath, [BIN, "certs", "init", "--dir", tlsDir, "--host", "127.0.0.1"]);
  if (certs.code !== 0) throw new Error(`clipfleet certs init: ${certs.stderr}`);

  const orchestrated: RunMeasure[] = [];
  const byHand: RunMeasure[] = [];
  const overTls: RunMeasure[] = [];
  for (let i = 0; i < c.pairs; i++) {
    // Alternate the order, so a trend in the machine's load does not favour one side.
    const runs = [
      async () => orchestrated.push(await runOrchestrated(spec, join(work, `orch-${i}`), c, "")),
      async () => byHand.push(await runByHand(jobFile, join(work, `hand-${i}.json`), c)),
      async () => overTls.push(await runOrchestrated(spec, join(work, `tls-${i}`), c, tlsDir)),
    ];
    for (const run of i % 2 === 0 ? runs : runs.reverse()) await run();
  }
  // Same seed, data order, steps and code: anything but bit-identical parameters means the sides did different work.
  const sameParams = orchestrated.every((o, i) => o.finalParamsSha256 === byHand[i]?.finalParamsSha256 && o.finalParamsSha256 === overTls[i]?.finalParamsSha256);
  if (!sameParams) {
    const sha = (m: RunMeasure | undefined): string => m?.finalParamsSha256.slice(0, 12) ?? "?";
    throw new Error(`final parameters differ between clipfleet run, by hand and over TLS: ${orchestrated.map((o, i) => `${sha(o)} vs ${sha(byHand[i])} vs ${sha(overTls[i])}`).join(", ")}`);
  }
  const ratios = orchestrated.map((o, i) => o.samplesPerSecond / (byHand[i] as RunMeasure).samplesPerSecond);
  const tlsRatios = overTls.map((t, i) => t.samplesPerSecond / (orchestrated[i] as RunMeasure).samplesPerSecond);
  const tag = `batch ${c.batch}`;
  const steadyNote = `steps ${c.warmup + 1}-${c.steps} of ${c.steps}, global batch ${c.batch}, 2 ranks; median step time`;
  const figures = [
    figure({
      benchmark: "overhead",
      figure: `training throughput, clipfleet run, ${tag}`,
      unit: "samples/s",
      values: orchestrated.map((o) => o.samplesPerSecond),
      baseline: byHand.map((b) => b.samplesPerSecond),
      baselineWhat: "the same worker code started by hand (torchrun env, no orchestrator)",
      ratios,
      target: ">= 0.98",
      note: `median of per-pair ratios; ${steadyNote}; final parameters bit-identical between the two`,
    }),
    figure({
      benchmark: "overhead",
      figure: `training throughput, TLS on vs off, ${tag}`,
      unit: "samples/s",
      values: overTls.map((t) => t.samplesPerSecond),
      baseline: orchestrated.map((o) => o.samplesPerSecond),
      baselineWhat: "clipfleet run without TLS",
      ratios: tlsRatios,
      target: ">= 0.99",
      note: `median of per-run ratios; clipfleet run --tls-dir: the ranks' reports, heartbeats and plan requests over TLS; ${steadyNote}`,
    }),
    figure({
      benchmark: "overhead",
      figure: `orchestrator process CPU per step, TLS on, ${tag}`,
      unit: "ms",
      values: overTls.map((t) => t.orchestratorCpuMsPerStep),
      baseline: orchestrated.map((o) => o.orchestratorCpuMsPerStep),
      baselineWhat: "TLS off",
    }),
    figure({
      benchmark: "overhead",
      figure: `steady-state step time, ${tag}`,
      unit: "s",
      values: orchestrated.map((o) => o.steadyStepSeconds),
      baseline: byHand.map((b) => b.steadyStepSeconds),
      baselineWhat: "by hand",
    }),
    figure({
      benchmark: "overhead",
      figure: `orchestrator process CPU per step, ${tag}`,
      unit: "ms",
      values: orchestrated.map((o) => o.orchestratorCpuMsPerStep),
      note: "the `clipfleet run` process (gRPC, job service, step history, logs, progress), steady state",
    }),
    figure({
      benchmark: "overhead",
      figure: `throughput bound from CPU accounting, ${tag}`,
      unit: "x",
      values: orchestrated.map((o, i) => 1 - o.orchestratorCpuMsPerStep / 1000 / (byHand[i] as RunMeasure).steadyStepSeconds),
      note: "1 - orchestrator CPU per step / by-hand step time: the throughput ratio if every CPU millisecond of the orchestrator delayed the lockstep gang (both cores busy with ranks), the worst case",
    }),
    figure({
      benchmark: "overhead",
      figure: `worker CPU per step (both ranks), ${tag}`,
      unit: "ms",
      values: orchestrated.map((o) => o.workerCpuMsPerStep),
      baseline: byHand.map((b) => b.workerCpuMsPerStep),
      baselineWhat: "by hand (no agent threads, no RPCs)",
    }),
  ];
  return { handStepSeconds: byHand.map((b) => b.steadyStepSeconds), figures, details: { ...c, ratios, medianRatio: median(ratios), tlsRatios, medianTlsRatio: median(tlsRatios), sameFinalParams: sameParams, orchestrated, byHand, overTls } };
}

/** CPU seconds (user + system) a process has used so far; 0 once it is gone. */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}

/** sysconf(_SC_CLK_TCK): 100 on every Linux this runs on. */
const CLOCK_TICKS = 100;

/** Direct children of a process (Linux 3.5+: /proc/PID/task/TID/children). */
function childrenOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
      readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8")
        .split(" ")
        .filter((s) => s.trim() !== "")
        .map(Number),
    );
  } catch {
    return [];
  }
}

/**
 * Samples CPU time of some processes against training progress, keeping the
 * first sample at or after step `from` and the last one before step `to`:
 * their difference over the steps between is the steady-state CPU per step.
 */
class CpuPerStep {
  private first: { step: number; cpu: number[] } | null = null;
  private last: { step: number; cpu: number[] } | null = null;

  constructor(
    private readonly from: number,
    private readonly to: number,
  ) {}

  sample(step: number, pids: readonly number[]): void {
    if (step < this.from || step >= this.to) return;
    const cpu = pids.map(cpuSeconds);
    if (cpu.some((c) => c === 0)) return; // a process not started yet or gone
    if (!this.first) this.first = { step, cpu };
    else this.last = { step, cpu };
  }

  /** Milliseconds of CPU per step of each sampled process. */
  perStepMs(): number[] {
    const { first, last } = this;
    if (!first || !last || last.step <= first.step) throw new Error(`too few samples between steps ${this.from} and ${this.to} to account for CPU`);
    return first.cpu.map((c0, i) => (((last.cpu[i] ?? c0) - c0) * 1000) / (last.step - first.step));
  }
}

/** `clipfleet run SPEC` (with TLS when `tlsDir` is set); step times from rank 0's step history, CPU from /proc while it trains. */
async function runOrchestrated(spec: string, stateDir: string, c: Config, tlsDir: string): Promise<RunMeasure> {
  const env = { ...process.env, CLIPFLEET_PYTHON: PYTHON, CLIPFLEET_TLS_DIR: tlsDir };
  const child = spawn(process.execPath, [BIN, "run", spec, "--state-dir", stateDir, "--json"], { env, stdio: ["ignore", "pipe", "pipe"] });
  const out = collect(child);
  const acct = new CpuPerStep(c.warmup, c.steps - 2);
  let jobId: string | null = null;
  let ranks: number[] = [];
  while (child.exitCode === null && child.signalCode === null) {
    jobId ??= /clipfleet: job (j-[0-9a-f-]+)/.exec(out.stderr)?.[1] ?? null;
    if (jobId) {
      const step = readSteps(stateDir, jobId).at(-1)?.step ?? 0;
      if (ranks.length < 2) ranks = childrenOf(child.pid ?? 0).filter((p) => /clipfleet_worker\0run/.test(cmdline(p)));
      if (ranks.length === 2) acct.sample(step, [child.pid ?? 0, ...ranks]);
    }
    await sleep(50);
  }
  await out.done;
  const s = parseSummary(out.stdout, out.stderr);
  if (s.state !== "SUCCEEDED") throw new Error(`clipfleet run ended ${s.state}:\n${out.stderr.slice(-3000)}`);
  const steady = steadyStepSeconds(
    readSteps(stateDir, s.jobId).map((x) => ({ step: x.step, seconds: x.stepSeconds })),
    c.warmup,
  );
  const [orch = 0, ...workers] = acct.perStepMs();
  return { steadyStepSeconds: steady, samplesPerSecond: c.batch / steady, finalParamsSha256: s.finalParamsSha256, workerCpuMsPerStep: workers.reduce((a, b) => a + b, 0), orchestratorCpuMsPerStep: orch };
}

/** Two ranks of bench/baseline_train.py with the environment the orchestrator would give them. */
async function runByHand(jobFile: string, out: string, c: Config): Promise<RunMeasure> {
  const port = await freePort();
  // The local launcher's thread budget: the node's slots shared by its ranks.
  const threads = String(Math.max(1, Math.floor(availableParallelism() / 2)));
  const ranks = [0, 1].map((rank) =>
    spawn(PYTHON, [join(BENCH_SRC, "baseline_train.py"), "--job", jobFile, "--out", out], {
      cwd: WORKER_RUNTIME,
      env: {
        ...process.env,
        PYTHONPATH: WORKER_RUNTIME,
        PYTHONUNBUFFERED: "1",
        RANK: String(rank),
        LOCAL_RANK: String(rank),
        WORLD_SIZE: "2",
        LOCAL_WORLD_SIZE: "2",
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
        CUDA_VISIBLE_DEVICES: "",
        OMP_NUM_THREADS: threads,
        CLIPFLEET_THREADS: threads,
      },
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  const outputs = ranks.map(collect);
  const acct = new CpuPerStep(c.warmup, c.steps - 2);
  const timer = setTimeout(() => ranks.forEach((r) => r.kill("SIGKILL")), 10 * 60_000);
  while (ranks.some((r) => r.exitCode === null && r.signalCode === null)) {
    // Rank 0 prints "step N/TOTAL ..." after each step, as under the orchestrator.
    const step = Number([...(outputs[0]?.stdout ?? "").matchAll(/^step (\d+)\//gm)].at(-1)?.[1] ?? 0);
    acct.sample(step, ranks.map((r) => r.pid ?? 0));
    await sleep(50);
  }
  clearTimeout(timer);
  const done = await Promise.all(outputs.map((o) => o.done));
  for (const [rank, code] of done.entries()) {
    if (code !== 0) throw new Error(`baseline_train.py rank ${rank} failed (${code}):\n${outputs[rank]?.stderr.slice(-3000) ?? ""}`);
  }
  const res = JSON.parse(readFileSync(out, "utf8")) as { steps: [number, number, number][]; finalParamsSha256: string };
  const steady = steadyStepSeconds(
    res.steps.map(([step, seconds]) => ({ step, seconds })),
    c.warmup,
  );
  const perRank = acct.perStepMs();
  return { steadyStepSeconds: steady, samplesPerSecond: c.batch / steady, finalParamsSha256: res.finalParamsSha256, workerCpuMsPerStep: perRank.reduce((a, b) => a + b, 0), orchestratorCpuMsPerStep: 0 };
}

/** The command line of a process, NUL-separated ("" once it is gone). */
function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return "";
  }
}

/** Accumulates a child's output; `done` resolves with its exit code once its pipes are drained. */
function collect(child: ChildProcess): { stdout: string; stderr: string; done: Promise<number | null> } {
  const o = { stdout: "", stderr: "", done: new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code))) };
  child.stdout?.on("data", (d: Buffer) => (o.stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (o.stderr += d.toString()));
  return o;
}
