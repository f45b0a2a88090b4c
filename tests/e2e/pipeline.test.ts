/**
 * Pipelines end to end (issue 6): a tiny pretrain -> {finetune-seg, eval}
 * DAG with real workers; stages start in order and hand over committed
 * checkpoints; a failed stage is resumed without re-running finished ones;
 * bad pipelines and bad init checkpoints are refused before anything runs;
 * a pipeline's human summary names its outcome and each stage's own numbers,
 * and its report plots only the series each stage has.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
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

  void it("pretrain -> depth with a restart in depth: the summary names the outcome and both stages' losses; per-stage attempt numbers; a report without a logit scale for depth", async () => {
    const state = join(tmp.dir, "summary");
    const spec = join(tmp.dir, "pipesum.yaml");
    writeFileSync(
      spec,
      `name: pipesum
${tinyModelAndData("{vecap: 1}")}cluster: {workers: 1}
train: {steps: 12, batch_size: 16, lr: 1.0e-3, warmup_steps: 2}
checkpoint: {every_steps: 6}
failure: {backoff_seconds: 0.2}
stages:
  - name: pretrain
    task: pretrain
    eval: {captions: [vecap], zero_shot: false}
  - name: depth
    task: finetune-depth
    needs: [pretrain]
    init: {checkpoint: pretrain}
    train: {steps: 8}
    worker: {env: {CLIPFLEET_FAULT: "raise@8:attempt=2"}}
`,
    );
    const r = await runCli(["run", spec, "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout;
    const jobId = /^job (j-[0-9a-f-]+) \(pipesum\)/m.exec(out)?.[1] ?? "";
    // The job line names the pipeline's outcome, not the last stage's reason.
    assert.match(out, /^job j-[0-9a-f-]+ \(pipesum\): SUCCEEDED - all 2 stages succeeded$/m);
    // The table: each stage's first and last loss, and the restart counted where it happened.
    assert.match(out, /^pretrain\s+pretrain\s+SUCCEEDED\s+12\/12\s+\d+\.\d{4} -> \d+\.\d{4}\s+0\s/m);
    assert.match(out, /^depth\s+finetune-depth\s+SUCCEEDED\s+8\/8\s+\d+\.\d{4} -> \d+\.\d{4}\s+1\s/m);
    // The final summary: the outcome, then one line per stage (pretraining's loss is not lost behind depth's).
    assert.match(out, /^SUCCEEDED: all 2 stages succeeded; 20 steps, \d+ samples, 1 restart\(s\) after failures, [0-9.]+ s$/m);
    assert.match(out, /^ {2}pretrain \(pretrain\): SUCCEEDED, 12 steps, loss \d+\.\d{4} -> \d+\.\d{4}; retrieval\/i2t_R@1 [0-9.]+, retrieval\/t2i_R@1 [0-9.]+$/m);
    assert.match(out, /^ {2}depth \(finetune-depth\): SUCCEEDED, 8 steps, loss \d+\.\d{4} -> \d+\.\d{4}, 1 restart after a failure; depth\/rmse [0-9.]+, depth\/abs_rel [0-9.]+$/m);
    const v = await status(jobId, state);
    const pre = stage(v, "pretrain") as unknown as { progress: { firstLoss: number; loss: number } };
    const dep = stage(v, "depth") as unknown as { progress: { firstLoss: number; loss: number } };
    assert.ok(out.includes(`${pre.progress.firstLoss.toFixed(4)} -> ${pre.progress.loss.toFixed(4)}`), "pretraining's own losses");
    assert.ok(out.includes(`${dep.progress.firstLoss.toFixed(4)} -> ${dep.progress.loss.toFixed(4)}`), "depth's own losses");
    // Attempt numbers count across the job; each start says which start of its stage it is, restarts included.
    const starts = v.job.recentEvents.filter((e) => e.stage === "depth" && /^attempt \d+/.test(e.reason)).map((e) => e.reason);
    assert.equal(starts.length, 2, starts.join("\n"));
    assert.match(starts[0] ?? "", /^attempt 2 \(first start of this stage\): 1 rank\(s\)/);
    assert.match(starts[1] ?? "", /^attempt 3 \(start 2 of this stage\): 1 rank\(s\) .*resuming from step 6$/);
    assert.match(r.stderr, /\[depth\] STARTING: attempt 3 \(start 2 of this stage\)/, "the run's event lines say so too");
    // status --json: restarts counted from attempt outcomes, per stage and for the job.
    const json = JSON.parse((await runCli(["status", jobId, "--state-dir", state, "--json"])).stdout) as { job: { stages: { name: string; failureRestarts: number; userStops: number }[] } };
    assert.deepEqual(json.job.stages.map((s) => [s.name, s.failureRestarts, s.userStops]), [["pretrain", 0, 0], ["depth", 1, 0]]);

    // The report: depth has loss, lr, throughput and step time, but no logit scale (a dense fine-tune has none).
    const dir = join(tmp.dir, "pipesum-report");
    const rep = await runCli(["report", jobId, "--out", dir, "--state-dir", state, "--json"]);
    assert.equal(rep.code, 0, rep.stderr);
    const files = (JSON.parse(rep.stdout.trim().split("\n").at(-1) ?? "") as { plots: { file: string }[] }).plots.map((p) => p.file).sort();
    assert.deepEqual(files, [
      "depth_eval.png", "depth_loss.png", "depth_lr.png", "depth_step_time.png", "depth_throughput.png",
      "pretrain_eval.png", "pretrain_logit_scale.png", "pretrain_loss.png", "pretrain_lr.png", "pretrain_step_time.png", "pretrain_throughput.png",
    ]);
    const md = readFileSync(join(dir, "index.md"), "utf8");
    assert.match(md, /\| restarts after failures \| 1 \|/);
    assert.match(md, /1 restart after a failure; each new attempt is marked at the step it resumed from/);
    // Evaluation results grouped by unit: depth RMSE in metres, apart from the ratios.
    assert.match(md, /\| depth\/rmse \| [0-9.]+ \| metres \|/);
    assert.match(md, /\| depth\/abs_rel \| [0-9.]+ \| fraction \(0 to 1\) \|/);
    const order = [...md.matchAll(/^\| (retrieval\/i2t_R@\d+) \|/gm)].map((m) => m[1]);
    assert.deepEqual(order, ["retrieval/i2t_R@1", "retrieval/i2t_R@5", "retrieval/i2t_R@10"], "sorted numerically");
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
