/**
 * Preemption (issue 16 item 2), for real: the preemption signal sent to the
 * real worker processes of a `clipfleet run` (as `kill -USR1`, `scancel
 * --signal=USR1` or Slurm's `--signal` would). Every rank checkpoints at one
 * step and exits, the stage restarts from that checkpoint without spending
 * `failure.max_restarts`, and the run ends with the same parameters as one
 * that was never preempted. A rank killed before the checkpoint makes it a
 * failure instead.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli, tempDir, waitFor, writeTinySpec, type TinySpec } from "../helpers/cli.js";
import { currentAttempt, startRun, status, waitForStatus, type JobView, type Summary } from "../helpers/jobs.js";

const BASE: TinySpec = { steps: 60, batch: 32, everySteps: 10, failure: { backoff_seconds: 0.2, heartbeat_timeout: 3, max_restarts: 0 } };

type PreemptSummary = Summary & { preemptions: number };

/** The step the preemption's stop chose, from the STOPPING event ("preempted: ...; checkpoint at step N"). */
function stopStep(v: JobView): number {
  const e = v.job.recentEvents.find((x) => /^preempted: .*; checkpoint at step \d+$/.test(x.reason));
  assert.ok(e, `a STOPPING event for the preemption in ${JSON.stringify(v.job.recentEvents.map((x) => x.reason))}`);
  return Number(/checkpoint at step (\d+)$/.exec(e.reason)?.[1]);
}

void describe("preemption", () => {
  const tmp = tempDir("clipfleet-preempt-");
  let reference: Summary;

  before(async () => {
    const spec = writeTinySpec(tmp.dir, { ...BASE, name: "ref" });
    const r = await runCli(["run", spec, "--json", "--state-dir", join(tmp.dir, "reference")]);
    assert.equal(r.code, 0, r.stderr);
    reference = JSON.parse(r.stdout) as Summary;
    assert.equal(reference.state, "SUCCEEDED");
  });
  after(() => tmp.cleanup());

  void it("kill -USR1 of one rank: every rank checkpoints at one step, the stage restarts from it (max_restarts 0), same parameters; counted as a preemption, event and metric", { timeout: 240_000 }, async () => {
    const gate = join(tmp.dir, "go-usr1");
    const held = join(tmp.dir, "go-usr1-first");
    // The first attempt waits before step 30 until the signal has chosen its stop step (a fast machine would finish
    // first); the restarted one before step 55 until the test has read the metrics.
    const spec = writeTinySpec(tmp.dir, { ...BASE, name: "usr1", env: { CLIPFLEET_FAULT: `gate@30:file=${held}:attempt=1,gate@55:file=${gate}:attempt=2` } });
    const state = join(tmp.dir, "usr1");
    const run = await startRun(spec, state, ["--json", "--metrics-listen", "127.0.0.1:0"]);
    const metricsAddress = await waitFor("the metrics address", () => /metrics on http:\/\/([^/]+)\/metrics/.exec(run.child.output.stderr)?.[1]);
    const v = await waitForStatus(run.jobId, state, "step 15", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 15);
    const victim = currentAttempt(v).ranks.find((r) => r.rank === 1);
    assert.ok(victim && victim.pid > 0);
    process.kill(victim.pid, "SIGUSR1");
    await waitForStatus(run.jobId, state, "the stop command", (x) => x.job.recentEvents.some((e) => /^preempted: SIGUSR1 on rank 1 /.test(e.reason)), 60_000);
    writeFileSync(held, "");

    const gated = await waitForStatus(run.jobId, state, "the restarted attempt at its gate", (x) => (x.job.stages[0]?.attempts.length ?? 0) >= 2 && (x.job.stages[0]?.progress?.step ?? 0) >= 54);
    const metrics = await (await fetch(`http://${metricsAddress}/metrics`)).text();
    const labels = `job_id="${run.jobId}",stage="main"`;
    assert.match(metrics, new RegExp(`^clipfleet_preemptions_total\\{${labels}\\} 1$`, "m"));
    assert.match(metrics, new RegExp(`^clipfleet_restarts_total\\{${labels}\\} 0$`, "m"));
    writeFileSync(gate, "");

    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as PreemptSummary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 0, "a preemption spends no restart");
    assert.equal(s.preemptions, 1);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run that was never preempted");

    const after = await status(run.jobId, state);
    const stage = after.job.stages[0];
    assert.ok(stage);
    const step = stopStep(gated);
    assert.ok(step > 15, `the stop step comes after the signal: ${step}`);
    const [first, second] = stage.attempts;
    assert.equal(first?.outcome, "preempted");
    assert.match(first?.reason ?? "", /^preempted: SIGUSR1 on rank 1 /);
    assert.equal(first?.lastStep, step, "every rank stopped at the stop step");
    assert.equal(second?.resumedFromStep, step, "the restart resumed from the preemption's checkpoint");
    // The commit waits for every rank's files: committed means every rank saved at that step.
    const ckpt = stage.checkpoints.find((c) => c.step === step);
    assert.ok(ckpt, `a checkpoint at step ${step}`);
    assert.ok(ckpt.files.some((f) => /rank-00001\.pt$/.test(f.path)) && ckpt.files.some((f) => /rank-00000\.pt$/.test(f.path)), `both ranks' files are in it: ${ckpt.files.map((f) => f.path).join(", ")}`);
    const preemption = after.job.recentEvents.find((e) => e.type === "preemption");
    assert.match(preemption?.reason ?? "", new RegExp(`^preempted: SIGUSR1 on rank 1 .*; checkpoint committed at step ${step}$`));
    assert.ok(after.job.recentEvents.some((e) => /^preempted \(SIGUSR1 on rank 1 .*\); restarting from step \d+ \(preemption 1, not a failure\)$/.test(e.reason)));

    const logs = await runCli(["logs", run.jobId, "--state-dir", state]);
    for (const rank of [0, 1]) assert.match(logs.stdout, new RegExp(`\\[main/a1 rank ${rank}\\] clipfleet worker: stopped after step ${step} as asked \\(preempted: `));
    const text = await runCli(["status", run.jobId, "--state-dir", state]);
    assert.match(text.stdout, /preempted 1 time\(s\)/);
  });

  void it("a rank killed before the preemption's checkpoint: a failure (one restart spent, no preemption counted), the same parameters", { timeout: 240_000 }, async () => {
    const gate = join(tmp.dir, "go-kill");
    // Both ranks wait before step 20 of the first attempt: the stop step (21) cannot be reached before the kill.
    const spec = writeTinySpec(tmp.dir, { ...BASE, name: "kill", failure: { ...BASE.failure, max_restarts: 1 }, env: { CLIPFLEET_FAULT: `gate@20:file=${gate}:attempt=1` } });
    const state = join(tmp.dir, "kill");
    const run = await startRun(spec, state, ["--json"]);
    const v = await waitForStatus(run.jobId, state, "step 19", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 19);
    const victim = currentAttempt(v).ranks.find((r) => r.rank === 1);
    assert.ok(victim && victim.pid > 0);
    process.kill(victim.pid, "SIGUSR1");
    const stopping = await waitForStatus(run.jobId, state, "the stop command", (x) => x.job.recentEvents.some((e) => /^preempted: SIGUSR1 on rank 1 /.test(e.reason)), 60_000);
    assert.equal(stopStep(stopping), 21);
    process.kill(victim.pid, "SIGKILL");
    writeFileSync(gate, "");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as PreemptSummary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    assert.equal(s.preemptions, 0);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    const first = (await status(run.jobId, state)).job.stages[0]?.attempts[0];
    assert.equal(first?.outcome, "failed");
    assert.match(first?.reason ?? "", /rank 1 was killed by SIGKILL/);
  });

  void it("CLIPFLEET_PREEMPT_SIGNAL=HUP to every rank at once (as Slurm signals a step): one preemption; SIGUSR2 still dumps stacks without stopping anything", { timeout: 240_000 }, async () => {
    const gate = join(tmp.dir, "go-hup");
    // The first attempt waits before step 40 until both signals are in (a fast machine would finish first).
    const spec = writeTinySpec(tmp.dir, { ...BASE, name: "hup", env: { CLIPFLEET_PREEMPT_SIGNAL: "HUP", CLIPFLEET_FAULT: `gate@40:file=${gate}:attempt=1` } });
    const state = join(tmp.dir, "hup");
    const run = await startRun(spec, state, ["--json"]);
    const v = await waitForStatus(run.jobId, state, "step 12", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 12);
    const ranks = currentAttempt(v).ranks;
    assert.equal(ranks.length, 2);
    const r0 = ranks.find((r) => r.rank === 0);
    assert.ok(r0);
    process.kill(r0.pid, "SIGUSR2");
    await waitFor("rank 0's stack dump in the logs", async () => /\[main\/a1 rank 0\] (Thread|Current thread) 0x[0-9a-f]+/.test((await runCli(["logs", run.jobId, "--state-dir", state])).stdout), 30_000);
    const still = await status(run.jobId, state);
    assert.equal(still.job.stages[0]?.attempts.length, 1, "a stack dump ends nothing");
    for (const r of ranks) process.kill(r.pid, "SIGHUP");
    await waitForStatus(run.jobId, state, "the stop command", (x) => x.job.recentEvents.some((e) => /^preempted: SIGHUP on rank [01] .*; checkpoint at step \d+$/.test(e.reason)), 60_000);
    writeFileSync(gate, "");

    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as PreemptSummary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 0);
    assert.equal(s.preemptions, 1, "both ranks asked; one preemption");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    const after = await status(run.jobId, state);
    const attempts = after.job.stages[0]?.attempts ?? [];
    assert.equal(attempts.length, 2);
    assert.equal(attempts[0]?.outcome, "preempted");
    assert.match(attempts[0]?.reason ?? "", /^preempted: SIGHUP on rank [01] /);
  });
});
