/**
 * Benchmark 6, data plan: time and memory to build the manifest and plan
 * of 1,000,000 shards x 10,000 samples (1e10 samples), to resume a cursor,
 * and to slice one step for 10,000 ranks (pure orchestrator code, measured
 * in a process of its own: bench/dataplan-measure.ts).
 */
import { runNodeJson } from "./lib/proc.js";
import { figure, type Figure } from "./lib/results.js";

interface Measured {
  shards: number;
  samples: number;
  ranks: number;
  batch: number;
  repeats: {
    buildSeconds: number;
    heapBytes: number;
    resumeSeconds: number;
    startSeconds: number;
    sliceAllResumedSeconds: number;
    sliceAllStartSeconds: number;
  }[];
}

/** Sizes (quick: a tenth of the shards and ranks, two repeats). */
export function dataPlanSizes(quick: boolean): { shards: number; samples: number; ranks: number; perRank: number; repeats: number } {
  return quick ? { shards: 100_000, samples: 10_000, ranks: 1_000, perRank: 32, repeats: 2 } : { shards: 1_000_000, samples: 10_000, ranks: 10_000, perRank: 32, repeats: 5 };
}

/** Runs the measuring process; returns the figures. */
export async function benchDataPlan(quick: boolean, _work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const s = dataPlanSizes(quick);
  const m = await runNodeJson<Measured>(
    "dataplan-measure.js",
    ["--shards", String(s.shards), "--samples", String(s.samples), "--ranks", String(s.ranks), "--per-rank", String(s.perRank), "--repeats", String(s.repeats)],
    ["--expose-gc", "--max-old-space-size=8192"],
  );
  const r = m.repeats;
  const size = `${m.shards.toLocaleString("en-US")} shards x ${m.samples.toLocaleString("en-US")} samples`;
  const figures = [
    figure({ benchmark: "dataplan", figure: `build manifest + plan, ${size}`, unit: "s", values: r.map((x) => x.buildSeconds) }),
    figure({
      benchmark: "dataplan",
      figure: `memory of manifest + plan, ${size}`,
      unit: "MB",
      values: r.map((x) => x.heapBytes / 1e6),
      note: "V8 heap growth after GC, the shard list (urls, counts) included",
    }),
    figure({
      benchmark: "dataplan",
      figure: "resume: cursor to step + rank 0's slice",
      unit: "ms",
      values: r.map((x) => x.resumeSeconds * 1000),
      baseline: r.map((x) => x.startSeconds * 1000),
      baselineWhat: "the same at epoch 0, step 0 of a fresh plan",
      ratios: r.map((x) => x.resumeSeconds / x.startSeconds),
    }),
    figure({
      benchmark: "dataplan",
      figure: `slices of all ${m.ranks.toLocaleString("en-US")} ranks for one step at a resumed cursor`,
      unit: "s",
      values: r.map((x) => x.sliceAllResumedSeconds),
      baseline: r.map((x) => x.sliceAllStartSeconds),
      baselineWhat: "the same step 0 of a fresh plan",
      ratios: r.map((x) => x.sliceAllResumedSeconds / x.sliceAllStartSeconds),
      note: `global batch ${m.batch.toLocaleString("en-US")} (${m.batch / m.ranks} per rank)`,
    }),
  ];
  return { figures, details: m };
}
