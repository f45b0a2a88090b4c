/**
 * The one transition function (jobs/lifecycle.ts): every allowed stage
 * transition, every forbidden one, the job state derived from its stages
 * (single stage and pipelines), and the events a transition emits (timestamp,
 * reason, increasing seq, a bounded recent window). Pure: no clock, no I/O.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  canTransition,
  EVENT_SCHEMA_VERSION,
  FailedPreconditionError,
  isTerminal,
  JOB_STATES,
  jobStateOf,
  NotFoundError,
  STAGE_TRANSITIONS,
  type JobRecord,
  type JobState,
} from "../../src/domain/index.js";
import { newJobRecord, note, RECENT_EVENTS_KEPT, transition } from "../../src/jobs/index.js";
import { loadPresets, parseSpec } from "../../src/spec/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));
const T0 = 1_790_000_000_000;

const SHARED = { data: { train: "shards/{00000..00003}.tar", val: "val/{00000..00000}.tar" }, train: { steps: 10, batch_size: 8 }, cluster: { workers: 2 } };

/** A fresh single-stage job ("main"), as submit persists it. */
function singleJob(): JobRecord {
  return newJobRecord(parseSpec({ task: "pretrain", ...SHARED }, { specPath: "/specs/one.yaml", baseDir: "/specs", presets }), "j-20260101-000000-aaaaaa", T0);
}

/** A two-stage pipeline: pretrain, then an eval that needs it. */
function pipelineJob(): JobRecord {
  const spec = parseSpec(
    { ...SHARED, stages: [{ name: "pretrain", task: "pretrain" }, { name: "score", task: "eval", needs: ["pretrain"], init: { checkpoint: "pretrain" } }] },
    { specPath: "/specs/pipe.yaml", baseDir: "/specs", presets },
  );
  return newJobRecord(spec, "j-20260101-000000-bbbbbb", T0);
}

/** `job` with its single stage (and so the job) put in `state` directly, as if earlier transitions had run. */
function withStageState(job: JobRecord, state: JobState): JobRecord {
  const next = structuredClone(job);
  next.stages[0]!.state = state;
  next.state = jobStateOf(next.stages.map((s) => s.state));
  return next;
}

/** Walks a path of stage states from PENDING; returns the final record and every event emitted. */
function walk(job: JobRecord, stage: string, path: JobState[], startMs = T0): { job: JobRecord; events: JobRecord["recentEvents"] } {
  let cur = job;
  const events: JobRecord["recentEvents"] = [];
  path.forEach((to, i) => {
    const r = transition(cur, stage, to, `to ${to}`, startMs + (i + 1) * 1000);
    cur = r.job;
    events.push(...r.events);
  });
  return { job: cur, events };
}

void describe("lifecycle.transition: the transition table", () => {
  const allowed = JOB_STATES.flatMap((from) => STAGE_TRANSITIONS[from].map((to) => [from, to] as const));
  const forbidden = JOB_STATES.flatMap((from) => JOB_STATES.filter((to) => !canTransition(from, to)).map((to) => [from, to] as const));

  void it("the table has the documented shape: SUCCEEDED is final, FAILED and CANCELLED only go back to PENDING (resume)", () => {
    assert.deepEqual(STAGE_TRANSITIONS.SUCCEEDED, []);
    assert.deepEqual(STAGE_TRANSITIONS.FAILED, ["PENDING"]);
    assert.deepEqual(STAGE_TRANSITIONS.CANCELLED, ["PENDING"]);
    // Every non-terminal state can be cancelled by a user.
    for (const s of JOB_STATES) if (!isTerminal(s)) assert.ok(canTransition(s, "CANCELLED"), s);
    assert.ok(allowed.length >= 20 && forbidden.length >= 30, `${allowed.length} allowed, ${forbidden.length} forbidden`);
  });

  for (const [from, to] of allowed) {
    void it(`allows ${from} -> ${to}`, () => {
      const before = withStageState(singleJob(), from);
      const snapshot = structuredClone(before);
      const { job, events } = transition(before, "main", to, `because ${to}`, T0 + 5000);
      assert.deepEqual(before, snapshot, "the input record is not modified");
      assert.equal(job.stages[0]!.state, to);
      assert.equal(job.stages[0]!.reason, `because ${to}`);
      assert.equal(job.state, jobStateOf([to]), "a single-stage job has its stage's state");
      assert.equal(job.updatedAtMs, T0 + 5000);
      const stageEvent = events[0]!;
      assert.deepEqual(
        { stage: stageEvent.stage, type: stageEvent.type, state: stageEvent.state, reason: stageEvent.reason, tsMs: stageEvent.tsMs, from: stageEvent.data.from },
        { stage: "main", type: "state", state: to, reason: `because ${to}`, tsMs: T0 + 5000, from },
      );
      // A job-level event (stage "") exactly when the derived job state changed.
      const jobEvents = events.filter((e) => e.stage === "");
      if (jobStateOf([from]) === jobStateOf([to])) assert.equal(jobEvents.length, 0);
      else assert.deepEqual(jobEvents.map((e) => [e.state, e.data.from]), [[jobStateOf([to]), jobStateOf([from])]]);
    });
  }

  for (const [from, to] of forbidden) {
    void it(`refuses ${from} -> ${to}`, () => {
      const before = withStageState(singleJob(), from);
      const snapshot = structuredClone(before);
      assert.throws(
        () => transition(before, "main", to, "nope", T0),
        (err: unknown) => err instanceof FailedPreconditionError && err.message === `job ${before.id} stage main: cannot go from ${from} to ${to}`,
      );
      assert.deepEqual(before, snapshot, "a refused transition changes nothing");
    });
  }

  void it("refuses an unknown stage with NOT_FOUND", () => {
    assert.throws(() => transition(singleJob(), "nope", "STARTING", "x", T0), (err: unknown) => err instanceof NotFoundError && /has no stage "nope"/.test(err.message));
  });
});

void describe("lifecycle.transition: stage bookkeeping", () => {
  void it("stamps startedAtMs on the first STARTING only, endedAtMs on a terminal state, and clears it on resume", () => {
    const { job } = walk(singleJob(), "main", ["STARTING", "RUNNING", "RESTARTING", "STARTING", "RUNNING", "FAILED"]);
    const s = job.stages[0]!;
    assert.equal(s.startedAtMs, T0 + 1000, "the second STARTING keeps the first start time");
    assert.equal(s.endedAtMs, T0 + 6000);
    const resumed = transition(job, "main", "PENDING", "resumed by user", T0 + 7000).job;
    assert.equal(resumed.stages[0]!.endedAtMs, null);
    assert.equal(resumed.state, "PENDING");
  });

  void it("clears the job's pending reason when it ends (a cancelled queued job waits for nothing)", () => {
    const queued = singleJob();
    queued.pendingReason = "needs 2 slots, 0 free";
    assert.equal(transition(queued, "main", "CANCELLED", "cancelled by user", T0).job.pendingReason, "");
    const restarting = walk(queued, "main", ["STARTING", "RESTARTING"]).job;
    restarting.pendingReason = "needs 2 slots, 1 free";
    assert.equal(transition(restarting, "main", "STARTING", "attempt 2", T0).job.pendingReason, "needs 2 slots, 1 free", "the service clears it when it places the job");
    assert.equal(transition(restarting, "main", "FAILED", "budget spent", T0).job.pendingReason, "");
  });

  void it("applies facts.update to the stage in the same write, and facts.attempt/rank/data to the event", () => {
    const started = walk(singleJob(), "main", ["STARTING"]).job;
    const { job, events } = transition(started, "main", "RESTARTING", "rank 1 exited with code 1", T0 + 9000, {
      attempt: 7,
      rank: 1,
      data: { cause: "exit" },
      update: (s) => {
        s.restarts += 1;
        s.notBeforeMs = T0 + 10_000;
      },
    });
    assert.equal(job.stages[0]!.restarts, 1);
    assert.equal(job.stages[0]!.notBeforeMs, T0 + 10_000);
    assert.equal(started.stages[0]!.restarts, 0, "the update ran on the copy");
    assert.deepEqual([events[0]!.attempt, events[0]!.rank, events[0]!.data], [7, 1, { from: "STARTING", cause: "exit" }]);
  });

  void it("defaults an event's attempt to the stage's latest attempt number", () => {
    const job = walk(singleJob(), "main", ["STARTING"]).job;
    job.stages[0]!.attempts.push({ number: 3, startedAtMs: T0, endedAtMs: null, outcome: "running", reason: "", worldSize: 2, resumedFromStep: 0, lastStep: 0, ranks: [], masterAddr: "127.0.0.1", masterPort: 1 });
    const { events } = transition(job, "main", "RUNNING", "all 2 ranks connected", T0 + 2000);
    assert.equal(events[0]!.attempt, 3);
    assert.equal(events.find((e) => e.stage === "")!.attempt, 0, "job-level events belong to no attempt");
  });
});

void describe("lifecycle: job state derived from its stages", () => {
  void it("jobStateOf: precedence table", () => {
    const cases: [JobState[], JobState][] = [
      [["PENDING"], "PENDING"],
      [["PENDING", "PENDING"], "PENDING"],
      [["SUCCEEDED", "PENDING"], "RUNNING"], // between the stages of a pipeline
      [["SUCCEEDED", "STARTING"], "RUNNING"],
      [["SUCCEEDED", "RUNNING"], "RUNNING"],
      [["RUNNING", "RESTARTING"], "RESTARTING"],
      [["RESTARTING", "STOPPING"], "STOPPING"],
      [["SUCCEEDED", "SUCCEEDED"], "SUCCEEDED"],
      [["FAILED", "RUNNING"], "RUNNING"], // a failure ends the job only once nothing is active
      [["FAILED", "PENDING"], "FAILED"],
      [["FAILED", "CANCELLED"], "FAILED"],
      [["SUCCEEDED", "CANCELLED"], "CANCELLED"],
      [["CANCELLED", "STOPPING"], "STOPPING"],
      [[], "PENDING"],
    ];
    for (const [stages, want] of cases) assert.equal(jobStateOf(stages), want, stages.join(","));
  });

  void it("a pipeline: the job follows its stages through both, with one job event per change of the derived state", () => {
    let job = pipelineJob();
    assert.deepEqual(job.stages.map((s) => s.name), ["pretrain", "score"]);
    const first = walk(job, "pretrain", ["STARTING", "RUNNING", "SUCCEEDED"]);
    job = first.job;
    assert.equal(job.state, "RUNNING", "pretrain done, score still pending: the job is between stages");
    assert.deepEqual(
      first.events.filter((e) => e.stage === "").map((e) => e.state),
      ["STARTING", "RUNNING"],
      "no job event for pretrain's SUCCEEDED: the job stays RUNNING",
    );
    const second = walk(job, "score", ["STARTING", "RUNNING", "SUCCEEDED"], T0 + 10_000);
    assert.equal(second.job.state, "SUCCEEDED");
    // The job stays RUNNING while its next stage starts: only its end is a job-level change.
    assert.deepEqual(second.events.filter((e) => e.stage === "").map((e) => e.state), ["SUCCEEDED"]);
  });

  void it("a pipeline: a failed stage ends the job only once no other stage is active", () => {
    let job = walk(pipelineJob(), "pretrain", ["STARTING", "RUNNING"]).job;
    // Put the second stage in flight too (the transition table does not look at needs).
    job = walk(job, "score", ["STARTING"]).job;
    let r = transition(job, "score", "FAILED", "rank 0 raised", T0 + 20_000);
    assert.equal(r.job.state, "RUNNING", "pretrain is still running");
    assert.equal(r.events.filter((e) => e.stage === "").length, 0);
    r = transition(r.job, "pretrain", "CANCELLED", "cancelled by user", T0 + 21_000);
    assert.equal(r.job.state, "FAILED", "FAILED wins over CANCELLED once nothing is active");
    // The job's reason names the pipeline's outcome, not the words of the stage that ended last.
    assert.equal(r.job.reason, "stage score failed: rank 0 raised; 0 of 2 stages succeeded");
  });

  void it("a pipeline's job reason: all stages succeeded, or which stage failed or was cancelled", () => {
    const pre = walk(pipelineJob(), "pretrain", ["STARTING", "RUNNING", "SUCCEEDED"]).job;
    // The eval stage ends last with its own reason ("finished 0 steps"); the job says the pipeline succeeded.
    const ok = walk(pre, "score", ["STARTING", "RUNNING"]).job;
    const done = transition(ok, "score", "SUCCEEDED", "finished 0 steps", T0 + 30_000);
    assert.equal(done.job.reason, "all 2 stages succeeded");
    assert.equal(done.job.stages[1]!.reason, "finished 0 steps", "the stage keeps its own reason");
    assert.equal(done.events.find((e) => e.stage === "")?.reason, "all 2 stages succeeded");
    const cancelled = transition(walk(pre, "score", ["STARTING"]).job, "score", "CANCELLED", "cancelled by user", T0 + 30_000);
    assert.equal(cancelled.job.reason, "stage score cancelled: cancelled by user; 1 of 2 stages succeeded");
    // A single stage's reason stays the job's.
    const single = walk(singleJob(), "main", ["STARTING", "RUNNING", "SUCCEEDED"]).job;
    assert.equal(single.reason, "to SUCCEEDED");
  });
});

void describe("lifecycle: events", () => {
  void it("every event carries the schema version, the job id, a timestamp, a reason and the next seq", () => {
    const job = singleJob();
    job.nextEventSeq = 5;
    const { job: after, events } = walk(job, "main", ["STARTING", "RUNNING", "SUCCEEDED"]);
    assert.deepEqual(
      events.map((e) => [e.seq, e.stage, e.state, e.tsMs, e.reason]),
      [
        [5, "main", "STARTING", T0 + 1000, "to STARTING"],
        [6, "", "STARTING", T0 + 1000, "to STARTING"],
        [7, "main", "RUNNING", T0 + 2000, "to RUNNING"],
        [8, "", "RUNNING", T0 + 2000, "to RUNNING"],
        [9, "main", "SUCCEEDED", T0 + 3000, "to SUCCEEDED"],
        [10, "", "SUCCEEDED", T0 + 3000, "to SUCCEEDED"],
      ],
    );
    for (const e of events) {
      assert.equal(e.schemaVersion, EVENT_SCHEMA_VERSION);
      assert.equal(e.jobId, job.id);
    }
    assert.equal(after.nextEventSeq, 11);
    assert.deepEqual(after.recentEvents.map((e) => e.seq), [5, 6, 7, 8, 9, 10], "the record keeps what it emitted");
  });

  void it("note records a fact without a state change, in the same sequence", () => {
    const running = walk(singleJob(), "main", ["STARTING", "RUNNING"]).job;
    const { job, events } = note(running, "main", "checkpoint", "checkpoint committed at step 10", T0 + 9000, {
      data: { step: 10 },
      update: (s) => {
        s.progress.step = 10;
      },
    });
    assert.equal(events.length, 1);
    assert.deepEqual(
      { seq: events[0]!.seq, type: events[0]!.type, state: events[0]!.state, stage: events[0]!.stage, data: events[0]!.data, tsMs: events[0]!.tsMs },
      { seq: running.nextEventSeq, type: "checkpoint", state: "RUNNING", stage: "main", data: { step: 10 }, tsMs: T0 + 9000 },
    );
    assert.equal(job.state, "RUNNING");
    assert.equal(job.stages[0]!.progress.step, 10);
    const jobNote = note(job, "", "node", "node n1 quarantined", T0 + 9500);
    assert.deepEqual([jobNote.events[0]!.stage, jobNote.events[0]!.state, jobNote.events[0]!.attempt], ["", "RUNNING", 0]);
    assert.throws(() => note(job, "nope", "x", "y", T0), NotFoundError);
  });

  void it(`keeps only the newest ${RECENT_EVENTS_KEPT} events in the record while seq keeps counting`, () => {
    let job = walk(singleJob(), "main", ["STARTING", "RUNNING"]).job;
    const total = RECENT_EVENTS_KEPT + 57;
    for (let i = 0; i < total; i++) job = note(job, "main", "checkpoint", `fact ${i}`, T0 + 10_000 + i).job;
    assert.equal(job.recentEvents.length, RECENT_EVENTS_KEPT);
    assert.equal(job.nextEventSeq, 4 + total);
    const seqs = job.recentEvents.map((e) => e.seq);
    assert.equal(seqs.at(-1), job.nextEventSeq - 1, "the newest is kept");
    assert.equal(seqs[0], job.nextEventSeq - RECENT_EVENTS_KEPT, "the oldest are dropped");
    assert.ok(seqs.every((s, i) => i === 0 || s === seqs[i - 1]! + 1), "contiguous and increasing");
    const tss = job.recentEvents.map((e) => e.tsMs);
    assert.ok(tss.every((t, i) => i === 0 || t >= tss[i - 1]!), "timestamps do not go back");
  });
});

void describe("lifecycle: documentation", () => {
  void it("docs/ARCHITECTURE.md documents every job state and the transition table as domain/states.ts has them", () => {
    const doc = readFileSync(join(ROOT, "docs/ARCHITECTURE.md"), "utf8");
    const section = doc.split(/^## Job lifecycle$/m)[1]?.split(/^## /m)[0] ?? "";
    assert.ok(section, "no '## Job lifecycle' section");
    for (const s of JOB_STATES) assert.match(section, new RegExp(`^\\| ${s} \\| \\S`, "m"), `state ${s} is not in the table`);
    for (const s of JOB_STATES) {
      const line = new RegExp(`^${s} +-> (.*)$`, "m").exec(section)?.[1] ?? "";
      const documented = line.replace(/\(.*\)/, "").split("|").map((x) => x.trim()).filter((x) => x !== "" && x !== "none");
      assert.deepEqual([...documented].sort(), [...STAGE_TRANSITIONS[s]].sort(), `transitions from ${s}`);
    }
  });
});
