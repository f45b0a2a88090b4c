/**
 * Per-step training history of a stage: rank 0's step reports, appended as
 * JSON lines to <state-dir>/jobs/<id>/steps/<stage>.jsonl (one line per
 * step, every attempt). The job record keeps only the latest progress; plots
 * and reports read this file. Appends are synchronous, like the data audit:
 * a line is on disk before the next report is handled.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { StepReport } from "../gen/clipfleet/v1/worker.js";

/** One optimizer step as rank 0 reported it (a step redone after a restart appears once per attempt). */
export interface StepPointRecord {
  stage: string;
  attempt: number;
  step: number;
  epoch: number;
  loss: number;
  lr: number;
  /** Logit scale (1/temperature), as the worker reports it. */
  temperature: number;
  samplesPerSecond: number;
  stepSeconds: number;
  dataWaitSeconds: number;
  gradNorm: number;
  tsMs: number;
}

/** The point of a step report (rank 0's) received at `tsMs`. */
export function stepPointOf(stage: string, attempt: number, rep: StepReport, tsMs: number): StepPointRecord {
  return {
    stage,
    attempt,
    step: rep.step,
    epoch: rep.epoch,
    loss: rep.loss,
    lr: rep.lr,
    temperature: rep.temperature,
    samplesPerSecond: rep.samplesPerSecond,
    stepSeconds: rep.stepSeconds,
    dataWaitSeconds: rep.dataWaitSeconds,
    gradNorm: rep.gradNorm,
    tsMs,
  };
}

/** The history file of a stage. */
export function stepHistoryPath(stateDir: string, jobId: string, stage: string): string {
  return join(stateDir, "jobs", jobId, "steps", `${stage}.jsonl`);
}

/** Appends one point (creating the directory on first use). */
export function appendStepPoint(file: string, p: StepPointRecord): void {
  try {
    appendFileSync(file, JSON.stringify(p) + "\n", { mode: 0o600 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    appendFileSync(file, JSON.stringify(p) + "\n", { mode: 0o600 });
  }
}

/**
 * The points of a history file in the order written; a line torn by a crash
 * mid-write is skipped. With `maxPoints` > 0 the result is thinned to about
 * that many (see thinPoints).
 */
export function readStepHistory(file: string, maxPoints = 0): StepPointRecord[] {
  if (!existsSync(file)) return [];
  const out: StepPointRecord[] = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line) as StepPointRecord);
    } catch {
      // a line torn by a crash mid-write
    }
  }
  return maxPoints > 0 ? thinPoints(out, maxPoints) : out;
}

/**
 * Evenly keeps about `maxPoints` points, always keeping each attempt's first
 * and last point so restarts stay visible in plots. Order is preserved.
 */
export function thinPoints(points: readonly StepPointRecord[], maxPoints: number): StepPointRecord[] {
  if (maxPoints <= 0 || points.length <= maxPoints) return [...points];
  const stride = Math.ceil(points.length / maxPoints);
  return points.filter((p, i) => {
    if (i % stride === 0) return true;
    const prev = points[i - 1];
    const next = points[i + 1];
    return prev?.attempt !== p.attempt || next?.attempt !== p.attempt;
  });
}
