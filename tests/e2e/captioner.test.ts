/**
 * task train-captioner end to end: a CLIP pretrained first, then a captioner
 * trained on its VeCap captions with the CLIP's image tower as init and the
 * CLIP as `eval.clip`, real orchestrator and worker processes through the
 * CLI. A kill -9 of a rank mid-run resumes to the very parameters and
 * evaluation of the uninterrupted run.
 */
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli, tempDir, tinyModelAndData } from "../helpers/cli.js";
import { startRun, status, waitForStatus, type JobView } from "../helpers/jobs.js";

interface StageSummary {
  name: string;
  state: string;
  steps: number;
  restarts: number;
  firstLoss: number | null;
  finalLoss: number | null;
  metrics: Record<string, number>;
  finalParamsSha256: string;
}
interface PipelineSummary {
  jobId: string;
  state: string;
  restarts: number;
  stages: StageSummary[];
}

function captionerSpec(dir: string, clip = "clip"): string {
  const path = join(dir, "captioner.yaml");
  writeFileSync(
    path,
    `name: captioner
${tinyModelAndData("{vecap: 1}")}cluster: {workers: 2}
train: {steps: 12, batch_size: 16, lr: 2.0e-3, warmup_steps: 2}
checkpoint: {every_steps: 6}
failure: {backoff_seconds: 0.2, heartbeat_timeout: 3}
stages:
  - name: clip
    task: pretrain
  - name: cap
    task: train-captioner
    needs: [clip]
    init: {checkpoint: clip}
    train: {steps: 24}
    decoder: {width: 32, depth: 1, heads: 2, context_length: 48}
    eval: {clip: ${clip}, batch_size: 64}
`,
  );
  return path;
}

function stageOf(s: PipelineSummary, name: string): StageSummary {
  const st = s.stages.find((x) => x.name === name);
  assert.ok(st, `stage ${name} in the summary`);
  return st;
}

function capStage(v: JobView): JobView["job"]["stages"][number] | undefined {
  return v.job.stages.find((x) => x.name === "cap");
}

void describe("task train-captioner", () => {
  const tmp = tempDir();
  let spec: string;
  let reference: PipelineSummary;

  before(async () => {
    spec = captionerSpec(tmp.dir);
    const r = await runCli(["run", spec, "--json", "--state-dir", join(tmp.dir, "reference")]);
    assert.equal(r.code, 0, r.stderr);
    reference = JSON.parse(r.stdout) as PipelineSummary;
    assert.equal(reference.state, "SUCCEEDED");
  });
  after(() => tmp.cleanup());

  void it("trains a captioner on the CLIP's image tower and reports caption loss, perplexity and R@1 of generated captions against chance", () => {
    const cap = stageOf(reference, "cap");
    assert.equal(cap.steps, 24);
    assert.ok((cap.finalLoss ?? Infinity) < (cap.firstLoss ?? 0), `the caption loss falls: ${cap.firstLoss} -> ${cap.finalLoss}`);
    const m = cap.metrics;
    for (const k of ["caption/loss", "caption/perplexity", "caption/clip_i2t_R@1", "caption/reference_i2t_R@1", "caption/chance_R@1", "caption/mean_words"]) {
      assert.ok(Number.isFinite(m[k]), `${k} in ${JSON.stringify(m)}`);
    }
    assert.equal(m["caption/image_count"], 128);
    assert.equal(m["caption/chance_R@1"], 1 / 128);
    assert.ok(Math.abs((m["caption/perplexity"] ?? 0) - Math.exp(m["caption/loss"] ?? 0)) < 1e-3 * (m["caption/perplexity"] ?? 1));
  });

  void it("kill -9 of a rank mid-run: one restart from the last checkpoint, the same final parameters and evaluation", async () => {
    const state = join(tmp.dir, "kill9");
    const gate = join(tmp.dir, "go");
    // The captioner's first attempt (job attempt 2) waits before step 15 until the kill is done: it lands mid-run.
    const run = await startRun(spec, state, ["--json"], { CLIPFLEET_FAULT: `gate@15:file=${gate}:attempt=2` });
    const v = await waitForStatus(run.jobId, state, "captioner step 14", (x) => (capStage(x)?.progress?.step ?? 0) >= 14);
    const victim = capStage(v)?.attempts.at(-1)?.ranks.find((r) => r.rank === 1);
    try {
      assert.ok(victim && victim.pid > 0);
      process.kill(victim.pid, "SIGKILL");
    } finally {
      writeFileSync(gate, "");
    }
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as PipelineSummary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    const cap = stageOf(s, "cap");
    assert.equal(cap.restarts, 1);
    assert.equal(cap.finalParamsSha256, stageOf(reference, "cap").finalParamsSha256, "bit-identical to the run without the failure");
    assert.deepEqual(cap.metrics, stageOf(reference, "cap").metrics, "the same captions, so the same evaluation");
    const [first, second] = capStage(await status(run.jobId, state))?.attempts ?? [];
    assert.match(first?.reason ?? "", /rank 1 was killed by SIGKILL/);
    assert.equal(second?.resumedFromStep, 12);
  });

  void it("eval.clip pointing nowhere: exit 2, one line naming the field, nothing runs", async () => {
    const bad = join(tmp.dir, "bad");
    mkdirSync(bad);
    const r = await runCli(["run", captionerSpec(bad, "./no-such-clip"), "--state-dir", join(bad, "state")]);
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] ?? "", /stages\[1\]\.eval\.clip: no such checkpoint directory: .*no-such-clip/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
  });
});
