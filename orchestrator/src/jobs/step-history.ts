/**
 * Per-step training history of a stage: rank 0's step reports, appended as
 * JSON lines to <state-dir>/jobs/<id>/steps/<stage>.jsonl (one line per
 * step, every attempt). The job record keeps only the latest progress; plots
 * and reports read this file. The points of one event-loop turn are
 * appended together (StepHistoryWriter: one write per file per turn, not
 * one open-write-close per report); readers flush first.
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
  appendLines(file, JSON.stringify(p) + "\n");
}

function appendLines(file: string, text: string): void {
  try {
    appendFileSync(file, text, { mode: 0o600 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    appendFileSync(file, text, { mode: 0o600 });
  }
}

/**
 * Step points batched per event-loop turn: appended at the end of the turn
 * (setImmediate) with one write per file, or at once by flush() (before a
 * read, at shutdown). A write that fails is handed to `onError` with its file.
 */
export class StepHistoryWriter {
  private readonly pending = new Map<string, string>();
  private scheduled: NodeJS.Immediate | null = null;

  constructor(private readonly onError: (file: string, err: unknown) => void) {}

  append(file: string, p: StepPointRecord): void {
    this.pending.set(file, (this.pending.get(file) ?? "") + JSON.stringify(p) + "\n");
    this.scheduled ??= setImmediate(() => this.flush());
  }

  /** Writes every pending point now. */
  flush(): void {
    if (this.scheduled !== null) clearImmediate(this.scheduled);
    this.scheduled = null;
    for (const [file, text] of this.pending) {
      try {
        appendLines(file, text);
      } catch (err) {
        this.onError(file, err);
      }
    }
    this.pending.clear();
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
