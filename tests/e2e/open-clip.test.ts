/**
 * open_clip interop through the real CLI: a tiny CLIP trained here (CLIP BPE
 * tokens from a small merges file), exported with `clipfleet export --format
 * open_clip`, then taken as `init.checkpoint` of new jobs, gives the same
 * features (a worker-side computation) and the same evaluation; bad open_clip
 * weights are refused at validate and run, one line naming the file and key.
 *
 * open_clip itself is not importable here (no network, not a dependency):
 * the export's config and key names are checked against open_clip's own
 * ViT-B-16 config and state_dict layout, recorded from its source in
 * worker-runtime/tests/fixtures/open_clip/ (test_openclip.py loads the export
 * with open_clip.create_model wherever open_clip is installed).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { after, before, describe, it } from "node:test";
import { PYTHON, ROOT, runCli, tempDir, tinyDataset } from "../helpers/cli.js";

const MERGES = ["t h", "th e</w>", "a n", "an d</w>", "c i", "ci r", "r e", "s q", "u a", "sq ua"];
/** 256 byte symbols, their end-of-word forms, one id per merge, SOT and EOT (CLIP's layout). */
const VOCAB_SIZE = 512 + MERGES.length + 2;
const FIXTURES = join(ROOT, "worker-runtime", "tests", "fixtures", "open_clip");

/** Runs a Python snippet with the worker runtime importable; returns its last stdout line as JSON. */
function python<T>(code: string, args: string[]): T {
  const r = spawnSync(PYTHON, ["-c", code, ...args], { cwd: join(ROOT, "worker-runtime"), env: { ...process.env, PYTHONPATH: join(ROOT, "worker-runtime") }, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as T;
}

/** What `run --json` prints (the parts used here). */
interface Summary {
  jobId: string;
  metrics: Record<string, number>;
  finalParamsSha256: string;
  firstLoss: number | null;
  checkpoints: { stage: string; step: number; dir: string }[];
}

void describe("open_clip export and import", () => {
  const tmp = tempDir();
  const state = join(tmp.dir, "state");
  const vocab = join(tmp.dir, "merges.txt.gz");
  const data = tinyDataset();
  const exportDir = join(tmp.dir, "export");
  const model = `model:
  image: vit-tiny
  text: {preset: text-tiny, context_length: 32}
  embed_dim: 64
  tokenizer: {type: bpe, vocab: ${vocab}}
`;
  const spec = (name: string, body: string): string => {
    const path = join(tmp.dir, `${name}.yaml`);
    writeFileSync(path, `name: ${name}\n${model}${body}`);
    return path;
  };
  let trained: Summary;

  before(async () => {
    writeFileSync(vocab, gzipSync(`#version: 0.2\n${MERGES.join("\n")}\n`));
    const r = await runCli(
      [
        "run",
        spec("oc-train", `task: pretrain\ndata:\n  train: ${data}/train-{00000..00003}.tar\n  val: ${data}/val-{00000..00000}.tar\ntrain: {steps: 6, batch_size: 16, lr: 1.0e-3, warmup_steps: 2}\ncluster: {workers: 1}\neval: {}\n`),
        "--json",
        "--state-dir",
        state,
      ],
      { cwd: tmp.dir },
    );
    assert.equal(r.code, 0, r.stderr);
    trained = JSON.parse(r.stdout) as Summary;
  });
  after(() => tmp.cleanup());

  void it("export writes open_clip's config (as its ViT-B-16 for these dims) and its CLIP key layout, saying the job, stage and step", async () => {
    const r = await runCli(["export", "oc-train", "--format", "open_clip", "--out", exportDir, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`exported stage main of ${trained.jobId} \\(step 6\\) to ${exportDir}`));
    assert.match(r.stdout, /open_clip\.create_model_and_transforms\('local-dir:/);
    const config = JSON.parse(readFileSync(join(exportDir, "open_clip_config.json"), "utf8")) as {
      model_cfg: { embed_dim: number; quick_gelu: boolean; vision_cfg: Record<string, number>; text_cfg: Record<string, unknown> };
      preprocess_cfg: { size: number; mean: number[]; std: number[]; interpolation: string; resize_mode: string };
      clipfleet: { job: string; stage: string; step: number; image: string; text: string };
    };
    assert.deepEqual(config.model_cfg.vision_cfg, { image_size: 32, layers: 2, width: 64, patch_size: 8, head_width: 32, mlp_ratio: 4 });
    assert.equal(config.model_cfg.embed_dim, 64);
    assert.equal(config.model_cfg.quick_gelu, false);
    assert.equal(config.model_cfg.text_cfg.vocab_size, VOCAB_SIZE);
    assert.deepEqual({ ...config.model_cfg.text_cfg, tokenizer_kwargs: undefined }, { context_length: 32, vocab_size: VOCAB_SIZE, width: 64, heads: 2, layers: 2, mlp_ratio: 4, tokenizer_kwargs: undefined });
    // Its own merges file travels with it (open_clip's default vocabulary is another one).
    assert.deepEqual(config.model_cfg.text_cfg.tokenizer_kwargs, { bpe_path: join(exportDir, "bpe_vocab.txt.gz") });
    // Every field open_clip's ViT-B-16 config has, the export has too.
    const vitB16 = JSON.parse(readFileSync(join(FIXTURES, "ViT-B-16.json"), "utf8")) as { vision_cfg: object; text_cfg: object };
    for (const key of Object.keys(vitB16.vision_cfg)) assert.ok(key in config.model_cfg.vision_cfg, `vision_cfg.${key}`);
    for (const key of Object.keys(vitB16.text_cfg)) assert.ok(key in config.model_cfg.text_cfg, `text_cfg.${key}`);
    assert.deepEqual(config.preprocess_cfg, { size: 32, mode: "RGB", mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711], interpolation: "bicubic", resize_mode: "shortest", fill_color: 0 });
    assert.deepEqual({ job: config.clipfleet.job, stage: config.clipfleet.stage, step: config.clipfleet.step, image: config.clipfleet.image, text: config.clipfleet.text }, { job: trained.jobId, stage: "main", step: 6, image: "vit-tiny", text: "text-tiny" });
    assert.match(readFileSync(join(exportDir, "README.md"), "utf8"), new RegExp(`job ${trained.jobId}[\\s\\S]*Stage \`main\`, step 6`));

    // The key names are open_clip's (the recorded ViT-B-16 state_dict's, blocks 0 and 1 of each tower).
    const recorded = Object.keys((JSON.parse(readFileSync(join(FIXTURES, "ViT-B-16.state_dict.json"), "utf8")) as { keys: object }).keys).filter((k) => !/resblocks\.([2-9]|1\d)\./.test(k));
    const keys = python<string[]>("import sys, json, torch; print(json.dumps(sorted(torch.load(sys.argv[1], weights_only=True))))", [join(exportDir, "open_clip_pytorch_model.bin")]);
    assert.deepEqual(keys, recorded.sort());
  });

  void it("the export as init.checkpoint: the same features (worker side) and the same evaluation as the trained job", async () => {
    assert.ok(existsSync(exportDir), "export first");
    // Worker side: the trained job's final checkpoint and the export, loaded as a rank loads init weights, on the same inputs.
    const same = python<{ image: boolean; text: boolean; keys: number }>(
      `
import json, sys, torch
from clipfleet_worker import openclip
from clipfleet_worker.checkpoint import load
from clipfleet_worker.models import build_clip
from clipfleet_worker.tokenizers import build_tokenizer
cfg = json.loads(sys.argv[1])
tok = build_tokenizer(cfg["tokenizer"])
a = build_clip(cfg, tok.vocab_size); a.load_state_dict(load(sys.argv[2] + "/model.pt")); a.eval()
b = build_clip(cfg, tok.vocab_size); b.load_state_dict(openclip.load_init_state(sys.argv[3], cfg, tok.vocab_size)); b.eval()
g = torch.Generator().manual_seed(0)
images = torch.randn(4, 3, 32, 32, generator=g)
tokens = tok(["the red circle", "a blue square and a green triangle", "cir", "squares"], 32)
with torch.no_grad():
    print(json.dumps({"image": torch.equal(a.encode_image(images), b.encode_image(images)),
                      "text": torch.equal(a.encode_text(tokens), b.encode_text(tokens)), "keys": len(a.state_dict())}))
`,
      [JSON.stringify({ image: { family: "vit", image_size: 32, width: 64, depth: 2, heads: 2, patch: 8, mlp_ratio: 4.0 }, text: { width: 64, depth: 2, heads: 2, mlp_ratio: 4.0, context_length: 32, causal: true }, embed_dim: 64, tokenizer: { type: "bpe", vocab } }), trained.checkpoints.find((c) => c.step === 6)!.dir, exportDir],
    );
    assert.deepEqual(same, { image: true, text: true, keys: same.keys });

    // Through the CLI: an eval job initialised from the export directory scores exactly what the trained job scored.
    const evalSpec = spec("oc-eval", `task: eval\ndata:\n  val: ${data}/val-{00000..00000}.tar\ncluster: {workers: 1}\ninit: {checkpoint: ${exportDir}}\n`);
    const v = await runCli(["validate", evalSpec, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(v.code, 0, v.stderr);
    const r = await runCli(["run", evalSpec, "--json", "--state-dir", state], { cwd: tmp.dir });
    assert.equal(r.code, 0, r.stderr);
    const evaluated = JSON.parse(r.stdout) as Summary;
    // The eval rank reports the sha256 of the parameters it loaded: the trained job's final ones, bit for bit.
    assert.equal(evaluated.finalParamsSha256, trained.finalParamsSha256);
    assert.ok(Object.keys(evaluated.metrics).length > 0, r.stdout);
    for (const [k, value] of Object.entries(evaluated.metrics)) assert.equal(value, trained.metrics[k], k);

    // Pretraining continues from the weights file alone (an open_clip state_dict), imported at submit.
    const more = spec("oc-more", `task: pretrain\ndata:\n  train: ${data}/train-{00000..00003}.tar\ntrain: {steps: 2, batch_size: 16, lr: 1.0e-3}\ncluster: {workers: 1}\ninit: {checkpoint: ${join(exportDir, "open_clip_pytorch_model.bin")}}\n`);
    const m = await runCli(["run", more, "--json", "--state-dir", state], { cwd: tmp.dir });
    assert.equal(m.code, 0, m.stderr);
    // Same seed, data plan and towers as the trained job: from a random init its first loss would be that job's
    // first loss, bit for bit; from the trained weights it is another.
    const continued = JSON.parse(m.stdout) as Summary;
    assert.equal(typeof continued.firstLoss, "number");
    assert.notEqual(continued.firstLoss, trained.firstLoss);
  });

  void it("bad open_clip weights (wrong shape, missing key, a value that is no tensor, a pickle with code) are refused at validate and run: one line naming the file and key, exit 2", async () => {
    const made = python<Record<string, string>>(
      `
import json, os, sys, torch
src, out = sys.argv[1], sys.argv[2]
state = torch.load(src, weights_only=True)
bad_shape = dict(state, positional_embedding=state["positional_embedding"][:16].clone())
torch.save(bad_shape, os.path.join(out, "bad-shape.bin"))
missing = {k: v for k, v in state.items() if k != "visual.ln_post.weight"}
torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in missing.items()}}, os.path.join(out, "missing.pt"))
class Payload:
    def __reduce__(self):
        return (os.getcwd, ())
torch.save({"visual.proj": Payload()}, os.path.join(out, "code.pt"))
torch.save(dict(state, **{"visual.proj": "not a tensor"}), os.path.join(out, "not-tensor.pt"))
print(json.dumps({"ok": "yes"}))
`,
      [join(exportDir, "open_clip_pytorch_model.bin"), tmp.dir],
    );
    assert.deepEqual(made, { ok: "yes" });
    const cases: [string, RegExp][] = [
      ["bad-shape.bin", /init\.checkpoint: \S*bad-shape\.bin: positional_embedding: shape \(16, 64\), the spec's towers need \(32, 64\)$/],
      ["missing.pt", /init\.checkpoint: \S*missing\.pt: visual\.ln_post\.weight: missing \(the spec's towers need \(64,\)\)$/],
      ["not-tensor.pt", /init\.checkpoint: \S*not-tensor\.pt: visual\.proj: not a tensor \(str\)$/],
      ["code.pt", /init\.checkpoint: \S*code\.pt: not a PyTorch state_dict this worker may load \(torch\.load with weights_only: /],
    ];
    for (const [file, pattern] of cases) {
      const bad = spec(`oc-bad-${file.replace(/\W/g, "-")}`, `task: eval\ndata:\n  val: ${data}/val-{00000..00000}.tar\ncluster: {workers: 1}\ninit: {checkpoint: ./${file}}\n`);
      for (const command of ["validate", "run"]) {
        const r = await runCli([command, bad, "--state-dir", state], { cwd: tmp.dir });
        assert.equal(r.code, 2, `${command} ${file}: ${r.stderr}`);
        const lines = r.stderr.trim().split("\n");
        assert.equal(lines.length, 1, `${command} ${file}: ${r.stderr}`);
        assert.match(lines[0]!, pattern, `${command} ${file}`);
        assert.doesNotMatch(r.stderr, /\n\s+at /);
      }
    }
  });

  void it("export of a model open_clip has no equivalent for says why (the byte tokenizer); a wrong --stage is named; exit 2", async () => {
    const byteSpec = join(tmp.dir, "oc-byte.yaml");
    writeFileSync(byteSpec, `name: oc-byte\nmodel: {image: vit-tiny, text: text-tiny, embed_dim: 64, tokenizer: byte}\ntask: pretrain\ndata:\n  train: ${data}/train-{00000..00003}.tar\ntrain: {steps: 2, batch_size: 16}\ncluster: {workers: 1}\n`);
    const r = await runCli(["run", byteSpec, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(r.code, 0, r.stderr);
    const out = join(tmp.dir, "byte-export");
    const e = await runCli(["export", "oc-byte", "--format", "open_clip", "--out", out, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(e.code, 2, e.stderr);
    // (The first line, from any read command on a state dir with no live orchestrator, says so.)
    assert.match(e.stderr.trim(), /^clipfleet openclip: model\.tokenizer: the byte tokenizer has no open_clip equivalent \(open_clip's tokenizer would give other ids\); train with model\.tokenizer: \{type: bpe, vocab: bpe_simple_vocab_16e6\.txt\.gz\} to export to open_clip$/m);
    assert.equal(existsSync(join(out, "open_clip_pytorch_model.bin")), false);
    const s = await runCli(["export", "oc-byte", "--stage", "pre", "--format", "open_clip", "--out", out, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(s.code, 2, s.stderr);
    assert.match(s.stderr.trim(), /^clipfleet: --stage: no stage "pre" in job oc-byte \(stages: main\)$/m);
  });
});
