/**
 * The orchestrator's own crash: kill -9 a real `clipfleet server` while its
 * job is RUNNING with committed checkpoints, start a new server on the same
 * state dir and port. The job goes RESTARTING (attempt lost), then STARTING
 * and RUNNING from its last committed checkpoint, and SUCCEEDS; no worker
 * of the first server outlives it.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { JobRecord } from "../../orchestrator/src/domain/index.js";
import { alive, runCli, startServer, tempDir, waitFor, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { attemptPids, stateName, statusJson, waitEnd, waitJob } from "./control-helpers.js";

void describe("kill -9 of the server mid-run", () => {
  const tmp = tempDir("clipfleet-restart-");
  const state = join(tmp.dir, "state");
  const servers: ServerHandle[] = [];
  after(async () => {
    for (const s of servers) await s.stop();
    tmp.cleanup();
  });

  void it("a new server on the same state dir continues the job from its last committed checkpoint to SUCCEEDED", { timeout: 180_000 }, async () => {
    const first = await startServer({ stateDir: state });
    servers.push(first);
    const spec = writeTinySpec(tmp.dir, { name: "survivor", steps: 40, batch: 16, everySteps: 4 });
    const sub = await runCli(["submit", spec, "--server", first.address]);
    assert.equal(sub.code, 0, sub.stderr);
    const id = sub.stdout.trim();

    const c1 = first.client();
    let before;
    try {
      before = await waitJob(
        c1,
        id,
        "RUNNING with a committed checkpoint and both workers' pids",
        (j) => stateName(j.state) === "RUNNING" && j.stages[0]!.checkpoints.some((c) => c.status === "committed") && attemptPids(j).length === 2,
        90_000,
      );
    } finally {
      c1.close();
    }
    const firstPids = attemptPids(before);
    for (const pid of firstPids) assert.ok(alive(pid), `worker ${pid} should be running before the crash`);

    const killed = await first.kill9();
    assert.equal(killed.signal, "SIGKILL");
    // What the crashed server left in its store is what the next one starts from.
    const stored = JSON.parse(readFileSync(join(state, "jobs", id, "job.json"), "utf8")) as { job: JobRecord };
    const storedStage = stored.job.stages[0]!;
    assert.equal(storedStage.state, "RUNNING", "the store says RUNNING: the crash gave it no chance to say otherwise");
    const lastCommitted = Math.max(...storedStage.checkpoints.filter((c) => c.status === "committed").map((c) => c.step));
    assert.ok(lastCommitted >= 4 && lastCommitted < 40, `last committed checkpoint at step ${lastCommitted}`);
    // The workers die with their orchestrator (they do not keep training for nobody).
    await waitFor("the first server's workers to exit", () => firstPids.every((p) => !alive(p)), 15_000);

    const second = await startServer({ stateDir: state, port: first.port });
    servers.push(second);
    const c2 = second.client();
    let done;
    try {
      done = await waitEnd(c2, id, "SUCCEEDED", 120_000);
    } finally {
      c2.close();
    }

    const s = await statusJson(id, { env: { CLIPFLEET_SERVER: second.address } });
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.steps, 40);
    const stage = s.job.stages[0]!;
    assert.deepEqual(
      stage.attempts.map((a) => [a.number, a.outcome, a.resumedFromStep]),
      [
        [1, "lost", 0],
        [2, "succeeded", lastCommitted],
      ],
      "attempt 2 resumed from the last checkpoint the crashed server committed",
    );
    assert.equal(stage.attempts[0]!.reason, "orchestrator restarted");
    // The stage's own story after the crash, in order.
    const mainStates = s.job.recentEvents.filter((e) => e.stage === "main" && e.type === "state");
    const afterCrash = mainStates.slice(mainStates.findIndex((e) => stateName(e.state) === "RESTARTING"));
    assert.deepEqual(
      afterCrash.map((e) => stateName(e.state)),
      ["RESTARTING", "STARTING", "RUNNING", "SUCCEEDED"],
    );
    assert.equal(afterCrash[0]!.reason, "orchestrator restarted: attempt 1 lost");
    assert.match(afterCrash[1]!.reason, new RegExp(`^attempt 2: 2 rank\\(s\\) on .*, resuming from step ${lastCommitted}$`));
    const seqs = s.job.recentEvents.map((e) => e.seq);
    assert.ok(seqs.every((q, i) => i === 0 || q === seqs[i - 1]! + 1), `event seqs continue across the crash: ${seqs.join(",")}`);

    // No worker of either server is left; the second attempt's workers are different processes.
    const secondPids = done.stages[0]!.attempts[1]!.ranks.map((r) => r.pid);
    assert.equal(secondPids.filter((p) => firstPids.includes(p)).length, 0);
    for (const pid of attemptPids(done)) assert.equal(alive(pid), false, `worker ${pid} is still alive`);
  });
});
