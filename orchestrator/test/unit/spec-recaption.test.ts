/**
 * task recaption in the spec: the captioner, fusion and recaption sections,
 * their refusals (one line naming the field), and `data.train: {stage: NAME}`
 * naming a recaption stage's output in a pipeline.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { JobSpec } from "../../src/domain/index.js";
import { SpecValidationError, loadPresets, parseSpec, recaptionOutputName } from "../../src/spec/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));

const RECAP = {
  task: "recaption",
  data: { train: "in/train-{00000..00003}.tar" },
  captioner: { entry_point: "my_pkg.caps:make", args: { temperature: 0 } },
  recaption: { out: "recap" },
  cluster: { workers: 2 },
};

function parse(raw: unknown): JobSpec {
  return parseSpec(raw, { specPath: "/specs/job.yaml", baseDir: "/specs", presets });
}

function messages(raw: unknown): string[] {
  try {
    parse(raw);
  } catch (err) {
    assert.ok(err instanceof SpecValidationError, String(err));
    return err.issues.map((i) => `${i.path}: ${i.message}`);
  }
  assert.fail("expected the spec to be refused");
}

void describe("spec: task recaption", () => {
  void it("resolves the captioner, the default fusion, the output directory and the caption field", () => {
    const st = parse(RECAP).stages[0]!;
    assert.equal(st.task, "recaption");
    assert.deepEqual(st.captioner, { checkpoint: null, entry_point: "my_pkg.caps:make", args: { temperature: 0 }, max_tokens: 32, batch_size: 16 });
    assert.equal(st.fusion, "none");
    assert.deepEqual(st.recaption, { out: "/specs/recap", field: "vecap.txt" });
    assert.equal(st.train.steps, null);
    assert.equal(st.train.batch_size, 16);
  });

  void it("refuses a recaption stage without a captioner or an output, or with both captioner kinds", () => {
    assert.ok(messages({ ...RECAP, captioner: undefined }).some((m) => /^captioner: missing/.test(m)));
    assert.ok(messages({ ...RECAP, recaption: undefined }).some((m) => /^recaption: missing/.test(m)));
    assert.ok(messages({ ...RECAP, captioner: { checkpoint: "./m.pt", entry_point: "a:b" } }).some((m) => /exactly one of checkpoint/.test(m)));
    assert.ok(messages({ ...RECAP, captioner: { entry_point: "not an entry point" } }).some((m) => /^captioner\.entry_point: .*module:factory/.test(m)));
    assert.ok(messages({ ...RECAP, fusion: "llm" }).some((m) => /^fusion: /.test(m)));
    assert.ok(messages({ ...RECAP, recaption: { out: "x", field: "../x" } }).some((m) => /^recaption\.field: /.test(m)));
  });

  void it("refuses recaption sections on other tasks, and inputs whose outputs would collide or are pipe: commands", () => {
    const pretrain = { task: "pretrain", data: { train: "s/{0..3}.tar" }, train: { steps: 1, batch_size: 2 }, cluster: { workers: 2 }, recaption: { out: "x" } };
    assert.ok(messages(pretrain).some((m) => /^recaption: only task recaption takes it/.test(m)));
    assert.ok(messages({ ...RECAP, data: { train: ["a/s-0.tar", "b/s-0.tar"] } }).some((m) => /both be written as "s-0.tar"/.test(m)));
    assert.ok(messages({ ...RECAP, data: { train: "pipe:cat s.tar" } }).some((m) => /not pipe: commands/.test(m)));
    assert.ok(messages({ ...RECAP, data: { train: "in-{0..1}/s.tar" } }).some((m) => /keep brace ranges in the file name/.test(m)));
  });

  void it("names outputs after the input's file name; a .tar.gz is written as .tar", () => {
    assert.equal(recaptionOutputName("https://h/x/train-{00000..00009}.tar.gz"), "train-{00000..00009}.tar");
    assert.equal(recaptionOutputName("/d/a.tar"), "a.tar");
  });

  const pipeline = (over: Record<string, unknown> = {}, captioner: Record<string, unknown> = { checkpoint: "cap" }): unknown => ({
    cluster: { workers: 2 },
    stages: [
      { name: "cap", task: "pretrain", data: { train: "c/{0..1}.tar" }, train: { steps: 2, batch_size: 2 } },
      { name: "recap", needs: ["cap"], task: "recaption", data: { train: "big/train-{00000..00009}.tar" }, captioner, fusion: "template", recaption: { out: "out", field: "vecap.txt" } },
      { name: "clip", needs: ["recap"], task: "pretrain", data: { train: { stage: "recap" }, captions: { alt: 0.5, vecap: 0.5 } }, train: { steps: 2, batch_size: 2 }, ...over },
    ],
  });

  void it("data.train: {stage: NAME} is the recaption stage's output; a checkpoint captioner names a stage among the needs", () => {
    const job = parse(pipeline());
    const clip = job.stages.find((s) => s.name === "clip")!;
    assert.deepEqual(clip.data.train, ["/specs/out/train-{00000..00009}.tar"]);
    const recap = job.stages.find((s) => s.name === "recap")!;
    assert.equal(recap.captioner?.checkpoint, "cap");
    assert.equal(recap.fusion, "template");
  });

  void it("refuses data.train: {stage} naming a stage outside the needs, or one that is not a recaption stage", () => {
    assert.ok(messages(pipeline({ needs: [] })).some((m) => /data\.train\.stage: stage "recap" is not among the needs of stage "clip"/.test(m)));
    assert.ok(messages(pipeline({ data: { train: { stage: "cap" } } })).some((m) => /data\.train\.stage: stage "cap" is not a recaption stage/.test(m)));
    assert.ok(messages(pipeline({}, { checkpoint: "cpa" })).some((m) => /captioner\.checkpoint: no stage "cpa" in this spec \(did you mean "cap"\?\)/.test(m)));
  });
});
