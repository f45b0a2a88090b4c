/** The human and JSON job summaries: skipped samples by reason and evaluation warnings. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { renderSummary } from "../../src/cli/commands/run.js";
import { fmtSkips, jobSummary, renderStatus } from "../../src/cli/render.js";
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
});
