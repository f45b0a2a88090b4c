/**
 * Benchmark 4, data path: samples/s of the worker's PlanLoader (decode,
 * caption choice, augmentation, tokenisation, batching) against a bare PIL
 * decode loop over the same shard files (bench/datapath.py), alternating
 * in the same run. The full run uses 256 px JPEGs cropped to 224 px (CLIP's
 * usual input), generated once into the temp dir; the quick run the 32 px
 * dataset of the e2e tests.
 */
import { existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PYTHON, runProcess, runPythonJson, tinyDataset, WORKER_RUNTIME } from "./lib/proc.js";
import { figure, type Figure } from "./lib/results.js";

interface Measured {
  runs: { bare: number; loader: number; loader1: number }[];
  threads: number;
  imageSize: number;
  batch: number;
  samples: number;
}

/** 1,024 synthetic samples of 256 px in 4 shards, generated on first use (about 20 s) and kept. */
async function dataset256(): Promise<string> {
  const out = join(tmpdir(), "clipfleet-bench-data-256-v1");
  if (!existsSync(join(out, "sizes.json"))) {
    mkdirSync(out, { recursive: true });
    const r = await runProcess(PYTHON, ["-m", "clipfleet_worker", "synth", "--out", out, "--train", "1024", "--val", "0", "--shards", "4", "--seed", "0", "--size", "256"], {
      cwd: WORKER_RUNTIME,
      env: { PYTHONPATH: WORKER_RUNTIME },
    });
    if (r.code !== 0) throw new Error(`synth failed: ${r.stderr}`);
  }
  return out;
}

/** Runs bench/datapath.py; returns the figures. */
export async function benchDataPath(quick: boolean, _work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const data = quick ? tinyDataset() : await dataset256();
  const imageSize = quick ? 32 : 224;
  // One torch thread, as a rank sharing its node gets (CLIPFLEET_THREADS): idle OpenMP threads spinning
  // next to the decode threads would halve what the second one gains.
  const m = await runPythonJson<Measured>("datapath.py", ["--data", data, "--image-size", String(imageSize), "--repeats", quick ? "1" : "3", "--threads", "2"], { OMP_NUM_THREADS: "1" });
  const what = `${m.samples} samples, ${imageSize} px out, batch ${m.batch}`;
  const figures = [
    figure({
      benchmark: "datapath",
      figure: `loader throughput, ${m.threads} decode threads`,
      unit: "samples/s",
      values: m.runs.map((r) => r.loader),
      baseline: m.runs.map((r) => r.bare),
      baselineWhat: "bare PIL decode loop over the same shards (1 thread)",
      ratios: m.runs.map((r) => r.loader / r.bare),
      note: `${what}; data.loader_threads default`,
    }),
    figure({
      benchmark: "datapath",
      figure: "loader throughput, 1 decode thread",
      unit: "samples/s",
      values: m.runs.map((r) => r.loader1),
      baseline: m.runs.map((r) => r.bare),
      baselineWhat: "bare PIL decode loop over the same shards (1 thread)",
      ratios: m.runs.map((r) => r.loader1 / r.bare),
      note: "the per-sample cost of crop, bicubic resize, normalisation and tokenisation over decoding alone",
    }),
  ];
  return { figures, details: m };
}
