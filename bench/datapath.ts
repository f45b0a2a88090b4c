/**
 * Benchmark 4, data path: samples/s of the worker's PlanLoader (decode,
 * caption choice, augmentation, tokenisation, batching) against bare loops
 * over the same shard files (bench/datapath.py), alternating in the same
 * run: the least a CLIP sample needs (decode, resize, normalise: the
 * loader's own overhead is what is left) and a decode-only loop. The full
 * run uses 256 px JPEGs cropped to 224 px (CLIP's usual input) and 512 px
 * JPEGs (a web image's usual size: the reduced-scale decode path), generated
 * once into the temp dir; the quick run the 32 px dataset of the e2e tests.
 */
import { existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PYTHON, runProcess, runPythonJson, tinyDataset, WORKER_RUNTIME } from "./lib/proc.js";
import { figure, type Figure } from "./lib/results.js";

interface Measured {
  runs: { bare: number; minimum: number; minimum1: number; loader: number; loader1: number }[];
  threads: number;
  imageSize: number;
  batch: number;
  samples: number;
}

/** `samples` synthetic samples of `size` px in 4 shards, generated on first use and kept. */
async function dataset(size: number, samples: number): Promise<string> {
  const out = join(tmpdir(), `clipfleet-bench-data-${size}-${samples === 1024 ? "v1" : `${samples}-v1`}`);
  if (!existsSync(join(out, "sizes.json"))) {
    mkdirSync(out, { recursive: true });
    const r = await runProcess(PYTHON, ["-m", "clipfleet_worker", "synth", "--out", out, "--train", String(samples), "--val", "0", "--shards", "4", "--seed", "0", "--size", String(size)], {
      cwd: WORKER_RUNTIME,
      env: { PYTHONPATH: WORKER_RUNTIME },
    });
    if (r.code !== 0) throw new Error(`synth failed: ${r.stderr}`);
  }
  return out;
}

/** The figures of one dataset: loader against the minimum loop (1 and N threads), and samples/s per core. */
function figures(m: Measured, sources: string): Figure[] {
  const what = `${m.samples} samples of ${sources} JPEGs, ${m.imageSize} px out, batch ${m.batch}`;
  const minimum = "decode + one bicubic resize of the centre square + normalisation, front to back over the same shards";
  return [
    figure({
      benchmark: "datapath",
      figure: `loader / minimum CLIP loop, ${sources} sources, ${m.threads} threads`,
      unit: "samples/s",
      values: m.runs.map((r) => r.loader),
      baseline: m.runs.map((r) => r.minimum),
      baselineWhat: `${minimum} (${m.threads} threads)`,
      ratios: m.runs.map((r) => r.loader / r.minimum),
      target: ">= 0.9",
      note: `${what}; data.loader_threads default`,
    }),
    figure({
      benchmark: "datapath",
      figure: `loader / minimum CLIP loop, ${sources} sources, 1 thread`,
      unit: "samples/s",
      values: m.runs.map((r) => r.loader1),
      baseline: m.runs.map((r) => r.minimum1),
      baselineWhat: `${minimum} (1 thread)`,
      ratios: m.runs.map((r) => r.loader1 / r.minimum1),
      target: ">= 0.9",
      note: `${what}; the loader's own overhead: random access, captions, keyed crop, tokenisation, batching`,
    }),
    figure({
      benchmark: "datapath",
      figure: `loader samples/s per core, ${sources} sources, ${m.imageSize} px`,
      unit: "samples/s",
      values: m.runs.map((r) => r.loader1),
      baseline: m.runs.map((r) => r.bare),
      baselineWhat: "bare PIL decode loop over the same shards (1 thread): decoding alone",
      ratios: m.runs.map((r) => r.loader1 / r.bare),
      note: `${what}; 1 decode thread, 1 torch thread`,
    }),
  ];
}

/** Runs bench/datapath.py on each dataset; returns the figures. */
export async function benchDataPath(quick: boolean, _work: string): Promise<{ figures: Figure[]; details: unknown }> {
  // One torch thread, as a rank sharing its node gets (CLIPFLEET_THREADS): idle OpenMP threads spinning
  // next to the decode threads would halve what the second one gains.
  const measure = (data: string, imageSize: number, repeats: number): Promise<Measured> =>
    runPythonJson<Measured>("datapath.py", ["--data", data, "--image-size", String(imageSize), "--repeats", String(repeats), "--threads", "2"], { OMP_NUM_THREADS: "1" });
  if (quick) {
    const m = await measure(tinyDataset(), 32, 1);
    return { figures: figures(m, "32 px"), details: { "32px": m } };
  }
  const m256 = await measure(await dataset(256, 1024), 224, 3);
  const m512 = await measure(await dataset(512, 512), 224, 3);
  return { figures: [...figures(m256, "256 px"), ...figures(m512, "512 px")], details: { "256px": m256, "512px": m512 } };
}
