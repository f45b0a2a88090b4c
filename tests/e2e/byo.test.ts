/**
 * Bring your own script (issue 14), with real processes: `task: command`
 * stages running examples/byo/train_ddp.py (the clipfleet_worker API) and
 * plain torchrun scripts (no clipfleet import), under `clipfleet run` and
 * `clipfleet launch`. Failures are injected for real: kill -9 of a rank, a
 * cancel with a checkpoint, a preemption signal, the same exception twice, a
 * rank that stops reporting. The API script resumes to the parameters of an uninterrupted
 * run with an exact data audit; a plain script restarts from scratch.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { finished, freePort, PYTHON, ROOT, runCli, startCli, tempDir, waitFor, type CliResult } from "../helpers/cli.js";
import { assertExactlyOnce, audit, currentAttempt, startRun, status, waitForStatus, type JobView, type Summary } from "../helpers/jobs.js";

const EXAMPLES = join(ROOT, "examples", "byo");
const FIXTURES = join(ROOT, "tests", "fixtures");

/** kill -9 of rank 1 of the live attempt; the run's summary once it ends (exit 0). */
async function killRank1(v: JobView, done: Promise<CliResult>): Promise<Summary> {
  const victim = currentAttempt(v).ranks.find((r) => r.rank === 1);
  assert.ok(victim && victim.pid > 0);
  process.kill(victim.pid, "SIGKILL");
  const r = await done;
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Summary;
}

/** A command stage's spec as YAML (flow style), written into `dir`. */
function writeSpec(dir: string, name: string, fields: Record<string, unknown>): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(path, Object.entries({ name, task: "command", ...fields }).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("\n") + "\n");
  return path;
}

/** The API script on 2 ranks: 320 samples, batch 16 (20 steps an epoch), a checkpoint every 10 steps, an audit. */
function ddpSpec(dir: string, name: string, steps: number, failure: Record<string, number> = {}): string {
  return writeSpec(dir, name, {
    command: ["python", "train_ddp.py"],
    workdir: EXAMPLES,
    train: { steps, batch_size: 16 },
    data: { num_samples: 320, audit: true },
    cluster: { workers: 2 },
    checkpoint: { every_steps: 10 },
    failure: { backoff_seconds: 0.2, heartbeat_timeout: 5, ...failure },
  });
}

async function runJson(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<Summary> {
  const r = await runCli(args, opts);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Summary;
}

async function logsOf(jobId: string, state: string): Promise<string> {
  const r = await runCli(["logs", jobId, "--state-dir", state]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

void describe("bring your own script: the clipfleet_worker API", () => {
  const tmp = tempDir("clipfleet-byo-");
  let reference: Summary;

  before(async () => {
    reference = await runJson(["run", ddpSpec(tmp.dir, "ddp", 60), "--json", "--state-dir", join(tmp.dir, "reference")]);
    assert.equal(reference.state, "SUCCEEDED");
    assert.match(reference.finalParamsSha256, /^[0-9a-f]{64}$/, "ctx.finish(params_sha256=...) reaches the summary");
    assert.equal(reference.steps, 60);
  });
  after(() => tmp.cleanup());

  void it("kill -9 of a rank mid-epoch: one restart from the committed checkpoint, the same final parameters, an exact audit", { timeout: 180_000 }, async () => {
    const state = join(tmp.dir, "kill9");
    // Rank 1 stops at step 25 of the first attempt (mid-epoch 1), so the kill lands mid-run however fast the machine.
    const run = await startRun(ddpSpec(tmp.dir, "ddp", 60), state, ["--json"], { CLIPFLEET_FAULT: "hang@25:rank=1:attempt=1" });
    const v = await waitForStatus(run.jobId, state, "step 24", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 24);
    const s = await killRank1(v, run.done);
    assert.equal(s.restarts, 1);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the uninterrupted run");
    const after = await status(run.jobId, state);
    const [first, second] = after.job.stages[0]?.attempts ?? [];
    assert.match(first?.reason ?? "", /rank 1 was killed by SIGKILL/);
    assert.equal(second?.resumedFromStep, 20, "resumed from the last committed checkpoint");
    assertExactlyOnce(await audit(run.jobId, state), 3);
  });

  void it("a rank that stops reporting: detected as hung from its step times, stacks dumped, restarted, the same parameters", { timeout: 180_000 }, async () => {
    const state = join(tmp.dir, "hang");
    const spec = ddpSpec(tmp.dir, "ddp-hang", 60, { hang_min_seconds: 2, hang_factor: 3 });
    const s = await runJson(["run", spec, "--json", "--state-dir", state], { env: { CLIPFLEET_FAULT: "hang@15:rank=0:attempt=1" } });
    assert.equal(s.restarts, 1);
    const v = await status(s.jobId, state);
    assert.match(v.job.stages[0]?.attempts[0]?.reason ?? "", /rank 0 made no step progress for [\d.]+ s \(bound [\d.]+ s\): hung/);
    const logs = await logsOf(s.jobId, state);
    assert.match(logs, /asking every rank for a stack dump/);
    assert.match(logs, /\[main\/a1 rank 0\] (Thread|Current thread) 0x[0-9a-f]+/, "the hung rank's threads were dumped");
    // Same data, same steps; the hung attempt resumed from step 10: the parameters of 60 uninterrupted steps.
    const ref = await runJson(["run", ddpSpec(tmp.dir, "ddp-hang", 60), "--json", "--state-dir", join(tmp.dir, "hang-ref")]);
    assert.equal(s.finalParamsSha256, ref.finalParamsSha256);
  });

  void it("kill -USR1 of a rank (a preemption): init() turned it into a request, every rank saves at one step, the stage restarts from it without spending a restart, the same final parameters", { timeout: 180_000 }, async () => {
    const state = join(tmp.dir, "preempt");
    const gate = join(tmp.dir, "go-preempt");
    // Every rank waits at step 25 of the first attempt until the signal has been sent, so it lands mid-run.
    const run = await startRun(ddpSpec(tmp.dir, "ddp", 60, { max_restarts: 0 }), state, ["--json"], { CLIPFLEET_FAULT: `gate@25:file=${gate}:attempt=1` });
    const v = await waitForStatus(run.jobId, state, "step 24", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 24);
    const victim = currentAttempt(v).ranks.find((r) => r.rank === 0);
    assert.ok(victim && victim.pid > 0);
    process.kill(victim.pid, "SIGUSR1");
    await waitForStatus(run.jobId, state, "the stop command", (x) => x.job.recentEvents.some((e) => /^preempted: SIGUSR1 on rank 0 .*; checkpoint at step \d+$/.test(e.reason)), 60_000);
    writeFileSync(gate, "");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary & { preemptions: number };
    assert.equal(s.restarts, 0);
    assert.equal(s.preemptions, 1);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the uninterrupted run");
    const after = await status(run.jobId, state);
    const [first, second] = after.job.stages[0]?.attempts ?? [];
    assert.equal(first?.outcome, "preempted");
    const stopStep = Number(/checkpoint at step (\d+)$/.exec(after.job.recentEvents.find((e) => /^preempted: .*checkpoint at step/.test(e.reason))?.reason ?? "")?.[1]);
    assert.ok(stopStep >= 25, `stopped after the gate: ${stopStep}`);
    assert.equal(second?.resumedFromStep, stopStep, "resumed from the preemption's checkpoint");
    assertExactlyOnce(await audit(run.jobId, state), 3);
  });

  void it("cancel --checkpoint: the script sees should_stop, saves and exits; resume continues it to the same final parameters", { timeout: 240_000 }, async () => {
    const spec = ddpSpec(tmp.dir, "ddp-long", 400);
    const ref = await runJson(["run", spec, "--json", "--state-dir", join(tmp.dir, "long-ref")]);
    const state = join(tmp.dir, "cancel");
    const gate = join(tmp.dir, "go-cancel");
    // The ranks wait before step 31 of the first attempt until the cancel is in: a loaded machine's
    // status polling cannot let the 400 steps finish before it.
    const run = await startRun(spec, state, ["--json"], { CLIPFLEET_FAULT: `gate@31:file=${gate}:attempt=1` });
    await waitForStatus(run.jobId, state, "step 30", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 30, 120_000);
    const cancel = await runCli(["cancel", run.jobId, "--checkpoint", "--state-dir", state]);
    assert.equal(cancel.code, 0, cancel.stderr);
    writeFileSync(gate, "");
    await run.done;
    const stopped = await status(run.jobId, state);
    assert.equal(stopped.state, "CANCELLED");
    const saved = stopped.job.stages[0]?.checkpoints.at(-1)?.step ?? 0;
    assert.ok(saved >= 30 && saved < 400, `a checkpoint at the stop, got step ${saved}`);
    const resumed = await runJson(["resume", run.jobId, "--json", "--state-dir", state]);
    assert.equal(resumed.state, "SUCCEEDED");
    assert.equal(resumed.finalParamsSha256, ref.finalParamsSha256);
    const v = await status(run.jobId, state);
    assert.equal(v.job.stages[0]?.attempts.at(-1)?.resumedFromStep, saved);
  });
});

void describe("bring your own script: a plain torchrun script", () => {
  const tmp = tempDir("clipfleet-plain-");
  after(() => tmp.cleanup());

  void it("gets torchrun's environment; kill -9 of a rank tears the gang down and restarts it from scratch", { timeout: 180_000 }, async () => {
    const state = join(tmp.dir, "kill9");
    const spec = writeSpec(tmp.dir, "plain", { command: ["python", "plain_wait.py"], workdir: FIXTURES, cluster: { workers: 2 }, failure: { backoff_seconds: 0.2 } });
    const run = await startRun(spec, state, ["--json"]);
    const v = await waitFor("both ranks in the gloo group", async () => {
      const logs = await logsOf(run.jobId, state).catch(() => "");
      return /rank 0 of 2 ready/.test(logs) && /rank 1 of 2 ready/.test(logs) ? status(run.jobId, state) : null;
    });
    const s = await killRank1(v, run.done);
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    const after = await status(run.jobId, state);
    const [first, second] = after.job.stages[0]?.attempts ?? [];
    assert.match(first?.reason ?? "", /rank 1 was killed by SIGKILL/);
    assert.equal(second?.resumedFromStep, 0, "no checkpoint clipfleet knows of: from scratch");
    const logs = await logsOf(run.jobId, state);
    assert.match(logs, new RegExp(`rank 0 of 2 ready, restart 1 of 3, run ${run.jobId}`), "TORCHELASTIC_RESTART_COUNT, _MAX_RESTARTS and _RUN_ID");
    assert.match(logs, /rank 0 sum 3/);
  });

  void it("the same exception twice: FAILED with the traceback from its stderr, no third try", { timeout: 120_000 }, async () => {
    const state = join(tmp.dir, "twice");
    const spec = writeSpec(tmp.dir, "fails", { command: ["python", "plain_wait.py"], workdir: FIXTURES, cluster: { workers: 2 }, worker: { env: { FAIL: "1" } }, failure: { backoff_seconds: 0.2 } });
    const r = await runCli(["run", spec, "--json", "--state-dir", state]);
    assert.equal(r.code, 1, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "FAILED");
    const v = await status(s.jobId, state);
    assert.equal(v.job.stages[0]?.attempts.length, 2, "no third attempt");
    assert.match(v.job.stages[0]?.reason ?? "", /ValueError: bad batch/);
    assert.match(v.job.stages[0]?.error ?? "", /Traceback \(most recent call last\):[\s\S]*plain_wait\.py[\s\S]*ValueError: bad batch/);
  });

  void it("`clipfleet launch` runs it (and writes its spec); under a hand-made torchrun environment it ends with the same parameters", { timeout: 180_000 }, async () => {
    const out = join(tmp.dir, "launched.yaml");
    const r = await runCli(["launch", "--workers", "2", "--json", "--spec-out", out, "--state-dir", join(tmp.dir, "launch"), "--", "python", "plain_torchrun.py"], { cwd: EXAMPLES });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    const logs = await logsOf(s.jobId, join(tmp.dir, "launch"));
    const orchestrated = /params sha256 ([0-9a-f]{64})/.exec(logs)?.[1];
    assert.ok(orchestrated, logs);
    const again = await runJson(["run", out, "--json", "--state-dir", join(tmp.dir, "again")]);
    assert.equal(again.state, "SUCCEEDED", "the written spec runs the same command");

    // By hand: two processes with torchrun's variables, no orchestrator.
    const port = await freePort();
    const outputs = await Promise.all(
      [0, 1].map(
        (rank) =>
          new Promise<string>((resolve, reject) => {
            const env = { ...process.env, RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: "2", LOCAL_WORLD_SIZE: "2", MASTER_ADDR: "127.0.0.1", MASTER_PORT: String(port) };
            const child = spawn(PYTHON, ["plain_torchrun.py"], { cwd: EXAMPLES, env, stdio: ["ignore", "pipe", "inherit"] });
            let text = "";
            child.stdout.on("data", (d: Buffer) => (text += d.toString()));
            child.on("close", (code) => (code === 0 ? resolve(text) : reject(new Error(`rank ${rank} exited ${code}`))));
          }),
      ),
    );
    assert.equal(/params sha256 ([0-9a-f]{64})/.exec(outputs[0] ?? "")?.[1], orchestrated);
  });

  void it("`clipfleet launch` with a missing script or interpreter: exit 2, one line, nothing persisted", async () => {
    const state = join(tmp.dir, "nothing");
    for (const [argv, want] of [
      [["python", "no-such-script.py"], /^clipfleet: clipfleet launch: command\[1\]: no such file: .*no-such-script\.py$/],
      [["/no/such/python", "train.py"], /^clipfleet: clipfleet launch: command\[0\]: no such file: \/no\/such\/python$/],
      [[], /^clipfleet: launch: no command: put it after --/],
    ] as const) {
      const r = await runCli(["launch", "--state-dir", state, "--", ...argv], { cwd: tmp.dir });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr.trim(), want);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    assert.equal(existsSync(state), false, "no state dir was made");
    assert.equal(readFileSync(join(EXAMPLES, "plain_torchrun.yaml"), "utf8").includes("task: command"), true);
  });
});

void describe("bring your own script: clipfleet launch with the API", () => {
  const tmp = tempDir("clipfleet-launch-api-");
  after(() => tmp.cleanup());

  void it("SIGTERM of `launch`: the script sees should_stop, saves and exits; resume continues it to the parameters of an uninterrupted launch", { timeout: 300_000 }, async () => {
    // No spec fields: the script's init() defaults (every 10 steps, 640 samples, batch 16) and --steps decide.
    const argv = ["--workers", "2", "--json", "--", "python", "train_ddp.py", "--steps", "1500"];
    const ref = await runJson(["launch", "--state-dir", join(tmp.dir, "ref"), ...argv], { cwd: EXAMPLES });
    assert.equal(ref.state, "SUCCEEDED");
    const state = join(tmp.dir, "stopped");
    const child = startCli(["launch", "--state-dir", state, ...argv], { cwd: EXAMPLES });
    const done = finished(child, 240_000);
    const jobId = await waitFor("the job id", () => /clipfleet: job (j-[0-9a-f-]+)/.exec(child.output.stderr)?.[1]);
    await waitForStatus(jobId, state, "step 20", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 20, 120_000);
    child.kill("SIGTERM");
    const r = await done;
    assert.notEqual(r.code, 0, "a stopped job is not a success");
    const stopped = await status(jobId, state);
    assert.equal(stopped.state, "CANCELLED");
    const saved = stopped.job.stages[0]?.checkpoints.at(-1)?.step ?? 0;
    assert.ok(saved >= 20 && saved < 1500, `a checkpoint at the stop, got step ${saved}`);
    const resumed = await runJson(["resume", jobId, "--json", "--state-dir", state], { cwd: EXAMPLES });
    assert.equal(resumed.state, "SUCCEEDED");
    assert.equal(resumed.finalParamsSha256, ref.finalParamsSha256);
  });
});
