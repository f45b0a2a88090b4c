/**
 * Benchmark 6's measuring process (run with --expose-gc, one per benchmark
 * run, so heap figures are this plan's alone): builds the dataset manifest
 * and data plan for SHARDS shards of SAMPLES samples each, then resumes the
 * cursor mid-epoch and slices one step for every one of RANKS ranks, as the
 * orchestrator does when a gang restarts. The baseline of the resumed
 * figures is the same work at the very start (epoch 0, step 0). Prints one
 * JSON line.
 *
 *   node --expose-gc dist/bench/dataplan-measure.js --shards 1000000 --samples 10000 --ranks 10000 --per-rank 32 --repeats 5
 */
import { parseArgs } from "node:util";
import { DataPlan, manifestOf, type ShardInfo } from "../orchestrator/src/data/index.js";

/** One repetition's timings (seconds) and heap growth (bytes). */
interface Repeat {
  readonly buildSeconds: number;
  readonly heapBytes: number;
  readonly resumeSeconds: number;
  readonly startSeconds: number;
  readonly sliceAllResumedSeconds: number;
  readonly sliceAllStartSeconds: number;
}

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (!g) throw new Error("run with node --expose-gc");
  g();
  g();
}

function seconds(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** The shard list a manifest is built from (what sizes.json gives); not timed: it is input. */
function shardList(shards: number, samples: number): ShardInfo[] {
  const out = new Array<ShardInfo>(shards);
  for (let i = 0; i < shards; i++) out[i] = { url: `/datasets/laion-400m/${String(i).padStart(7, "0")}.tar`, samples };
  return out;
}

/** Slices of every rank for `step`; returns a checksum so the work cannot be optimised away. */
function sliceAll(plan: DataPlan, step: number, ranks: number): number {
  let sum = 0;
  for (let r = 0; r < ranks; r++) sum += plan.slice(step, r, ranks).sampleIds[0] ?? 0;
  return sum;
}

function main(): void {
  const { values } = parseArgs({
    options: {
      shards: { type: "string", default: "1000000" },
      samples: { type: "string", default: "10000" },
      ranks: { type: "string", default: "10000" },
      "per-rank": { type: "string", default: "32" },
      repeats: { type: "string", default: "5" },
    },
  });
  const shards = Number(values.shards);
  const samples = Number(values.samples);
  const ranks = Number(values.ranks);
  const batch = ranks * Number(values["per-rank"]);
  const repeats: Repeat[] = [];
  let check = 0;
  // Repetition -1 warms the JIT up and is not recorded (else the first timed call pays for compilation).
  for (let i = -1; i < Number(values.repeats); i++) {
    gc();
    const heap0 = process.memoryUsage().heapUsed;
    const list = shardList(shards, samples);
    let t = process.hrtime.bigint();
    const manifest = manifestOf(list);
    const plan = new DataPlan({ manifest, seed: 7, batchSize: batch, shuffle: true, fraction: 1 });
    const buildSeconds = seconds(t);
    gc();
    const heapBytes = process.memoryUsage().heapUsed - heap0;

    // A checkpoint's cursor, mid-way through a later epoch (a new epoch permutation to key).
    const cursor = { epoch: 4 + i, sampleInEpoch: Math.floor(plan.stepsPerEpoch / 2) * batch };
    t = process.hrtime.bigint();
    const step = plan.stepOfCursor(cursor);
    check += plan.slice(step, 0, ranks).sampleIds[0] ?? 0;
    const resumeSeconds = seconds(t);
    t = process.hrtime.bigint();
    check += sliceAll(plan, step, ranks);
    const sliceAllResumedSeconds = seconds(t);

    // Baseline: the same at the very start of training, on a fresh plan.
    const fresh = new DataPlan({ manifest, seed: 7, batchSize: batch, shuffle: true, fraction: 1 });
    t = process.hrtime.bigint();
    check += fresh.slice(fresh.stepOfCursor({ epoch: 0, sampleInEpoch: 0 }), 0, ranks).sampleIds[0] ?? 0;
    const startSeconds = seconds(t);
    t = process.hrtime.bigint();
    check += sliceAll(fresh, 0, ranks);
    const sliceAllStartSeconds = seconds(t);
    if (i >= 0) repeats.push({ buildSeconds, heapBytes, resumeSeconds, startSeconds, sliceAllResumedSeconds, sliceAllStartSeconds });
  }
  process.stdout.write(JSON.stringify({ shards, samples, ranks, batch, repeats, check }) + "\n");
}

main();
