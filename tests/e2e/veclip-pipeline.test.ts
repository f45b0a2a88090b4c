/**
 * examples/veclip-pipeline.yaml (`make experiment-veclip`): the whole spec
 * validates, and a miniature of it runs end to end through the CLI with real
 * orchestrator and worker processes: a CLIP and a captioner on the curated
 * split, the built-in captioner recaptioning the web split (each input shard
 * committed exactly once, `recap.txt` beside every original member), CLIP
 * pretrained on AltText, on the model's captions and on the mix, and the
 * dense fine-tunes of the recaptioned tower. The miniature is the example
 * itself with its sizes shrunk, so the example's structure is what runs.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { parse, stringify } from "yaml";
import { ROOT, runCli, tempDir } from "../helpers/cli.js";
import { status } from "../helpers/jobs.js";

const EXAMPLE = join(ROOT, "examples", "veclip-pipeline.yaml");
/** The stages the miniature keeps: one path through each step of the pipeline. */
const KEPT = ["clip-curated", "captioner", "recap", "pretrain-alt", "pretrain-recap", "pretrain-mix", "seg-recap", "depth-recap"];

type Stage = Record<string, unknown> & { name: string; task: string; data?: Record<string, unknown>; train?: Record<string, unknown> };

/** The example with tiny sizes, its data under `dir`. */
function miniature(dir: string): string {
  const spec = parse(readFileSync(EXAMPLE, "utf8"), { merge: true }) as Record<string, unknown> & { stages: Stage[] };
  const local = (p: unknown): unknown => (typeof p === "string" ? p.replace(/^data\//, `${dir}/`) : p);
  spec.data = { synth: { out: join(dir, "veclip"), train: 512, val: 64, shards: 8, size: 32, seed: 0 } };
  spec.model = { image: "vit-tiny", text: { preset: "text-tiny", context_length: 48 }, embed_dim: 64, tokenizer: "byte" };
  spec.checkpoint = { every_steps: 2 };
  spec.failure = { backoff_seconds: 0.2 };
  for (const k of Object.keys(spec)) if (k.startsWith("x-")) delete spec[k];
  spec.stages = spec.stages
    .filter((s) => KEPT.includes(s.name))
    .map((s) => {
      const out: Stage = { ...s };
      if (s.data) out.data = { ...s.data, train: local(s.data.train) };
      if (s.task !== "recaption") out.train = { ...s.train, steps: s.task === "train-captioner" ? 6 : 4, batch_size: 16, warmup_steps: 1 };
      if (s.task === "train-captioner") out.decoder = { width: 32, depth: 1, heads: 2, context_length: 48 };
      if (s.task === "recaption") {
        out.captioner = { ...(s.captioner as object), batch_size: 32, max_tokens: 16 };
        out.recaption = { ...(s.recaption as object), out: join(dir, "veclip-recap") };
      }
      return out;
    });
  const path = join(dir, "veclip-mini.yaml");
  writeFileSync(path, stringify(spec));
  return path;
}

interface Summary {
  jobId: string;
  state: string;
  stages: { name: string; state: string; metrics: Record<string, number> }[];
}

interface RecaptionAudit {
  stages: { stage: string; recaption?: { inputs: number; committed: number; duplicates: number; missing: number; shards: { output: string }[] } }[];
}

void describe("examples/veclip-pipeline.yaml", () => {
  const tmp = tempDir("cf-veclip-");
  after(() => tmp.cleanup());

  void it("validates as a whole: 17 stages from the captioner to the dense fine-tunes", async () => {
    const r = await runCli(["validate", EXAMPLE, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const v = JSON.parse(r.stdout) as { name: string; stages: { name: string; task: string }[] };
    assert.equal(v.name, "veclip-pipeline");
    assert.deepEqual(v.stages.slice(0, 3).map((x) => x.task), ["pretrain", "train-captioner", "recaption"]);
    assert.equal(v.stages.length, 17);
  });

  void it("a miniature runs: captioner, recaption by the built-in captioner exactly once, pretraining on its captions, dense fine-tunes", { timeout: 900_000 }, async () => {
    const spec = miniature(tmp.dir);
    const state = join(tmp.dir, "state");
    const r = await runCli(["run", spec, "--json", "--state-dir", state]);
    assert.equal(r.code, 0, `${r.stderr}\n${r.stdout}`);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED", r.stderr);
    assert.deepEqual(s.stages.map((x) => [x.name, x.state]), KEPT.map((n) => [n, "SUCCEEDED"]));
    const metrics = (name: string): Record<string, number> => s.stages.find((x) => x.name === name)?.metrics ?? {};
    // The captioner was checked by the CLIP of the curated split, against chance.
    assert.ok("caption/clip_i2t_R@1" in metrics("captioner") && "caption/chance_R@1" in metrics("captioner"), JSON.stringify(metrics("captioner")));
    // Retrieval of every pretraining variant is scored against the held-out ground-truth visual captions.
    for (const v of ["pretrain-alt", "pretrain-recap", "pretrain-mix"]) assert.ok("retrieval/i2t_R@1" in metrics(v), `${v}: ${JSON.stringify(metrics(v))}`);
    assert.ok("seg/mIoU" in metrics("seg-recap") && "depth/rmse" in metrics("depth-recap"));

    // Each of the 7 web shards recaptioned once, by the built-in captioner, its caption beside every member.
    const a = await runCli(["audit", s.jobId, "--json", "--state-dir", state]);
    assert.equal(a.code, 0, a.stderr);
    const recap = (JSON.parse(a.stdout) as RecaptionAudit).stages.find((x) => x.stage === "recap")?.recaption;
    assert.ok(recap, a.stdout);
    assert.deepEqual([recap.inputs, recap.committed, recap.duplicates, recap.missing], [7, 7, 0, 0]);
    const sizes = JSON.parse(readFileSync(join(tmp.dir, "veclip-recap", "sizes.json"), "utf8")) as Record<string, number>;
    assert.equal(Object.values(sizes).reduce((x, y) => x + y, 0), 7 * 64);
    const members = spawnSync("tar", ["-tf", join(tmp.dir, "veclip-recap", "train-00001.tar")], { encoding: "utf8" }).stdout.split("\n").filter(Boolean);
    const keys = new Set(members.map((m) => m.split(".")[0]));
    assert.equal(keys.size, 64);
    const exts = members.map((m) => m.slice(m.indexOf(".") + 1));
    for (const ext of ["jpg", "txt", "json", "seg.png", "depth.png", "recap.txt"]) assert.equal(exts.filter((e) => e === ext).length, 64, ext);
    const v = await status(s.jobId, state);
    assert.equal(v.job.stages.find((x) => x.name === "recap")?.progress?.step, 7, "a committed shard is the stage's step");
  });
});
