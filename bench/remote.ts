/**
 * Remote shards (issue 15): training throughput of the tiny CLIP job (2
 * ranks) reading its shards from a loopback HTTP server through the node's
 * shard cache, cold (an empty cache: every shard fetched during the first
 * steps) and warm (the same cache again), against the same job reading the
 * same shards from local disk, in rounds of three runs so drift hits all
 * alike. Throughput is the global batch times the steps over the sum of
 * rank 0's step times (fetch waits included), so the cold figure charges
 * the downloads to training. Also `clipfleet data index` throughput over
 * the same shards by HTTP (shards/s and MB/s).
 */
import { join } from "node:path";
import { ShardServer } from "../tests/helpers/shard-server.js";
import { BIN, PYTHON, runProcess, tinyDataset, WORKER_RUNTIME } from "./lib/proc.js";
import { figure, type Figure } from "./lib/results.js";
import { parseSummary, readSteps, writeTinySpec } from "./lib/spec.js";

/** What `clipfleet data index` prints (the parts read here). */
interface IndexSummary {
  shards: number;
  bytes_read: number;
  seconds: number;
  shards_per_second: number;
  mb_per_second: number;
}

interface Round {
  local: number;
  cold: number;
  warm: number;
}

/** Runs the tiny job; returns samples/s over its step times. */
async function throughput(work: string, name: string, steps: number, batch: number, train?: string, cacheDir?: string): Promise<number> {
  const spec = writeTinySpec(work, {
    name,
    steps,
    batch,
    everySteps: null,
    finalCheckpoint: false,
    shuffle: true,
    ...(train ? { train } : {}),
    ...(cacheDir ? { dataLines: [`  cache: {dir: ${cacheDir}}`] } : {}),
  });
  const stateDir = join(work, `state-${name}`);
  const r = await runProcess(process.execPath, [BIN, "run", spec, "--json", "--state-dir", stateDir], { env: { CLIPFLEET_PYTHON: PYTHON } });
  const s = parseSummary(r.stdout, r.stderr);
  if (s.state !== "SUCCEEDED") throw new Error(`${name}: ${s.state}: ${r.stderr.slice(-2000)}`);
  const points = readSteps(stateDir, s.jobId);
  const seconds = points.reduce((a, p) => a + p.stepSeconds, 0);
  return (points.length * batch) / seconds;
}

/** The benchmark: rounds of (local, http cold, http warm), then data index over HTTP. */
export async function benchRemote(quick: boolean, work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const data = tinyDataset();
  const server = new ShardServer(data);
  await server.start();
  const rounds: Round[] = [];
  const steps = quick ? 8 : 40;
  const batch = 64;
  let index = null as IndexSummary | null;
  try {
    const url = `${server.url}/train-{00000..00003}.tar`;
    for (let i = 0; i < (quick ? 1 : 3); i++) {
      const cache = join(work, `cache-${i}`);
      // The local run goes first in even rounds and last in odd ones, so neither side always follows the other.
      const local = i % 2 === 0 ? await throughput(work, `local-${i}`, steps, batch) : 0;
      const cold = await throughput(work, `cold-${i}`, steps, batch, url, cache);
      const warm = await throughput(work, `warm-${i}`, steps, batch, url, cache);
      rounds.push({ local: i % 2 === 0 ? local : await throughput(work, `local-${i}`, steps, batch), cold, warm });
    }
    const r = await runProcess(PYTHON, ["-m", "clipfleet_worker", "index", url, "--out", join(work, "idx"), "--jobs", "4"], { cwd: WORKER_RUNTIME, env: { PYTHONPATH: WORKER_RUNTIME } });
    if (r.code !== 0) throw new Error(`data index failed: ${r.stderr}`);
    index = JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "{}") as IndexSummary;
  } finally {
    await server.close();
  }
  const what = `tiny CLIP job, 2 ranks, ${steps} steps of ${batch}, 4 shards of 256 samples (32 px) over loopback HTTP`;
  const vsLocal = (side: "cold" | "warm", target: string, note: string): Figure =>
    figure({
      benchmark: "remote",
      figure: `training from HTTP, cache ${side}`,
      unit: "samples/s",
      values: rounds.map((r) => r[side]),
      baseline: rounds.map((r) => r.local),
      baselineWhat: "the same job over the same shards on local disk",
      ratios: rounds.map((r) => r[side] / r.local),
      target,
      note: `${what}; ${note}`,
    });
  const figures = [vsLocal("cold", ">= 0.9", "every shard fetched into an empty data.cache during the run"), vsLocal("warm", ">= 0.98", "the cold run's cache again (hits only)")];
  if (index !== null) {
    figures.push(
      figure({ benchmark: "remote", figure: "data index over HTTP", unit: "shards/s", values: [index.shards_per_second], note: `${index.shards} shards, ${(index.bytes_read / 1e6).toFixed(1)} MB, --jobs 4` }),
      figure({ benchmark: "remote", figure: "data index over HTTP, bytes", unit: "MB/s", values: [index.mb_per_second], note: "read, hashed and tar-indexed in one pass" }),
    );
  }
  return { figures, details: { rounds, index } };
}
