/** validate's pure parts: a check's error as field and message, its position in the file, and each stage's line. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import { stageLine } from "../../src/cli/commands/validate.js";
import { InvalidArgumentError } from "../../src/domain/index.js";
import { problemOf } from "../../src/jobs/index.js";
import { issueAtField, loadPresets, loadSpecDocument } from "../../src/spec/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));
const tmp = mkdtempSync(join(tmpdir(), "cli-validate-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

const PIPELINE = `name: p
model: {image: vit-tiny, text: text-tiny, embed_dim: 64}
data:
  train: "shards/train-{0..3}.tar"
  val: "shards/val-0.tar"
train: {steps: 10, batch_size: 8}
cluster: {workers: 1}
stages:
  - name: pre
    task: pretrain
  - name: ft
    task: pretrain
    needs: [pre]
    init: {checkpoint: pre}
    data:
      train: "other/x-{0..1}.tar"
  - name: zs
    task: eval
    needs: [ft]
    init: {checkpoint: ft}
`;

function load(text: string): ReturnType<typeof loadSpecDocument> {
  const file = join(tmp, `s${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, text);
  return loadSpecDocument(file, { presets });
}

void describe("problemOf", () => {
  const doc = load(PIPELINE);
  const ft = doc.spec.stages.find((s) => s.name === "ft")!;
  const main = load(PIPELINE.replace(/stages:[\s\S]*$/, "task: pretrain\n")).spec.stages[0]!;

  void it("takes the field the message names when it is the check's or inside it", () => {
    assert.deepEqual(problemOf(ft, "data.train", new InvalidArgumentError('data.train: no shard matches "x"'), "s.yaml"), { stage: "ft", field: "data.train", message: 'no shard matches "x"' });
    assert.deepEqual(problemOf(ft, "data.synth", new InvalidArgumentError("data.synth.out: /d exists and is not a directory"), "s.yaml"), {
      stage: "ft",
      field: "data.synth.out",
      message: "/d exists and is not a directory",
    });
  });

  void it("drops the file and the stage's prefix a message starts with", () => {
    const err = new InvalidArgumentError('s.yaml: stages.ft.data.captions: no sample has a "vecap" caption');
    assert.deepEqual(problemOf(ft, "data.captions", err, "s.yaml"), { stage: "ft", field: "data.captions", message: 'no sample has a "vecap" caption' });
    assert.deepEqual(problemOf(main, "data.train", new InvalidArgumentError("s.yaml: data.train: gone"), "s.yaml"), { stage: "main", field: "data.train", message: "gone" });
  });

  void it("keeps the check's field when the message names none or another", () => {
    assert.deepEqual(problemOf(ft, "worker.python", new InvalidArgumentError("no Python interpreter with torch found"), "s.yaml"), {
      stage: "ft",
      field: "worker.python",
      message: "no Python interpreter with torch found",
    });
    assert.deepEqual(problemOf(null, "", new InvalidArgumentError("s.yaml: worker.env.SECRET: not allowed"), "s.yaml"), { stage: null, field: "worker.env.SECRET", message: "not allowed" });
  });
});

void describe("issueAtField", () => {
  const { raw, locate } = load(PIPELINE);
  const lineOf = (prefix: string): number => PIPELINE.split("\n").findIndex((l) => l.startsWith(prefix)) + 1;

  void it("a stage's own field in a pipeline: stages[i].FIELD at its key", () => {
    assert.deepEqual(issueAtField(raw, "ft", "data.train", "gone", locate), { path: "stages[1].data.train", message: "gone", line: lineOf('      train: "other'), column: 7 });
  });

  void it("a field the stage inherits: the top-level key", () => {
    assert.deepEqual(issueAtField(raw, "pre", "data.train", "gone", locate), { path: "data.train", message: "gone", line: lineOf('  train: "shards'), column: 3 });
    assert.deepEqual(issueAtField(raw, "zs", "data.val", "gone", locate), { path: "data.val", message: "gone", line: lineOf("  val:"), column: 3 });
  });

  void it("a field written nowhere (a default): its path in the stage, at the nearest written part", () => {
    assert.deepEqual(issueAtField(raw, "ft", "cluster.gpus_per_worker", "x", locate), { path: "stages[1].cluster.gpus_per_worker", message: "x", line: lineOf("  - name: ft"), column: 5 });
    assert.deepEqual(issueAtField(raw, "ft", "cluster.workers", "needs 2 slots", locate), { path: "cluster.workers", message: "needs 2 slots", line: lineOf("cluster:"), column: 11 });
    const single = load("task: pretrain\nmodel: {image: vit-tiny, text: text-tiny, embed_dim: 64}\ndata: {train: a/x.tar}\ntrain: {steps: 1, batch_size: 8}\ncluster: {workers: 1}\n");
    assert.deepEqual(issueAtField(single.raw, "main", "worker.python", "no torch", single.locate), { path: "worker.python", message: "no torch", line: null, column: null });
    assert.deepEqual(issueAtField(single.raw, "main", "cluster.gpus_per_worker", "x", single.locate), { path: "cluster.gpus_per_worker", message: "x", line: 5, column: 1 });
  });
});

void describe("stageLine", () => {
  const { spec } = load(PIPELINE);
  const [pre, ft, zs] = spec.stages;

  void it("a training stage: its length, and its data when counted", () => {
    assert.equal(stageLine(pre!, null), "pre: pretrain, 1 worker(s), batch 8, 10 steps");
    assert.equal(stageLine(ft!, { train: { samples: 20, shards: 2 }, steps: 10, val: { samples: 5, shards: 1 }, synth: null }), "ft: pretrain, 1 worker(s), batch 8, 10 steps, train 20 samples in 2 shard(s), val 5 samples in 1 shard(s), needs pre");
  });

  void it("an epochs length: with the steps it resolves to once the data is counted", () => {
    const epochs = load(PIPELINE.replace("train: {steps: 10, batch_size: 8}", "train: {epochs: 2, batch_size: 8}")).spec;
    assert.equal(stageLine(epochs.stages[0]!, null), "pre: pretrain, 1 worker(s), batch 8, 2 epochs");
    // 20 samples in batches of 8: 2 whole steps an epoch, 4 in all (what run will show as the total).
    assert.equal(stageLine(epochs.stages[0]!, { train: { samples: 20, shards: 2 }, steps: 4, val: null, synth: null }), "pre: pretrain, 1 worker(s), batch 8, 2 epochs (4 steps), train 20 samples in 2 shard(s)");
  });

  void it("data.synth still to generate: said, nothing counted", () => {
    const synthSpec = load(PIPELINE.replace(/data:\n  train: .*\n  val: .*\n/, "data:\n  synth: {out: gen, train: 64, val: 16, shards: 2, size: 32, seed: 0}\n")).spec;
    const line = stageLine(synthSpec.stages[0]!, { train: null, steps: 10, val: null, synth: "generate" });
    assert.match(line, /^pre: pretrain, 1 worker\(s\), batch 8, 10 steps, data\.synth: run first generates 64 train samples into \/.*\/gen$/);
  });

  void it("an eval stage: no length, only its val data", () => {
    assert.equal(stageLine(zs!, { train: { samples: 20, shards: 2 }, steps: 0, val: { samples: 5, shards: 1 }, synth: null }), "zs: eval, 1 worker(s), batch 8, evaluation only, val 5 samples in 1 shard(s), needs ft");
  });
});
