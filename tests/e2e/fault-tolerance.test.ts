/**
 * Failures lose nothing (issue 5), injected for real into real worker
 * processes: kill -9 of a rank, SIGSTOP of a rank, kill -9 of the
 * orchestrator, a truncated checkpoint, a node taken away, a user bug.
 * The reference is the same spec run without the failure: the final
 * parameters must be bit-identical, and the data audit exact.
 */
import assert from "node:assert/strict";
import { readFileSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { alive, runCli, tempDir, waitFor, writeTinySpec, type TinySpec } from "../helpers/cli.js";
import { allPids, assertExactlyOnce, audit, currentAttempt, startRun, status, waitForStatus, type Summary } from "../helpers/jobs.js";

const BASE: TinySpec = { steps: 80, batch: 32, everySteps: 10, audit: true, failure: { backoff_seconds: 0.2, heartbeat_timeout: 3 } };

void describe("fault tolerance", () => {
  const tmp = tempDir();
  let spec: string;
  let reference: Summary;

  before(async () => {
    spec = writeTinySpec(tmp.dir, { ...BASE, name: "ft" });
    const r = await runCli(["run", spec, "--json", "--state-dir", join(tmp.dir, "reference")]);
    assert.equal(r.code, 0, r.stderr);
    reference = JSON.parse(r.stdout) as Summary;
    assert.equal(reference.state, "SUCCEEDED");
  });
  after(() => tmp.cleanup());

  void it("the uninterrupted run consumes every sample of every epoch exactly once", async () => {
    // 1024 samples, batch 32: 32 steps an epoch; 80 steps = 2 full epochs and half of a third.
    assertExactlyOnce(await audit(reference.jobId, join(tmp.dir, "reference")), 3);
  });

  void it("kill -9 of one rank mid-epoch: 1 restart, the same final parameters, an exact audit", async () => {
    const state = join(tmp.dir, "kill9");
    const run = await startRun(spec, state, ["--json"]);
    const v = await waitForStatus(run.jobId, state, "step 25", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 25);
    const victim = currentAttempt(v).ranks.find((r) => r.rank === 1);
    assert.ok(victim && victim.pid > 0);
    process.kill(victim.pid, "SIGKILL");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run without the failure");
    const after = await status(run.jobId, state);
    const [first, second] = after.job.stages[0]?.attempts ?? [];
    assert.match(first?.reason ?? "", /rank 1 was killed by SIGKILL/);
    const resumed = second?.resumedFromStep ?? -1;
    assert.ok(resumed >= 20 && resumed % 10 === 0, `resumed from the last committed checkpoint before the kill, got ${resumed}`);
    assertExactlyOnce(await audit(run.jobId, state), 3);
  });

  void it("SIGSTOP of one rank: detected as hung, stacks dumped, recovered, same parameters", async () => {
    const state = join(tmp.dir, "sigstop");
    const run = await startRun(spec, state, ["--json"]);
    const v = await waitForStatus(run.jobId, state, "step 15", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 15);
    const victim = currentAttempt(v).ranks.find((r) => r.rank === 0);
    assert.ok(victim);
    const stoppedAt = Date.now();
    process.kill(victim.pid, "SIGSTOP");
    const restarted = await waitForStatus(run.jobId, state, "the restart", (x) => (x.job.stages[0]?.attempts.length ?? 0) >= 2, 60_000);
    // heartbeat_timeout is 3 s; the watchdog looks every 0.5 s; the stack dump takes 1.5 s.
    assert.ok(Date.now() - stoppedAt < 15_000, `detected after ${Date.now() - stoppedAt} ms`);
    assert.match(restarted.job.stages[0]?.attempts[0]?.reason ?? "", /rank 0 sent no heartbeat/);
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    const logs = await runCli(["logs", run.jobId, "--state-dir", state]);
    assert.match(logs.stdout, /asking every rank for a stack dump/);
    assert.match(logs.stdout, /\[main\/a1 rank 0\] (Thread|Current thread) 0x[0-9a-f]+/, "the stopped rank's threads were dumped");
    assert.match(logs.stdout, /\[main\/a1 rank 1\] (Thread|Current thread) 0x[0-9a-f]+/, "and its peer's");
  });

  void it("kill -9 of the orchestrator, then resume: same parameters, no orphaned worker", async () => {
    const state = join(tmp.dir, "orchestrator");
    const run = await startRun(spec, state);
    const v = await waitForStatus(run.jobId, state, "step 35", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 35);
    const pids = allPids(v);
    assert.equal(pids.length, 2);
    process.kill(run.child.pid ?? 0, "SIGKILL");
    await run.done;
    await waitFor("the orphaned workers to stop", () => pids.every((p) => !alive(p)), 40_000);
    const r = await runCli(["resume", run.jobId, "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    assertExactlyOnce(await audit(run.jobId, state), 3);
  });

  void it("a truncated newest checkpoint: the previous committed one is used, and the event says why", async () => {
    const state = join(tmp.dir, "truncated");
    const run = await startRun(spec, state, ["--json"]);
    const running = await waitForStatus(run.jobId, state, "two commits", (x) => x.checkpoints.length >= 2 && (x.job.stages[0]?.progress?.step ?? 0) >= 22);
    // Freeze a rank (the gang stops at the next collective), so no newer checkpoint is committed meanwhile.
    const victim = currentAttempt(running).ranks.find((r) => r.rank === 1);
    assert.ok(victim);
    process.kill(victim.pid, "SIGSTOP");
    const v = await status(run.jobId, state);
    const newest = [...v.checkpoints].sort((a, b) => b.step - a.step)[0];
    assert.ok(newest);
    const model = join(newest.dir, "model.pt");
    truncateSync(model, Math.floor(readFileSync(model).length / 2));
    process.kill(victim.pid, "SIGKILL");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    const after = await status(run.jobId, state);
    const stage = after.job.stages[0];
    assert.equal(stage?.attempts[1]?.resumedFromStep, newest.step - 10);
    const corrupt = stage?.checkpoints.find((c) => c.step === newest.step);
    assert.equal(corrupt?.status, "corrupt");
    const event = after.job.recentEvents.find((e) => e.type === "checkpoint" && /corrupt/.test(e.reason));
    assert.match(event?.reason ?? "", new RegExp(`checkpoint at step ${newest.step} is corrupt \\(model\\.pt has \\d+ bytes, manifest says \\d+\\); using the previous committed one`));
  });

  void it("SIGTERM to `clipfleet run`: checkpoint, exit within the grace period; resume gives the same parameters", async () => {
    const state = join(tmp.dir, "sigterm");
    const run = await startRun(spec, state, ["--json"]);
    await waitForStatus(run.jobId, state, "step 33", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 33);
    const t0 = Date.now();
    process.kill(run.child.pid ?? 0, "SIGTERM");
    const r = await run.done;
    assert.ok(Date.now() - t0 < 30_000, `stopped after ${Date.now() - t0} ms`);
    assert.equal(r.code, 1, r.stderr);
    const s = JSON.parse(r.stdout) as Summary & { checkpoints: { step: number }[]; reason: string };
    assert.equal(s.state, "CANCELLED");
    const last = Math.max(...s.checkpoints.map((c) => c.step));
    // The stop step is the next one every rank can still reach; it may fall on the every-10 cadence.
    const stopping = (await status(run.jobId, state)).job.recentEvents.find((e) => /checkpoint at step \d+/.test(e.reason));
    const stopStep = Number(/checkpoint at step (\d+)/.exec(stopping?.reason ?? "")?.[1]);
    assert.ok(stopStep > 33, `the stop step was chosen after step 33: ${stopping?.reason}`);
    assert.equal(last, stopStep, "the newest checkpoint is the one taken at the stop step");
    assert.match(s.reason, new RegExp(`checkpoint committed at step ${last}`));
    const resumed = await runCli(["resume", run.jobId, "--json", "--state-dir", state]);
    assert.equal(resumed.code, 0, resumed.stderr);
    const rs = JSON.parse(resumed.stdout) as Summary;
    assert.equal(rs.state, "SUCCEEDED");
    assert.equal(rs.finalParamsSha256, reference.finalParamsSha256);
    const v = await status(run.jobId, state);
    assert.equal(v.job.stages[0]?.attempts.at(-1)?.resumedFromStep, last);
  });

  void it("`clipfleet checkpoint JOB` saves on demand, at one step on every rank, without changing the training", async () => {
    const noCadence = writeTinySpec(tmp.dir, { ...BASE, name: "ondemand", everySteps: null });
    const state = join(tmp.dir, "ondemand");
    const run = await startRun(noCadence, state, ["--json"]);
    await waitForStatus(run.jobId, state, "step 20", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 20);
    const c = await runCli(["checkpoint", run.jobId, "--json", "--state-dir", state]);
    assert.equal(c.code, 0, c.stderr);
    const asked = JSON.parse(c.stdout) as { step: number };
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary & { checkpoints: { step: number }[] };
    const steps = s.checkpoints.map((x) => x.step).sort((a, b) => a - b);
    assert.equal(steps.length, 2, `the requested one and the final one: ${steps.join(",")}`);
    assert.ok((steps[0] ?? 0) >= asked.step && (steps[0] ?? 0) <= asked.step + 2, `asked ${asked.step}, saved ${steps[0]}`);
    assert.equal(steps[1], 80);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
  });

  void it("checkpoint.every_minutes: the orchestrator asks for time-based checkpoints, at one step on every rank", async () => {
    // Every 1.2 s: a few of them during a run of ~80 steps.
    const timed = writeTinySpec(tmp.dir, { ...BASE, name: "timed", everySteps: null, everyMinutes: 0.02 });
    const r = await runCli(["run", timed, "--json", "--state-dir", join(tmp.dir, "timed")]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    const all = (await status(s.jobId, join(tmp.dir, "timed"))).job.stages[0]?.checkpoints ?? [];
    const steps = all.map((c) => c.step).sort((a, b) => a - b);
    assert.ok(steps.length >= 3, `time-based checkpoints plus the final one, got ${steps.join(",")}`);
    assert.equal(steps.at(-1), 80);
    assert.ok(steps[0]! < 80, "at least one before the end, at a step the clock chose");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "checkpointing does not change the training");
  });

  void it("checkpoint.every: auto: a measuring save at once, then the Young-Daly interval; a kill -9 resumes bit-exactly", async () => {
    // An MTBF prior of 1.8 s: with a tiny model's save of some 10-50 ms the interval is the
    // 3.5 % bound (save / 0.035, about 0.3-1.4 s), so a few checkpoints fall in the run.
    // The first attempt never passes step 60 (a gate whose file never comes): the kill lands before the end on any machine.
    const auto = writeTinySpec(tmp.dir, { ...BASE, name: "auto", everySteps: null, everyAutoMtbfHours: 0.0005, env: { CLIPFLEET_FAULT: `gate@60:file=${join(tmp.dir, "never")}:attempt=1` } });
    const state = join(tmp.dir, "auto");
    const run = await startRun(auto, state, ["--json"]);
    const v = await waitForStatus(run.jobId, state, "step 45", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 45);
    process.kill(currentAttempt(v).ranks.find((r) => r.rank === 0)?.pid ?? 0, "SIGKILL");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    const all = (await status(s.jobId, state)).job.stages[0]?.checkpoints ?? [];
    const firstAttempt = all.filter((c) => /-a1$/.test(c.dir)).map((c) => c.step).sort((a, b) => a - b);
    assert.ok(firstAttempt.length >= 2, `the measuring checkpoint and at least one timed one before the kill, got ${firstAttempt.join(",")}`);
    assert.ok(firstAttempt[0]! <= 3, `the first checkpoint measures the save cost at once: step ${firstAttempt[0]}`);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run without the failure");
  });

  void it("asynchronous saves: training goes on while files are written; a kill -9 still resumes bit-exactly", async () => {
    const asyncSpec = writeTinySpec(tmp.dir, { ...BASE, name: "async", asyncSave: true, keepLast: 2, env: { CLIPFLEET_FAULT: `gate@60:file=${join(tmp.dir, "never")}:attempt=1` } });
    const state = join(tmp.dir, "async");
    const run = await startRun(asyncSpec, state, ["--json"]);
    const v = await waitForStatus(run.jobId, state, "step 45", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 45);
    process.kill(currentAttempt(v).ranks.find((r) => r.rank === 0)?.pid ?? 0, "SIGKILL");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary & { checkpoints: { step: number; dir: string }[] };
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    // keep_last 2: only the two newest committed checkpoints remain, on disk and in the catalogue.
    assert.deepEqual(s.checkpoints.map((c) => c.step).sort((a, b) => a - b), [70, 80]);
    const after = await status(run.jobId, state);
    const deleted = after.job.stages[0]?.checkpoints.filter((c) => c.status === "deleted") ?? [];
    assert.ok(deleted.length >= 5, `superseded checkpoints deleted: ${deleted.length}`);
    const { existsSync } = await import("node:fs");
    for (const d of deleted) assert.ok(!existsSync(d.dir), `${d.dir} should be gone`);
    for (const c of s.checkpoints) assert.ok(existsSync(join(c.dir, "manifest.json")));
  });

  void it("a node taken away (3 ranks, min_workers 2): continues on 2 ranks, same global batch, exact audit", async () => {
    const { writeFileSync } = await import("node:fs");
    const inventory = join(tmp.dir, "three-nodes.yaml");
    writeFileSync(inventory, "nodes:\n  - {name: n1, slots: 1}\n  - {name: n2, slots: 1}\n  - {name: n3, slots: 1}\n");
    // Batch 24 divides over 3 and over 2 ranks; 1024 samples make 42 steps an epoch (16 dropped).
    const elastic = writeTinySpec(tmp.dir, { ...BASE, name: "elastic", workers: 3, minWorkers: 2, batch: 24, steps: 60 });
    const state = join(tmp.dir, "elastic");
    const run = await startRun(elastic, state, ["--json", "--inventory", inventory]);
    const v = await waitForStatus(run.jobId, state, "step 15", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 15);
    const first = currentAttempt(v);
    assert.equal(first.worldSize, 3);
    const onN3 = first.ranks.find((r) => r.node === "n3");
    assert.ok(onN3);
    const cordon = await runCli(["cordon", "n3", "--state-dir", state]);
    assert.equal(cordon.code, 0, cordon.stderr);
    assert.match(cordon.stdout, /node n3: cordoned/);
    process.kill(onN3.pid, "SIGKILL");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary & { samplesSeen: number };
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.samplesSeen, 60 * 24, "the global batch stayed 24");
    const after = await status(run.jobId, state);
    const last = after.job.stages[0]?.attempts.at(-1);
    assert.equal(last?.worldSize, 2);
    assert.deepEqual(last?.ranks.map((x) => x.node).sort(), ["n1", "n2"]);
    const a = await audit(run.jobId, state);
    const e = a.stages[0]?.epochs ?? [];
    assert.equal(e.length, 2);
    for (const epoch of e) {
      assert.equal(epoch.duplicates, 0);
      assert.equal(epoch.missing, 0);
      assert.equal(epoch.unique, epoch.expected);
    }
    assert.equal(e[0]?.dropped, 16);
  });

  void it("the same exception twice: FAILED, no third attempt, traceback in status", async () => {
    const failing = writeTinySpec(tmp.dir, { ...BASE, name: "bug", env: { CLIPFLEET_FAULT: "raise@12:rank=1" } });
    const state = join(tmp.dir, "bug");
    const r = await runCli(["run", failing, "--json", "--state-dir", state]);
    assert.equal(r.code, 1, r.stderr);
    const s = JSON.parse(r.stdout) as Summary & { stages: { error?: string; reason: string }[] };
    assert.equal(s.state, "FAILED");
    const v = await status(s.jobId, state);
    const stage = v.job.stages[0];
    assert.equal(stage?.attempts.length, 2, "no third attempt");
    assert.match(stage?.reason ?? "", /rank 1 raised RuntimeError: injected fault at step 12 at step 12, the same error as attempt 1: not retried/);
    assert.match(stage?.error ?? "", /Traceback \(most recent call last\)[\s\S]*RuntimeError: injected fault at step 12/);
    const text = await runCli(["status", s.jobId, "--state-dir", state]);
    assert.match(text.stdout, /error:\n\s+Traceback/);
  });
});
