/**
 * Shared by the observability e2e tests (prometheus-scrape, report-run; data-convert uses the spec): a
 * small synthetic dataset made with `clipfleet data synth` in the test's own
 * temp dir, and a tiny one-rank pretraining spec over it.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { runCli } from "../helpers/cli.js";

/** Generates 256 train / 64 val samples (32 px, 2 shards) into DIR/data with the real CLI; returns that directory. */
export async function synthData(dir: string): Promise<string> {
  const out = join(dir, "data");
  const r = await runCli(["data", "synth", "--out", out, "--train", "256", "--val", "64", "--shards", "2", "--size", "32", "--seed", "0"], { cwd: dir, timeoutMs: 60_000 });
  assert.equal(r.code, 0, `clipfleet data synth failed:\n${r.stderr}`);
  return out;
}

/** Options of writeSpec. */
export interface ObsSpec {
  name: string;
  steps: number;
  /** CLIPFLEET_FAULT for the ranks (see worker-runtime tasks/common.py FaultInjection). */
  fault?: string;
  eval?: boolean;
  /** data.captions (flow YAML); the spec default when absent. */
  captions?: string;
}

/** Writes a vit-tiny (32 px) pretraining spec with 1 rank, batch 16, a checkpoint every 10 steps; returns its path. */
export function writeSpec(dir: string, data: string, o: ObsSpec): string {
  const text = `name: ${o.name}
task: pretrain
model:
  image: vit-tiny
  text: {preset: text-tiny, context_length: 32}
  embed_dim: 64
  tokenizer: byte
data:
  train: ${data}/train-{00000..00001}.tar
  val: ${data}/val-{00000..00000}.tar
${o.captions ? `  captions: ${o.captions}\n` : ""}train:
  steps: ${o.steps}
  batch_size: 16
  lr: 1.0e-3
  warmup_steps: 3
cluster:
  workers: 1
checkpoint:
  every_steps: 10
failure:
  backoff_seconds: 0.2
${o.fault ? `worker:\n  env: {CLIPFLEET_FAULT: "${o.fault}"}\n` : ""}${o.eval ? "eval: {}\n" : ""}`;
  const path = join(dir, `${o.name}.yaml`);
  writeFileSync(path, text);
  return path;
}
