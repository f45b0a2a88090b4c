/** `clipfleet export`: which stage's checkpoint it takes, and what it refuses before running anything. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { FailedPreconditionError, InvalidArgumentError } from "../../src/domain/index.js";
import { loadPresets, parseSpec } from "../../src/spec/index.js";
import { pickStage } from "../../src/cli/commands/export.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));

const PIPELINE = parseSpec(
  {
    name: "pipe",
    data: { train: "shards/{00000..00003}.tar", val: "shards/val.tar" },
    train: { steps: 10, batch_size: 8 },
    cluster: { workers: 1 },
    stages: [
      { name: "pre", task: "pretrain" },
      { name: "more", task: "pretrain", needs: ["pre"], init: { checkpoint: "pre" } },
      { name: "seg", task: "finetune-seg", needs: ["more"], init: { checkpoint: "more" } },
      { name: "zs", task: "eval", needs: ["more"], init: { checkpoint: "more" } },
    ],
  },
  { specPath: "/specs/pipe.yaml", baseDir: "/specs", presets },
);

void describe("export: the stage it takes", () => {
  void it("by default the last pretrain stage with a committed checkpoint; none is an error", () => {
    assert.equal(pickStage(PIPELINE, undefined, () => true).name, "more");
    assert.equal(pickStage(PIPELINE, undefined, (s) => s === "pre").name, "pre");
    assert.throws(() => pickStage(PIPELINE, undefined, () => false), (err: unknown) => err instanceof FailedPreconditionError && /job pipe has no pretrain stage with a committed checkpoint/.test(err.message));
  });

  void it("--stage names a pretrain stage: a fine-tune or eval stage holds no CLIP, an unknown one lists the stages", () => {
    assert.equal(pickStage(PIPELINE, "pre", () => true).name, "pre");
    assert.throws(() => pickStage(PIPELINE, "seg", () => true), (err: unknown) => err instanceof InvalidArgumentError && /--stage: stage seg is task finetune-seg; only a pretrain stage's checkpoint is a CLIP/.test(err.message));
    assert.throws(() => pickStage(PIPELINE, "zs", () => true), /stage zs is task eval/);
    assert.throws(() => pickStage(PIPELINE, "nope", () => true), /--stage: no stage "nope" in job pipe \(stages: pre, more, seg, zs\)/);
  });
});
