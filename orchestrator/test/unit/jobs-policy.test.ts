/**
 * Failure policy (jobs/policy.ts): exponential backoff with a cap, and
 * decide(): restart while the budget lasts, fail on a fatal cause, on the
 * same user error (same fingerprint, same step) in another attempt, or when
 * the restart budget is spent. Pure: records in, decisions out.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { FailureRecord, FailureSpec, StageRecord } from "../../src/domain/index.js";
import { backoffMs, decide, describeCause, hangBoundSeconds, percentile, repeatedUserError, type FailureCause } from "../../src/jobs/index.js";

const SPEC: FailureSpec = {
  max_restarts: 3,
  max_preemptions: 100,
  backoff_seconds: 1,
  backoff_max_seconds: 10,
  heartbeat_timeout: 10,
  hang_min_seconds: 60,
  hang_factor: 10,
  fence_seconds: 30,
  quarantine_after: 3,
  quarantine_seconds: 300,
  grace_seconds: 30,
  startup_timeout: 300,
};

function failure(attempt: number, step: number, fingerprint: string, message = "RuntimeError: boom"): FailureRecord {
  return { attempt, step, rank: 0, kind: "exception", message, fingerprint, traceback: `Traceback (attempt ${attempt})\n  ${message}`, atMs: attempt * 1000 };
}

/** A stage that has restarted `restarts` times and recorded `failures` (newest last, including the current one). */
function stage(restarts: number, failures: FailureRecord[] = []): StageRecord {
  return {
    name: "main",
    state: "RUNNING",
    reason: "",
    startedAtMs: 0,
    endedAtMs: null,
    attempts: [],
    restarts,
    checkpoints: [],
    progress: { step: 0, totalSteps: 10, epoch: 0, sampleInEpoch: 0, samplesSeen: 0, loss: null, firstLoss: null, lr: 0, temperature: 0, samplesPerSecond: 0, stepSeconds: 0, skippedSamples: 0, worldSize: 2 },
    failures,
    metrics: {},
    finalParamsSha256: "",
    error: "",
    notBeforeMs: null,
  };
}

const exitCause: FailureCause = { kind: "exit", rank: 1, code: 1, signal: null };

void describe("policy.backoffMs", () => {
  void it("doubles per restart from backoff_seconds and caps at backoff_max_seconds", () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((r) => backoffMs(SPEC, r)), [1000, 2000, 4000, 8000, 10_000, 10_000]);
    assert.deepEqual([0, 1, 2].map((r) => backoffMs({ backoff_seconds: 0.2, backoff_max_seconds: 60 }, r)), [200, 400, 800]);
  });

  void it("stays finite and capped for very many restarts, and is 0 when backoff is 0", () => {
    assert.equal(backoffMs(SPEC, 10_000), 10_000);
    assert.equal(backoffMs({ backoff_seconds: 0, backoff_max_seconds: 10 }, 50), 0);
  });
});

void describe("policy.decide", () => {
  void it("restarts while the budget lasts, after the backoff for the restarts made so far", () => {
    for (const restarts of [0, 1, 2]) {
      const d = decide(stage(restarts), SPEC, exitCause);
      assert.deepEqual(d, { action: "restart", delayMs: backoffMs(SPEC, restarts), reason: "rank 1 exited with code 1" });
    }
  });

  void it("restarts at once after an attempt that made progress, backs off after one that did not", () => {
    for (const restarts of [0, 1, 2]) {
      assert.deepEqual(decide(stage(restarts), SPEC, exitCause, true), { action: "restart", delayMs: 0, reason: "rank 1 exited with code 1" });
      assert.equal((decide(stage(restarts), SPEC, exitCause, false) as { delayMs: number }).delayMs, backoffMs(SPEC, restarts));
    }
    // Progress never buys restarts beyond the budget, nor a retry of a fatal cause.
    assert.equal(decide(stage(3), SPEC, exitCause, true).action, "fail");
    assert.equal(decide(stage(0), SPEC, { kind: "fatal", message: "bad data" }, true).action, "fail");
  });

  void it("fails once the restart budget is exhausted, saying so", () => {
    const d = decide(stage(3), SPEC, exitCause);
    assert.deepEqual(d, { action: "fail", reason: "rank 1 exited with code 1; restart budget exhausted (3/3)", error: "" });
    assert.equal(decide(stage(0), { ...SPEC, max_restarts: 0 }, { kind: "session", rank: 0 }).action, "fail", "max_restarts 0: never restarts");
  });

  void it("fails at once on a fatal cause, whatever the budget", () => {
    const d = decide(stage(0), SPEC, { kind: "fatal", message: "worker runtime 0.0.9 on n1 does not match orchestrator 0.1.0" });
    assert.deepEqual(d, { action: "fail", reason: "worker runtime 0.0.9 on n1 does not match orchestrator 0.1.0", error: "" });
  });

  void it("fails on a repeated user error: the same fingerprint at the same step in another attempt; keeps the traceback", () => {
    const first = failure(1, 15, "fp-a");
    const again = failure(2, 15, "fp-a");
    const d = decide(stage(1, [first, again]), SPEC, { kind: "exception", rank: 0, failure: again });
    assert.equal(d.action, "fail");
    assert.equal(d.action === "fail" && d.reason, "rank 0 raised RuntimeError: boom at step 15, the same error as attempt 1: not retried");
    assert.equal(d.action === "fail" && d.error, again.traceback);
  });

  void it("restarts a user error that differs in step, in fingerprint, or that only this attempt had", () => {
    const cases: [string, FailureRecord[], FailureRecord][] = [
      ["another step", [failure(1, 15, "fp-a"), failure(2, 16, "fp-a")], failure(2, 16, "fp-a")],
      ["another fingerprint", [failure(1, 15, "fp-a"), failure(2, 15, "fp-b")], failure(2, 15, "fp-b")],
      ["the first occurrence", [failure(1, 15, "fp-a")], failure(1, 15, "fp-a")],
      // Two ranks of one attempt raising the same error is one failure, not a repetition.
      ["the same attempt twice", [failure(2, 15, "fp-a"), { ...failure(2, 15, "fp-a"), rank: 1 }], { ...failure(2, 15, "fp-a"), rank: 1 }],
    ];
    for (const [what, failures, current] of cases) {
      const d = decide(stage(1, failures), SPEC, { kind: "exception", rank: current.rank, failure: current });
      assert.equal(d.action, "restart", what);
      assert.equal(repeatedUserError(failures, current), null, what);
    }
  });

  void it("an exception with the budget spent fails with its traceback", () => {
    const f = failure(4, 3, "fp-z");
    const d = decide(stage(3, [failure(1, 1, "x"), failure(2, 2, "y"), failure(3, 9, "w"), f]), SPEC, { kind: "exception", rank: 0, failure: f });
    assert.deepEqual(d, { action: "fail", reason: "rank 0 raised RuntimeError: boom at step 3; restart budget exhausted (3/3)", error: f.traceback });
  });

  void it("repeatedUserError names the earlier failure", () => {
    const first = failure(1, 7, "fp");
    assert.equal(repeatedUserError([first, failure(3, 7, "fp")], failure(3, 7, "fp")), first);
  });
});

void describe("policy.describeCause", () => {
  void it("one line per kind of cause", () => {
    const cases: [FailureCause, string][] = [
      [{ kind: "exit", rank: 0, code: 137, signal: null }, "rank 0 exited with code 137"],
      [{ kind: "exit", rank: 1, code: null, signal: "SIGKILL" }, "rank 1 was killed by SIGKILL"],
      [{ kind: "session", rank: 1 }, "rank 1 lost its session"],
      [{ kind: "heartbeat", rank: 0, silentSeconds: 12.34 }, "rank 0 sent no heartbeat for 12.3 s"],
      [{ kind: "hang", rank: 1, stalledSeconds: 61, boundSeconds: 60 }, "rank 1 made no step progress for 61.0 s (bound 60.0 s): hung"],
      [{ kind: "startup", missing: [0, 1], seconds: 300 }, "ranks 0, 1 did not register within 300 s"],
      [{ kind: "exception", rank: 0, failure: failure(1, 5, "f", "ValueError: bad") }, "rank 0 raised ValueError: bad at step 5"],
      [{ kind: "node", rank: 1, node: "n2", message: "connection reset" }, "node n2 failed (rank 1): connection reset"],
      [{ kind: "checkpoint", message: "rank 0: checkpoint step 10 is corrupt" }, "rank 0: checkpoint step 10 is corrupt"],
      [{ kind: "orchestrator", message: "orchestrator restarted" }, "orchestrator restarted"],
      [{ kind: "fatal", message: "no data" }, "no data"],
    ];
    for (const [cause, want] of cases) assert.equal(describeCause(cause), want);
  });
});

void describe("policy: hang bound", () => {
  void it("percentile is nearest-rank; hangBoundSeconds = max(hang_min_seconds, hang_factor x p99)", () => {
    assert.equal(percentile([], 0.99), 0);
    assert.equal(percentile([3, 1, 2], 0.5), 2);
    const steps = Array.from({ length: 100 }, (_, i) => (i + 1) / 10); // 0.1 .. 10.0 s
    assert.equal(percentile(steps, 0.99), 9.9);
    assert.equal(hangBoundSeconds(SPEC, steps), 99);
    assert.equal(hangBoundSeconds(SPEC, [0.1, 0.2]), 60, "fast steps: the minimum");
  });
});
