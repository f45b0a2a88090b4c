/**
 * The tiny CLIP pretraining job the end-to-end benchmarks run (32 px ViT,
 * byte tokens, 2 CPU ranks over the shared synthetic dataset of the e2e
 * tests), written as a spec file, plus readers of what a run leaves in its
 * state directory (the per-step history, the job's log lines).
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { LogEntry, StepPointRecord } from "../../orchestrator/src/jobs/index.js";
import { stepHistoryPath } from "../../orchestrator/src/jobs/index.js";
import { BIN, PYTHON, runProcess, tinyDataset } from "./proc.js";
import { median } from "./results.js";

/** What varies between the benchmarks' tiny jobs. */
export interface TinyJob {
  readonly name: string;
  readonly steps: number;
  /** Global batch (split over 2 ranks). */
  readonly batch: number;
  /** checkpoint.every_steps; null: no periodic checkpoint. */
  readonly everySteps: number | null;
  /** checkpoint.final */
  readonly finalCheckpoint: boolean;
  /** data.shuffle; false gives the plan a by-hand baseline computes without the orchestrator. */
  readonly shuffle: boolean;
  /** failure.* overrides. */
  readonly failure?: Readonly<Record<string, number>>;
  /** data.train instead of the shared dataset's local shards (e.g. an http:// pattern). */
  readonly train?: string;
  /** More lines of the data section (indented), such as `  cache: {dir: ...}`. */
  readonly dataLines?: readonly string[];
  /** cluster.spares (absent: the spec's default). */
  readonly spares?: number;
}

/** Writes the spec into `dir`; returns its path. */
export function writeTinySpec(dir: string, j: TinyJob): string {
  const data = tinyDataset();
  const failure = Object.entries(j.failure ?? {}).map(([k, v]) => `  ${k}: ${v}`);
  const text = [
    `name: ${j.name}`,
    "task: pretrain",
    "seed: 0",
    "model:",
    "  image: vit-tiny",
    "  text: {preset: text-tiny, context_length: 48}",
    "  embed_dim: 64",
    "  tokenizer: byte",
    "data:",
    `  train: "${j.train ?? `${data}/train-{00000..00003}.tar`}"`,
    `  val: ${data}/val-{00000..00000}.tar`,
    "  captions: {alt: 0.5, vecap: 0.5}",
    `  shuffle: ${j.shuffle}`,
    ...(j.dataLines ?? []),
    "train:",
    `  steps: ${j.steps}`,
    `  batch_size: ${j.batch}`,
    "  lr: 1.0e-3",
    "  warmup_steps: 2",
    "cluster:",
    "  workers: 2",
    ...(j.spares !== undefined ? [`  spares: ${j.spares}`] : []),
    "checkpoint:",
    `  every_steps: ${j.everySteps ?? "null"}`,
    `  final: ${j.finalCheckpoint}`,
    ...(failure.length > 0 ? ["failure:", ...failure] : []),
    "",
  ].join("\n");
  const path = join(dir, `${j.name}.yaml`);
  writeFileSync(path, text);
  return path;
}

/** The resolved first stage of a spec, exactly what the orchestrator sends workers as config_json. */
export async function resolvedStage(spec: string): Promise<Record<string, unknown>> {
  const r = await runProcess(process.execPath, [BIN, "validate", spec, "--json"], { env: { CLIPFLEET_PYTHON: PYTHON } });
  if (r.code !== 0) throw new Error(`clipfleet validate ${spec} failed: ${r.stderr}`);
  const job = JSON.parse(r.stdout) as { stages: Record<string, unknown>[] };
  const stage = job.stages[0];
  if (!stage) throw new Error(`${spec}: no stage`);
  return stage;
}

/** The `--json` summary of `clipfleet run` (the parts the benchmarks read). */
export interface RunSummary {
  readonly jobId: string;
  readonly state: string;
  readonly steps: number;
  readonly restarts: number;
  readonly finalParamsSha256: string;
  readonly wallSeconds: number;
}

/** Parses the summary `clipfleet run --json` prints at the end. */
export function parseSummary(stdout: string, stderr: string): RunSummary {
  try {
    return JSON.parse(stdout) as RunSummary;
  } catch {
    throw new Error(`clipfleet run printed no JSON summary:\n${stderr.slice(-3000)}`);
  }
}

/** Rank 0's step reports of a stage, in the order the orchestrator received them. */
export function readSteps(stateDir: string, jobId: string, stage = "main"): StepPointRecord[] {
  const file = stepHistoryPath(stateDir, jobId, stage);
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as StepPointRecord];
      } catch {
        return []; // the line being written right now
      }
    });
}

/** Every log line of a job (`clipfleet logs JOB --json`: rank lines and the orchestrator's own, with timestamps). */
export async function readLogs(stateDir: string, jobId: string): Promise<LogEntry[]> {
  const r = await runProcess(process.execPath, [BIN, "logs", jobId, "--json", "--state-dir", stateDir]);
  if (r.code !== 0) throw new Error(`clipfleet logs ${jobId} failed: ${r.stderr}`);
  return r.stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as LogEntry);
}

/**
 * Steady-state seconds per step: the median over the steps after the first
 * `warmup`, from (step, seconds) pairs. The median, not the mean: on a
 * shared machine a few steps stretched by another tenant's burst would
 * otherwise decide the figure.
 */
export function steadyStepSeconds(points: readonly { step: number; seconds: number }[], warmup: number): number {
  const steady = points.filter((p) => p.step > warmup);
  if (steady.length === 0) throw new Error(`no steps after the first ${warmup}`);
  return median(steady.map((p) => p.seconds));
}
