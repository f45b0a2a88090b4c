/**
 * Benchmark 3, control-plane scale: 100, 1,000 and 10,000 simulated worker
 * ranks (real gRPC clients, no torch) at 1 step report per second each,
 * against a real orchestrator on loopback (bench/scale/server.ts, one
 * process per size). Gangs are at most 2,500 ranks (cluster.workers is
 * capped at 4,096), so 10,000 ranks are 4 jobs. Bounded: each size runs
 * a few seconds of warm-up and one measurement window.
 */
import { existsSync, linkSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PYTHON, ROOT, runNodeJson, runProcess, WORKER_RUNTIME } from "./lib/proc.js";
import { figure, median, type Figure } from "./lib/results.js";
import type { ScaleResult } from "./scale/server.js";

/**
 * The simulated jobs' dataset: 64 shards of 4,096 samples (262,144), so an
 * epoch spans about 100 steps even for a 2,500-rank gang (the plan keys one
 * permutation per epoch), with a shard list as short as a real dataset's of
 * that size (every assignment carries it). The shards are links to the 2 of
 * a 16 px synthetic dataset generated once (about 15 s) and kept in the temp
 * dir; nobody decodes them.
 */
const SHARDS = 64;
const PER_SHARD = 4096;

/**
 * Ranks per client connection: one each (as separate worker processes) up
 * to 1,000; 50 at 10,000, where a connection per rank costs the generators
 * (which share the machine's 2 cores with the orchestrator) more CPU than
 * the orchestrator itself and starves it.
 */
function ranksPerConnection(ranks: number): number {
  return ranks > 1000 ? 50 : 1;
}

/** Sizes and timings (quick: 100 ranks for a few seconds). */
export function scalePlan(quick: boolean): { sizes: number[]; warmup: number; window: number; scrapes: number } {
  return quick ? { sizes: [100], warmup: 1, window: 4, scrapes: 2 } : { sizes: [100, 1000, 10000], warmup: 5, window: 20, scrapes: 5 };
}

async function scaleDataset(dir: string): Promise<string> {
  const base = join(tmpdir(), "clipfleet-bench-scale-base-v1");
  if (!existsSync(join(base, "sizes.json"))) {
    mkdirSync(base, { recursive: true });
    const r = await runProcess(PYTHON, ["-m", "clipfleet_worker", "synth", "--out", base, "--train", String(2 * PER_SHARD), "--val", "0", "--shards", "2", "--seed", "0", "--size", "16"], {
      cwd: WORKER_RUNTIME,
      env: { PYTHONPATH: WORKER_RUNTIME },
    });
    if (r.code !== 0) throw new Error(`synth failed: ${r.stderr}`);
  }
  mkdirSync(dir, { recursive: true });
  const sizes: Record<string, number> = {};
  for (let i = 0; i < SHARDS; i++) {
    const name = `train-${String(i).padStart(5, "0")}.tar`;
    const from = join(base, `train-${String(i % 2).padStart(5, "0")}.tar`);
    try {
      linkSync(from, join(dir, name));
    } catch {
      symlinkSync(from, join(dir, name));
    }
    sizes[name] = PER_SHARD;
  }
  writeFileSync(join(dir, "sizes.json"), JSON.stringify(sizes));
  return dir;
}

/** Runs every size; returns figures per size. */
export async function benchScale(quick: boolean, work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const p = scalePlan(quick);
  const data = await scaleDataset(join(work, "data"));
  const results: ScaleResult[] = [];
  for (const ranks of p.sizes) {
    const stateDir = join(work, `state-${ranks}`);
    mkdirSync(stateDir, { recursive: true });
    const r = await runNodeJson<ScaleResult>(
      "scale/server.js",
      [
        ...["--ranks", String(ranks), "--gang", "2500", "--rate", "1", "--per-rank", "1", "--ranks-per-connection", String(ranksPerConnection(ranks))],
        ...["--warmup", String(p.warmup), "--window", String(p.window), "--scrapes", String(p.scrapes)],
        ...["--loadgens", ranks >= 5000 ? "2" : "1", "--data", data, "--shards", String(SHARDS), "--state-dir", stateDir, "--python", PYTHON],
      ],
      ["--max-old-space-size=8192"],
      15 * 60_000,
    );
    // The smallest size must always run cleanly: anything else is a broken benchmark, not a measurement.
    if (ranks === p.sizes[0] && (r.failures.length > 0 || r.errors.length > 0 || r.reportsPerSecond < 0.9 * r.offeredPerSecond)) {
      throw new Error(`${ranks} ranks did not run cleanly: ${[...r.failures, ...r.errors].join("; ") || `${r.reportsPerSecond.toFixed(0)} reports/s`}`);
    }
    results.push(r);
  }
  const figures: Figure[] = [];
  for (const r of results) {
    const n = `${r.ranks.toLocaleString("en-US")} ranks`;
    const issues = [...r.failures, ...r.errors.slice(0, 3)];
    figures.push(
      figure({
        benchmark: "scale",
        figure: `${n}: step reports handled`,
        unit: "reports/s",
        values: [r.reportsPerSecond],
        baseline: [r.offeredPerSecond],
        baselineWhat: "offered: ranks x 1 report/s",
        note: `${r.jobs} job(s), ${r.ranksPerConnection} rank(s) per connection; clients sent ${(r.clientsSent / r.windowSeconds).toFixed(0)}/s; heartbeats ${r.heartbeatsPerSecond.toFixed(0)}/s; ${r.windowSeconds.toFixed(0)} s window${issues.length ? `; PROBLEMS: ${issues.join("; ")}` : ""}`,
      }),
      figure({
        benchmark: "scale",
        figure: `${n}: report latency p50`,
        unit: "ms",
        values: [r.reportLatencyMs.p50],
        runs: r.reportLatencyMs.samples,
        note: "probe ranks (in a generator of their own): client write to handled by the job service",
      }),
      figure({ benchmark: "scale", figure: `${n}: report latency p99`, unit: "ms", values: [r.reportLatencyMs.p99], runs: r.reportLatencyMs.samples }),
      figure({ benchmark: "scale", figure: `${n}: GetPlan round trip p50`, unit: "ms", values: [r.planRttMs.p50], runs: r.planRttMs.samples }),
      figure({ benchmark: "scale", figure: `${n}: GetPlan round trip p99`, unit: "ms", values: [r.planRttMs.p99], runs: r.planRttMs.samples }),
      figure({
        benchmark: "scale",
        figure: `${n}: orchestrator CPU per 1,000 reports`,
        unit: "s",
        values: [r.cpuSecondsPer1000Reports],
        note: `heartbeats, GetPlan and keepalives included; orchestrator at ${(r.cpuUtilisation * 100).toFixed(0)}% of a core; event-loop delay p99 ${r.eventLoopDelayMs.p99.toFixed(1)} ms`,
      }),
      figure({
        benchmark: "scale",
        figure: `${n}: capacity estimate, reports/s per orchestrator core`,
        unit: "reports/s",
        values: [1000 / r.cpuSecondsPer1000Reports],
        note: "1,000 / CPU seconds per 1,000 reports: the rate one event loop could sustain with a core to itself, at this mix of heartbeats and plan calls",
      }),
      figure({ benchmark: "scale", figure: `${n}: orchestrator event-loop delay p99`, unit: "ms", values: [r.eventLoopDelayMs.p99], note: `max ${r.eventLoopDelayMs.max.toFixed(0)} ms; heartbeats wait this long too` }),
      figure({ benchmark: "scale", figure: `${n}: orchestrator resident memory`, unit: "MB", values: [r.rssBytes / 1e6], note: `peak ${(r.rssPeakBytes / 1e6).toFixed(0)} MB, V8 heap ${(r.heapUsedBytes / 1e6).toFixed(0)} MB` }),
      figure({ benchmark: "scale", figure: `${n}: /metrics scrape time`, unit: "s", values: r.scrapeSeconds, note: `${r.scrapeSeries.toLocaleString("en-US")} series` }),
      figure({ benchmark: "scale", figure: `${n}: /metrics scrape size`, unit: "MB", values: [median(r.scrapeBytes) / 1e6] }),
      figure({
        benchmark: "scale",
        figure: `${n}: submit to gang running`,
        unit: "s",
        values: r.gangStartSeconds.length > 0 ? r.gangStartSeconds : [NaN],
        note: `per job of ${(r.ranks / r.jobs).toLocaleString("en-US")} ranks; Register round trip p50 ${r.registerRttMs.p50.toFixed(0)} ms, p99 ${r.registerRttMs.p99.toFixed(0)} ms`,
      }),
    );
  }
  // The exposition alone at the largest size (no load generators): what a scrape costs the orchestrator's loop.
  const largest = p.sizes[p.sizes.length - 1] ?? 100;
  const expo = await runNodeJson<ExpositionResult>("scale/metrics-scrape.js", [String(largest), String(p.scrapes), join(ROOT, "dist")], ["--max-old-space-size=8192"], 5 * 60_000);
  const n = `${largest.toLocaleString("en-US")} ranks`;
  figures.push(
    figure({ benchmark: "scale", figure: `${n}: /metrics build alone`, unit: "ms", values: expo.scrapeMs, note: `${expo.series.toLocaleString("en-US")} series, ${(expo.bytes / 1e3).toFixed(0)} KB; in-process, no load (bench/scale/metrics-scrape.ts)` }),
    figure({ benchmark: "scale", figure: `${n}: longest event-loop stall during a /metrics build`, unit: "ms", values: expo.loopStallMs, note: "per build, a 1 ms ticker's largest gap" }),
  );
  return { figures, details: { ...p, results, exposition: expo } };
}

/** One line of bench/scale/metrics-scrape.js. */
interface ExpositionResult {
  readonly bytes: number;
  readonly series: number;
  readonly scrapeMs: number[];
  readonly loopStallMs: number[];
}
