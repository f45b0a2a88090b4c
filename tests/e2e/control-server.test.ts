/**
 * The control plane end to end: a real `clipfleet server` process, the real
 * CLI (submit, status, list, logs, logs -f, watch, checkpoints, nodes,
 * cancel, resume; with --server and with CLIPFLEET_SERVER), real worker
 * processes. Two jobs that cannot both fit on this machine's 2 slots: the
 * second waits with a reason, then runs. Cancel returns only when none of the
 * job's processes is alive; cancel --checkpoint saves at the stop step and
 * resume continues from there.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { alive, finished, runCli, startCli, startServer, tempDir, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { attemptPids, type ControlClient, stateName, statusJson, waitEnd, waitJob } from "./control-helpers.js";

void describe("clipfleet server with the CLI", () => {
  const tmp = tempDir("clipfleet-control-");
  let server: ServerHandle;
  let client: ControlClient;
  let viaFlag: string[];
  let viaEnv: Record<string, string>;

  before(async () => {
    // The server's policy names the slow interpreter one test's spec asks for (worker.python).
    // The first test's job A waits before step 20 until its gate file exists (later tests' jobs find it
    // there): B and C must queue behind a job that is surely still running, however fast the machine.
    server = await startServer({
      stateDir: join(tmp.dir, "state"),
      args: ["--allow-python", join(tmp.dir, "slow-python")],
      env: { CLIPFLEET_FAULT: `gate@20:file=${join(tmp.dir, "gate-a")}` },
    });
    client = server.client();
    viaFlag = ["--server", server.address];
    viaEnv = { CLIPFLEET_SERVER: server.address };
  });
  after(async () => {
    client.close();
    const r = await server.stop();
    tmp.cleanup();
    assert.equal(r.code, 0, `the server did not shut down cleanly:\n${r.stderr}`);
  });

  void it("two jobs that cannot both fit: the second waits (needs 2 slots, 0 free), then runs; both succeed", { timeout: 150_000 }, async () => {
    const specA = writeTinySpec(tmp.dir, { name: "first", steps: 30, batch: 16, everySteps: 10 });
    const specB = writeTinySpec(tmp.dir, { name: "second", steps: 10, batch: 16, everySteps: null });

    const subA = await runCli(["submit", specA, ...viaFlag]);
    assert.equal(subA.code, 0, subA.stderr);
    const a = subA.stdout.trim();
    assert.match(a, /^j-\d{8}-\d{6}-[0-9a-f]{6}$/, "submit prints the job id alone");
    const subB = await runCli(["submit", specB, "--json"], { env: viaEnv });
    assert.equal(subB.code, 0, subB.stderr);
    const b = (JSON.parse(subB.stdout) as { jobId: string; name: string; state: string }).jobId;
    assert.deepEqual(JSON.parse(subB.stdout), { jobId: b, name: "second", state: "PENDING" });

    // Followers started while both are queued or running: they must end by themselves when the job does.
    const logsF = startCli(["logs", a, "-f", ...viaFlag]);
    const logsDone = finished(logsF, 120_000);
    const watchB = startCli(["watch", b], { env: viaEnv });
    const watchDone = finished(watchB, 120_000);

    await waitJob(client, a, "started", (j) => ["STARTING", "RUNNING"].includes(stateName(j.state)), 60_000);
    const waiting = await waitJob(client, b, "a pending reason", (j) => j.pendingReason !== "", 30_000);
    assert.equal(stateName(waiting.state), "PENDING");
    assert.equal(waiting.pendingReason, "needs 2 slots, 0 free");

    // What a user sees while B waits.
    const text = await runCli(["status", b, ...viaFlag]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`^job ${b} \\(second\\): PENDING`));
    assert.match(text.stdout, /^waiting: needs 2 slots, 0 free$/m);
    const sj = await statusJson(b, { env: viaEnv });
    assert.equal(sj.state, "PENDING");
    assert.equal(sj.job.pendingReason, "needs 2 slots, 0 free");
    const nodes = await runCli(["nodes", "--json"], { env: viaEnv });
    assert.equal(nodes.code, 0, nodes.stderr);
    const nodeList = JSON.parse(nodes.stdout) as { name: string; slots: number; freeSlots: number; launcher: string; state: string }[];
    assert.deepEqual(nodeList.map((n) => [n.name, n.launcher, n.slots, n.freeSlots, n.state]), [["local", "local", 2, 0, "ready"]]);
    const nodesText = await runCli(["nodes", ...viaFlag]);
    assert.match(nodesText.stdout, /^local\s+\S+\s+local\s+2\s+0\s+0\s+ready/m);
    // A third job queued behind B and cancelled while it waits: it ends at once and never runs.
    const subC = await runCli(["submit", writeTinySpec(tmp.dir, { name: "third", steps: 10, batch: 16, everySteps: null }), ...viaFlag]);
    assert.equal(subC.code, 0, subC.stderr);
    const c = subC.stdout.trim();
    const cancelC = await runCli(["cancel", c], { env: viaEnv });
    assert.equal(cancelC.code, 0, cancelC.stderr);
    assert.equal(cancelC.stdout.trim(), `${c}: CANCELLED - cancelled by user`);
    // Only now may A go on past step 19 and give its slots back (to B, never to the cancelled C).
    writeFileSync(join(tmp.dir, "gate-a"), "");

    const jobA = await waitEnd(client, a, "SUCCEEDED");
    const jobB = await waitEnd(client, b, "SUCCEEDED");
    // B started only once A had given its slots back.
    const aEnded = jobA.stages[0]!.endedAtMs;
    const bAttempts = jobB.stages[0]!.attempts;
    assert.equal(bAttempts.length, 1);
    assert.ok(bAttempts[0]!.startedAtMs >= aEnded, `B started at ${bAttempts[0]!.startedAtMs}, before A ended at ${aEnded}`);
    assert.equal(jobB.pendingReason, "", "the reason is cleared once the job runs");
    const bStates = jobB.recentEvents.filter((e) => e.stage === "" && e.type === "state").map((e) => stateName(e.state));
    assert.deepEqual(bStates, ["PENDING", "STARTING", "RUNNING", "SUCCEEDED"]);

    // watch: the events of B as lines, then a summary; exit 0 for a job that succeeded.
    const w = await watchDone;
    assert.equal(w.code, 0, w.stderr);
    assert.match(w.stdout.trim(), new RegExp(`^${b}: SUCCEEDED - finished 10 steps$`));
    for (const s of ["PENDING: submitted", "STARTING: attempt 1", "RUNNING: all 2 ranks connected", "SUCCEEDED: finished 10 steps"]) assert.ok(w.stderr.includes(s), `watch did not show "${s}":\n${w.stderr}`);

    // logs -f ended by itself when A ended; it showed what `logs` shows afterwards, rank-prefixed.
    const lf = await logsDone;
    assert.equal(lf.code, 0, lf.stderr);
    const logs = await runCli(["logs", a], { env: viaEnv });
    assert.equal(logs.code, 0, logs.stderr);
    const stored = logs.stdout.trim().split("\n");
    assert.ok(stored.some((l) => /\[main\/a1 rank 0\] step 30\/30 /.test(l)), logs.stdout);
    assert.ok(stored.some((l) => /\[main\/a1 orchestrator\] rank 1 registered/.test(l)), logs.stdout);
    assert.ok(stored.some((l) => /\[-\/a0 orchestrator\] job .* submitted/.test(l)), logs.stdout);
    const followed = new Set(lf.stdout.trim().split("\n"));
    assert.ok(followed.has(stored.find((l) => /step 30\/30/.test(l))!), "logs -f saw the last step");
    assert.ok([...followed].every((l) => stored.includes(l)), "logs -f printed only stored lines");
    const tail = await runCli(["logs", a, "--tail", "3", "--rank", "0", "--json", ...viaFlag]);
    assert.equal(tail.code, 0, tail.stderr);
    const tailLines = tail.stdout.trim().split("\n").map((l) => JSON.parse(l) as { rank: number; line: string; stage: string });
    assert.deepEqual(tailLines.map((l) => [l.stage, l.rank]), [["main", 0], ["main", 0], ["main", 0]], "JSON Lines, rank 0 only, the last 3");
    assert.match(tailLines.at(-1)!.line, /step 30\/30 /);

    // checkpoints, list.
    const ck = await runCli(["checkpoints", a, "--json"], { env: viaEnv });
    assert.equal(ck.code, 0, ck.stderr);
    const cks = JSON.parse(ck.stdout) as { step: number; status: string; dir: string; manifestSha256: string }[];
    assert.deepEqual(cks.map((c) => [c.step, c.status]), [[10, "committed"], [20, "committed"], [30, "committed"]]);
    for (const c of cks) assert.match(c.manifestSha256, /^[0-9a-f]{64}$/);
    const ckText = await runCli(["checkpoints", a, ...viaFlag]);
    assert.match(ckText.stdout, /^main\s+30\s+committed/m);
    const list = await runCli(["list", "--json", ...viaFlag]);
    assert.equal(list.code, 0, list.stderr);
    const jobs = JSON.parse(list.stdout) as { jobId: string; name: string; state: string }[];
    assert.deepEqual(jobs.map((j) => [j.jobId, j.name, j.state]), [[a, "first", "SUCCEEDED"], [b, "second", "SUCCEEDED"], [c, "third", "CANCELLED"]]);
    const jobC = await client.getJob(c);
    assert.deepEqual([stateName(jobC.state), jobC.stages[0]!.attempts.length, jobC.pendingReason], ["CANCELLED", 0, ""]);
    const listText = await runCli(["list"], { env: viaEnv });
    assert.match(listText.stdout, new RegExp(`^${b}\\s+second\\s+SUCCEEDED`, "m"));
    // Every worker of both jobs is gone.
    for (const pid of [...attemptPids(jobA), ...attemptPids(jobB)]) assert.equal(alive(pid), false, `worker pid ${pid} is still alive`);
  });

  void it("cancel: when it returns, no process of the job is alive", { timeout: 90_000 }, async () => {
    const spec = writeTinySpec(tmp.dir, { name: "to-cancel", steps: 40, batch: 16, everySteps: null });
    const sub = await runCli(["submit", spec, ...viaFlag]);
    assert.equal(sub.code, 0, sub.stderr);
    const id = sub.stdout.trim();
    const running = await waitJob(client, id, "RUNNING with both pids recorded", (j) => stateName(j.state) === "RUNNING" && attemptPids(j).length === 2, 60_000);
    const pids = attemptPids(running);
    for (const pid of pids) assert.ok(alive(pid), `worker ${pid} should be running`);

    const t0 = Date.now();
    const r = await runCli(["cancel", id], { env: viaEnv });
    const tookMs = Date.now() - t0;
    // Checked at once, before anything else runs: the command returned, so nothing may be left.
    const left = pids.filter((p) => alive(p));
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(left, [], `workers still alive after cancel returned: ${left.join(", ")}`);
    assert.match(r.stdout, new RegExp(`^${id}: CANCELLED - cancelled by user`));
    assert.ok(tookMs < 20_000, `cancel took ${tookMs} ms: the ranks did not stop on the stop command`);

    const s = await statusJson(id, { args: viaFlag });
    assert.equal(s.state, "CANCELLED");
    assert.deepEqual(attemptPidsOf(s), pids, "the record names the same processes");
    for (const pid of attemptPidsOf(s)) assert.equal(alive(pid), false);
    const a = s.job.stages[0]!.attempts[0]!;
    assert.equal(a.outcome, "cancelled");
    const states = s.job.recentEvents.filter((e) => e.stage === "main" && e.type === "state").map((e) => stateName(e.state));
    assert.deepEqual(states.slice(-2), ["STOPPING", "CANCELLED"]);
    // Cancelling again is a no-op that reports the final state.
    const again = await runCli(["cancel", id, ...viaFlag]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /CANCELLED/);
  });

  void it("cancel while STARTING (no rank registered yet): returns promptly, nothing left alive, no internal error", { timeout: 90_000 }, async () => {
    // An interpreter that takes a few seconds to start the worker keeps the attempt in STARTING long enough.
    const slow = join(tmp.dir, "slow-python");
    writeFileSync(slow, '#!/bin/sh\nif [ "$1 $2 $3" = "-m clipfleet_worker run" ]; then sleep 4; fi\nexec /usr/bin/python3 "$@"\n', { mode: 0o755 });
    const spec = writeTinySpec(tmp.dir, { name: "early-cancel", steps: 40, batch: 16, everySteps: null, extra: `worker:\n  python: ${slow}\n` });
    const sub = await runCli(["submit", spec, ...viaFlag]);
    assert.equal(sub.code, 0, sub.stderr);
    const id = sub.stdout.trim();
    const starting = await waitJob(client, id, "STARTING with both pids recorded", (j) => attemptPids(j).length === 2, 60_000);
    assert.equal(stateName(starting.state), "STARTING");
    const pids = attemptPids(starting);

    const t0 = Date.now();
    const r = await runCli(["cancel", id, ...viaFlag]);
    const tookMs = Date.now() - t0;
    const left = pids.filter((p) => alive(p));
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(left, [], `processes still alive after cancel returned: ${left.join(", ")}`);
    assert.match(r.stdout, new RegExp(`^${id}: CANCELLED - cancelled by user`));
    assert.ok(tookMs < 15_000, `cancel took ${tookMs} ms`);

    // The ranks would have registered by now: nothing may move the job again.
    await new Promise((res) => setTimeout(res, 6000));
    const s = await statusJson(id, { args: viaFlag });
    assert.equal(s.state, "CANCELLED");
    const stageStates = s.job.recentEvents.filter((e) => e.stage === "main" && e.type === "state").map((e) => stateName(e.state));
    assert.deepEqual(stageStates, ["STARTING", "STOPPING", "CANCELLED"]);
    assert.deepEqual(s.job.stages[0]!.attempts.map((a) => a.outcome), ["cancelled"]);
    const logs = await runCli(["logs", id, ...viaFlag]);
    assert.doesNotMatch(logs.stdout, /internal error/, logs.stdout);
  });

  void it("cancel --checkpoint saves at the stop step; resume continues from it to SUCCEEDED", { timeout: 120_000 }, async () => {
    const spec = writeTinySpec(tmp.dir, { name: "save-and-stop", steps: 40, batch: 16, everySteps: null });
    const sub = await runCli(["submit", spec], { env: viaEnv });
    assert.equal(sub.code, 0, sub.stderr);
    const id = sub.stdout.trim();
    await waitJob(client, id, "RUNNING", (j) => stateName(j.state) === "RUNNING", 60_000);

    const r = await runCli(["cancel", id, "--checkpoint", "--json", ...viaFlag]);
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout) as { state: string; reason: string };
    assert.equal(summary.state, "CANCELLED");
    const m = /^cancelled by user; checkpoint committed at step (\d+)$/.exec(summary.reason);
    assert.ok(m, `reason: ${summary.reason}`);
    const stopStep = Number(m[1]);
    assert.ok(stopStep >= 1 && stopStep < 40, `stop step ${stopStep}`);

    const cancelled = await statusJson(id, { env: viaEnv });
    for (const pid of attemptPidsOf(cancelled)) assert.equal(alive(pid), false, `worker ${pid} alive after cancel --checkpoint returned`);
    const first = cancelled.job.stages[0]!.attempts[0]!;
    assert.equal(first.outcome, "cancelled");
    assert.equal(first.lastStep, stopStep, "the ranks stopped at the step they saved");
    const ck = await runCli(["checkpoints", id, "--json", ...viaFlag]);
    const cks = JSON.parse(ck.stdout) as { step: number; status: string; attempt: number }[];
    assert.deepEqual(cks.map((c) => [c.step, c.status, c.attempt]), [[stopStep, "committed", 1]]);

    const res = await runCli(["resume", id], { env: viaEnv });
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, new RegExp(`^${id}: (PENDING|STARTING|RUNNING)`));
    const done = await waitEnd(client, id, "SUCCEEDED");
    const attempts = done.stages[0]!.attempts;
    assert.deepEqual(
      attempts.map((a) => [a.number, a.outcome, a.resumedFromStep]),
      [
        [1, "cancelled", 0],
        [2, "succeeded", stopStep],
      ],
    );
    assert.equal(done.stages[0]!.progress!.step, 40);
    for (const pid of attemptPids(done)) assert.equal(alive(pid), false);
    // Resuming a job that succeeded is refused: exit 2 with the reason.
    const again = await runCli(["resume", id, ...viaFlag]);
    assert.equal(again.code, 2, again.stderr);
    assert.match(again.stderr, /already SUCCEEDED; nothing to resume/);
  });
});

function attemptPidsOf(s: { job: { stages: { attempts: { ranks: { pid: number }[] }[] }[] } }): number[] {
  return s.job.stages.flatMap((st) => st.attempts.flatMap((a) => a.ranks.map((r) => r.pid))).filter((p) => p > 0);
}
