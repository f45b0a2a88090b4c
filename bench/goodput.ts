/**
 * Benchmark `goodput`: a tiny `clipfleet run` trains for a fixed wall time
 * (10 minutes; quick: 50 s) while a random rank of the live attempt is
 * killed with kill -9 every 2 minutes (quick: every 15 s). Figures: the job's
 * goodput ratio as the orchestrator exports it (`clipfleet_job_goodput_ratio`,
 * scraped just before the run is stopped; goal >= 0.97), the same ratio
 * recomputed from rank 0's step history (a cross-check), and the wall time
 * each failure cost: from the last step before the kill to the first step
 * past it in the next attempt, less one median step.
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { freePort } from "../tests/helpers/cli.js";
import { BIN, PYTHON, ROOT, runProcess, sleep, waitFor } from "./lib/proc.js";
import { figure, median, type Figure } from "./lib/results.js";
import { readSteps, writeTinySpec } from "./lib/spec.js";

/** Sizes: wall time of the run and the kill interval (seconds). */
export function goodputPlan(quick: boolean): { seconds: number; killEverySeconds: number; everySteps: number; spares: number } {
  return quick ? { seconds: 50, killEverySeconds: 15, everySteps: 5, spares: 2 } : { seconds: 600, killEverySeconds: 120, everySteps: 5, spares: 2 };
}

/** One kill and what it cost. */
interface Failure {
  readonly atMs: number;
  readonly attempt: number;
  readonly rank: number;
  readonly lastStepBefore: number;
  readonly lossSeconds: number | null;
}

export async function benchGoodput(quick: boolean, work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const p = goodputPlan(quick);
  // The kills are the benchmark's, not the node's: no quarantine (with the default quarantine_after 3 the third
  // kill benched the only node for quarantine_seconds, and the run waited 10 minutes for slots), and a restart
  // budget the run cannot spend: the figure is what failures cost, not when the job gives up.
  const spec = writeTinySpec(work, { name: "goodput", steps: 1_000_000, batch: 64, everySteps: p.everySteps, finalCheckpoint: false, shuffle: true, spares: p.spares, failure: { max_restarts: 1000, quarantine_after: 0 } });
  const stateDir = join(work, "state");
  const port = await freePort();
  const child = spawn(process.execPath, [BIN, "run", spec, "--state-dir", stateDir, "--json", "--metrics-listen", `127.0.0.1:${port}`], {
    env: { ...process.env, CLIPFLEET_PYTHON: PYTHON },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdout.resume();
  const done = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  const guard = setTimeout(() => child.kill("SIGKILL"), (p.seconds + 300) * 1000);
  const kills: { atMs: number; attempt: number; rank: number }[] = [];
  try {
    const jobId = await waitFor("the job id", () => /clipfleet: job (j-[0-9a-f-]+)/.exec(stderr)?.[1], 120_000, 20);
    await waitFor("the first step", () => readSteps(stateDir, jobId).length > 0, 180_000, 20);
    const startedMs = Date.now();
    const endMs = startedMs + p.seconds * 1000;
    for (let next = startedMs + p.killEverySeconds * 1000; next < endMs - 5000; next += p.killEverySeconds * 1000) {
      await sleep(Math.max(0, next - Date.now()));
      // The newest attempt once it trains (a restart still starting, or not yet recorded, is waited for), and a rank of it still alive.
      const { live, victim } = await waitFor(
        `a training attempt (kill ${kills.length + 1})`,
        async () => {
          const a = await liveAttempt(stateDir, jobId).catch(() => null);
          const v = a?.ranks[Math.floor(Math.random() * a.ranks.length)];
          if (!a || !v || !readSteps(stateDir, jobId).some((s) => s.attempt === a.number)) return null;
          try {
            process.kill(v.pid, 0);
          } catch {
            return null;
          }
          return { live: a, victim: v };
        },
        120_000,
        50,
      ).catch(async (err: unknown) => {
        // Say what the job was doing instead (a run that timed out here once left nothing to go on).
        const st = await runProcess(process.execPath, [BIN, "status", jobId, "--state-dir", stateDir]).catch(() => null);
        throw new Error(`${String(err)}; the job's status:\n${st?.stdout.slice(-3000) ?? "(status failed)"}\nthe run's stderr:\n${stderr.slice(-2000)}`);
      });
      kills.push({ atMs: Date.now(), attempt: live.number, rank: victim.rank });
      process.kill(victim.pid, "SIGKILL");
    }
    await sleep(Math.max(0, endMs - Date.now()));
    const metric = await scrapeGoodput(port, jobId);
    child.kill("SIGTERM");
    const code = await done;
    // Stopped by SIGTERM: the job ends CANCELLED after its checkpoint (exit 1); anything else is a failure of the run.
    if (code !== 0 && code !== 1) throw new Error(`clipfleet run exited ${code}:\n${stderr.slice(-3000)}`);
    const result = analyse(stateDir, jobId, p, kills, metric, quick);
    // The full run also keeps its own dated file (bench/results/goodput-YYYY-MM-DD.json), besides latest.json.
    if (!quick) {
      const dir = join(ROOT, "bench", "results");
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `goodput-${new Date().toISOString().slice(0, 10)}.json`);
      writeFileSync(file, JSON.stringify({ schemaVersion: 1, startedAt: new Date(kills[0]?.atMs ?? Date.now()).toISOString(), loadAverage: loadavg(), ...result }, null, 2) + "\n");
    }
    return result;
  } finally {
    clearTimeout(guard);
    if (child.exitCode === null) {
      child.kill("SIGKILL");
      await done;
    }
  }
}

/** The job's live (newest) attempt: its number and ranks with pids, from `clipfleet status --json`. */
async function liveAttempt(stateDir: string, jobId: string): Promise<{ number: number; ranks: { rank: number; pid: number }[] }> {
  const r = await runProcess(process.execPath, [BIN, "status", jobId, "--json", "--state-dir", stateDir]);
  if (r.code !== 0) throw new Error(`clipfleet status failed: ${r.stderr}`);
  const v = JSON.parse(r.stdout) as { job: { stages: { attempts: { number: number; ranks: { rank: number; pid: number }[] }[] }[] } };
  const a = v.job.stages[0]?.attempts.at(-1);
  if (!a || a.ranks.some((x) => !(x.pid > 0))) throw new Error("no live attempt with started ranks");
  return a;
}

/** clipfleet_job_goodput_ratio of the job, from the run's /metrics. */
async function scrapeGoodput(port: number, jobId: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await res.text();
  const m = new RegExp(`^clipfleet_job_goodput_ratio\\{job_id="${jobId}"[^}]*\\} ([0-9.eE+-]+)$`, "m").exec(text);
  if (!m) throw new Error(`no clipfleet_job_goodput_ratio for ${jobId} in /metrics`);
  return Number(m[1]);
}

/** Goodput from the step history (each kept step's time once) and every failure's cost. */
function analyse(stateDir: string, jobId: string, p: ReturnType<typeof goodputPlan>, kills: readonly { atMs: number; attempt: number; rank: number }[], metric: number, quick: boolean): { figures: Figure[]; details: unknown } {
  const steps = readSteps(stateDir, jobId);
  const first = steps[0];
  if (!first) throw new Error("no steps");
  const stepMedian = median(steps.map((s) => s.stepSeconds));
  const stopMs = first.tsMs + p.seconds * 1000;
  const kept: { step: number; seconds: number }[] = [];
  for (const s of steps) {
    if (s.tsMs > stopMs) break;
    while (kept.length > 0 && (kept.at(-1)?.step ?? 0) >= s.step) kept.pop();
    kept.push({ step: s.step, seconds: s.stepSeconds });
  }
  const productive = kept.reduce((a, b) => a + b.seconds, 0);
  const fromHistory = productive / ((stopMs - (first.tsMs - first.stepSeconds * 1000)) / 1000);
  const failures: Failure[] = kills.map((k) => {
    const before = steps.filter((s) => s.attempt === k.attempt && s.tsMs <= k.atMs).at(-1);
    const lastStepBefore = before?.step ?? 0;
    const after = steps.find((s) => s.attempt > k.attempt && s.step === lastStepBefore + 1);
    return { ...k, lastStepBefore, lossSeconds: before && after ? (after.tsMs - before.tsMs) / 1000 - stepMedian : null };
  });
  const losses = failures.flatMap((f) => (f.lossSeconds === null ? [] : [f.lossSeconds]));
  const setup = `${p.seconds} s tiny run (2 CPU ranks, batch 64, checkpoint every ${p.everySteps} steps, cluster.spares ${p.spares}), kill -9 of a random rank every ${p.killEverySeconds} s (${kills.length} kills)`;
  return {
    figures: [
      figure({ benchmark: "goodput", figure: "goodput ratio (clipfleet_job_goodput_ratio)", unit: "ratio", values: [metric], target: ">= 0.97", note: `${setup}; from the step history: ${fromHistory.toFixed(3)}; median step ${stepMedian.toFixed(3)} s` }),
      figure({
        benchmark: "goodput",
        figure: "wall time lost per failure",
        unit: "s",
        values: losses.length > 0 ? losses : [Number.NaN],
        note: `last step before the kill to the first step past it in the next attempt, less one median step: restart plus the steps redone since the last checkpoint${quick ? " (quick)" : ""}`,
      }),
    ],
    details: { ...p, stepMedianSeconds: stepMedian, goodputMetric: metric, goodputFromHistory: fromHistory, productiveSeconds: productive, failures },
  };
}
