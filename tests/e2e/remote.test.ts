/**
 * Remote shards end to end (issue 15): a 2-rank job trains from a real HTTP
 * server on 127.0.0.1 and from `pipe:cat` exactly as from the same shards on
 * local disk; the server taken away mid-epoch and brought back costs retries,
 * not samples; a 404 shard and a failing pipe command fail the job naming them.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { freePort, PYTHON, ROOT, runCli, tempDir, waitFor } from "../helpers/cli.js";
import { assertExactlyOnce, audit, type Summary } from "../helpers/jobs.js";
import { ShardServer } from "../helpers/shard-server.js";

const SHARDS = "train-{00000..00007}.tar";

/** 256 samples in 8 shards of 32: with batch 32 and no shuffle, step k reads shard k. */
function dataset(out: string): string {
  const r = spawnSync(PYTHON, ["-m", "clipfleet_worker", "synth", "--out", out, "--train", "256", "--shards", "8", "--size", "32", "--seed", "0"], {
    cwd: join(ROOT, "worker-runtime"),
    env: { ...process.env, PYTHONPATH: join(ROOT, "worker-runtime") },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  return out;
}

/** A 2-rank, 1-epoch spec; `cache` adds data.cache fields, `index` sets data.index. */
function spec(dir: string, name: string, train: string, o: { cache?: string; index?: string } = {}): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(
    path,
    `name: ${name}
task: pretrain
model: {image: vit-tiny, text: {preset: text-tiny, context_length: 48}, embed_dim: 64, tokenizer: byte}
data:
  train: "${train}"
  captions: {alt: 0.5, vecap: 0.5}
  shuffle: false
  audit: true
  loader_threads: 1
  prefetch_steps: 1
  cache: {dir: ${join(dir, `cache-${name}`)}${o.cache ? `, ${o.cache}` : ""}}
${o.index ? `  index: ${o.index}\n` : ""}train: {epochs: 1, batch_size: 32, lr: 1.0e-3}
cluster: {workers: 2}
checkpoint: {every_steps: null}
`,
  );
  return path;
}

async function run(specPath: string, stateDir: string, args: string[] = []): Promise<{ code: number; s: Summary & { reason: string }; stderr: string }> {
  const r = await runCli(["run", specPath, "--json", "--state-dir", stateDir, ...args]);
  return { code: r.code ?? -1, s: JSON.parse(r.stdout || "{}") as Summary & { reason: string }, stderr: r.stderr };
}

void describe("remote shards", () => {
  const tmp = tempDir();
  let data: string;
  let server: ShardServer;
  let reference: Summary;
  before(async () => {
    data = dataset(join(tmp.dir, "data"));
    server = new ShardServer(data);
    await server.start();
    const r = await run(spec(tmp.dir, "local", `${data}/${SHARDS}`), join(tmp.dir, "s-local"));
    assert.equal(r.code, 0, r.stderr);
    reference = r.s;
  });
  after(async () => {
    await server.close();
    tmp.cleanup();
  });

  void it("trains from http:// with the same parameters as from local disk", async () => {
    const r = await run(spec(tmp.dir, "http", `${server.url}/${SHARDS}`), join(tmp.dir, "s-http"));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.s.finalParamsSha256, reference.finalParamsSha256);
    assert.equal(server.requests("/sizes.json").length, 1, "the counts came from sizes.json, one request");
    for (let k = 0; k < 8; k++) assert.ok(server.requests(`/train-0000${k}.tar`).length >= 1);
    // Each rank opened each shard once; one of the two filled it, the other found it in the cache.
    const bytes = Array.from({ length: 8 }, (_, k) => statSync(join(data, `train-0000${k}.tar`)).size).reduce((a, b) => a + b, 0);
    const cache = (r.s as Summary & { shardCache?: { bytesFetched: number; hits: number; misses: number; fetchSeconds: number } }).shardCache;
    assert.deepEqual({ ...cache, fetchSeconds: 0 }, { bytesFetched: bytes, hits: 8, misses: 8, fetchSeconds: 0 });
    assertExactlyOnce(await audit(r.s.jobId, join(tmp.dir, "s-http")), 1);
  });

  void it("a capped cache evicts and still trains the same", async () => {
    // A cap of about two shards: the cache evicts as the epoch goes on.
    const r = await run(spec(tmp.dir, "evict", `${server.url}/${SHARDS}`, { cache: `max_bytes: ${2 * statSync(join(data, "train-00000.tar")).size + 1024}` }), join(tmp.dir, "s-evict"));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.s.finalParamsSha256, reference.finalParamsSha256);
    const left = readdirSync(join(tmp.dir, "cache-evict")).filter((n) => n.endsWith(".tar"));
    assert.ok(left.length < 8, `evicted: ${left.length} shards left`);
  });

  void it("the server stopped mid-epoch and restarted: retries, the job completes, exactly once", async () => {
    let stopped = false;
    server.onRequest = (path) => {
      if (path !== "/train-00003.tar" || stopped) return false;
      stopped = true;
      void server.stop().then(() => server.refuseWhileStopped());
      return true; // this request's connection is dropped too
    };
    const metricsPort = await freePort();
    const job = run(spec(tmp.dir, "outage", `${server.url}/${SHARDS}`, { cache: "fetch_retries: 12" }), join(tmp.dir, "s-outage"), ["--metrics-listen", `127.0.0.1:${metricsPort}`]);
    try {
      await waitFor("a rank retrying against the stopped server", () => server.refused >= 2, 240_000);
      // The steps before the outage reported their fetches: shards 0-2 were misses of some rank.
      const counter = (text: string, name: string): number =>
        text
          .split("\n")
          .filter((l) => l.startsWith(`${name}{`))
          .reduce((a, l) => a + Number(l.split(" ").at(-1)), 0);
      await waitFor("the shard cache counters", async () => {
        const text = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text(), () => "");
        return counter(text, "clipfleet_shard_cache_misses_total") >= 1 && counter(text, "clipfleet_shard_fetch_bytes_total") > 0;
      });
    } finally {
      server.onRequest = null;
      await server.start();
    }
    const r = await job;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.s.restarts, 0, "the fetch was retried, the job not restarted");
    assert.equal(r.s.finalParamsSha256, reference.finalParamsSha256);
    assertExactlyOnce(await audit(r.s.jobId, join(tmp.dir, "s-outage")), 1);
  });

  void it("a 404 shard fails the job naming the URL", async () => {
    mkdirSync(join(data, "broken"), { recursive: true });
    writeFileSync(join(data, "broken", "sizes.json"), JSON.stringify({ "train-00000.tar": 32 }));
    const r = await run(spec(tmp.dir, "missing", `${server.url}/broken/train-{00000..00000}.tar`), join(tmp.dir, "s-404"));
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.s.state, "FAILED");
    assert.ok(r.s.reason.includes(`${server.url}/broken/train-00000.tar: HTTP 404`), r.s.reason);
    assert.equal(r.s.restarts, 0);
  });

  void it("pipe:cat with a data index trains the same; a failing command fails the job naming it", async () => {
    const idx = join(tmp.dir, "idx");
    const ix = await runCli(["data", "index", `pipe:cat ${data}/${SHARDS}`, "--out", idx, "--jobs", "2"]);
    assert.equal(ix.code, 0, ix.stderr);
    assert.equal((JSON.parse(ix.stdout) as { shards: number; samples: number }).samples, 256);
    const r = await run(spec(tmp.dir, "pipe", `pipe:cat ${data}/${SHARDS}`, { index: idx }), join(tmp.dir, "s-pipe"));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.s.finalParamsSha256, reference.finalParamsSha256);

    const moved = join(tmp.dir, "moved");
    cpSync(data, moved, { recursive: true });
    const idx2 = join(tmp.dir, "idx2");
    assert.equal((await runCli(["data", "index", `pipe:cat ${moved}/train-{00000..00001}.tar`, "--out", idx2])).code, 0);
    rmSync(moved, { recursive: true });
    const f = await run(spec(tmp.dir, "pipefail", `pipe:cat ${moved}/train-{00000..00001}.tar`, { index: idx2, cache: "fetch_retries: 2" }), join(tmp.dir, "s-pipefail"));
    assert.equal(f.code, 1, f.stderr);
    assert.equal(f.s.state, "FAILED");
    assert.ok(f.s.reason.includes(`pipe:cat ${moved}/train-0000`), f.s.reason);
    assert.match(f.s.reason, /command exited with status 1: cat: .*No such file/);
  });

  void it("range reads with a data index, and .tar.gz shards, train the same", async () => {
    // Shards larger than a quarter of the cap are read one sample per Range request, not cached.
    const idx = join(tmp.dir, "idx-http");
    const ix = await runCli(["data", "index", `${server.url}/${SHARDS}`, "--out", idx]);
    assert.equal(ix.code, 0, ix.stderr);
    const before = server.requests("/train-00003.tar").length;
    const cap = 2 * statSync(join(data, "train-00000.tar")).size;
    const r = await run(spec(tmp.dir, "ranges", `${server.url}/${SHARDS}`, { index: idx, cache: `max_bytes: ${cap}` }), join(tmp.dir, "s-ranges"));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.s.finalParamsSha256, reference.finalParamsSha256);
    const ranged = server.requests("/train-00003.tar").slice(before);
    assert.ok(ranged.length >= 32 && ranged.every((q) => q.status === 206), `one Range request per sample: ${ranged.length}`);
    const cacheDir = join(tmp.dir, "cache-ranges");
    assert.deepEqual(existsSync(cacheDir) ? readdirSync(cacheDir).filter((n) => n.endsWith(".tar")) : [], [], "nothing cached");

    const gz = join(tmp.dir, "gz");
    mkdirSync(gz);
    for (let k = 0; k < 8; k++) {
      const name = `train-0000${k}.tar`;
      writeFileSync(join(gz, `${name}.gz`), gzipSync(readFileSync(join(data, name))));
    }
    const g = await run(spec(tmp.dir, "targz", `${gz}/train-{00000..00007}.tar.gz`), join(tmp.dir, "s-targz"));
    assert.equal(g.code, 0, g.stderr);
    assert.equal(g.s.finalParamsSha256, reference.finalParamsSha256);
    assert.equal(readdirSync(join(tmp.dir, "cache-targz")).filter((n) => n.endsWith(".tar")).length, 8, "decompressed into the cache");
  });
});
