/**
 * Good specs: presets and defaults resolve, the result is deeply frozen,
 * stages merge and order correctly, references and paths resolve, and the
 * config hash depends on the config only.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type JobSpec, type StageSpec, InvalidArgumentError } from "../../src/domain/index.js";
import { SpecValidationError, canonicalJson, loadPresets, loadSpecFile, parseSpec } from "../../src/spec/index.js";
import { mergeOverrides, resolvePattern, synthShards } from "../../src/spec/resolve.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const PRESETS_FILE = join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json");
const presets = loadPresets(PRESETS_FILE);
const tmp = mkdtempSync(join(tmpdir(), "spec-resolve-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The smallest valid training spec; tests spread their changes over it. */
const MINIMAL = { task: "pretrain", data: { train: "shards/{00000..00003}.tar" }, train: { steps: 10, batch_size: 8 }, cluster: { workers: 2 } };

function parse(raw: unknown, specPath = "/specs/job.yaml"): JobSpec {
  return parseSpec(raw, { specPath, baseDir: "/specs", presets });
}

function only(job: JobSpec): StageSpec {
  assert.equal(job.stages.length, 1);
  return job.stages[0]!;
}

function errorOf(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof InvalidArgumentError);
    return err;
  }
  assert.fail("no error");
}

void describe("defaults and presets", () => {
  void it("fills every default, with the presets' default towers", () => {
    const job = parse(MINIMAL);
    assert.equal(job.name, "job");
    assert.equal(job.priority, 0);
    assert.equal(job.base_dir, "/specs");
    const s = only(job);
    assert.equal(s.name, "main");
    assert.deepEqual(s.needs, []);
    assert.equal(s.seed, 0);
    assert.equal(s.command, null, "built-in tasks run no command");
    assert.equal(s.workdir, null);
    assert.deepEqual(s.model.image, { preset: "vit-b16", family: "vit", image_size: 224, width: 768, depth: 12, heads: 12, patch: 16, mlp_ratio: 4, layers: [], widths: [] });
    assert.deepEqual(s.model.text, { preset: "text-base", width: 512, depth: 12, heads: 8, mlp_ratio: 4, context_length: 77, causal: true });
    assert.equal(s.model.embed_dim, 512);
    assert.deepEqual(s.model.tokenizer, { type: "byte", vocab: null });
    assert.deepEqual(s.data, {
      train: ["/specs/shards/{00000..00003}.tar"],
      val: [],
      synth: null,
      captions: { alt: 1 },
      empty_captions: "skip",
      caption_mode: "sample",
      augment: { crop_scale: [0.9, 1.0], crop_ratio: [0.75, 1.3333333], hflip: 0 },
      fraction: 1,
      shuffle: true,
      audit: false,
      index: null,
      cache: { dir: null, max_bytes: "64GiB", fetch_retries: 6 },
      loader_threads: 2,
      prefetch_steps: 4,
      num_samples: null,
    });
    assert.deepEqual(s.train, {
      steps: 10,
      epochs: null,
      batch_size: 8,
      micro_batch: null,
      lr: 5e-4,
      min_lr: 0,
      warmup_steps: 0,
      schedule: "cosine",
      weight_decay: 0.2,
      betas: [0.9, 0.98],
      eps: 1e-6,
      grad_clip: null,
      precision: "auto",
      on_nan: "fail",
      log_every: 1,
      threads: null,
      deterministic: true,
      compile: false,
    });
    assert.deepEqual(s.cluster, { workers: 2, min_workers: 2, backend: "auto", gpus_per_worker: 0, node_selector: {}, spares: 1 });
    assert.deepEqual(s.worker, { python: null, env: {} });
    assert.deepEqual(s.checkpoint, { every_steps: null, every_minutes: 30, every: null, mtbf_prior_hours: 24, keep_last: 3, keep_every_steps: null, async: false, dir: null, final: true });
    assert.deepEqual(s.failure, {
      max_restarts: 3,
      max_preemptions: 100,
      backoff_seconds: 1,
      backoff_max_seconds: 60,
      heartbeat_timeout: 10,
      hang_min_seconds: 60,
      hang_factor: 10,
      fence_seconds: 30,
      quarantine_after: 3,
      quarantine_seconds: 600,
      grace_seconds: 30,
      startup_timeout: 300,
    });
    assert.equal(s.eval, null);
    assert.deepEqual(s.init, { kind: "random" });
    assert.equal(s.freeze_backbone, false);
    assert.deepEqual(s.dense, { num_classes: null, ignore_index: 255, depth_loss: "silog", max_depth: 10, head_width: 64 });
  });

  void it("resolves an MCi preset with overrides, filling the ViT-only fields from its shape", () => {
    const s = only(parse({ ...MINIMAL, model: { image: { preset: "mci0", image_size: 224, heads: 4 } } }));
    assert.deepEqual(s.model.image, {
      preset: "mci0",
      family: "mci",
      image_size: 224,
      width: 512,
      depth: 20,
      heads: 4,
      patch: 32,
      mlp_ratio: 3,
      layers: [2, 6, 10, 2],
      widths: [64, 128, 256, 512],
    });
  });

  void it("accepts a tower without a preset when all its family's fields are given", () => {
    const image = { family: "vit", image_size: 64, width: 96, depth: 3, heads: 3, patch: 16, mlp_ratio: 2 };
    const text = { width: 32, depth: 1, heads: 4, mlp_ratio: 2, context_length: 16, causal: false };
    const s = only(parse({ ...MINIMAL, model: { image, text, embed_dim: 16 } }));
    assert.deepEqual(s.model.image, { preset: null, ...image, layers: [], widths: [] });
    assert.deepEqual(s.model.text, { preset: null, ...text });
  });

  void it("resolves a bpe vocabulary against the spec's directory", () => {
    const dir = join(tmp, "bpe");
    mkdirSync(dir);
    writeFileSync(join(dir, "vocab.txt.gz"), "");
    const job = parseSpec({ ...MINIMAL, model: { tokenizer: { type: "bpe", vocab: "vocab.txt.gz" } } }, { specPath: "x.yaml", baseDir: dir, presets });
    assert.deepEqual(only(job).model.tokenizer, { type: "bpe", vocab: join(dir, "vocab.txt.gz") });
  });

  void it("expands shorthands: eval and augment", () => {
    assert.equal(only(parse({ ...MINIMAL, data: { ...MINIMAL.data, val: "v.tar" }, eval: false })).eval, null);
    const withEval = only(parse({ ...MINIMAL, data: { ...MINIMAL.data, val: "v.tar" }, eval: true }));
    assert.deepEqual(withEval.eval, only(parse({ ...MINIMAL, data: { ...MINIMAL.data, val: "v.tar" }, eval: {} })).eval);
    // null: the dataset's zeroshot_classification_templates.txt, else the worker's 8 CLIP templates.
    assert.equal(withEval.eval?.templates, null);
    const cb = only(parse({ ...MINIMAL, data: { ...MINIMAL.data, val: "v.tar" }, eval: { templates: ["a photo of a {c}.", "a {} drawing."] } }));
    assert.deepEqual(cb.eval?.templates, ["a photo of a {c}.", "a {} drawing."]);
    assert.deepEqual(only(parse({ ...MINIMAL, data: { ...MINIMAL.data, augment: false } })).data.augment, { crop_scale: null, crop_ratio: [0.75, 1.3333333], hflip: 0 });
    assert.deepEqual(only(parse({ ...MINIMAL, data: { ...MINIMAL.data, augment: { hflip: 0.5 } } })).data.augment, { crop_scale: [0.9, 1.0], crop_ratio: [0.75, 1.3333333], hflip: 0.5 });
  });

  void it("derives data paths from synth: shards train shards, ceil(shards / 4) val shards", () => {
    const s = only(parse({ ...MINIMAL, seed: 7, data: { synth: { out: "gen", train: 100, val: 3, shards: 10 } } }));
    assert.deepEqual(s.data.synth, { out: "/specs/gen", train: 100, val: 3, shards: 10, size: 224, seed: 7 });
    assert.deepEqual(s.data.train, ["/specs/gen/train-{00000..00009}.tar"]);
    assert.deepEqual(s.data.val, ["/specs/gen/val-{00000..00002}.tar"]);
    assert.equal(synthShards("/d", "val", 1), "/d/val-{00000..00000}.tar");
    assert.equal(synthShards("/d", "train", 12345), "/d/train-{00000..12344}.tar");
  });

  void it("keeps given shard patterns over synth ones", () => {
    const s = only(parse({ ...MINIMAL, data: { train: ["a/{0..1}.tar", "/abs/b.tar"], synth: { out: "gen", train: 100 } } }));
    assert.deepEqual(s.data.train, ["/specs/a/{0..1}.tar", "/abs/b.tar"]);
    assert.deepEqual(s.data.val, ["/specs/gen/val-{00000..00000}.tar"]);
  });

  void it("resolves shard patterns: directories only, braces and URLs kept", () => {
    assert.equal(resolvePattern("shards/{00000..00009}.tar", "/base"), "/base/shards/{00000..00009}.tar");
    assert.equal(resolvePattern("../x/./y/{a,b/c}.tar", "/base/dir"), "/base/x/y/{a,b/c}.tar");
    assert.equal(resolvePattern("{a,b}/x.tar", "/base"), "/base/{a,b}/x.tar");
    assert.equal(resolvePattern("a.tar::../b/{0..1}.tar::pipe:curl -s http://h/c.tar", "/base/d"), "/base/d/a.tar::/base/b/{0..1}.tar::pipe:curl -s http://h/c.tar");
    assert.equal(resolvePattern("s3://bucket/{0..9}.tar", "/base"), "s3://bucket/{0..9}.tar");
    // file:// takes relative paths like plain ones; file:///abs is /abs.
    assert.equal(resolvePattern("file://shards/{0..1}.tar::file:///abs/x.tar::file:y.tar", "/base"), "/base/shards/{0..1}.tar::/abs/x.tar::/base/y.tar");
  });

  void it("resolves data.index against the spec file and passes data.cache through", () => {
    const s = only(parse({ ...MINIMAL, data: { ...MINIMAL.data, index: "idx", cache: { max_bytes: "5GB", dir: "/scratch/c" } } }));
    assert.equal(s.data.index, "/specs/idx");
    assert.deepEqual(s.data.cache, { dir: "/scratch/c", max_bytes: "5GB", fetch_retries: 6 });
  });

  void it("resolves the other paths: checkpoint.dir, worker.python with a slash, init paths", () => {
    const s = only(parse({ ...MINIMAL, checkpoint: { dir: "ckpt" }, worker: { python: "venv/bin/python" }, init: { checkpoint: "./runs/x" } }));
    assert.equal(s.checkpoint.dir, "/specs/ckpt");
    assert.equal(s.worker.python, "/specs/venv/bin/python");
    assert.deepEqual(s.init, { kind: "checkpoint", ref: "/specs/runs/x", import: false });
    assert.equal(only(parse({ ...MINIMAL, worker: { python: "python3" } })).worker.python, "python3");
  });

  void it("imports only checkpoint directories (init.import)", () => {
    assert.deepEqual(only(parse({ ...MINIMAL, init: { checkpoint: "./elsewhere/step-00000010-a1", import: true } })).init, {
      kind: "checkpoint",
      ref: "/specs/elsewhere/step-00000010-a1",
      import: true,
    });
    assert.throws(() => parse({ ...MINIMAL, init: { checkpoint: "j-20261123-155955-a1b2c3", import: true } }), /init\.import: only a checkpoint directory can be imported/);
  });

  void it("imports open_clip weights without being asked: a weights file, or a folder with open_clip_config.json", () => {
    const dir = join(tmp, "oc-export");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "open_clip_config.json"), "{}");
    writeFileSync(join(dir, "open_clip_pytorch_model.bin"), "x");
    const at = (ref: string) => only(parseSpec({ ...MINIMAL, init: { checkpoint: ref } }, { specPath: join(tmp, "job.yaml"), baseDir: tmp, presets })).init;
    assert.deepEqual(at("./oc-export"), { kind: "checkpoint", ref: dir, import: true });
    assert.deepEqual(at("./oc-export/open_clip_pytorch_model.bin"), { kind: "checkpoint", ref: join(dir, "open_clip_pytorch_model.bin"), import: true });
    // A directory without that config is a clipfleet checkpoint directory: signed by this orchestrator, or imported when asked.
    assert.deepEqual(at("./nowhere"), { kind: "checkpoint", ref: join(tmp, "nowhere"), import: false });
  });

  void it("takes job ids and JOB:STAGE as checkpoint references", () => {
    assert.deepEqual(only(parse({ ...MINIMAL, init: { checkpoint: "j-20261123-155955-a1b2c3" } })).init, { kind: "checkpoint", ref: "j-20261123-155955-a1b2c3", import: false });
    assert.deepEqual(only(parse({ ...MINIMAL, init: { checkpoint: "j-20261123-155955-a1b2c3:seg" } })).init, { kind: "checkpoint", ref: "j-20261123-155955-a1b2c3:seg", import: false });
  });

  void it("train-captioner: decoder defaults, eval.clip as a stage among the needs, a job, or a directory resolved from the spec file", () => {
    const cap = { ...MINIMAL, task: "train-captioner", data: { ...MINIMAL.data, val: "v.tar", captions: { vecap: 1 } } };
    const s = only(parse({ ...cap, eval: {} }));
    assert.deepEqual(s.decoder, { width: 256, depth: 4, heads: 4, mlp_ratio: 4, context_length: 77 });
    assert.equal(s.eval?.clip, null);
    assert.equal(only(parse({ ...cap, eval: { clip: "j-20261123-155955-a1b2c3:clip" } })).eval?.clip, "j-20261123-155955-a1b2c3:clip");
    const dir = join(tmp, "a-clip");
    mkdirSync(dir, { recursive: true });
    const at = only(parseSpec({ ...cap, eval: { clip: "./a-clip" } }, { specPath: join(tmp, "job.yaml"), baseDir: tmp, presets }));
    assert.equal(at.eval?.clip, dir);
    const pipeline = parse({ ...cap, stages: [{ name: "clip", task: "pretrain", eval: false }, { name: "cap", needs: ["clip"], eval: { clip: "clip" } }] });
    assert.equal(pipeline.stages[1]?.eval?.clip, "clip");
    assert.equal(pipeline.stages[1]?.task, "train-captioner");
  });

  void it("gives eval stages eval defaults and no step count", () => {
    const s = only(parse({ ...MINIMAL, task: "eval", train: { steps: 10 }, data: { val: "v.tar" }, init: { checkpoint: "j-1" } }));
    assert.equal(s.eval?.batch_size, 256);
    assert.equal(s.train.batch_size, 256);
    assert.equal(s.train.steps, null);
    assert.equal(s.train.epochs, null);
  });

  void it("names the job after the file, or from name:", () => {
    assert.equal(parse(MINIMAL, "/x/caption.mix.yaml").name, "caption.mix");
    assert.equal(parse({ ...MINIMAL, name: "Run_1" }).name, "Run_1");
    const err = errorOf(() => parse(MINIMAL, "/x/my spec.yaml"));
    assert.equal(err.message, '/x/my spec.yaml: name: missing, and the file name "my spec" is not a valid job name (expected a name of 1 to 64 characters from A-Z a-z 0-9 . _ -)');
  });

  void it("prefixes parseSpec errors with the spec path and keeps them structured", () => {
    const err = errorOf(() => parse({ ...MINIMAL, train: { steps: 10, batch_size: 8, lr: "fast" } }, "sent.json"));
    assert.ok(err instanceof SpecValidationError);
    assert.equal(err.message, 'sent.json: train.lr: expected a positive number, got "fast"');
    assert.deepEqual(err.issues, [{ path: "train.lr", message: 'expected a positive number, got "fast"', line: null, column: null }]);
    assert.equal(err.path, "train.lr");
  });
});

void describe("frozen result", () => {
  void it("is deeply frozen, so no reader can change the config", () => {
    const job = parse({ ...MINIMAL, data: { ...MINIMAL.data, val: "v.tar" }, eval: {}, worker: { env: { A: "1" } } });
    const seen: unknown[] = [];
    const walk = (v: unknown): void => {
      if (typeof v !== "object" || v === null) return;
      assert.ok(Object.isFrozen(v), `not frozen: ${JSON.stringify(v).slice(0, 60)}`);
      seen.push(v);
      for (const child of Object.values(v)) walk(child);
    };
    walk(job);
    assert.ok(seen.length > 20);
    const stage = job.stages[0]!;
    assert.throws(() => {
      (stage.train as { lr: number }).lr = 1;
    }, TypeError);
    assert.throws(() => {
      (stage.data.train as string[]).push("x");
    }, TypeError);
    assert.throws(() => {
      (stage.worker.env as Record<string, string>).B = "2";
    }, TypeError);
  });

  void it("shares nothing with the input or with another parse", () => {
    const raw = structuredClone({ ...MINIMAL, train: { ...MINIMAL.train, betas: [0.9, 0.95] } });
    const a = parse(raw);
    raw.train.betas[0] = 0.1;
    assert.deepEqual(only(a).train.betas, [0.9, 0.95]);
    const b = parse(MINIMAL);
    assert.notEqual(only(a).data.captions, only(b).data.captions);
  });
});

void describe("pipelines", () => {
  const SHARED = {
    model: { image: "vit-tiny", text: "text-tiny", embed_dim: 64 },
    data: { train: "t/{0..3}.tar", val: "v.tar" },
    train: { batch_size: 8, steps: 100, lr: 1e-3, betas: [0.9, 0.98] },
    cluster: { workers: 2 },
  };

  void it("merges stage overrides over the shared fields: mappings merge, scalars and lists replace", () => {
    const job = parse({
      ...SHARED,
      stages: [
        { name: "pretrain", task: "pretrain" },
        {
          name: "seg",
          task: "finetune-seg",
          needs: ["pretrain"],
          init: { checkpoint: "pretrain" },
          freeze_backbone: true,
          model: { image: { image_size: 64 } },
          train: { lr: 1e-4, betas: [0.8, 0.9] },
          cluster: { min_workers: 1 },
        },
      ],
    });
    const [pre, seg] = job.stages;
    assert.deepEqual([pre!.train.lr, pre!.train.steps, pre!.train.batch_size, pre!.model.image.image_size], [1e-3, 100, 8, 32]);
    assert.deepEqual([seg!.train.lr, seg!.train.steps, seg!.train.batch_size], [1e-4, 100, 8]);
    assert.deepEqual(seg!.train.betas, [0.8, 0.9]);
    assert.deepEqual({ preset: seg!.model.image.preset, image_size: seg!.model.image.image_size }, { preset: "vit-tiny", image_size: 64 });
    assert.deepEqual([seg!.cluster.workers, seg!.cluster.min_workers], [2, 1]);
    assert.deepEqual(seg!.init, { kind: "checkpoint", ref: "pretrain", import: false });
    assert.deepEqual(seg!.needs, ["pretrain"]);
    assert.equal(seg!.freeze_backbone, true);
  });

  void it("lets a shorthand replace a mapping and a mapping extend a shorthand", () => {
    assert.deepEqual(mergeOverrides({ model: { image: { preset: "vit-tiny", image_size: 64 } } }, { model: { image: "mci-tiny" } }), { model: { image: "mci-tiny" } });
    assert.deepEqual(mergeOverrides({ model: { tokenizer: "bpe" } }, { model: { tokenizer: { vocab: "v" } } }), { model: { tokenizer: { type: "bpe", vocab: "v" } } });
    assert.deepEqual(mergeOverrides({ eval: true }, { eval: { every_steps: 5 } }), { eval: { every_steps: 5 } });
    assert.deepEqual(mergeOverrides({ eval: { every_steps: 5 } }, { eval: false }), { eval: false });
    assert.deepEqual(mergeOverrides({ train: { betas: [1, 2] } }, { train: { betas: [3] } }), { train: { betas: [3] } });
  });

  void it("orders stages topologically, keeping the user's order where the needs allow", () => {
    const job = parse({
      ...SHARED,
      task: "pretrain",
      stages: [
        { name: "report", task: "eval", needs: ["seg"], init: { checkpoint: "seg" } },
        { name: "pretrain" },
        { name: "seg", task: "finetune-seg", needs: ["pretrain"] },
        { name: "depth", task: "finetune-depth", needs: ["pretrain"] },
        { name: "other" },
      ],
    });
    assert.deepEqual(
      job.stages.map((s) => s.name),
      ["pretrain", "seg", "report", "depth", "other"],
    );
  });

  void it("accepts an init reference to a transitive need", () => {
    const job = parse({
      ...SHARED,
      task: "pretrain",
      stages: [{ name: "a" }, { name: "b", needs: ["a"] }, { name: "c", task: "eval", needs: ["b"], init: { checkpoint: "a" } }],
    });
    assert.deepEqual(job.stages[2]!.init, { kind: "checkpoint", ref: "a", import: false });
  });

  void it("resolves YAML anchors, merge keys and x- keys", () => {
    const dir = join(tmp, "anchors");
    mkdirSync(dir);
    const file = join(dir, "anchors.yaml");
    writeFileSync(
      file,
      [
        "x-cluster: &cluster {workers: 4, min_workers: 2}",
        "task: pretrain",
        "data: {train: d.tar}",
        "train: {steps: 5, batch_size: 12}",
        "cluster:",
        "  <<: *cluster",
        "  backend: gloo",
        "stages:",
        "  - name: a",
        "  - name: b",
        "    cluster: *cluster",
        "",
      ].join("\n"),
    );
    const job = loadSpecFile(file, { presets });
    assert.deepEqual(
      job.stages.map((s) => [s.cluster.workers, s.cluster.min_workers, s.cluster.backend]),
      [
        [4, 2, "gloo"],
        [4, 2, "gloo"],
      ],
    );
  });

  void it("locates errors in values that come through a merge key", () => {
    const dir = join(tmp, "anchor-error");
    mkdirSync(dir);
    const file = join(dir, "spec.yaml");
    writeFileSync(file, ["x-train: &train", "  batch_size: 8", "  lr: fast", "task: pretrain", "data: {train: d.tar}", "train:", "  <<: *train", "  steps: 5", "cluster: {workers: 2}", ""].join("\n"));
    const err = errorOf(() => loadSpecFile(file, { presets }));
    assert.equal(err.message, `${file}:3:3: train.lr: expected a positive number, got "fast"`);
  });
});

void describe("config_sha256", () => {
  void it("is the sha256 of the canonical JSON of the stages", () => {
    const job = parse(MINIMAL);
    assert.equal(job.config_sha256, createHash("sha256").update(canonicalJson(job.stages)).digest("hex"));
    assert.match(job.config_sha256, /^[0-9a-f]{64}$/);
  });

  void it("does not depend on key order, shorthands or spelled-out defaults", () => {
    const a = parse({ task: "pretrain", model: { image: "vit-tiny" }, data: { train: "d.tar" }, train: { steps: 10, batch_size: 8 }, cluster: { workers: 2 } });
    const b = parse({
      cluster: { min_workers: 2, workers: 2 },
      train: { lr: 5e-4, batch_size: 8, steps: 10 },
      data: { augment: true, train: ["d.tar"] },
      model: { tokenizer: { type: "byte" }, image: { preset: "vit-tiny" } },
      eval: false,
      task: "pretrain",
    });
    assert.equal(a.config_sha256, b.config_sha256);
    const c = parse({ task: "pretrain", model: { image: "vit-tiny" }, data: { train: "d.tar" }, train: { steps: 10, batch_size: 8, lr: 1e-3 }, cluster: { workers: 2 } });
    assert.notEqual(a.config_sha256, c.config_sha256);
  });

  void it("is the same for a YAML file and its JSON twin", () => {
    const dir = join(tmp, "twins");
    mkdirSync(dir);
    writeFileSync(join(dir, "job.yaml"), "task: pretrain\ndata:\n  train: shards/{0..1}.tar\ntrain: {steps: 10, batch_size: 8}\ncluster: {workers: 2}\n");
    writeFileSync(join(dir, "job.json"), JSON.stringify({ cluster: { workers: 2 }, train: { batch_size: 8, steps: 10 }, data: { train: "shards/{0..1}.tar" }, task: "pretrain" }, null, "\t"));
    const y = loadSpecFile(join(dir, "job.yaml"), { presets });
    const j = loadSpecFile(join(dir, "job.json"), { presets });
    assert.equal(y.config_sha256, j.config_sha256);
    assert.equal(j.name, "job");
  });
});

void describe("presets", () => {
  void it("loads the shared presets.json", () => {
    assert.deepEqual(Object.keys(presets.image), ["vit-tiny", "vit-s16", "vit-b16", "mci-tiny", "mci0", "mci1", "mci2"]);
    assert.deepEqual(presets.defaults, { image: "vit-b16", text: "text-base", embed_dim: 512 });
    assert.ok(Object.isFrozen(presets.image["mci0"]));
  });

  void it("refuses a presets file with a broken preset, naming the file and the field", () => {
    const file = join(tmp, "presets.json");
    writeFileSync(
      file,
      JSON.stringify({
        image: { a: { family: "vit", image_size: 30, width: 64, depth: 2, heads: 2, patch: 8, mlp_ratio: 4 }, b: { family: "mci", image_size: 32 } },
        text: { t: { width: 64, depth: 2, heads: 2, mlp_ratio: 4, context_length: 77, causal: true } },
        defaults: { image: "a", text: "u", embed_dim: 64 },
      }),
    );
    const err = errorOf(() => loadPresets(file));
    assert.deepEqual(err.message.split("\n"), [
      `${file}: image.a.image_size: 30 is not divisible by the patch size 8`,
      `${file}: image.b.layers: missing (expected a list of 4 integers >= 1 for an MCi tower without a preset)`,
      `${file}: image.b.widths: missing (expected a list of 4 integers >= 1 for an MCi tower without a preset)`,
      `${file}: image.b.heads: missing (expected an integer >= 1 for an MCi tower without a preset)`,
      `${file}: image.b.mlp_ratio: missing (expected a positive number for an MCi tower without a preset)`,
      `${file}: defaults.text: no text preset "u"`,
    ]);
  });

  void it("refuses a presets file that is not JSON", () => {
    const file = join(tmp, "bad-presets.json");
    writeFileSync(file, "{image: 1}");
    assert.match(errorOf(() => loadPresets(file)).message, /^.*bad-presets\.json: invalid JSON \(/);
  });
});

void describe("task: command stages", () => {
  void it("in a pipeline after a built-in stage: the command and its workdir, none of the top-level shards, its own data plan", () => {
    const job = parse({
      ...MINIMAL,
      stages: [
        { name: "pretrain" },
        { name: "byo", task: "command", needs: ["pretrain"], command: ["sh", "-c", "exit 0"], workdir: "/", data: { num_samples: 64 }, train: { steps: 4, batch_size: 8 } },
      ],
    });
    const [pre, byo] = job.stages;
    assert.equal(pre?.command, null);
    assert.deepEqual(pre?.data.train, ["/specs/shards/{00000..00003}.tar"]);
    assert.deepEqual(byo?.command, ["sh", "-c", "exit 0"]);
    assert.equal(byo?.workdir, "/");
    assert.deepEqual(byo?.needs, ["pretrain"]);
    assert.deepEqual([byo?.data.train, byo?.data.val, byo?.data.synth, byo?.data.num_samples], [[], [], null, 64]);
    assert.deepEqual([byo?.train.steps, byo?.train.batch_size], [4, 8]);
  });

  void it("a stage's own shards are refused; a command without a plan keeps what it says of steps", () => {
    const own = errorOf(() => parse({ ...MINIMAL, stages: [{ name: "byo", task: "command", command: ["sh"], workdir: "/", data: { train: "x.tar" } }] }));
    assert.match(own.message, /stages\[0\]\.data\.train: task command reads its own data/);
    const s = only(parse({ task: "command", command: ["sh"], workdir: "/", cluster: { workers: 3 }, train: { steps: 7 } }));
    assert.deepEqual([s.train.steps, s.train.batch_size, s.data.num_samples], [7, 0, null]);
  });
});
