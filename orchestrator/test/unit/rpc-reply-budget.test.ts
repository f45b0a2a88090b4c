/**
 * Control replies stay under their byte budget however large a job's record
 * grows: the latest attempts only, long fields cut with a marker, the spec
 * last; `list` keeps the newest jobs that fit and counts the others.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MAX_REPLY_BYTES, REPLY_ATTEMPTS } from "../../src/domain/index.js";
import { Job, JobState, ListJobsResponse, type Attempt, type Stage } from "../../src/gen/clipfleet/v1/control.js";
import { fitJob, fitJobList } from "../../src/rpc/reply-budget.js";

function attempt(n: number, reasonBytes: number): Attempt {
  return { number: n, startedAtMs: n, endedAtMs: n + 1, outcome: "failed", reason: "r".repeat(reasonBytes), worldSize: 2, resumedFromStep: 0, lastStep: 0, ranks: [], };
}

function stage(name: string, attempts: number, reasonBytes: number, errorBytes: number): Stage {
  return {
    name,
    task: "pretrain",
    state: JobState.JOB_STATE_FAILED,
    reason: "failed",
    needs: [],
    progress: undefined,
    attempts: Array.from({ length: attempts }, (_, i) => attempt(i + 1, reasonBytes)),
    restarts: attempts - 1,
    preemptions: 0,
    metrics: {},
    finalParamsSha256: "",
    error: "Traceback (most recent call last):\n" + "x".repeat(errorBytes) + "\nValueError: the end",
    checkpoints: [],
    startedAtMs: 1,
    endedAtMs: 2,
    attemptsOmitted: 0,
    warnings: [],
    evalSkippedByReason: {},
  };
}

function job(id: string, stages: Stage[], specBytes = 1000): Job {
  return Job.fromPartial({ id, name: "j", state: JobState.JOB_STATE_FAILED, stages, specJson: JSON.stringify({ pad: "s".repeat(specBytes) }), recentEvents: [] });
}

const size = (j: Job): number => Job.encode(j).finish().length;

void describe("control reply budget", () => {
  void it("a small job passes whole", () => {
    const j = job("j-1", [stage("main", 3, 100, 100)]);
    assert.deepEqual(fitJob(j), j);
  });

  void it("a reply holds the latest attempts and counts the others", () => {
    const fitted = fitJob(job("j-1", [stage("main", 40, 10, 10)]));
    const s = fitted.stages[0]!;
    assert.equal(s.attempts.length, REPLY_ATTEMPTS);
    assert.equal(s.attemptsOmitted, 40 - REPLY_ATTEMPTS);
    assert.equal(s.attempts.at(-1)!.number, 40, "the latest attempt is kept");
  });

  void it("a huge record is cut to the budget with markers; the traceback keeps its end; the spec survives", () => {
    const big = job("j-1", Array.from({ length: 64 }, (_, i) => stage(`s${i}`, 16, 4096, 16 * 1024)), 1_500_000);
    assert.ok(size(big) > MAX_REPLY_BYTES, `fixture too small: ${size(big)}`);
    const fitted = fitJob(big);
    assert.ok(size(fitted) <= MAX_REPLY_BYTES, `reply of ${size(fitted)} bytes`);
    const s = fitted.stages[0]!;
    assert.equal(s.attempts.length, 1);
    assert.equal(s.attemptsOmitted, 15);
    assert.match(s.error, /^\[\.\.\.truncated\] .*ValueError: the end$/s);
    assert.equal(fitted.specJson, big.specJson, "the spec is the last thing cut");
  });

  void it("even the spec gives way, with a marker, when nothing else is left to cut", () => {
    const fitted = fitJob(job("j-1", [stage("main", 1, 10, 10)], 2_000_000), 1_000_000);
    assert.ok(size(fitted) <= 1_000_000);
    assert.deepEqual(JSON.parse(fitted.specJson), { truncated: true, bytes: 2_000_000 + '{"pad":""}'.length });
  });

  void it("list: the newest jobs that fit, oldest first, the rest counted; no specs or events", () => {
    const jobs = Array.from({ length: 50 }, (_, i) => job(`j-${i + 1}`, [stage("main", 3, 2000, 100_000)]));
    const reply = fitJobList(jobs, 1_000_000);
    assert.ok(ListJobsResponse.encode(reply).finish().length <= 1_000_000);
    assert.ok(reply.jobs.length > 0 && reply.jobs.length < 50);
    assert.equal(reply.jobs.length + reply.omitted, 50);
    assert.equal(reply.jobs.at(-1)!.id, "j-50");
    assert.equal(reply.jobs[0]!.id, `j-${reply.omitted + 1}`);
    for (const j of reply.jobs) {
      assert.equal(j.specJson, "");
      assert.equal(j.stages[0]!.attempts.length, 1);
      assert.equal(j.stages[0]!.attemptsOmitted, 2);
    }
  });

  void it("list: everything when it fits", () => {
    const reply = fitJobList([job("j-1", [stage("main", 1, 1, 1)]), job("j-2", [stage("main", 1, 1, 1)])]);
    assert.deepEqual(reply.jobs.map((j) => j.id), ["j-1", "j-2"]);
    assert.equal(reply.omitted, 0);
  });
});
