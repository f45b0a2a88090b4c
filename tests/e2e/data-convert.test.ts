/**
 * Users' own data, end to end (issue 15): `clipfleet data convert` packs a
 * folder of name.jpg + name.txt (+ name.json) pairs into shards that a
 * pretraining job trains on and evaluates; bad input is one line and exit 2
 * with nothing written; and the synthetic data's val shards and synth.json
 * agree between the generator and the orchestrator.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { expandShardPattern, type SynthSpec } from "../../orchestrator/src/domain/index.js";
import { synthOutState } from "../../orchestrator/src/jobs/datasets.js";
import { runSynth } from "../../orchestrator/src/launcher/index.js";
import { synthShards } from "../../orchestrator/src/spec/resolve.js";
import { PYTHON, ROOT, runCli, tempDir } from "../helpers/cli.js";
import { writeSpec } from "./report-fixture.js";

/**
 * `n` 32 px images with captions, a quarter of them under nested folders:
 * every image has a .txt (some with two lines), even ones a .json with a
 * `vecap`; `uncaptioned` more images have no caption file.
 */
function imageCaptionFolder(dir: string, n: number, uncaptioned: number): void {
  const script = `
import json, os, sys
import numpy as np
from PIL import Image
root, n, bare = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
rng = np.random.default_rng(0)
for i in range(n + bare):
    name = f"part{i % 4}/img{i:04d}" if i % 4 == 3 else f"img{i:04d}"
    os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
    colour = list(colours)[i % 4]
    pixels = np.clip(np.array(colours[colour]) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(root, name + ".jpg"), quality=90)
    if i >= n:
        continue
    with open(os.path.join(root, name + ".txt"), "w") as f:
        f.write(f"a {colour} square\\n" + (f"something {colour}\\n" if i % 3 == 0 else ""))
    if i % 2 == 0:
        with open(os.path.join(root, name + ".json"), "w") as f:
            json.dump({"vecap": f"a photo filled with {colour}", "url": f"http://example.com/{i}"}, f)
`;
  const r = spawnSync(PYTHON, ["-c", script, dir, String(n), String(uncaptioned)], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

interface ConvertSummary {
  shards: Record<string, number>;
  samples: number;
  skipped: Record<string, number>;
}

void describe("clipfleet data convert: an image-caption folder", () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  void it("converts train and val splits into one folder and a pretraining job trains and evaluates on them", async () => {
    const train = join(tmp.dir, "photos-train");
    const val = join(tmp.dir, "photos-val");
    imageCaptionFolder(train, 128, 3);
    imageCaptionFolder(val, 32, 0);
    const out = join(tmp.dir, "shards");
    const r = await runCli(["data", "convert", "--images", train, "--out", out, "--shards", "2"]);
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout) as ConvertSummary;
    assert.deepEqual(summary.shards, { "train-00000.tar": 64, "train-00001.tar": 64 });
    assert.deepEqual(summary.skipped, { "no caption": 3 });
    assert.match(r.stderr, /skipped 3 image\(s\) without a caption/);
    assert.match(r.stderr, /convert: 128\/128 samples \(100%\)/);
    const v = await runCli(["data", "convert", "--images", val, "--out", out, "--shards", "1", "--split", "val"]);
    assert.equal(v.code, 0, v.stderr);
    assert.deepEqual(JSON.parse(readFileSync(join(out, "sizes.json"), "utf8")), { "train-00000.tar": 64, "train-00001.tar": 64, "val-00000.tar": 32 });

    const spec = writeSpec(tmp.dir, out, { name: "own-data", steps: 8, eval: true, captions: "{alt: 0.5, vecap: 0.5}" });
    const run = await runCli(["run", spec, "--json", "--state-dir", join(tmp.dir, "state")], { timeoutMs: 300_000 });
    assert.equal(run.code, 0, run.stderr);
    const s = JSON.parse(run.stdout) as { state: string; steps: number; skippedSamples: number; metrics: Record<string, number> };
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.steps, 8);
    assert.equal(s.skippedSamples, 0, "every converted sample has an image and a caption");
    assert.ok(s.metrics["retrieval/i2t_R@1"] !== undefined, JSON.stringify(s.metrics));
  });

  void it("bad input: one line naming the flag or file, exit 2, nothing written", async () => {
    const src = join(tmp.dir, "bad-src");
    imageCaptionFolder(src, 4, 0);
    const out = join(tmp.dir, "bad-out");
    for (const [args, message] of [
      [["--images", join(tmp.dir, "missing"), "--shards", "1"], /^error: --images: not a directory: .*missing\n$/],
      [["--images", src, "--shards", "0"], /^error: --shards: expected at least 1 shard, got 0\n$/],
      [["--images", src, "--shards", "9"], /^error: --shards: expected 1\.\.4 shards for 4 samples, got 9\n$/],
    ] as const) {
      const r = await runCli(["data", "convert", "--out", out, ...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
    }
    writeFileSync(join(src, "img0001.json"), "{truncated");
    const r = await runCli(["data", "convert", "--images", src, "--out", out, "--shards", "1"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^error: .*img0001\.json: invalid JSON/);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.ok(!existsSync(out), "nothing written");
    assert.deepEqual(readdirSync(tmp.dir).filter((n) => n.includes(".convert-")), [], "no staging folder left");
  });
});

void describe("synthetic data: generator and orchestrator agree", () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());
  // 8 train shards of 5: the generator used to write ceil(20 / 5) = 4 val shards where the spec expects ceil(8 / 4) = 2.
  const params = { train: 40, val: 20, shards: 8, size: 16, seed: 0 };

  void it("data.synth writes the val shards the default data.val names, and its synth.json reads back as a match", async () => {
    const synth: SynthSpec = { out: join(tmp.dir, "synth"), ...params };
    await runSynth(PYTHON, join(ROOT, "worker-runtime"), synth, () => undefined);
    const valShards = expandShardPattern(synthShards(synth.out, "val", synth.shards));
    assert.deepEqual(valShards.map((p) => p.slice(synth.out.length + 1)), ["val-00000.tar", "val-00001.tar"]);
    assert.deepEqual(readdirSync(synth.out).filter((n) => n.startsWith("val-")).sort(), ["val-00000.tar", "val-00001.tar"]);
    assert.equal(synthOutState(synth), "reuse");
    assert.throws(() => synthOutState({ ...synth, seed: 1 }), /data\.synth\.out: .* made with seed 0, but this stage asks for seed 1/);
  });

  void it("`clipfleet data synth` writes the same layout by default (ceil(shards / 4) val shards)", async () => {
    const out = join(tmp.dir, "cli");
    const r = await runCli(["data", "synth", "--out", out, ...Object.entries(params).flatMap(([k, v]) => [`--${k}`, String(v)])]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(readdirSync(out).filter((n) => n.startsWith("val-")).sort(), ["val-00000.tar", "val-00001.tar"]);
    assert.equal(synthOutState({ out, ...params }), "reuse");
  });

  /** A 2-step pretraining spec over data.synth into `out` (48 train samples, 8 shards, 32 px); returns its path. */
  function synthSpec(out: string): string {
    const spec = join(tmp.dir, "synth.yaml");
    writeFileSync(
      spec,
      `name: synth-data
task: pretrain
model: {image: vit-tiny, text: {preset: text-tiny, context_length: 32}, embed_dim: 64, tokenizer: byte}
data:
  synth: {out: ${out}, train: 48, val: 20, shards: 8, seed: 0}
train: {steps: 2, batch_size: 8}
cluster: {workers: 1}
checkpoint: {every_steps: null}
`,
    );
    return spec;
  }

  void it("clipfleet run generates data.synth.out once, then reuses it", async () => {
    const out = join(tmp.dir, "run-synth");
    const first = await runCli(["run", synthSpec(out), "--json", "--state-dir", join(tmp.dir, "state")], { timeoutMs: 300_000 });
    assert.equal(first.code, 0, first.stderr);
    assert.equal((JSON.parse(first.stdout) as { state: string }).state, "SUCCEEDED");
    assert.deepEqual(readdirSync(out).filter((n) => n.startsWith("val-")).sort(), ["val-00000.tar", "val-00001.tar"]);
    const marker = statSync(join(out, "synth.json")).mtimeMs;
    const second = await runCli(["run", synthSpec(out), "--json", "--state-dir", join(tmp.dir, "state")], { timeoutMs: 300_000 });
    assert.equal(second.code, 0, second.stderr);
    assert.equal(statSync(join(out, "synth.json")).mtimeMs, marker, "not generated again");
  });

  void it("clipfleet run refuses a data.synth.out made with other parameters, or holding a user's files, naming the field", async () => {
    mkdirSync(join(tmp.dir, "mine"));
    writeFileSync(join(tmp.dir, "mine", "notes.txt"), "my own files");
    for (const [out, message] of [
      [join(tmp.dir, "cli"), /data\.synth\.out: .*cli holds a synthetic dataset made with train 40, size 16, but this stage asks for train 48, size 32/],
      [join(tmp.dir, "mine"), /data\.synth\.out: .*mine holds files but no readable synth\.json/],
    ] as const) {
      const r = await runCli(["run", synthSpec(out), "--state-dir", join(tmp.dir, "state")]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
    }
    assert.equal(readFileSync(join(tmp.dir, "mine", "notes.txt"), "utf8"), "my own files");
  });
});
