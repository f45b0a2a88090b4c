/**
 * Warm spares (`cluster.spares`, docs/recovery.md) with real worker
 * processes: after a kill -9 of a rank the next attempt's ranks run in the
 * spares (the log and the attempt's rank pids say so) and the run ends with
 * the parameters of an uninterrupted one; a spare killed before it is needed
 * is replaced and never used; nothing is left running after the job. Ranks
 * wait at a gate before step 25 of attempt 1 until the test has acted, so
 * the machine's load cannot let the job finish first.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { alive, runCli, tempDir, waitFor, writeTinySpec, type TinySpec } from "../helpers/cli.js";
import { allPids, currentAttempt, startRun, status, waitForStatus, type Summary } from "../helpers/jobs.js";

const BASE: TinySpec = { steps: 40, batch: 32, everySteps: 10, failure: { heartbeat_timeout: 5 } };

/** The job's log as text (the live orchestrator's, or the store's once it is gone). */
async function logText(jobId: string, state: string): Promise<string> {
  const r = await runCli(["logs", jobId, "--state-dir", state]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

/** Pids of spares the log says are ready, in order. */
function readySpares(log: string): number[] {
  return [...log.matchAll(/\] spare pid (\d+) ready$/gm)].map((m) => Number(m[1]));
}

/** Once the gang waits at the gate: kill -9 of rank 1, open the gate, and the run's summary (it must succeed). */
async function killRank1AtTheGate(run: Awaited<ReturnType<typeof startRun>>, state: string, go: string): Promise<Summary> {
  const v = await waitForStatus(run.jobId, state, "step 24", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 24);
  const victim = currentAttempt(v).ranks.find((r) => r.rank === 1);
  assert.ok(victim && victim.pid > 0);
  process.kill(victim.pid, "SIGKILL");
  writeFileSync(go, "");
  const r = await run.done;
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout) as Summary;
  assert.equal(s.state, "SUCCEEDED");
  return s;
}

void describe("warm spares", () => {
  const tmp = tempDir();
  let reference: Summary;
  const gate = (name: string): { spec: string; go: string } => {
    const go = join(tmp.dir, `${name}.go`);
    const spec = writeTinySpec(tmp.dir, { ...BASE, name, spares: name === "dead" ? 1 : 2, env: { CLIPFLEET_FAULT: `gate@25:file=${go}:attempt=1` } });
    return { spec, go };
  };

  before(async () => {
    const spec = writeTinySpec(tmp.dir, { ...BASE, name: "ref", spares: 0 });
    const state = join(tmp.dir, "reference");
    const r = await runCli(["run", spec, "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    reference = JSON.parse(r.stdout) as Summary;
    assert.equal(reference.state, "SUCCEEDED");
    assert.doesNotMatch(await logText(reference.jobId, state), /spare pid/, "cluster.spares: 0 starts none");
  });
  after(() => tmp.cleanup());

  void it("kill -9 of a rank: the new attempt's ranks run in the spares, same final parameters, no process left", async () => {
    const { spec, go } = gate("kill");
    const state = join(tmp.dir, "kill");
    const run = await startRun(spec, state, ["--json"]);
    const spares = await waitFor("two spares ready", async () => {
      const ready = readySpares(await logText(run.jobId, state));
      return ready.length >= 2 ? ready : null;
    }, 180_000, 250);
    const s = await killRank1AtTheGate(run, state, go);
    assert.equal(s.restarts, 1);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run without the failure");

    const done = await status(run.jobId, state);
    const second = done.job.stages[0]?.attempts[1];
    assert.deepEqual(second?.ranks.map((x) => x.pid).sort(), [...spares].sort(), "attempt 2's ranks are the spares' processes");
    const log = await logText(run.jobId, state);
    for (const pid of spares) assert.match(log, new RegExp(`\\[main/a2 orchestrator\\] rank [01] runs in warm spare pid ${pid} on local`));
    assert.match(log, /\[main\/a2 rank [01]\] clipfleet worker: spare pid \d+ becomes rank [01] of attempt 2/);
    // Replacements were started after attempt 2 trained; everything is gone with the job.
    const everyPid = new Set([...allPids(done), ...[...log.matchAll(/spare pid (\d+) started/g)].map((m) => Number(m[1]))]);
    assert.ok(everyPid.size > 4, `the ranks of both attempts and the replacement spares: ${[...everyPid].join(", ")}`);
    for (const pid of everyPid) assert.equal(alive(pid), false, `process ${pid} outlived the job`);
  });

  void it("a spare killed with kill -9 before it is needed is replaced and never used", async () => {
    const { spec, go } = gate("dead");
    const state = join(tmp.dir, "dead");
    const run = await startRun(spec, state, ["--json"]);
    const [first] = await waitFor("a spare ready", async () => {
      const ready = readySpares(await logText(run.jobId, state));
      return ready.length >= 1 ? ready : null;
    }, 180_000, 250);
    assert.ok(first);
    process.kill(first, "SIGKILL");
    const replacement = await waitFor("its replacement ready", async () => {
      const log = await logText(run.jobId, state);
      if (!new RegExp(`spare pid ${first} died \\(SIGKILL\\); not used`).test(log)) return null;
      return readySpares(log).find((p) => p !== first) ?? null;
    }, 180_000, 250);
    const s = await killRank1AtTheGate(run, state, go);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    const done = await status(run.jobId, state);
    const pids = done.job.stages[0]?.attempts[1]?.ranks.map((x) => x.pid) ?? [];
    assert.ok(pids.includes(replacement), "one rank of attempt 2 runs in the replacement (one spare per node: the other starts cold)");
    assert.ok(!allPids(done).includes(first), "the dead spare never became a rank");
    const log = await logText(run.jobId, state);
    assert.doesNotMatch(log, new RegExp(`runs in warm spare pid ${first}\\b`));
    for (const pid of new Set([...allPids(done), ...[...log.matchAll(/spare pid (\d+) started/g)].map((m) => Number(m[1]))])) assert.equal(alive(pid), false, `process ${pid} outlived the job`);
  });
});
