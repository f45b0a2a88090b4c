/**
 * Finding jobs (issue 18) through the real CLI on one state dir: ids, unique
 * id prefixes, job names, CLIPFLEET_STATE_DIR from another folder, completion
 * of ids and names; and a `clipfleet run` killed with SIGKILL mid-training:
 * `list` and `status` show its job interrupted with the resume command (never
 * live), a local `cancel` is idempotent, and `resume` finishes it.
 */
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { alive, runCli, tempDir, waitFor, writeTinySpec } from "../helpers/cli.js";
import { allPids, startRun, status, waitForStatus, type Summary } from "../helpers/jobs.js";

interface Listed {
  jobId: string;
  name: string;
  state: string;
  reason: string;
}

void describe("job references and an orchestrator killed with SIGKILL", () => {
  const tmp = tempDir();
  const state = join(tmp.dir, "state");
  const elsewhere = join(tmp.dir, "elsewhere");
  const gate = join(tmp.dir, "gate");
  let older: string;
  let newer: string;
  let killed: string;
  let killedPids: number[] = [];

  before(async () => {
    mkdirSync(elsewhere);
    const twin = writeTinySpec(tmp.dir, { name: "twin", steps: 2, workers: 1, batch: 16, everySteps: null });
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await runCli(["run", twin, "--json", "--state-dir", state]);
      assert.equal(r.code, 0, r.stderr);
      ids.push((JSON.parse(r.stdout) as Summary).jobId);
    }
    [older, newer] = ids as [string, string];
    // Held before step 4 until the gate file exists, so the kill surely lands mid-training.
    const gated = writeTinySpec(tmp.dir, { name: "gated", steps: 6, workers: 1, batch: 16, everySteps: 2, env: { CLIPFLEET_FAULT: `gate@4:file=${gate}` } });
    const run = await startRun(gated, state);
    killed = run.jobId;
    const v = await waitForStatus(killed, state, "a committed checkpoint", (x) => x.checkpoints.length >= 1);
    killedPids = allPids(v);
    process.kill(run.child.pid ?? 0, "SIGKILL");
    await run.done;
  });
  after(() => {
    writeFileSync(gate, "go"); // lets an orphaned rank go on, notice its orchestrator is gone, and exit
    tmp.cleanup();
  });

  void it("a unique prefix of the id or of its random part finds the job", async () => {
    for (const ref of [older.slice(-6, -2), older.slice(0, -1)]) {
      const r = await runCli(["status", ref, "--json", "--state-dir", state]);
      assert.equal(r.code, 0, `${ref}: ${r.stderr}`);
      assert.equal((JSON.parse(r.stdout) as { jobId: string }).jobId, older);
    }
  });

  void it("an ambiguous prefix is an error listing the candidates; an unknown reference is not found, named", async () => {
    const amb = await runCli(["logs", "j-", "--state-dir", state]);
    assert.equal(amb.code, 2, amb.stderr);
    assert.match(amb.stderr, /job j- is ambiguous/);
    for (const id of [older, newer, killed]) assert.ok(amb.stderr.includes(id), amb.stderr);
    assert.doesNotMatch(amb.stderr, /\n\s+at /, "no stack trace");
    const unknown = await runCli(["status", "no-such-job", "--state-dir", state]);
    assert.equal(unknown.code, 3, unknown.stderr);
    assert.match(unknown.stderr, /^clipfleet: job no-such-job not found$/m);
  });

  void it("a job name finds the newest job of that name (stderr says which when several have it, or with --verbose)", async () => {
    const r = await runCli(["status", "twin", "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { jobId: string }).jobId, newer);
    assert.ok(r.stderr.includes(`clipfleet: twin is ${newer}, the newest of 2 jobs of that name (give an id for another)`), r.stderr);
    const one = await runCli(["status", "gated", "--verbose", "--state-dir", state]);
    assert.equal(one.code, 0, one.stderr);
    assert.ok(one.stderr.includes(`clipfleet: gated is ${killed} (the job of that name)`), one.stderr);
    const quiet = await runCli(["status", "gated", "--state-dir", state]);
    assert.doesNotMatch(quiet.stderr, /gated is/);
    const prefix = await runCli(["status", killed.slice(-6), "--verbose", "--state-dir", state]);
    assert.ok(prefix.stderr.includes(`clipfleet: ${killed.slice(-6)} is ${killed} (id prefix)`), prefix.stderr);
    const audit = await runCli(["checkpoints", "twin", "--json", "--state-dir", state]);
    assert.equal(audit.code, 0, audit.stderr);
  });

  void it("CLIPFLEET_STATE_DIR finds the jobs from another folder; --state-dir wins over it", async () => {
    const viaEnv = await runCli(["list", "--json"], { cwd: elsewhere, env: { CLIPFLEET_STATE_DIR: state } });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.deepEqual((JSON.parse(viaEnv.stdout) as Listed[]).map((j) => j.jobId).sort(), [older, newer, killed].sort());
    const flagWins = await runCli(["status", "twin", "--json", "--state-dir", state], { cwd: elsewhere, env: { CLIPFLEET_STATE_DIR: join(tmp.dir, "missing") } });
    assert.equal(flagWins.code, 0, flagWins.stderr);
    const nothing = await runCli(["list"], { cwd: elsewhere, env: { CLIPFLEET_STATE_DIR: "" } });
    assert.equal(nothing.code, 3, "an empty CLIPFLEET_STATE_DIR is ./.clipfleet, which holds no jobs here");
  });

  void it("shell completion offers job ids and names", async () => {
    const names = await runCli(["--get-yargs-completions", "status", "tw"], { cwd: elsewhere, env: { CLIPFLEET_STATE_DIR: state } });
    assert.equal(names.code, 0, names.stderr);
    assert.deepEqual(names.stdout.trim().split("\n"), ["twin"]);
    const ids = await runCli(["--get-yargs-completions", "cancel", older.slice(0, -4)], { cwd: elsewhere, env: { CLIPFLEET_STATE_DIR: state } });
    assert.ok(ids.stdout.split("\n").includes(older), ids.stdout);
    // `report JOB1 JOB2 ...`: every job completes, not only the first.
    const second = await runCli(["--get-yargs-completions", "report", older, "tw"], { cwd: elsewhere, env: { CLIPFLEET_STATE_DIR: state } });
    assert.deepEqual(second.stdout.trim().split("\n"), ["twin"]);
    const verbs = await runCli(["--get-yargs-completions", "sta"], { cwd: elsewhere });
    assert.ok(verbs.stdout.split("\n").some((l) => l.startsWith("status")), verbs.stdout);
  });

  void it("after kill -9 of `clipfleet run`, list and status show the job interrupted with the resume command, never live", async () => {
    const list = await runCli(["list", "--json", "--state-dir", state]);
    assert.equal(list.code, 0, list.stderr);
    const job = (JSON.parse(list.stdout) as Listed[]).find((j) => j.jobId === killed);
    assert.equal(job?.state, "FAILED");
    assert.match(job?.reason ?? "", /^interrupted: /);
    assert.ok(job?.reason.includes(`clipfleet resume ${killed}`), job?.reason);
    const table = await runCli(["list", "--state-dir", state]);
    assert.doesNotMatch(table.stdout, /STARTING|RUNNING/);
    const st = await runCli(["status", killed, "--state-dir", state]);
    assert.equal(st.code, 0, st.stderr);
    assert.ok(st.stdout.includes(`clipfleet resume ${killed}`), st.stdout);
    // The events keep their history (it did run); what the job is now says nothing live.
    const now = st.stdout.split("recent events:")[0] ?? "";
    assert.doesNotMatch(now, /launching|RUNNING|STARTING/);
    assert.match(now, /attempt 1 \(lost: the orchestrator is gone\)/);
    // Nothing will ever happen to it here: watch and logs -f end at once instead of waiting forever.
    const watch = await runCli(["watch", killed, "--state-dir", state], { timeoutMs: 60_000 });
    assert.equal(watch.code, 1, watch.stderr);
    assert.match(watch.stdout, new RegExp(`^${killed}: FAILED - interrupted: `, "m"));
    const follow = await runCli(["logs", killed, "-f", "--state-dir", state], { timeoutMs: 60_000 });
    assert.equal(follow.code, 0, follow.stderr);
  });

  void it("a local cancel of an interrupted or ended job exits 0 and says what it found, every time", async () => {
    for (let i = 0; i < 2; i++) {
      const r = await runCli(["cancel", killed, "--state-dir", state]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^${killed}: already FAILED - interrupted: .*\\(nothing to cancel\\)$`, "m"));
    }
    const ended = await runCli(["cancel", "twin", "--state-dir", state]);
    assert.equal(ended.code, 0, ended.stderr);
    assert.match(ended.stdout, new RegExp(`^${newer}: already SUCCEEDED`));
  });

  void it("resume (by a prefix of the id) continues the interrupted job to the end", async () => {
    writeFileSync(gate, "go");
    await waitFor("the orphaned rank to exit", () => killedPids.every((p) => !alive(p)), 60_000);
    const r = await runCli(["resume", killed.slice(-6), "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.jobId, killed);
    assert.equal(s.state, "SUCCEEDED");
    // Resumed as the job of this invocation (restarted from its checkpoint), not first failed as another's.
    const v = await status(killed, state);
    const reasons = v.job.recentEvents.filter((e) => e.type === "state").map((e) => e.reason);
    assert.ok(!reasons.some((r) => r.startsWith("interrupted")), reasons.join("\n"));
    assert.ok(reasons.some((r) => r.startsWith("orchestrator restarted")), reasons.join("\n"));
  });
});
