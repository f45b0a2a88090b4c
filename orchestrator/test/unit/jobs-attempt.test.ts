/**
 * The attempt supervisor and the job machinery around it, with no processes
 * and no real time (test/helpers/jobs-harness.ts): the lifecycle's one
 * transition function, then each failure and ending path driven through the
 * real JobService by fake ranks, a fake launcher and a fake clock.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { FencedError, UnauthenticatedError } from "../../src/domain/index.js";
import { confinedFile, nextPhase, SETTLE_MS, type AttemptEvent, type AttemptPhase } from "../../src/jobs/index.js";
import { loadPresets, parseSpec } from "../../src/spec/index.js";
import { FakeSession, jobsHarness, PRESETS, runningJob, stepAll, until, type FakeRank, type Harness } from "../helpers/jobs-harness.js";

const STOP = { step: 12, checkpoint: true };
const PHASES: AttemptPhase[] = [{ kind: "starting" }, { kind: "running" }, { kind: "stopping", stopAt: STOP }, { kind: "ending", why: "failed" }, { kind: "closed" }];
const EVENTS: AttemptEvent[] = [{ type: "formed" }, { type: "stop", stopAt: STOP }, { type: "end", why: "succeeded" }, { type: "close" }];

void describe("attempt lifecycle (nextPhase)", () => {
  void it("follows the table: a gang forms once, a stop before it formed ends at once, the first ending wins, only an ending closes", () => {
    const table: Record<string, Record<string, string | null>> = {
      starting: { formed: "running", stop: "ending:stopped", end: "ending:succeeded", close: null },
      running: { formed: null, stop: "stopping", end: "ending:succeeded", close: null },
      stopping: { formed: null, stop: null, end: "ending:succeeded", close: null },
      ending: { formed: null, stop: null, end: null, close: "closed" },
      closed: { formed: null, stop: null, end: null, close: null },
    };
    for (const p of PHASES) {
      for (const e of EVENTS) {
        const next = nextPhase(p, e);
        const got = next === null ? null : next.kind === "ending" ? `ending:${next.why}` : next.kind;
        assert.equal(got, table[p.kind]?.[e.type], `${p.kind} + ${e.type}`);
      }
    }
  });

  void it("a stop of a running gang keeps the agreed step", () => {
    const next = nextPhase({ kind: "running" }, { type: "stop", stopAt: STOP });
    assert.deepEqual(next, { kind: "stopping", stopAt: STOP });
  });
});

void describe("job machinery with fake ranks and a fake clock", () => {
  let h: Harness;
  beforeEach(async () => {
    h = await jobsHarness();
  });
  afterEach(async () => {
    await h.close();
  });

  const running = (overrides: Record<string, unknown> = {}): ReturnType<typeof runningJob> => runningJob(h, overrides);
  const steps = stepAll;

  function events(id: string): string[] {
    return h.job(id).recentEvents.filter((e) => e.type === "state" && e.stage !== "").map((e) => e.state);
  }

  void it("a gang runs, commits a checkpoint when the last rank reports it, and succeeds", async () => {
    const { id, ranks } = await running();
    const [r0, r1] = ranks as [FakeRank, FakeRank];
    assert.equal(r0.assignment?.worldSize, 2);
    assert.equal(r0.assignment?.configSha256, r1.assignment?.configSha256);
    const env = r1.proc.req.env;
    assert.deepEqual([env.RANK, env.WORLD_SIZE, env.LOCAL_RANK, env.MASTER_PORT, env.ROLE_RANK, env.CLIPFLEET_ATTEMPT], ["1", "2", "1", "29500", "1", "1"]);
    steps(ranks, 1, 10);
    r0.checkpoint(10);
    await h.clock.advance(100);
    assert.equal(h.job(id).stages[0]?.checkpoints.length, 0, "no commit before the last rank reported");
    r1.checkpoint(10);
    await until(() => h.job(id).stages[0]?.checkpoints.length === 1, "checkpoint committed");
    const ckpt = h.job(id).stages[0]?.checkpoints[0];
    assert.equal(ckpt?.step, 10);
    assert.deepEqual(ckpt?.files.map((f) => f.path), ["rank0.pt", "rank1.pt"], "one commit holding every rank's files");
    assert.ok(existsSync(join(ckpt?.dir ?? "", "manifest.json")));
    await until(() => r0.session.sent("committed").length === 1 && r1.session.sent("committed").length === 1, "ranks told of the commit");
    steps(ranks, 11, 20);
    for (const r of ranks) r.finish(20);
    for (const r of ranks) r.proc.exit({ code: 0, signal: null });
    await h.stageIn(id, "SUCCEEDED");
    assert.equal(h.job(id).stages[0]?.progress.step, 20);
    assert.deepEqual(events(id), ["STARTING", "RUNNING", "SUCCEEDED"]);
    for (const file of [join("jobs", id, "logs.jsonl"), join("jobs", id, "steps", "main.jsonl")]) {
      assert.equal(statSync(join(h.dir, "state", file)).mode & 0o777, 0o600, file);
    }
    assert.equal(statSync(join(h.dir, "state", "jobs", id, "steps")).mode & 0o777, 0o700);
  });

  void it("kill -9 of a rank: the gang is torn down and a new attempt resumes from the last commit after the backoff", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 10);
    for (const r of ranks) r.checkpoint(10);
    await until(() => h.job(id).stages[0]?.checkpoints.length === 1, "checkpoint committed");
    steps(ranks, 11, 13);
    ranks[1]?.proc.exit({ code: null, signal: "SIGKILL" });
    await h.stageIn(id, "RESTARTING");
    const stage = h.job(id).stages[0];
    assert.match(stage?.reason ?? "", /rank 1 was killed by SIGKILL/);
    assert.match(stage?.reason ?? "", /from step 10/);
    assert.deepEqual(ranks[0]?.proc.signals, ["SIGKILL"], "the surviving rank is killed with the gang");
    assert.equal(ranks[0]?.session.sent("fenced").length, 1);
    assert.equal(stage?.attempts[0]?.lastStep, 13);
    assert.equal(h.launcher.of(2).length, 0, "no new attempt before the backoff");
    await h.clock.advance(1100);
    const next = await h.launched(2);
    assert.equal(next[0]?.connect().startStep, 10);
    assert.throws(() => ranks[0]?.connect(), FencedError, "the old attempt's ranks are fenced");
  });

  void it("skipped samples by reason: summed over ranks and attempts, unknown reasons as other, a reason-labelled counter", async () => {
    const { id, ranks } = await running();
    const [r0, r1] = ranks as [FakeRank, FakeRank];
    r0.step(1, 3.9, { "no caption": 2 });
    r1.step(1, 3.9, { "undecodable image": 1, "a reason from a newer worker": 4 });
    steps(ranks, 2, 10);
    const p = h.job(id).stages[0]?.progress;
    assert.equal(p?.skippedSamples, 7);
    assert.deepEqual(p?.skippedByReason, { "no caption": 2, "undecodable image": 1, other: 4 });
    const counted = (await h.metrics.skippedByReason.get()).values.map((v) => [v.labels.reason, v.value]);
    assert.deepEqual(counted.sort(), [["no caption", 2], ["other", 4], ["undecodable image", 1]]);
    for (const r of ranks) r.checkpoint(10);
    await until(() => h.job(id).stages[0]?.checkpoints.length === 1, "checkpoint committed");
    ranks[1]?.proc.exit({ code: null, signal: "SIGKILL" });
    await h.stageIn(id, "RESTARTING");
    await h.clock.advance(1100);
    const next = await h.launched(2);
    for (const r of next) r.connect();
    await h.stageIn(id, "RUNNING");
    next[0]?.step(11, 3.8, { "no caption": 1 });
    next[1]?.step(11, 3.8);
    assert.deepEqual(h.job(id).stages[0]?.progress.skippedByReason, { "no caption": 3, "undecodable image": 1, other: 4 });
  });

  void it("an evaluation's skipped val samples and warnings replace the stage's; each warning is an event", async () => {
    const { id, ranks } = await running();
    const r0 = ranks[0] as FakeRank;
    const evalReport = (step: number, skippedByReason: Record<string, number>, warnings: string[]): void =>
      r0.send({ $case: "eval", value: { step, split: "val", metrics: { "retrieval/t2i_R@1": 0.5 }, skippedByReason, warnings } });
    evalReport(5, { "no image": 2, odd: 1 }, ["zero-shot skipped: no classnames.txt or classes.json (zero_shot) next to /x/test/0.tar or in its parent directory"]);
    await until(() => (h.job(id).stages[0]?.warnings ?? []).length === 1, "warning recorded");
    await until(() => h.job(id).recentEvents.some((e) => e.type === "warning"), "warning event");
    const stage = h.job(id).stages[0];
    assert.deepEqual(stage?.evalSkippedByReason, { "no image": 2, other: 1 });
    const ev = h.job(id).recentEvents.find((e) => e.type === "warning");
    assert.match(ev?.reason ?? "", /^zero-shot skipped: no classnames.txt/);
    evalReport(8, { "no image": 2 }, [ev?.reason ?? ""]);
    await until(() => h.job(id).stages[0]?.evalSkippedByReason?.other === undefined, "second evaluation recorded");
    assert.equal(h.job(id).recentEvents.filter((e) => e.type === "warning").length, 1, "a repeated warning is not a new event");
    evalReport(10, {}, ["w".repeat(5000), ...Array.from({ length: 20 }, (_, i) => `w${i}`)]);
    await until(() => (h.job(id).stages[0]?.warnings ?? []).length === 8, "bounded warnings");
    await until(() => h.job(id).recentEvents.filter((e) => e.type === "warning").length === 9, "an event for each new warning");
    assert.deepEqual(h.job(id).stages[0]?.evalSkippedByReason, {});
    assert.ok((h.job(id).stages[0]?.warnings?.[0]?.length ?? 0) <= 1024);
  });

  void it("a lost session waits out the settle window; a rank's exit within it is blamed instead", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 3);
    ranks[0]?.closeSession("connection lost");
    await h.clock.advance(SETTLE_MS - 100);
    assert.equal(h.job(id).stages[0]?.state, "RUNNING", "a secondary signal waits for the primary cause");
    ranks[1]?.proc.exit({ code: 1, signal: null });
    await h.stageIn(id, "RESTARTING");
    assert.match(h.job(id).stages[0]?.reason ?? "", /rank 1 exited with code 1/);
  });

  void it("a lost session alone fails the attempt once the settle window is over", async () => {
    const { id, ranks } = await running();
    ranks[0]?.closeSession("connection lost");
    await h.clock.advance(SETTLE_MS + 10);
    await h.stageIn(id, "RESTARTING");
    assert.match(h.job(id).stages[0]?.reason ?? "", /rank 0 lost its session/);
  });

  void it("a stale heartbeat: stacks are dumped (SIGUSR2) before the gang is killed", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 2);
    for (let t = 0; t < 5; t++) {
      ranks[0]?.heartbeat();
      await h.clock.advance(2000);
    }
    await h.clock.advance(600);
    await until(() => ranks[1]?.proc.signals.includes("SIGUSR2") === true, "stack dump asked");
    assert.equal(h.job(id).stages[0]?.state, "RUNNING", "the gang is not killed before its stacks are written");
    await h.clock.advance(1600);
    // The attempt had trained (steps 1-2): the restart follows at once, so the ended attempt is what to look at.
    await until(() => h.job(id).stages[0]?.attempts[0]?.outcome === "failed", "attempt 1 failed");
    assert.match(h.job(id).stages[0]?.attempts[0]?.reason ?? "", /rank 1 sent no heartbeat for 1\d\.\d s/);
    assert.deepEqual(ranks[1]?.proc.signals, ["SIGCONT", "SIGUSR2", "SIGKILL"]);
  });

  void it("a hang: heartbeats but no step for longer than the hang bound", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 2);
    for (let t = 0; t < 16; t++) {
      for (const r of ranks) r.heartbeat();
      await h.clock.advance(2000);
    }
    await until(() => h.job(id).stages[0]?.attempts[0]?.outcome === "failed", "attempt 1 failed");
    assert.match(h.job(id).stages[0]?.attempts[0]?.reason ?? "", /made no step progress for 3\d\.\d s \(bound 30\.0 s\): hung/);
    assert.ok(ranks.every((r) => r.proc.signals.join(",") === "SIGCONT,SIGUSR2,SIGKILL"), "stacks dumped, then the gang killed");
  });

  void it("ranks that never connect fail the attempt after the startup timeout", async () => {
    const job = await h.submit();
    const ranks = await h.launched(1);
    ranks[0]?.connect();
    await h.clock.advance(59_000);
    assert.equal(h.job(job.id).stages[0]?.state, "STARTING");
    await h.clock.advance(2_000);
    await h.stageIn(job.id, "RESTARTING");
    assert.match(h.job(job.id).stages[0]?.reason ?? "", /ranks 1 did not register within 60 s/);
  });

  void it("a checkpoint one rank never reports is not committed: the restart starts from scratch", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 10);
    ranks[0]?.checkpoint(10);
    ranks[1]?.proc.exit({ code: null, signal: "SIGKILL" });
    await h.stageIn(id, "RESTARTING");
    assert.equal(h.job(id).stages[0]?.checkpoints.length, 0);
    assert.match(h.job(id).stages[0]?.reason ?? "", /from step 0/);
    await h.clock.advance(1100);
    const next = await h.launched(2);
    const a = next[0]?.connect();
    assert.equal(a?.startStep, 0);
    assert.equal(a?.resume, undefined);
  });

  void it("a stop while STARTING ends at once, kills what was launched, and fences a late registration", async () => {
    const job = await h.submit();
    const ranks = await h.launched(1);
    ranks[0]?.connect();
    await h.service.cancel(job.id, { checkpoint: true, graceSeconds: null });
    assert.equal(h.job(job.id).stages[0]?.state, "CANCELLED");
    assert.deepEqual(
      ranks.map((r) => r.proc.alive),
      [false, false],
    );
    assert.throws(() => ranks[1]?.connect(), FencedError);
    assert.deepEqual(events(job.id), ["STARTING", "STOPPING", "CANCELLED"]);
  });

  void it("cancel --checkpoint of a running gang: ranks get the stop step, save, exit; the stage is CANCELLED with the checkpoint", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 5);
    const cancelled = h.service.cancel(id, { checkpoint: true, graceSeconds: null });
    await until(() => ranks.every((r) => r.session.sent("stopAt").length === 1), "stop command sent");
    const stopAt = ranks[0]?.session.sent("stopAt")[0];
    assert.equal(stopAt?.step, 7);
    steps(ranks, 6, 7);
    for (const r of ranks) r.checkpoint(7);
    await until(() => h.job(id).stages[0]?.checkpoints.length === 1, "stop checkpoint committed");
    for (const r of ranks) {
      r.closeSession("the worker closed it");
      r.proc.exit({ code: 0, signal: null });
    }
    await cancelled;
    const stage = h.job(id).stages[0];
    assert.equal(stage?.state, "CANCELLED");
    assert.match(stage?.reason ?? "", /checkpoint committed at step 7/);
    assert.deepEqual((await h.metrics.failures.get()).values, [], "exits after a stop command are not failures");
  });

  void it("cancel racing a failure: the stage ends once, CANCELLED, and no new attempt starts", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 4);
    ranks[1]?.proc.exit({ code: 1, signal: null });
    const cancelled = h.service.cancel(id, { checkpoint: true, graceSeconds: null });
    await cancelled;
    await h.stageIn(id, "CANCELLED");
    await h.clock.advance(5000);
    assert.equal(h.launcher.of(2).length, 0);
    const terminal = events(id).filter((s) => s === "CANCELLED" || s === "FAILED" || s === "RESTARTING");
    assert.deepEqual(terminal, ["CANCELLED"]);
    assert.equal(h.job(id).stages[0]?.attempts[0]?.outcome, "cancelled");
  });

  void it("the same exception at the same step in two attempts fails the stage (a user error, not retried)", async () => {
    const { id, ranks } = await running();
    const boom = { kind: "exception", message: "ValueError: bad", traceback: "Traceback ...", step: 3, fingerprint: "abc" };
    steps(ranks, 1, 2);
    ranks[0]?.send({ $case: "failure", value: boom });
    ranks[0]?.proc.exit({ code: 1, signal: null });
    await h.stageIn(id, "RESTARTING");
    await h.clock.advance(1100);
    const next = await h.launched(2);
    for (const r of next) r.connect();
    await h.stageIn(id, "RUNNING");
    steps(next, 1, 2);
    next[0]?.send({ $case: "failure", value: boom });
    next[0]?.proc.exit({ code: 1, signal: null });
    await h.stageIn(id, "FAILED");
    assert.match(h.job(id).stages[0]?.reason ?? "", /the same error as attempt 1: not retried/);
    assert.equal(h.job(id).stages[0]?.error, "Traceback ...");
  });

  void it("checkpoint.every_minutes: rank 0's first step after the interval asks every rank for a checkpoint two steps ahead", async () => {
    const { ranks } = await running({ train: { steps: 100, batch_size: 8 }, checkpoint: { every_steps: null, every_minutes: 1 } });
    steps(ranks, 1, 3);
    assert.equal(ranks[0]?.session.sent("checkpointAt").length, 0);
    for (let t = 0; t < 31; t++) {
      for (const r of ranks) r.heartbeat();
      await h.clock.advance(2000);
      steps(ranks, 4 + t, 4 + t);
    }
    const asked = ranks.map((r) => r.session.sent("checkpointAt"));
    assert.equal(asked[0]?.length, 1);
    assert.deepEqual(asked[0], asked[1]);
    assert.ok((asked[0]?.[0]?.step ?? 0) >= 32, `asked at step ${asked[0]?.[0]?.step}`);
  });

  void it("checkpoint.every: auto: a save at once to measure its cost, then Young-Daly's interval on the fake clock", async () => {
    const { id, ranks } = await running({ train: { steps: 200, batch_size: 8 }, checkpoint: { every_steps: null, every_minutes: null, every: "auto", mtbf_prior_hours: 1 } });
    steps(ranks, 1, 1);
    const first = ranks[0]?.session.sent("checkpointAt") ?? [];
    assert.equal(first.length, 1, "the cost is unknown: a checkpoint at the first safe step");
    const at = first[0]?.step ?? 0;
    steps(ranks, 2, at);
    for (const r of ranks) r.checkpoint(at); // saveSeconds 0.01
    await until(() => (h.job(id).stages[0]?.checkpoints.length ?? 0) === 1, "the measuring checkpoint committed");
    // sqrt(2 x 0.01 s x (3600 s + observed)) is about 8.5 s: asked once 9 steps of 1 s later, not before 8.
    let step = at;
    const asked = (): number => ranks[0]?.session.sent("checkpointAt").length ?? 0;
    let seconds = 0;
    while (asked() === 1 && seconds < 30) {
      for (const r of ranks) r.heartbeat();
      await h.clock.advance(1000);
      seconds++;
      step++;
      steps(ranks, step, step);
    }
    assert.equal(asked(), 2);
    assert.ok(seconds >= 8 && seconds <= 10, `asked after ${seconds} s`);
  });

  void it("a rank that cannot be launched fails the attempt at once, without waiting for processes that never started", async () => {
    h.launcher.failNext = "no such interpreter";
    const job = await h.submit({ failure: { max_restarts: 0 } });
    await h.stageIn(job.id, "FAILED");
    assert.match(h.job(job.id).stages[0]?.reason ?? "", /could not start rank 0: no such interpreter/);
  });

  void it("a spec validated by the caller in this process is not validated again; one from the network is", async () => {
    const input = h.input();
    const spec = parseSpec(JSON.parse(input.specJson), { specPath: input.specPath, baseDir: input.baseDir, presets: loadPresets(PRESETS) });
    const job = await h.service.submit({ ...input, specJson: "{ not json", validated: spec });
    assert.equal(h.job(job.id).spec.name, "unit");
    await assert.rejects(h.service.submit({ ...input, specJson: "{ not json" }), /unit\.yaml: not valid JSON/);
  });

  void it("a cancel while a rank is being launched: the rank started after it is killed, the others never start", async () => {
    let release: () => void = () => undefined;
    h.launcher.hold = new Promise<void>((r) => (release = r));
    const job = await h.submit();
    await until(() => h.launcher.calls === 1, "rank 0's launch under way");
    const cancelled = h.service.cancel(job.id, { checkpoint: false, graceSeconds: null });
    await h.stageIn(job.id, "STOPPING");
    release();
    await cancelled;
    assert.equal(h.job(job.id).stages[0]?.state, "CANCELLED");
    await until(() => h.launcher.procs.length === 1 && !h.launcher.procs[0]?.alive, "the late rank killed");
    assert.deepEqual(h.launcher.procs[0]?.signals, ["SIGKILL"]);
    assert.equal(h.launcher.calls, 1, "rank 1 was never launched");
    await h.clock.advance(5000);
    assert.equal(h.job(job.id).stages[0]?.state, "CANCELLED");
  });

  void it("GetPlan serves the train split only, and fences a session of an attempt that is over", async () => {
    const { id, ranks } = await running();
    const token = ranks[0]?.proc.req.secrets.CLIPFLEET_TOKEN ?? null;
    const sessionId = ranks[0]?.assignment?.sessionId ?? "";
    const plan = h.service.plan(token, { sessionId, fromStep: 0, count: 2, split: "" });
    assert.equal(plan.steps.length, 2);
    assert.equal(plan.steps[0]?.indices.length, 4, "rank 0's half of a global batch of 8");
    assert.throws(() => h.service.plan(token, { sessionId, fromStep: 0, count: 2, split: "val" }), /split: only "train" has a plan/);
    ranks[1]?.proc.exit({ code: null, signal: "SIGKILL" });
    await h.stageIn(id, "RESTARTING");
    assert.throws(() => h.service.plan(token, { sessionId, fromStep: 0, count: 2, split: "" }), FencedError);
  });

  void it("a checkpoint file outside its directory (.., absolute, a symlink) fails the job without a commit", async () => {
    const { id, ranks } = await running();
    steps(ranks, 1, 10);
    const a = ranks[0]?.assignment;
    assert.ok(a);
    const dir = join(a.checkpointRoot, "step-00000010-a1");
    mkdirSync(dir, { recursive: true });
    symlinkSync("/etc/hostname", join(dir, "link.pt"));
    for (const path of ["../../../../etc/hostname", "/etc/passwd", "link.pt", "missing.pt"]) assert.equal(confinedFile(dir, path), false, path);
    writeFileSync(join(dir, "ok.pt"), "x");
    assert.equal(confinedFile(dir, "ok.pt"), true);
    ranks[0]?.send({
      $case: "checkpoint",
      value: { step: 10, dir, files: [{ path: "../../../../etc/hostname", sha256: "0".repeat(64), size: 1 }], saveSeconds: 0, writeSeconds: 0, cursor: { epoch: 0, sampleInEpoch: 80 } },
    });
    await h.stageIn(id, "FAILED");
    assert.match(h.job(id).stages[0]?.reason ?? "", /rank 0 reported a checkpoint file outside its directory: "..\/..\/..\/..\/etc\/hostname"/);
    assert.equal(h.job(id).stages[0]?.checkpoints.length, 0);
  });

  void it("each rank has its own token: another rank's is refused, a second session cannot take a rank over, and no token is stored", async () => {
    const job = await h.submit();
    const ranks = await h.launched(1);
    const [r0, r1] = ranks as [FakeRank, FakeRank];
    const t0 = r0.proc.req.secrets.CLIPFLEET_TOKEN ?? "";
    const t1 = r1.proc.req.secrets.CLIPFLEET_TOKEN ?? "";
    assert.match(t0, /^[0-9a-f]{64}$/);
    assert.notEqual(t0, t1);
    const req = { jobId: job.id, stage: "main", attempt: 1, rank: 0, hostname: "x", pid: 1, runtimeVersion: "0.1.0", pythonVersion: "", torchVersion: "", cudaDevices: 0 };
    assert.throws(() => h.service.register(t1, req), (err: unknown) => err instanceof UnauthenticatedError && /invalid job token/.test(err.message), "rank 1's token cannot register rank 0");
    assert.throws(() => h.service.register(null, req), /missing job token/);
    assert.throws(() => h.service.register(t0, { ...req, rank: 7 }), UnauthenticatedError);
    assert.throws(() => h.service.register(t0, { ...req, attempt: 2 }), FencedError);
    const a0 = r0.connect();
    r1.connect();
    await h.stageIn(job.id, "RUNNING");
    const thief = h.service.openSession(t0, new FakeSession());
    assert.throws(() => thief.onMessage({ body: { $case: "hello", value: { sessionId: a0.sessionId } } }), /rank 0 already has a session/);
    const other = h.service.openSession(t1, new FakeSession());
    assert.throws(() => other.onMessage({ body: { $case: "hello", value: { sessionId: a0.sessionId } } }), UnauthenticatedError);
    assert.throws(() => h.service.plan(t1, { sessionId: a0.sessionId, fromStep: 0, count: 1, split: "" }), UnauthenticatedError);
    const stored = JSON.stringify(h.job(job.id));
    assert.ok(!stored.includes(t0) && !stored.includes(t1), "rank tokens are not in the job record");
    assert.equal(h.job(job.id).stages[0]?.state, "RUNNING", "the refused calls did not disturb the job");
  });

  void it("ranks that die while the orchestrator shuts down start no ending (the next start reconciles them as lost)", async () => {
    const { id, ranks } = await running();
    await h.service.close();
    ranks[0]?.proc.exit({ code: null, signal: "SIGKILL" });
    await h.clock.advance(5000);
    assert.equal(h.job(id).stages[0]?.state, "RUNNING", "nothing written to a store being closed");
  });
});
