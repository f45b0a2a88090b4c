/** The human and JSON job summaries: skipped samples by reason and evaluation warnings. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { renderSummary } from "../../src/cli/commands/run.js";
import { fmtSkips, jobSummary, keyMetrics, renderStatus } from "../../src/cli/render.js";
import { attemptTally, describeTally } from "../../src/domain/index.js";
import { Job, JobState, Progress, Stage } from "../../src/gen/clipfleet/v1/control.js";

interface StageFields {
  progress: {
    step: number;
    totalSteps: number;
    skippedSamples?: number;
    skippedByReason?: Record<string, number>;
    shardBytesFetched?: number;
    shardCacheHits?: number;
    shardCacheMisses?: number;
    shardFetchSeconds?: number;
  };
  evalSkippedByReason?: Record<string, number>;
  warnings?: string[];
}

function stage(name: string, fields: StageFields): Stage {
  const s = Stage.fromPartial({
    name,
    task: "pretrain",
    state: JobState.JOB_STATE_SUCCEEDED,
    attempts: [{ number: 1, outcome: "succeeded", worldSize: 1, ranks: [{ rank: 0, node: "local", state: "exited", phase: "stopping" }] }],
  });
  s.progress = Progress.fromPartial(fields.progress);
  s.evalSkippedByReason = fields.evalSkippedByReason ?? {};
  s.warnings = fields.warnings ?? [];
  return s;
}

void describe("job summaries", () => {
  void it("fmtSkips lists reasons largest first and names what no reason explains", () => {
    assert.equal(fmtSkips(0, {}), null);
    assert.equal(fmtSkips(12, { "undecodable image": 2, "no caption": 10 }), "12 samples: no caption 10, undecodable image 2");
    assert.equal(fmtSkips(5, { "no caption": 3 }), "5 samples: no caption 3, unknown 2");
    assert.equal(fmtSkips(0, { "no image": 1 }, "val samples"), "1 val sample: no image 1");
  });

  void it("status, the run summary and --json show skips by reason and evaluation warnings", () => {
    const job = Job.fromPartial({ id: "j-1", name: "formats", state: JobState.JOB_STATE_SUCCEEDED });
    job.stages = [
        stage("main", {
          progress: { step: 4, totalSteps: 4, skippedSamples: 12, skippedByReason: { "no caption": 10, "undecodable image": 2 } },
          evalSkippedByReason: { "no image": 1 },
          warnings: ["zero-shot skipped: no classnames.txt or classes.json (zero_shot) next to /x/test/0.tar or in its parent directory"],
        }),
    ];
    const text = renderStatus(job, Date.now());
    assert.match(text, /^skipped 12 samples: no caption 10, undecodable image 2$/m);
    assert.match(text, /^evaluation skipped 1 val sample: no image 1$/m);
    assert.match(text, /^warning: zero-shot skipped: no classnames.txt or classes.json \(zero_shot\) next to \/x\/test\/0.tar/m);
    const summary = renderSummary(job);
    assert.match(summary, /^skipped 12 samples: no caption 10, undecodable image 2$/m);
    assert.match(summary, /^warning: zero-shot skipped/m);
    const json = jobSummary(job);
    assert.equal(json.skippedSamples, 12);
    assert.deepEqual(json.skippedByReason, { "no caption": 10, "undecodable image": 2 });
    assert.deepEqual(json.evalSkippedByReason, { "no image": 1 });
    assert.deepEqual(json.warnings, [job.stages[0]?.warnings[0]]);
    const [st] = json.stages as Record<string, unknown>[];
    assert.deepEqual(st?.skippedByReason, { "no caption": 10, "undecodable image": 2 });
  });

  void it("a pipeline: reasons summed over stages, warnings name their stage; nothing skipped, no line", () => {
    const job = Job.fromPartial({ id: "j-2", name: "pipe", state: JobState.JOB_STATE_SUCCEEDED });
    job.stages = [
        stage("a", { progress: { step: 2, totalSteps: 2, skippedSamples: 1, skippedByReason: { "no caption": 1 } } }),
        stage("b", { progress: { step: 2, totalSteps: 2, skippedSamples: 2, skippedByReason: { "no caption": 2 } }, warnings: ["retrieval skipped: no val sample has a caption from alt"] }),
        stage("c", { progress: { step: 2, totalSteps: 2 } }),
    ];
    const json = jobSummary(job);
    assert.deepEqual(json.skippedByReason, { "no caption": 3 });
    assert.deepEqual(json.warnings, ["b: retrieval skipped: no val sample has a caption from alt"]);
    assert.equal(renderStatus(job, Date.now()).match(/^skipped /gm)?.length, 2);
  });

  void it("the shard cache: a status line per stage and shardCache in --json, only when shards went through it", () => {
    const job = Job.fromPartial({ id: "j-3", name: "remote", state: JobState.JOB_STATE_SUCCEEDED });
    job.stages = [
      stage("a", { progress: { step: 2, totalSteps: 2, shardBytesFetched: 3 << 20, shardCacheHits: 5, shardCacheMisses: 8, shardFetchSeconds: 0.42 } }),
      stage("b", { progress: { step: 2, totalSteps: 2 } }),
    ];
    const text = renderStatus(job, Date.now());
    assert.deepEqual(text.match(/^shard cache: .*$/gm), ["shard cache: 8 fetched (3.0 MiB in 0.4 s), 5 found cached"]);
    assert.deepEqual(jobSummary(job).shardCache, { bytesFetched: 3 << 20, hits: 5, misses: 8, fetchSeconds: 0.42 });
    job.stages = [stage("b", { progress: { step: 2, totalSteps: 2 } })];
    assert.equal(jobSummary(job).shardCache, undefined);
  });

  void it("a pipeline's summary: the job's outcome, then each stage's steps, first and last loss, restarts apart from stops, key metrics", () => {
    const job = Job.fromPartial({ id: "j-4", name: "pipe", state: JobState.JOB_STATE_SUCCEEDED, reason: "all 3 stages succeeded" });
    const pre = stage("pretrain", { progress: { step: 12, totalSteps: 12 } });
    pre.progress = Progress.fromPartial({ step: 12, totalSteps: 12, firstLoss: 4.25, loss: 3.5, samplesSeen: 192 });
    pre.metrics = { "retrieval/i2t_R@10": 0.5, "retrieval/i2t_R@1": 0.0625, "retrieval/t2i_R@1": 0.125, "retrieval/i2t_R@5": 0.25 };
    pre.finalParamsSha256 = "ab".repeat(32);
    pre.failureRestarts = 1;
    pre.userStops = 2;
    const depth = stage("depth", { progress: { step: 8, totalSteps: 8 } });
    depth.task = "finetune-depth";
    depth.progress = Progress.fromPartial({ step: 8, totalSteps: 8, firstLoss: 0.5345, loss: 0.415, samplesSeen: 128 });
    depth.metrics = { "depth/rmse": 0.77, "depth/abs_rel": 0.125, "depth/delta1": 0.9 };
    const zs = stage("zs", { progress: { step: 0, totalSteps: 0 } });
    zs.task = "eval";
    zs.reason = "finished 0 steps";
    zs.metrics = { "zeroshot/top1": 0.15 };
    job.stages = [pre, depth, zs];
    const text = renderSummary(job);
    assert.match(text, /^job j-4 \(pipe\): SUCCEEDED - all 3 stages succeeded$/m);
    assert.match(text, /^pretrain\s+pretrain\s+SUCCEEDED\s+12\/12\s+4\.2500 -> 3\.5000\s+1\s/m);
    assert.match(text, /^attempts: 1, 1 restart after a failure, 2 user stops \(resumed\)$/m);
    assert.match(text, /^SUCCEEDED: all 3 stages succeeded; 20 steps, 320 samples, 1 restart\(s\) after failures, 2 user stop\(s\)/m);
    assert.match(text, /^ {2}pretrain \(pretrain\): SUCCEEDED, 12 steps, loss 4\.2500 -> 3\.5000, 1 restart after a failure, 2 user stops \(resumed\); retrieval\/i2t_R@1 0\.0625, retrieval\/t2i_R@1 0\.1250$/m);
    assert.match(text, /^ {2}depth \(finetune-depth\): SUCCEEDED, 8 steps, loss 0\.5345 -> 0\.4150; depth\/rmse 0\.7700, depth\/abs_rel 0\.1250$/m);
    assert.match(text, /^ {2}zs \(eval\): SUCCEEDED; zeroshot\/top1 0\.1500$/m);
    // Metrics in numeric order; each trained stage's final parameters named by stage.
    assert.match(text, /^metrics: retrieval\/i2t_R@1=0\.0625 retrieval\/i2t_R@5=0\.2500 retrieval\/i2t_R@10=0\.5000 retrieval\/t2i_R@1=0\.1250$/m);
    assert.match(text, new RegExp(`^final params sha256 \\(pretrain\\): ${"ab".repeat(32)}$`, "m"));
    const json = jobSummary(job);
    assert.equal(json.restarts, 1);
    assert.equal(json.userStops, 2);
    const stages = json.stages as Record<string, unknown>[];
    assert.deepEqual(stages.map((s) => [s.name, s.firstLoss, s.finalLoss, s.restarts, s.userStops]), [
      ["pretrain", 4.25, 3.5, 1, 2],
      ["depth", 0.5345, 0.415, 0, 0],
      ["zs", 0, 0, 0, 0],
    ]);
    assert.deepEqual(keyMetrics({ b: 2, a: 1, c: 3, d: 4 }), [["a", 1], ["b", 2], ["c", 3]]);
  });

  void it("attemptTally tells restarts after failures, user stops and preemptions apart, by attempt outcome", () => {
    const a = (number: number, outcome: "failed" | "cancelled" | "preempted" | "lost" | "succeeded" | "running") => ({ number, outcome });
    assert.deepEqual(attemptTally([a(1, "succeeded")]), { failureRestarts: 0, userStops: 0, preemptions: 0 });
    // Out of order on purpose; the last attempt is the one running, so every earlier one led to a new start.
    const t = attemptTally([a(4, "running"), a(1, "failed"), a(2, "cancelled"), a(3, "preempted")]);
    assert.deepEqual(t, { failureRestarts: 1, userStops: 1, preemptions: 1 });
    assert.equal(describeTally(t), "1 restart after a failure, 1 user stop (resumed), 1 preemption (resumed)");
    // A stage that failed for good or was stopped and not resumed: its last attempt started nothing.
    assert.deepEqual(attemptTally([a(1, "lost"), a(2, "failed")], "FAILED"), { failureRestarts: 1, userStops: 0, preemptions: 0 });
    assert.deepEqual(attemptTally([a(1, "cancelled")], "CANCELLED"), { failureRestarts: 0, userStops: 0, preemptions: 0 });
    // Waiting to start again: the last attempt counts already.
    assert.deepEqual(attemptTally([a(1, "failed")], "RESTARTING"), { failureRestarts: 1, userStops: 0, preemptions: 0 });
    assert.deepEqual(attemptTally([a(1, "cancelled")], "PENDING"), { failureRestarts: 0, userStops: 1, preemptions: 0 });
    assert.equal(describeTally(attemptTally([a(1, "succeeded")])), "");
  });
});
