/**
 * docs/spec.md cannot drift from the schema: its field tables are the
 * rendering of the schema, every field path appears in it, and its example
 * specs validate. After changing a field, regenerate the tables with
 * `UPDATE_SPEC_DOC=1 node --test dist/orchestrator/test/unit/spec-docs.test.js`.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { SPEC_FIELDS, loadPresets, loadSpecFile, parseSpec, refreshDoc } from "../../src/spec/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const DOC = join(ROOT, "docs/spec.md");
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));

void describe("docs/spec.md", () => {
  void it("has field tables identical to the schema's rendering", () => {
    const doc = readFileSync(DOC, "utf8");
    const fresh = refreshDoc(doc);
    if (process.env.UPDATE_SPEC_DOC === "1" && fresh !== doc) {
      writeFileSync(DOC, fresh);
      return;
    }
    const have = doc.split("\n");
    const want = fresh.split("\n");
    const i = want.findIndex((line, k) => line !== have[k]);
    const where = i < 0 ? have.length : i;
    assert.equal(doc, fresh, `docs/spec.md is stale from line ${where + 1}: has ${JSON.stringify(have[where])}, schema says ${JSON.stringify(want[where])}; rerun this test with UPDATE_SPEC_DOC=1`);
  });

  void it("mentions every field path", () => {
    const doc = readFileSync(DOC, "utf8");
    const missing = SPEC_FIELDS.filter((path) => !doc.includes(`\`${path}\``));
    assert.deepEqual(missing, []);
    assert.ok(SPEC_FIELDS.length > 100);
  });

  void it("keeps the inventory section for the scheduler's nodes.yaml", () => {
    assert.match(readFileSync(DOC, "utf8"), /^## Inventory \(nodes\.yaml\)$/m);
  });

  void it("has example specs that validate (yaml blocks starting with `# spec:`)", () => {
    const blocks = [...readFileSync(DOC, "utf8").matchAll(/```yaml\n(# spec:[^\n]*\n[\s\S]*?)```/g)].map((m) => m[1]!);
    assert.equal(blocks.length, 2);
    for (const block of blocks) {
      const job = parseSpec(parse(block, { uniqueKeys: true }), { specPath: "docs/example.yaml", baseDir: join(ROOT, "docs"), presets });
      assert.ok(job.stages.length >= 1);
    }
  });
});

void describe("examples", () => {
  void it("tiny-pretrain.yaml validates to the demo's job", () => {
    const job = loadSpecFile(join(ROOT, "examples/tiny-pretrain.yaml"), { presets });
    assert.equal(job.name, "tiny-pretrain");
    const [stage] = job.stages;
    assert.equal(job.stages.length, 1);
    assert.equal(stage!.task, "pretrain");
    assert.deepEqual(
      { preset: stage!.model.image.preset, image_size: stage!.model.image.image_size, patch: stage!.model.image.patch },
      { preset: "vit-tiny", image_size: 32, patch: 8 },
    );
    assert.deepEqual({ preset: stage!.model.text.preset, context_length: stage!.model.text.context_length }, { preset: "text-tiny", context_length: 160 });
    assert.equal(stage!.model.embed_dim, 64);
    assert.deepEqual(stage!.model.tokenizer, { type: "byte", vocab: null });
    const out = join(ROOT, "examples/data/tiny");
    assert.deepEqual(stage!.data.synth, { out, train: 8192, val: 256, shards: 4, size: 32, seed: 0 });
    assert.deepEqual(stage!.data.train, [`${out}/train-{00000..00003}.tar`]);
    assert.deepEqual(stage!.data.val, [`${out}/val-{00000..00000}.tar`]);
    assert.deepEqual(stage!.data.captions, { alt: 0.5, vecap: 0.5 });
    assert.deepEqual(
      { steps: stage!.train.steps, batch_size: stage!.train.batch_size, lr: stage!.train.lr, warmup_steps: stage!.train.warmup_steps },
      { steps: 300, batch_size: 64, lr: 1e-3, warmup_steps: 20 },
    );
    assert.deepEqual({ workers: stage!.cluster.workers, min_workers: stage!.cluster.min_workers }, { workers: 2, min_workers: 2 });
    assert.equal(stage!.checkpoint.every_steps, 100);
    assert.equal(stage!.eval?.at_end, true);
  });
});
