/**
 * Preemption: the pure rules (policy.ts), then the path through the real
 * JobService with fake ranks, a fake launcher and a fake clock
 * (test/helpers/jobs-harness.ts): one coordinated stop with a checkpoint,
 * a restart from it with no backoff that spends no restart, and what turns
 * a preemption into a failure.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { PREEMPT_SIGNALS, preemptSignalName } from "../../src/domain/index.js";
import { causeOfPreemptExit, decidePreemption } from "../../src/jobs/index.js";
import { jobsHarness, PRESETS, runningJob, stepAll, until, type FakeRank, type Harness } from "../helpers/jobs-harness.js";

const FAILURE = { max_restarts: 3, backoff_seconds: 1, heartbeat_timeout: 10, hang_min_seconds: 30, startup_timeout: 60, grace_seconds: 5 };

void describe("preemption rules (policy.ts)", () => {
  void it("restarts at once, without backoff, until max_preemptions; null is no bound", () => {
    assert.deepEqual(decidePreemption(0, { max_preemptions: 2 }, "SIGUSR1 on rank 1"), { action: "restart", delayMs: 0, reason: "preempted (SIGUSR1 on rank 1)" });
    assert.equal(decidePreemption(1, { max_preemptions: 2 }, "x").action, "restart");
    const over = decidePreemption(2, { max_preemptions: 2 }, "SIGUSR1 on rank 0");
    assert.equal(over.action, "fail");
    assert.match(over.reason, /^preempted \(SIGUSR1 on rank 0\); preemption bound reached \(2\/2\): `clipfleet resume` continues from the checkpoint$/);
    assert.equal(decidePreemption(0, { max_preemptions: 0 }, "x").action, "fail");
    assert.equal(decidePreemption(1_000_000, { max_preemptions: null }, "x").action, "restart");
  });

  void it("during a preemption's stop only a clean exit is expected; a kill, a lost node or an error code is a failure", () => {
    assert.equal(causeOfPreemptExit(1, "n1", { code: 0, signal: null }, null), null);
    assert.deepEqual(causeOfPreemptExit(1, "n1", { code: null, signal: "SIGKILL" }, null), { kind: "exit", rank: 1, code: null, signal: "SIGKILL" });
    assert.deepEqual(causeOfPreemptExit(1, "n1", { code: 143, signal: null }, null), { kind: "exit", rank: 1, code: 143, signal: null });
    assert.deepEqual(causeOfPreemptExit(0, "n2", { code: 0, signal: null, lost: "connection reset" }, null), { kind: "node", rank: 0, node: "n2", message: "connection reset" });
  });
});

void describe("preemption signal names (domain/preemption.ts)", () => {
  void it("takes USR1, SIGUSR1, usr1; refuses the graceful stop, the stack dump, the uncatchable and numbers", () => {
    assert.equal(preemptSignalName("USR1"), "USR1");
    assert.equal(preemptSignalName(" sigusr1 "), "USR1");
    assert.equal(preemptSignalName("SIGHUP"), "HUP");
    for (const bad of ["", "USR2", "TERM", "SIGKILL", "STOP", "10", "SIGSIGUSR1"]) assert.equal(preemptSignalName(bad), null, bad);
  });

  void it("is the worker's list (preempt.py PREEMPT_SIGNALS): a launcher never sets a name a rank refuses", () => {
    const worker = readFileSync(join(dirname(dirname(PRESETS)), "preempt.py"), "utf8");
    const tuple = /^PREEMPT_SIGNALS = \(([^)]*)\)$/m.exec(worker)?.[1];
    assert.ok(tuple, "PREEMPT_SIGNALS in preempt.py");
    assert.deepEqual([...tuple.matchAll(/"([A-Z0-9]+)"/g)].map((m) => m[1]), [...PREEMPT_SIGNALS]);
  });
});

void describe("preemption through the job service (fake ranks, fake clock)", () => {
  let h: Harness;
  beforeEach(async () => {
    h = await jobsHarness();
  });
  afterEach(async () => {
    await h.close();
  });

  const running = (failure: Record<string, unknown> = FAILURE): ReturnType<typeof runningJob> => runningJob(h, { failure });
  const steps = stepAll;

  /** Rank `by` asks for a preemption; resolves once every rank has its stop command. */
  async function preempted(ranks: FakeRank[], by: number): Promise<void> {
    preempt(ranks[by]);
    await until(() => ranks.every((r) => r.session.sent("stopAt").length === 1), "stop command sent");
  }

  function states(id: string): string[] {
    return h.job(id).recentEvents.filter((e) => e.type === "state" && e.stage !== "").map((e) => e.state);
  }

  function preempt(r: FakeRank | undefined, reason = `SIGUSR1 on rank ${r?.rank ?? "?"} (node)`): void {
    assert.ok(r);
    r.send({ $case: "preemptRequested", value: { reason } });
  }

  /** Every rank reaches the stop step, saves, closes its session and exits 0. */
  async function stopAndSave(id: string, ranks: FakeRank[], from: number, step: number): Promise<void> {
    steps(ranks, from, step);
    for (const r of ranks) r.checkpoint(step);
    await until(() => h.job(id).stages[0]?.checkpoints.some((c) => c.step === step) === true, `checkpoint at ${step} committed`);
    for (const r of ranks) {
      r.closeSession("the worker closed it");
      r.proc.exit({ code: 0, signal: null });
    }
  }

  void it("one stop step for every rank (later requests ignored), a checkpoint, then a restart from it at once: preemptions 1, restarts 0", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 5);
    await preempted(ranks, 1);
    preempt(ranks[0]); // Slurm signals every task: the second request changes nothing
    await h.clock.advance(100);
    for (const r of ranks) assert.deepEqual(r.session.sent("stopAt"), [{ step: 7, checkpoint: true, reason: "preempted: SIGUSR1 on rank 1 (node)", preempt: true }]);
    assert.equal(h.job(id).stages[0]?.state, "STOPPING");
    await stopAndSave(id, ranks, 6, 7);
    // No backoff: the next attempt is launched without the clock moving.
    const next = await h.launched(2);
    assert.equal(next[0]?.connect().startStep, 7, "resumes from the preemption's checkpoint");
    const stage = h.job(id).stages[0];
    assert.equal(stage?.restarts, 0);
    assert.equal(stage?.preemptions, 1);
    assert.equal(stage?.attempts[0]?.outcome, "preempted");
    assert.equal(stage?.attempts[0]?.lastStep, 7);
    assert.deepEqual(states(id), ["STARTING", "RUNNING", "STOPPING", "RESTARTING", "STARTING"]);
    const event = h.job(id).recentEvents.find((e) => e.type === "preemption");
    assert.equal(event?.reason, "preempted: SIGUSR1 on rank 1 (node); checkpoint committed at step 7");
    const labels = { job_id: id, stage: "main" };
    assert.equal((await h.metrics.preemptions.get()).values.find((v) => v.labels.job_id === labels.job_id)?.value, 1);
    assert.equal((await h.metrics.restarts.get()).values.find((v) => v.labels.job_id === labels.job_id)?.value ?? 0, 0);
    assert.deepEqual((await h.metrics.failures.get()).values, [], "a preemption is no failure");
  });

  void it("max_restarts 0: a preemption still restarts", async () => {
    const { id, ranks } = await running({ ...FAILURE, max_restarts: 0 });
    steps(ranks, 1, 3);
    await preempted(ranks, 0);
    await stopAndSave(id, ranks, 4, 5);
    await h.launched(2);
    assert.equal(h.job(id).stages[0]?.preemptions, 1);
  });

  void it("a rank killed before the checkpoint is committed: a failure (a restart spent, with backoff), not a preemption", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 5);
    await preempted(ranks, 1);
    steps(ranks, 6, 6);
    ranks[1]?.proc.exit({ code: 143, signal: null }); // e.g. Slurm's SIGTERM came before the save
    await h.stageIn(id, "RESTARTING");
    const stage = h.job(id).stages[0];
    assert.equal(stage?.restarts, 1);
    assert.equal(stage?.preemptions ?? 0, 0);
    assert.equal(stage?.attempts[0]?.outcome, "failed");
    assert.match(stage?.reason ?? "", /rank 1 exited with code 143/);
    // A failure, not a preemption; the attempt had trained, so no backoff (policy.decide): attempt 2 follows at once.
    assert.equal((await h.launched(2))[0]?.connect().startStep, 0);
  });

  void it("ranks that do not save within grace_seconds: a failure; the gang is killed", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 5);
    await preempted(ranks, 0);
    await h.clock.advance(5100);
    // The attempt had trained (steps 1-5): the restart follows at once, so the ended attempt is what to look at.
    await until(() => h.job(id).stages[0]?.attempts[0]?.outcome === "failed", "attempt 1 failed");
    const stage = h.job(id).stages[0];
    assert.match(stage?.attempts[0]?.reason ?? "", /preemption: the checkpoint at step 7 was not committed within 5 s/);
    assert.equal(stage?.restarts, 1);
    assert.ok(ranks.every((r) => !r.proc.alive));
  });

  void it("a request while the ranks are starting: nothing to save, torn down, restarted from where it started, counted as a preemption", async () => {
    const job = await h.submit({ failure: FAILURE });
    const ranks = await h.launched(1);
    ranks[0]?.connect();
    preempt(ranks[0]);
    await until(() => h.launcher.of(2).length === 2, "attempt 2 launched");
    assert.ok(ranks.every((r) => !r.proc.alive), "the first gang is gone");
    const stage = h.job(job.id).stages[0];
    assert.equal(stage?.preemptions, 1);
    assert.equal(stage?.restarts, 0);
    assert.equal(stage?.attempts[0]?.outcome, "preempted");
    assert.match(h.job(job.id).recentEvents.find((e) => e.state === "STOPPING")?.reason ?? "", /before the gang formed, nothing to save/);
  });

  void it("an evaluation stage keeps nothing between steps: torn down at once, restarted, counted as a preemption", async () => {
    const job = await h.submit({
      failure: FAILURE,
      data: { train: "shards/{00000..00000}.tar", val: "shards/{00000..00000}.tar" },
      stages: [{ name: "pretrain", task: "pretrain" }, { name: "score", task: "eval", needs: ["pretrain"], init: { checkpoint: "pretrain" } }],
    });
    const train = await h.launched(1);
    for (const r of train) r.connect();
    await h.stageIn(job.id, "RUNNING");
    steps(train, 1, 20);
    for (const r of train) r.checkpoint(20);
    await until(() => h.job(job.id).stages[0]?.checkpoints.length === 1, "final checkpoint committed");
    for (const r of train) r.finish(20);
    for (const r of train) r.proc.exit({ code: 0, signal: null });
    const score = await h.launched(2);
    for (const r of score) r.connect();
    await until(() => h.job(job.id).stages[1]?.state === "RUNNING", "the eval stage running");
    preempt(score[1]);
    await until(() => h.launcher.of(3).length === 2, "the eval stage restarted");
    assert.ok(score.every((r) => !r.proc.alive && r.session.sent("stopAt").length === 0), "killed without a stop step");
    const stage = h.job(job.id).stages[1];
    assert.equal(stage?.preemptions, 1);
    assert.equal(stage?.restarts, 0);
    assert.equal(stage?.attempts[0]?.outcome, "preempted");
    assert.match(h.job(job.id).recentEvents.find((e) => e.stage === "score" && e.state === "STOPPING")?.reason ?? "", /an evaluation, nothing to save$/);
  });

  void it("beyond max_preemptions the stage fails with its checkpoint committed; resume gives a fresh bound", async () => {
    const { id, ranks } = await running({ ...FAILURE, max_preemptions: 0 });
    steps(ranks, 1, 5);
    await preempted(ranks, 0);
    await stopAndSave(id, ranks, 6, 7);
    await h.stageIn(id, "FAILED");
    const stage = h.job(id).stages[0];
    assert.match(stage?.reason ?? "", /preemption bound reached \(0\/0\)/);
    assert.equal(stage?.preemptions, 1);
    await h.service.resume(id);
    assert.equal(h.job(id).stages[0]?.preemptions, 0);
    assert.equal((await h.launched(2))[0]?.connect().startStep, 7);
  });

  void it("a cancel during a preemption's stop wins: CANCELLED, no new attempt", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 5);
    await preempted(ranks, 0);
    const cancelled = h.service.cancel(id, { checkpoint: true, graceSeconds: null });
    await stopAndSave(id, ranks, 6, 7);
    await cancelled;
    await h.stageIn(id, "CANCELLED");
    await h.clock.advance(5000);
    assert.equal(h.launcher.of(2).length, 0);
  });
});
