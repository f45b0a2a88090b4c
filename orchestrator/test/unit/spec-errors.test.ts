/**
 * Bad specs and bad files, each with the exact first line of the error the
 * user sees. Specs are written to real files and loaded with loadSpecFile,
 * so positions (line:column) are checked too.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { InvalidArgumentError } from "../../src/domain/index.js";
import { SpecValidationError, loadPresets, loadSpecFile } from "../../src/spec/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));
const tmp = mkdtempSync(join(tmpdir(), "spec-errors-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Sections of a valid spec, one flow-style line each, in this order (lines 1-5). */
const BASE = {
  task: "pretrain",
  model: "{image: vit-tiny, text: text-tiny, embed_dim: 64}",
  data: '{train: "shards/{00000..00003}.tar"}',
  train: "{steps: 10, batch_size: 8}",
  cluster: "{workers: 2}",
};

/** A spec from BASE with some sections replaced (null: dropped) and `extra` lines appended. */
function spec(sections: Partial<Record<keyof typeof BASE, string | null>> = {}, extra = ""): string {
  const lines: string[] = [];
  for (const [key, value] of Object.entries({ ...BASE, ...sections })) if (value !== null) lines.push(`${key}: ${value}`);
  return `${lines.join("\n")}\n${extra}`;
}

let counter = 0;
/** Write `content` as `name` in a fresh directory; messages are compared with that directory stripped. */
function write(content: string | Buffer, name = "spec.yaml"): { dir: string; file: string } {
  const dir = join(tmp, `case-${counter++}`);
  mkdirSync(dir);
  const file = join(dir, name);
  writeFileSync(file, content);
  return { dir, file };
}

function firstLine(file: string, dir: string): string {
  try {
    loadSpecFile(file, { presets });
  } catch (err) {
    assert.ok(err instanceof InvalidArgumentError, `not an InvalidArgumentError: ${String(err)}`);
    return err.message.split("\n")[0]!.replaceAll(`${dir}/`, "");
  }
  assert.fail(`${file} validated`);
}

const CMD = (lines: string): string => `task: command\ncluster: {workers: 2}\n${lines}`;
const PIPE = (stages: string): string => spec({}, `stages:\n${stages}`);

/** [what, spec text, exact first line]. */
const CASES: [string, string, string][] = [
  ["wrong type", spec({ train: "{steps: 10, batch_size: 8, lr: fast}" }), 'spec.yaml:4:35: train.lr: expected a positive number, got "fast"'],
  ["zero workers", spec({ cluster: "{workers: 0}" }), "spec.yaml:5:11: cluster.workers: expected an integer >= 1, got 0"],
  ["too many workers", spec({ cluster: "{workers: 20000}" }), "spec.yaml:5:11: cluster.workers: expected an integer <= 16384, got 20000"],
  ["fractional count", spec({ cluster: "{workers: 1.5}" }), "spec.yaml:5:11: cluster.workers: expected an integer in [1, 16384], got 1.5"],
  ["negative count", spec({ data: '{train: "a.tar", loader_threads: -1}' }), "spec.yaml:3:24: data.loader_threads: expected an integer >= 0, got -1"],
  ["priority range", spec({}, "priority: 2000\n"), "spec.yaml:6:1: priority: expected an integer <= 1000, got 2000"],
  ["bad job name", spec({}, "name: my job\n"), 'spec.yaml:6:1: name: expected a name of 1 to 64 characters from A-Z a-z 0-9 . _ -, got "my job"'],
  ["unknown field, did you mean", spec({ train: "{steps: 10, batch_size: 8, lrr: 0.1}" }), 'spec.yaml:4:35: train.lrr: unknown field (did you mean "lr"?)'],
  ["unknown top-level field, transposed", spec({}, "trian: {}\n"), 'spec.yaml:6:1: trian: unknown field (did you mean "train"?)'],
  ["unknown field, prefix", spec({ train: "{steps: 10, batch_size: 8, warmup: 5}" }), 'spec.yaml:4:35: train.warmup: unknown field (did you mean "warmup_steps"?)'],
  [
    "unknown field, no suggestion",
    spec({ cluster: "{workers: 2, zone: a}" }),
    "spec.yaml:5:23: cluster.zone: unknown field (expected one of: workers, min_workers, backend, gpus_per_worker, node_selector, spares)",
  ],
  ["missing task", spec({ task: null }), 'spec.yaml: task: missing (expected one of "pretrain", "finetune-seg", "finetune-depth", "eval", "command", "train-captioner", "recaption")'],
  ["task typo", spec({ task: "pretrian" }), 'spec.yaml:1:1: task: expected one of "pretrain", "finetune-seg", "finetune-depth", "eval", "command", "train-captioner", "recaption", got "pretrian" (did you mean "pretrain"?)'],
  ["missing cluster", spec({ cluster: null }), "spec.yaml: cluster.workers: missing (expected an integer in [1, 16384])"],
  ["missing batch size", spec({ train: "{steps: 10}" }), "spec.yaml:4:1: train.batch_size: missing (expected an integer >= 1)"],
  ["neither steps nor epochs", spec({ train: "{batch_size: 8}" }), "spec.yaml:4:1: train: set steps or epochs"],
  ["both steps and epochs", spec({ train: "{batch_size: 8, steps: 5, epochs: 1}" }), "spec.yaml:4:1: train: set steps or epochs, not both"],
  ["warmup longer than training", spec({ train: "{batch_size: 8, steps: 5, warmup_steps: 6}" }), "spec.yaml:4:34: train.warmup_steps: 6 is more than train.steps 5"],
  ["beta out of range", spec({ train: "{steps: 10, batch_size: 8, betas: [0.9, 1.0]}" }), "spec.yaml:4:48: train.betas[1]: expected a number in [0, 1), got 1"],
  [
    "unknown image preset",
    spec({ model: "{image: vit-tinyy}" }),
    'spec.yaml:2:9: model.image: unknown image preset "vit-tinyy" (did you mean "vit-tiny"? known: vit-tiny, vit-s16, vit-b16, mci-tiny, mci0, mci1, mci2)',
  ],
  [
    "unknown text preset in a mapping",
    spec({ model: "{image: vit-tiny, text: {preset: txt-tiny}}" }),
    'spec.yaml:2:33: model.text.preset: unknown text preset "txt-tiny" (did you mean "text-tiny"? known: text-tiny, text-base, text-base-noncausal)',
  ],
  ["image size vs patch", spec({ model: "{image: {preset: vit-tiny, image_size: 30}}" }), "spec.yaml:2:35: model.image.image_size: 30 is not divisible by the patch size 8"],
  ["heads vs width", spec({ model: "{image: {preset: vit-tiny, heads: 3}}" }), "spec.yaml:2:35: model.image.heads: 3 does not divide the width 64"],
  ["MCi stride", spec({ model: "{image: {preset: mci-tiny, image_size: 48}}" }), "spec.yaml:2:35: model.image.image_size: 48 is not divisible by 32, the MCi output stride"],
  ["MCi stage count", spec({ model: "{image: {preset: mci-tiny, layers: [1, 1, 1]}}" }), "spec.yaml:2:35: model.image.layers: expected a list of 4 integers >= 1, got [1, 1, 1]"],
  ["ViT field on MCi", spec({ model: "{image: {preset: mci-tiny, patch: 4}}" }), "spec.yaml:2:35: model.image.patch: not a field of MCi towers (they take image_size, layers, widths, heads, mlp_ratio)"],
  ["tower without preset or family", spec({ model: "{image: {image_size: 32}}" }), 'spec.yaml:2:9: model.image.family: missing (expected one of "vit", "mci" when no preset is given)'],
  ["bpe without vocab", spec({ model: "{tokenizer: bpe}" }), "spec.yaml:2:9: model.tokenizer.vocab: missing (the bpe tokenizer needs a vocab file: model.tokenizer: {type: bpe, vocab: PATH})"],
  ["bpe vocab missing on disk", spec({ model: "{tokenizer: {type: bpe, vocab: nope.txt.gz}}" }), "spec.yaml:2:32: model.tokenizer.vocab: no such file: nope.txt.gz"],
  ["caption probabilities", spec({ data: '{train: "a.tar", captions: {alt: 0.4, vecap: 0.5}}' }), "spec.yaml:3:24: data.captions: probabilities must sum to 1, got 0.9"],
  ["caption probability range", spec({ data: '{train: "a.tar", captions: {alt: 1.5}}' }), "spec.yaml:3:35: data.captions.alt: expected a number in [0, 1], got 1.5"],
  ["both captions needs two sources", spec({ data: '{train: "a.tar", caption_mode: both}' }), 'spec.yaml:3:24: data.caption_mode: "both" needs exactly 2 caption sources, got 1 (alt)'],
  ["no training data", spec({ data: null }), "spec.yaml: data.train: missing (task pretrain trains on it; or set data.synth)"],
  ["crop range reversed", spec({ data: '{train: "a.tar", augment: {crop_scale: [1.0, 0.5]}}' }), "spec.yaml:3:34: data.augment.crop_scale: expected [low, high] with low <= high, got [1, 0.5]"],
  ["synth shards", spec({ data: "{synth: {out: d, train: 2, shards: 4}}" }), "spec.yaml:3:34: data.synth.shards: 4 shards need at least 4 train samples, got data.synth.train 2"],
  ["batch vs workers", spec({ cluster: "{workers: 3}" }), "spec.yaml:4:20: train.batch_size: 8 is not divisible by cluster.workers 3"],
  [
    "batch vs every world size",
    spec({ cluster: "{workers: 4, min_workers: 2}" }),
    "spec.yaml:4:20: train.batch_size: 8 is not divisible by the world size 3 (the job runs on cluster.min_workers 2 to cluster.workers 4 ranks)",
  ],
  ["micro batch", spec({ train: "{steps: 10, batch_size: 16, micro_batch: 3}" }), "spec.yaml:4:36: train.micro_batch: 3 does not divide the per-rank batch 8 at world size 2"],
  ["min_workers above workers", spec({ cluster: "{workers: 2, min_workers: 3}" }), "spec.yaml:5:23: cluster.min_workers: 3 is more than cluster.workers 2"],
  ["nccl without GPUs", spec({ cluster: "{workers: 2, backend: nccl}" }), "spec.yaml:5:23: cluster.backend: nccl needs cluster.gpus_per_worker >= 1"],
  ["too many labels", spec({}, `labels: {${Array.from({ length: 65 }, (_, i) => `k${i}: v`).join(", ")}}\n`), "spec.yaml:6:1: labels: expected at most 64 entries, got 65"],
  ["label value too long", spec({}, `labels: {variant: ${"x".repeat(257)}}\n`), `spec.yaml:6:10: labels.variant: expected a non-empty string of at most 256 characters, got "${"x".repeat(57)}..."`],
  ["label key too long", spec({}, `labels: {${"k".repeat(65)}: v}\n`), "spec.yaml:6:10: labels." + "k".repeat(65) + ": invalid key (expected label of at most 64 characters)"],
  ["too many stages", PIPE(Array.from({ length: 129 }, (_, i) => `  - {name: s${i}}\n`).join("")), "spec.yaml:6:1: stages: expected at most 128 stages, got 129"],
  [
    "spec expanding past its bound",
    spec({ data: `{train: "/x/${"a".repeat(60_000)}.tar"}` }, `stages:\n${Array.from({ length: 80 }, (_, i) => `  - {name: s${i}}\n`).join("")}`),
    "spec.yaml: expands to 4.7 MiB once every stage inherits the top-level fields (at most 2.0 MiB): move large values into the stages that need them",
  ],
  ["an object store shard source", spec({ data: '{train: "s3://b/{00000..00003}.tar"}' }), 'spec.yaml:3:8: data.train: "s3://b/{00000..00003}.tar": s3:// is not read directly; use "pipe:aws s3 cp s3://b/{00000..00003}.tar -" (see docs/data.md)'],
  ["a gs:// shard source", spec({ data: '{train: ["a.tar", "gs://b/x.tar"]}' }), 'spec.yaml:3:8: data.train: "gs://b/x.tar": gs:// is not read directly; use "pipe:gsutil cat gs://b/x.tar" (see docs/data.md)'],
  ["env values are strings", spec({}, "worker: {env: {OMP_NUM_THREADS: 1}}\n"), "spec.yaml:6:16: worker.env.OMP_NUM_THREADS: expected a non-empty string, got 1"],
  ["keep_every_steps cadence", spec({}, "checkpoint: {every_steps: 20, keep_every_steps: 50}\n"), "spec.yaml:6:31: checkpoint.keep_every_steps: 50 is not a multiple of checkpoint.every_steps 20, so it would keep no checkpoint"],
  ["template placeholder", spec({}, 'eval: {templates: ["a photo"]}\n'), 'spec.yaml:6:20: eval.templates[0]: expected a template containing "{}" or "{c}", got "a photo"'],
  ["eval shorthand", spec({}, "eval: yes\n"), 'spec.yaml:6:1: eval: expected true, false, a mapping or null, got "yes"'],
  ["freeze_backbone on pretrain", spec({}, "freeze_backbone: true\n"), "spec.yaml:6:1: freeze_backbone: only fine-tune tasks freeze the backbone (task is pretrain)"],
  ["eval needs a checkpoint", spec({ task: "eval", data: '{val: "v.tar"}' }), "spec.yaml: init: task eval needs a checkpoint to evaluate (init: {checkpoint: REF})"],
  ["ignore_index is a class", spec({ task: "finetune-seg" }, "dense: {num_classes: 10, ignore_index: 3}\n"), "spec.yaml:6:26: dense.ignore_index: 3 is a class id (dense.num_classes is 10); use a value outside 0..9"],
  ["cycle", PIPE("  - {name: pretrain, needs: [seg]}\n  - {name: seg, needs: [pretrain]}\n"), "spec.yaml:6:1: stages: cycle pretrain -> seg -> pretrain"],
  ["longer cycle behind a free stage", PIPE("  - {name: a}\n  - {name: b, needs: [d]}\n  - {name: c, needs: [b]}\n  - {name: d, needs: [c]}\n"), "spec.yaml:6:1: stages: cycle b -> d -> c -> b"],
  [
    "unknown need",
    PIPE("  - {name: pretrain}\n  - {name: seg, needs: [pretrian]}\n"),
    'spec.yaml:8:25: stages[1].needs[0]: stage "seg" needs "pretrian", which is not a stage of this spec (did you mean "pretrain"?)',
  ],
  [
    "init from a stage that is not a need",
    PIPE("  - {name: pretrain}\n  - {name: seg, task: finetune-seg, init: {checkpoint: pretrain}}\n"),
    'spec.yaml:8:44: stages[1].init.checkpoint: stage "pretrain" is not among the needs of stage "seg" (add it to needs)',
  ],
  [
    "init from an eval stage",
    PIPE("  - {name: ev, task: eval, init: {checkpoint: j-1}, data: {val: v.tar}}\n  - {name: seg, task: finetune-seg, needs: [ev], init: {checkpoint: ev}}\n"),
    'spec.yaml:8:57: stages[1].init.checkpoint: stage "ev" is an eval stage and writes no checkpoint',
  ],
  [
    "init stage typo",
    PIPE("  - {name: pretrain}\n  - {name: seg, needs: [pretrain], init: {checkpoint: pretrian}}\n"),
    'spec.yaml:8:43: stages[1].init.checkpoint: no stage "pretrian" in this spec (did you mean "pretrain"?)',
  ],
  ["eval.clip pointing nowhere", spec({ task: "train-captioner", data: '{train: "a.tar", val: "v.tar"}' }, "eval: {clip: ./nowhere}\n"), "spec.yaml:6:8: eval.clip: no such checkpoint directory: nowhere"],
  ["eval.clip outside train-captioner", spec({ data: '{train: "a.tar", val: "v.tar"}' }, "eval: {clip: ./nowhere}\n"), "spec.yaml:6:8: eval.clip: only task train-captioner checks captions with a CLIP (task is pretrain)"],
  [
    "eval.clip: a stage not among the needs",
    PIPE("  - {name: pretrain}\n  - {name: cap, task: train-captioner, data: {train: a.tar, val: v.tar}, eval: {clip: pretrain}}\n"),
    'spec.yaml:8:81: stages[1].eval.clip: stage "pretrain" is not among the needs of stage "cap" (add it to needs)',
  ],
  ["decoder heads", spec({ task: "train-captioner" }, "decoder: {width: 30, heads: 4}\n"), "spec.yaml:6:22: decoder.heads: decoder.width 30 is not divisible by 4 heads"],
  [
    "train-captioner with two captions a sample",
    spec({ task: "train-captioner", data: '{train: "a.tar", captions: {alt: 0.5, vecap: 0.5}, caption_mode: both}' }),
    'spec.yaml:3:58: data.caption_mode: task train-captioner trains on one caption per sample ("sample"), got "both"',
  ],
  ["duplicate stage", PIPE("  - {name: a}\n  - {name: a}\n"), 'spec.yaml:8:6: stages[1].name: duplicate stage name "a" (also stages[0])'],
  ["bad stage name", PIPE("  - {name: Seg}\n"), 'spec.yaml:7:6: stages[0].name: expected a name of 1 to 64 characters from a-z 0-9 -, got "Seg"'],
  ["stage without a name", PIPE("  - {task: pretrain}\n"), "spec.yaml:7:5: stages[0].name: missing (expected a name of 1 to 64 characters from a-z 0-9 -)"],
  ["job field in a stage", PIPE("  - {name: a, priority: 3}\n"), "spec.yaml:7:15: stages[0].priority: belongs to the job, not to a stage (set it at the top level)"],
  ["empty pipeline", spec({}, "stages: []\n"), "spec.yaml:6:1: stages: expected a non-empty list of stages, got []"],
  ["stage override", PIPE("  - {name: a}\n  - {name: b, train: {lr: -1}}\n"), "spec.yaml:8:23: stages[1].train.lr: expected a positive number, got -1"],
  ["stage cluster vs shared batch", PIPE("  - {name: a}\n  - {name: b, cluster: {workers: 3}}\n"), "spec.yaml:8:5: stages[1].train.batch_size: 8 is not divisible by cluster.workers 3"],
  ["synth shared with different sizes", spec({ data: "{synth: {out: d, train: 64}}" }, "stages:\n  - {name: a}\n  - {name: b, model: {image: {image_size: 64}}}\n"), "spec.yaml:8:5: stages[1].data.synth: generates into d like stage \"a\" but differently (size 64 vs 32); set data.synth.size or use another out"],
  ["synth size too small", spec({ data: "{synth: {out: d, train: 64, size: 8}}" }), "spec.yaml:3:35: data.synth.size: expected an integer >= 16, got 8"],
  ["synth derived size too small", spec({ data: "{synth: {out: d, train: 64}}", model: "{image: {preset: vit-tiny, image_size: 8, patch: 4}, text: text-tiny, embed_dim: 64}" }), "spec.yaml:3:8: data.synth.size: the generator needs images of at least 16 px; model.image.image_size is 8: set data.synth.size >= 16"],
  ["command without a command", CMD(""), "spec.yaml: command: missing (task command runs it: command: [python, train.py])"],
  ["a command on a built-in task", spec({}, "command: [python, train.py]\n"), "spec.yaml:6:1: command: only task command runs a command (task is pretrain)"],
  ["a command's script missing", CMD("command: [python, nope.py, --fast]\n"), "spec.yaml:3:19: command[1]: no such file: nope.py"],
  ["a command's program not on PATH", CMD("command: [no-such-program-here, x]\n"), "spec.yaml:3:11: command[0]: no-such-program-here: not found on PATH"],
  ["a command's workdir missing", CMD("command: [python, x.py]\nworkdir: nowhere\n"), "spec.yaml:4:1: workdir: no such directory: nowhere"],
  ["a data plan without steps", CMD("command: [\"true\"]\ndata: {num_samples: 64}\ntrain: {batch_size: 8}\n"), "spec.yaml:5:1: train: set steps or epochs (data.num_samples asks for a data plan)"],
  ["a data plan whose batch the ranks cannot share", CMD("command: [\"true\"]\ndata: {num_samples: 64}\ntrain: {batch_size: 7, steps: 3}\n"), "spec.yaml:5:9: train.batch_size: 7 is not divisible by cluster.workers 2"],
  ["a command with shards", CMD("command: [\"true\"]\ndata: {train: a.tar}\n"), "spec.yaml:4:8: data.train: task command reads its own data (set data.num_samples for a data plan)"],
  ["num_samples on a built-in task", spec({ data: '{train: "a.tar", num_samples: 5}' }), "spec.yaml:3:24: data.num_samples: only task command takes it (task pretrain reads data.train)"],
  ["top level is a list", "- task: pretrain\n", "spec.yaml: top level must be a mapping of spec fields, got a list"],
  ["top level is a scalar", "hello\n", 'spec.yaml: top level must be a mapping of spec fields, got the string "hello"'],
  ["empty file", "# nothing here\n", "spec.yaml: top level must be a mapping of spec fields, got an empty document"],
  ["YAML syntax", "task: pretrain\ntrain: [1, 2\ncluster: {workers: 2}\n", "spec.yaml:3:1: invalid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]"],
  ["duplicate key", spec({}, "task: eval\n"), "spec.yaml:6:1: invalid YAML: Map keys must be unique"],
  ["unquoted braces in a flow mapping", spec({ data: "{train: shards/{0..3}.tar}" }), "spec.yaml:3:22: invalid YAML: Unexpected flow-map-start at node end"],
];

void describe("spec errors: exact first lines", () => {
  void it("has a table of at least 30 cases", () => assert.ok(CASES.length >= 30));
  for (const [what, text, expected] of CASES) {
    void it(what, () => {
      const { file, dir } = write(text);
      assert.equal(firstLine(file, dir), expected);
    });
  }
});

void describe("spec errors: files", () => {
  void it("missing file", () => {
    const dir = join(tmp, `case-${counter++}`);
    mkdirSync(dir);
    assert.equal(firstLine(join(dir, "spec.yaml"), dir), "spec.yaml: no such file");
  });

  void it("a directory", () => {
    const dir = join(tmp, `case-${counter++}`);
    mkdirSync(join(dir, "spec.yaml"), { recursive: true });
    assert.equal(firstLine(join(dir, "spec.yaml"), dir), "spec.yaml: is a directory, not a file");
  });

  void it("a 10 MB file is refused before it is read", () => {
    const { file, dir } = write(Buffer.alloc(10 * 1024 * 1024, 0x20));
    assert.equal(firstLine(file, dir), "spec.yaml: too large (10.0 MiB; the limit is 1.0 MiB)");
  });

  void it("binary garbage", () => {
    const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d]);
    const { file, dir } = write(png);
    assert.equal(firstLine(file, dir), "spec.yaml: not UTF-8 text (invalid byte 0x89 at line 1, column 1)");
  });

  void it("invalid UTF-8 in the middle of a line", () => {
    const { file, dir } = write(Buffer.concat([Buffer.from("name: caf\u00e9\ntask: pre"), Buffer.from([0xff]), Buffer.from("train\n")]));
    assert.equal(firstLine(file, dir), "spec.yaml: not UTF-8 text (invalid byte 0xff at line 2, column 10)");
  });

  void it("an overlong UTF-8 encoding is invalid", () => {
    const { file, dir } = write(Buffer.from([0x61, 0xc0, 0xaf, 0x0a]));
    assert.equal(firstLine(file, dir), "spec.yaml: not UTF-8 text (invalid byte 0xc0 at line 1, column 2)");
  });

  void it("NUL bytes", () => {
    const { file, dir } = write(Buffer.from("task: pretrain\nse\u0000ed: 1\n"));
    assert.equal(firstLine(file, dir), "spec.yaml: binary file (NUL byte at line 2, column 3)");
  });

  void it("JSON by extension: YAML syntax is refused", () => {
    const { file, dir } = write("task: pretrain\n", "spec.json");
    assert.equal(firstLine(file, dir), 'spec.json:1:1: invalid JSON: Unresolved plain scalar "task"');
  });

  void it("JSON by extension: trailing commas are refused", () => {
    const { file, dir } = write('{"task": "pretrain",}\n', "spec.json");
    assert.match(firstLine(file, dir), /^spec\.json: invalid JSON: /);
  });

  void it("JSON by extension: duplicate keys are refused", () => {
    const { file, dir } = write('{"task": "pretrain", "task": "eval"}\n', "spec.json");
    assert.equal(firstLine(file, dir), "spec.json:1:22: invalid JSON: Map keys must be unique");
  });

  void it("alias bombs are refused", () => {
    const lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"];
    for (let i = 0; i < 8; i++) lines.push(`${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(10).fill(`*${String.fromCharCode(97 + i)}`).join(", ")}]`);
    const { file, dir } = write(`${lines.join("\n")}\n`);
    assert.match(firstLine(file, dir), /^spec\.yaml: invalid YAML: /);
  });

  void it("an unknown file extension is read as YAML", () => {
    const { file, dir } = write("- 1\n", "spec.txt");
    assert.equal(firstLine(file, dir), "spec.txt: top level must be a mapping of spec fields, got a list");
  });
});

void describe("spec errors: all of them at once", () => {
  void it("reports every problem, one line each, unknown fields first within a section", () => {
    const { file } = write(spec({ train: "{steps: 10, batch_size: 8, lr: fast, lrr: 1}", cluster: "{workers: 0}" }, "seed: -1\n"));
    try {
      loadSpecFile(file, { presets });
      assert.fail("validated");
    } catch (err) {
      assert.ok(err instanceof SpecValidationError);
      assert.deepEqual(
        err.issues.map((i) => `${i.line}:${i.column} ${i.path}: ${i.message}`),
        [
          "6:1 seed: expected an integer >= 0, got -1",
          '4:45 train.lrr: unknown field (did you mean "lr"?)',
          '4:35 train.lr: expected a positive number, got "fast"',
          "5:11 cluster.workers: expected an integer >= 1, got 0",
        ],
      );
      assert.equal(err.path, "seed");
      assert.equal(err.code, "INVALID_ARGUMENT");
      assert.equal(err.message.split("\n").length, 4);
      assert.ok(err.message.split("\n").every((line) => line.startsWith(file)));
    }
  });

  void it("reports a problem every stage shares once, at its top-level path", () => {
    const { file, dir } = write(spec({ train: "{steps: 10, batch_size: 8, lr: fast}" }, "stages:\n  - {name: a}\n  - {name: b, needs: [a]}\n"));
    try {
      loadSpecFile(file, { presets });
      assert.fail("validated");
    } catch (err) {
      assert.ok(err instanceof InvalidArgumentError);
      assert.equal(err.message.replaceAll(`${dir}/`, ""), 'spec.yaml:4:35: train.lr: expected a positive number, got "fast"');
    }
  });

  void it("reports a missing field per stage when only some stages lack it", () => {
    const { file, dir } = write(spec({ task: null }, "stages:\n  - {name: a, task: pretrain}\n  - {name: b}\n"));
    try {
      loadSpecFile(file, { presets });
      assert.fail("validated");
    } catch (err) {
      assert.ok(err instanceof InvalidArgumentError);
      assert.equal(
        err.message.replaceAll(`${dir}/`, ""),
        'spec.yaml:7:5: stages[1].task: missing (expected one of "pretrain", "finetune-seg", "finetune-depth", "eval", "command", "train-captioner", "recaption")',
      );
    }
  });
});
