/**
 * Benchmark 5, checkpoints: save and load throughput of the worker's
 * checkpoint code (serialize, write_atomic with fsync, sha256; verify and
 * weights_only load) against `dd` on the same disk in the same run, and the
 * training stall of a synchronous against an asynchronous save
 * (bench/checkpoint_bench.py).
 */
import { runPythonJson } from "./lib/proc.js";
import { figure, type Figure } from "./lib/results.js";

export interface Measured {
  params: number;
  runs: { bytes: number; saveSeconds: number; loadSeconds: number; ddBytes: number; ddWriteSeconds: number; ddReadSeconds: number }[];
  stallSteps: number;
  stepSeconds: number;
  /** blocked = saveBlocked (save() itself) + settleBlocked (the update's wait for the deferred copy of parameters and AdamW state; absent in measurements from before it). */
  stalls: Record<"none" | "sync" | "async", { blocked: number; saveBlocked?: number; settleBlocked?: number; loop: number }>[];
  /** The first save of each mode's writer (the asynchronous one allocates its snapshot buffers), timed apart. */
  firstBlocked: Record<"sync" | "async", number>;
}

/** Model size and repetitions (quick: 2M parameters, once). */
export function checkpointSizes(quick: boolean): { params: number; width: number; repeats: number; stallRepeats: number } {
  return quick ? { params: 2_000_000, width: 512, repeats: 1, stallRepeats: 1 } : { params: 150_000_000, width: 2048, repeats: 3, stallRepeats: 2 };
}

/** Runs bench/checkpoint_bench.py in `work`; returns the figures. */
export async function benchCheckpoint(quick: boolean, work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const s = checkpointSizes(quick);
  const m = await runPythonJson<Measured>("checkpoint_bench.py", [
    "--dir",
    work,
    "--params",
    String(s.params),
    "--width",
    String(s.width),
    "--repeats",
    String(s.repeats),
    "--stall-repeats",
    String(s.stallRepeats),
  ]);
  return { figures: checkpointFigures(m), details: m };
}

/** The figures of one checkpoint_bench.py measurement. */
export function checkpointFigures(m: Measured): Figure[] {
  const mb = (bytes: number, secs: number): number => bytes / secs / 1e6;
  const size = `${(m.params / 1e6).toFixed(0)}M parameters + AdamW state, ${((m.runs[0]?.bytes ?? 0) / 1e6).toFixed(0)} MB`;
  // Measurements from before the deferred copy have no split of the stall.
  const seconds = (xs: (number | undefined)[]): string => xs.map((x) => (x === undefined ? "-" : x.toFixed(3))).join(", ");
  const extra = (mode: "sync" | "async"): number[] => m.stalls.map((x) => Math.max(0, x[mode].loop - x.none.loop));
  return [
    figure({
      benchmark: "checkpoint",
      figure: "save throughput (serialize + write + fsync + sha256)",
      unit: "MB/s",
      values: m.runs.map((r) => mb(r.bytes, r.saveSeconds)),
      baseline: m.runs.map((r) => mb(r.ddBytes, r.ddWriteSeconds)),
      baselineWhat: "dd if=/dev/zero bs=1M conv=fsync, same bytes, same directory",
      ratios: m.runs.map((r) => mb(r.bytes, r.saveSeconds) / mb(r.ddBytes, r.ddWriteSeconds)),
      note: `${size}; torch.save streams through a hashing writer into the temp file (no in-memory copy)`,
    }),
    figure({
      benchmark: "checkpoint",
      figure: "load throughput (verify sha256 + weights_only load), cold cache",
      unit: "MB/s",
      values: m.runs.map((r) => mb(r.bytes, r.loadSeconds)),
      baseline: m.runs.map((r) => mb(r.ddBytes, r.ddReadSeconds)),
      baselineWhat: "dd of=/dev/null bs=1M of the same bytes, evicted from the page cache first",
      ratios: m.runs.map((r) => mb(r.bytes, r.loadSeconds) / mb(r.ddBytes, r.ddReadSeconds)),
      note: "files evicted with posix_fadvise(DONTNEED) before both; each file read once into one buffer, hashed there, then torch.load from that buffer",
    }),
    figure({
      benchmark: "checkpoint",
      figure: "training stall of a save, asynchronous",
      unit: "s",
      values: m.stalls.map((x) => x.async.blocked),
      baseline: m.stalls.map((x) => x.sync.blocked),
      baselineWhat: "the same save, synchronous (checkpoint.async false)",
      ratios: m.stalls.map((x) => x.async.blocked / x.sync.blocked),
      note: `all the training thread blocks on for the save (the stall the worker reports): save() (asynchronous: ${seconds(m.stalls.map((x) => x.async.saveBlocked))} s) and the update's wait for the deferred copy of parameters and AdamW state (${seconds(m.stalls.map((x) => x.async.settleBlocked))} s); snapshot buffers reused; the writer's first save, which allocates them: ${m.firstBlocked.async.toFixed(2)} s (synchronous ${m.firstBlocked.sync.toFixed(2)} s)`,
    }),
    figure({
      benchmark: "checkpoint",
      figure: "extra loop time with a save, asynchronous",
      unit: "s",
      values: extra("async"),
      baseline: extra("sync"),
      baselineWhat: "the same loop with a synchronous save",
      note: `${m.stallSteps} training steps of ${m.stepSeconds.toFixed(2)} s with one save, minus the same loop without; the background write shares the cores with training`,
    }),
  ];
}
