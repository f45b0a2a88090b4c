/**
 * Benchmark 1, orchestration overhead: training throughput of the tiny CLIP
 * job (2 ranks, gloo, same seed, data order and steps) under `clipfleet run`
 * against the same worker code started by hand with torchrun's environment
 * and no orchestrator (bench/baseline_train.py). The two run alternately,
 * in pairs, so drift in the shared machine's load hits both alike; the
 * figure is the median of the per-pair ratios of steady-state throughput
 * (the first steps, with their warm-up, excluded).
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { resolveManifest } from "../orchestrator/src/data/index.js";
import { freePort } from "../tests/helpers/cli.js";
import { figure, median, type Figure } from "./lib/results.js";
import { BENCH_SRC, BIN, PYTHON, runProcess, WORKER_RUNTIME } from "./lib/proc.js";
import { parseSummary, readSteps, resolvedStage, steadyStepSeconds, writeTinySpec } from "./lib/spec.js";

/** What one orchestrated or by-hand run measured. */
interface RunMeasure {
  readonly steadyStepSeconds: number;
  readonly samplesPerSecond: number;
  readonly finalParamsSha256: string;
  readonly wallSeconds: number;
}

/** Sizes of the benchmark (quick: one short pair, so `make test` keeps it working). */
export function overheadPlan(quick: boolean): { pairs: number; steps: number; warmup: number; batch: number } {
  return quick ? { pairs: 1, steps: 20, warmup: 5, batch: 64 } : { pairs: 5, steps: 80, warmup: 10, batch: 64 };
}

/** Runs the pairs; returns the figures and the per-run measurements. */
export async function benchOverhead(quick: boolean, work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const p = overheadPlan(quick);
  const spec = writeTinySpec(work, { name: "overhead", steps: p.steps, batch: p.batch, everySteps: null, finalCheckpoint: false, shuffle: false });
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
      total_steps: p.steps,
      global_batch: p.batch,
      steps_per_epoch: Math.floor(train.totalSamples / p.batch),
      work_dir: join(work, "baseline"),
    }),
  );

  const orchestrated: RunMeasure[] = [];
  const byHand: RunMeasure[] = [];
  for (let i = 0; i < p.pairs; i++) {
    // Alternate which goes first, so a trend in the machine's load does not favour one side.
    if (i % 2 === 0) {
      orchestrated.push(await runOrchestrated(spec, join(work, `orch-${i}`), p.batch, p.warmup));
      byHand.push(await runByHand(jobFile, join(work, `hand-${i}.json`), p.batch, p.warmup));
    } else {
      byHand.push(await runByHand(jobFile, join(work, `hand-${i}.json`), p.batch, p.warmup));
      orchestrated.push(await runOrchestrated(spec, join(work, `orch-${i}`), p.batch, p.warmup));
    }
  }
  const ratios = orchestrated.map((o, i) => o.samplesPerSecond / (byHand[i] as RunMeasure).samplesPerSecond);
  const sameParams = orchestrated.every((o, i) => o.finalParamsSha256 === byHand[i]?.finalParamsSha256);
  const steadyNote = `steps ${p.warmup + 1}-${p.steps} of ${p.steps}, global batch ${p.batch}, 2 ranks`;
  const figures = [
    figure({
      benchmark: "overhead",
      figure: "training throughput, clipfleet run",
      unit: "samples/s",
      values: orchestrated.map((o) => o.samplesPerSecond),
      baseline: byHand.map((b) => b.samplesPerSecond),
      baselineWhat: "the same worker code started by hand (torchrun env, no orchestrator)",
      ratios,
      target: ">= 0.98",
      note: `median of per-pair ratios; ${steadyNote}; final parameters ${sameParams ? "bit-identical" : "DIFFER"} between the two`,
    }),
    figure({ benchmark: "overhead", figure: "steady-state step time, clipfleet run", unit: "s", values: orchestrated.map((o) => o.steadyStepSeconds) }),
    figure({ benchmark: "overhead", figure: "steady-state step time, by hand", unit: "s", values: byHand.map((b) => b.steadyStepSeconds) }),
  ];
  return {
    figures,
    details: { ...p, ratios, medianRatio: median(ratios), sameFinalParams: sameParams, orchestrated, byHand },
  };
}

/** `clipfleet run SPEC`; steady-state step time from rank 0's step history. */
async function runOrchestrated(spec: string, stateDir: string, batch: number, warmup: number): Promise<RunMeasure> {
  const r = await runProcess(process.execPath, [BIN, "run", spec, "--state-dir", stateDir, "--json"], { env: { CLIPFLEET_PYTHON: PYTHON }, timeoutMs: 10 * 60_000 });
  const s = parseSummary(r.stdout, r.stderr);
  if (s.state !== "SUCCEEDED") throw new Error(`clipfleet run ended ${s.state}:\n${r.stderr.slice(-3000)}`);
  const steps = readSteps(stateDir, s.jobId).map((x) => ({ step: x.step, seconds: x.stepSeconds }));
  const steady = steadyStepSeconds(steps, warmup);
  return { steadyStepSeconds: steady, samplesPerSecond: batch / steady, finalParamsSha256: s.finalParamsSha256, wallSeconds: s.wallSeconds };
}

/** Two ranks of bench/baseline_train.py with the environment the orchestrator would give them. */
async function runByHand(jobFile: string, out: string, batch: number, warmup: number): Promise<RunMeasure> {
  const port = await freePort();
  // The local launcher's thread budget: the node's slots shared by its ranks.
  const threads = String(Math.max(1, Math.floor(availableParallelism() / 2)));
  const ranks = [0, 1].map(
    (rank) =>
      new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
        const child = spawn(PYTHON, [join(BENCH_SRC, "baseline_train.py"), "--job", jobFile, "--out", out], {
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
          stdio: ["ignore", "ignore", "pipe"],
        });
        let stderr = "";
        child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        const timer = setTimeout(() => child.kill("SIGKILL"), 10 * 60_000);
        child.once("error", reject);
        child.once("close", (code) => {
          clearTimeout(timer);
          resolve({ code, stderr });
        });
      }),
  );
  const done = await Promise.all(ranks);
  for (const [rank, d] of done.entries()) {
    if (d.code !== 0) throw new Error(`baseline_train.py rank ${rank} failed (${d.code}):\n${d.stderr.slice(-3000)}`);
  }
  const res = JSON.parse(readFileSync(out, "utf8")) as { steps: [number, number][]; finalParamsSha256: string; wallSeconds: number };
  const steady = steadyStepSeconds(
    res.steps.map(([step, seconds]) => ({ step, seconds })),
    warmup,
  );
  return { steadyStepSeconds: steady, samplesPerSecond: batch / steady, finalParamsSha256: res.finalParamsSha256, wallSeconds: res.wallSeconds };
}
