/**
 * Job references (domain resolveJobRef) and the view of jobs whose
 * orchestrator is gone (jobs interruptedView): pure, no I/O.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { checkJobRef, ClipfleetError, resolveJobRef, type JobRecord } from "../../src/domain/index.js";
import { interruptedView, newJobRecord, transition } from "../../src/jobs/index.js";
import { loadPresets, parseSpec } from "../../src/spec/index.js";

const JOBS = [
  { id: "j-20261206-101500-a1b2c3", name: "tiny", createdAtMs: 1 },
  { id: "j-20261206-101501-a1ffff", name: "tiny", createdAtMs: 2 },
  { id: "j-20261206-111500-0b1c50", name: "big", createdAtMs: 3 },
  { id: "custom-id", name: "j-2026", createdAtMs: 4 },
];

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ClipfleetError);
    return `${err.code}: ${err.message}`;
  }
  return "no error";
}

void describe("resolveJobRef", () => {
  void it("an exact id wins", () => {
    assert.deepEqual(resolveJobRef("j-20261206-111500-0b1c50", JOBS), { job: JOBS[2], by: "id", sameName: 0 });
  });

  void it("a name picks the newest job of that name and says how many share it", () => {
    assert.deepEqual(resolveJobRef("tiny", JOBS), { job: JOBS[1], by: "name", sameName: 2 });
    assert.deepEqual(resolveJobRef("big", JOBS), { job: JOBS[2], by: "name", sameName: 1 });
  });

  void it("a name is taken before a prefix it also is", () => {
    assert.equal(resolveJobRef("j-2026", JOBS).job.id, "custom-id");
  });

  void it("a unique prefix of the id or of its random part", () => {
    assert.deepEqual(resolveJobRef("j-20261206-11", JOBS), { job: JOBS[2], by: "prefix", sameName: 0 });
    assert.equal(resolveJobRef("0b1c", JOBS).job.id, "j-20261206-111500-0b1c50");
    assert.equal(resolveJobRef("a1b", JOBS).job.id, "j-20261206-101500-a1b2c3");
    assert.equal(resolveJobRef("cust", JOBS).job.id, "custom-id");
  });

  void it("an ambiguous prefix is INVALID_ARGUMENT listing the candidates, newest first", () => {
    assert.equal(
      codeOf(() => resolveJobRef("a1", JOBS)),
      "INVALID_ARGUMENT: job a1 is ambiguous: it starts 2 job ids: j-20261206-101501-a1ffff (tiny), j-20261206-101500-a1b2c3 (tiny); give more characters",
    );
  });

  void it("a long candidate list is cut, with a count of the rest", () => {
    const many = Array.from({ length: 12 }, (_, i) => ({ id: `j-20261206-1015${String(i).padStart(2, "0")}-aaaaaa`, name: "n", createdAtMs: i }));
    assert.match(codeOf(() => resolveJobRef("j-2026", many)), /and 4 more; give more characters$/);
  });

  void it("no match is NOT_FOUND naming the reference", () => {
    assert.equal(codeOf(() => resolveJobRef("zz", JOBS)), "NOT_FOUND: job zz not found");
    assert.equal(codeOf(() => resolveJobRef("tiny", [])), "NOT_FOUND: job tiny not found");
  });

  void it("refuses what cannot be a reference", () => {
    assert.match(codeOf(() => checkJobRef("")), /^INVALID_ARGUMENT: job_id: required/);
    assert.match(codeOf(() => checkJobRef("a b")), /^INVALID_ARGUMENT: job_id: not a job id: "a b"/);
    assert.match(codeOf(() => checkJobRef("../etc")), /^INVALID_ARGUMENT/);
    assert.match(codeOf(() => checkJobRef("x".repeat(129))), /^INVALID_ARGUMENT/);
  });
});

void describe("interruptedView", () => {
  const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
  const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));
  const spec = parseSpec(
    {
      data: { train: "shards/{00000..00003}.tar", val: "val/{00000..00000}.tar" },
      train: { steps: 10, batch_size: 8 },
      cluster: { workers: 1 },
      stages: [{ name: "pretrain", task: "pretrain" }, { name: "score", task: "eval", needs: ["pretrain"], init: { checkpoint: "pretrain" } }],
    },
    { specPath: "/specs/pipe.yaml", baseDir: "/specs", presets },
  );
  const fresh = newJobRecord(spec, "j-20260101-000000-bbbbbb", 0);

  function starting(): JobRecord {
    const job = transition(fresh, "pretrain", "STARTING", "placed", 1).job;
    job.stages[0]!.attempts.push({
      number: 1, startedAtMs: 1, endedAtMs: null, outcome: "running", reason: "", worldSize: 1, resumedFromStep: 0, lastStep: 0, masterAddr: "", masterPort: 0,
      ranks: [{ rank: 0, node: "local", host: "127.0.0.1", slot: 0, pid: 42, state: "launching", step: 0, lastHeartbeatMs: null, phase: "launching", exitCode: null, signal: null }],
    });
    return job;
  }

  void it("shows every unfinished stage FAILED as interrupted, its attempt lost, with the resume command", () => {
    const job = starting();
    const view = interruptedView(job);
    assert.equal(view.state, "FAILED");
    assert.equal(view.reason, "interrupted: the orchestrator running it is gone; `clipfleet resume j-20260101-000000-bbbbbb` continues from the last committed checkpoint");
    assert.deepEqual(view.stages.map((s) => s.state), ["FAILED", "FAILED"]);
    assert.equal(view.stages[0]!.attempts[0]!.outcome, "lost");
    assert.equal(view.stages[0]!.attempts[0]!.ranks[0]!.state, "lost");
    assert.equal(view.stages[0]!.attempts[0]!.ranks[0]!.phase, "-");
    assert.equal(job.stages[0]!.state, "STARTING", "the record itself is not changed");
  });

  void it("keeps finished stages and finished jobs as they are", () => {
    const done = transition(transition(starting(), "pretrain", "RUNNING", "formed", 2).job, "pretrain", "SUCCEEDED", "done", 3).job;
    const view = interruptedView(done);
    assert.deepEqual(view.stages.map((s) => s.state), ["SUCCEEDED", "FAILED"]);
    const cancelled = transition(fresh, "pretrain", "CANCELLED", "cancelled by user", 1).job;
    const ended = transition(cancelled, "score", "CANCELLED", "cancelled by user", 1).job;
    assert.equal(interruptedView(ended), ended);
  });
});
