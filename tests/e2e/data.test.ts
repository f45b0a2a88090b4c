/**
 * Broken data, end to end (issue 3): undecodable samples are skipped and
 * counted, a truncated shard fails the job naming the shard, and a caption
 * source no sample has is refused before any process starts.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, readdirSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PYTHON, ROOT, runCli, tempDir, tinyDataset } from "../helpers/cli.js";

function spec(dir: string, name: string, data: string, captions = "{alt: 0.5, vecap: 0.5}"): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(
    path,
    `name: ${name}
task: pretrain
model: {image: vit-tiny, text: {preset: text-tiny, context_length: 48}, embed_dim: 64, tokenizer: byte}
data:
  train: "${data}/train-{00000..00003}.tar"
  captions: ${captions}
train: {steps: 16, batch_size: 64, lr: 1.0e-3}
cluster: {workers: 2}
checkpoint: {every_steps: null}
`,
  );
  return path;
}

/** Replaces the image bytes of the first `n` samples of a shard with garbage (same sizes, valid tar). */
function corruptImages(shard: string, n: number): void {
  const script = `
import sys, tarfile, io
src = sys.argv[1]; n = int(sys.argv[2])
members = []
with tarfile.open(src) as t:
    for m in t.getmembers():
        members.append((m, t.extractfile(m).read() if m.isfile() else None))
done = 0
with tarfile.open(src, "w", format=tarfile.USTAR_FORMAT) as out:
    for m, data in members:
        if data is not None and m.name.endswith(".jpg") and done < n:
            data = b"\\x00not a jpeg" * (len(data) // 11 + 1)
            data = data[: m.size]
            done += 1
        out.addfile(m, io.BytesIO(data) if data is not None else None)
`;
  const r = spawnSync(PYTHON, ["-c", script, shard, String(n)], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

void describe("broken data", () => {
  const tmp = tempDir();
  let copy: string;
  before(() => {
    copy = join(tmp.dir, "data");
    cpSync(tinyDataset(), copy, { recursive: true });
  });
  after(() => tmp.cleanup());

  void it("undecodable images are skipped and counted; the job succeeds", async () => {
    const data = join(tmp.dir, "skipped");
    cpSync(copy, data, { recursive: true });
    corruptImages(join(data, "train-00000.tar"), 5);
    const r = await runCli(["run", spec(tmp.dir, "skips", data), "--json", "--state-dir", join(tmp.dir, "s1")]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { state: string; skippedSamples: number };
    assert.equal(s.state, "SUCCEEDED");
    // 16 steps x 64 samples = 1024 = the whole set: each corrupt image was met exactly once.
    assert.equal(s.skippedSamples, 5);
  });

  void it("a truncated shard fails the job, naming the shard, without retries", async () => {
    const data = join(tmp.dir, "truncated");
    cpSync(copy, data, { recursive: true });
    const shard = join(data, "train-00002.tar");
    truncateSync(shard, Math.floor(statSync(shard).size / 2) + 100);
    const r = await runCli(["run", spec(tmp.dir, "trunc", data), "--json", "--state-dir", join(tmp.dir, "s2")]);
    assert.equal(r.code, 1, r.stderr);
    const s = JSON.parse(r.stdout) as { state: string; reason: string; restarts: number };
    assert.equal(s.state, "FAILED");
    assert.match(s.reason, /train-00002\.tar/);
    assert.match(s.reason, /truncated/);
    assert.equal(s.restarts, 0, "bad data is not retried");
  });

  void it("a caption source no sample has: exit 2 before any process starts", async () => {
    const state = join(tmp.dir, "s3");
    const r = await runCli(["run", spec(tmp.dir, "nosource", copy, "{alt: 0.5, recap: 0.5}"), "--state-dir", state]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /data\.captions: no sample has a "recap" caption \(the shards have: alt, .*vecap/);
    assert.ok(!existsSync(join(state, "jobs")) || readdirSync(join(state, "jobs")).length === 0, "nothing persisted");
    assert.ok(existsSync(ROOT));
  });
});
