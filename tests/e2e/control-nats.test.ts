/**
 * The server with a real nats-server (JetStream): `--nats` publishes every
 * event of a job on clipfleet.jobs.<id>.events, where an outside subscriber
 * sees every state transition in order (the same seq/state sequence the job
 * record keeps), as JSON with a schema version; `--store nats://` keeps the
 * job record in JetStream KV, where a new server (with an empty state dir)
 * finds it after a restart; `delete` removes it from the bucket.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection } from "nats";
import { natsSkipReason, startNatsServer, type NatsServer } from "../../orchestrator/test/helpers/nats.js";
import { alive, runCli, startServer, tempDir, waitFor, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { attemptPids, stateName, statusJson, waitEnd } from "./control-helpers.js";

/** An event as it travels on NATS (the domain JobEvent as JSON). */
interface WireEvent {
  schemaVersion: number;
  seq: number;
  jobId: string;
  stage: string;
  type: string;
  state: string;
  reason: string;
  tsMs: number;
  attempt: number;
  data: Record<string, unknown>;
}

void describe("clipfleet server with NATS events and a JetStream KV store", { skip: natsSkipReason() }, () => {
  const tmp = tempDir("clipfleet-nats-");
  let nats: NatsServer;
  let outside: NatsConnection;
  const received: { subject: string; event: WireEvent }[] = [];
  const servers: ServerHandle[] = [];

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
    // An outside subscriber, there before any job exists: every job's events.
    outside = await connect({ servers: nats.url, name: "test-subscriber" });
    const sub = outside.subscribe("clipfleet.jobs.*.events");
    void (async () => {
      for await (const m of sub) received.push({ subject: m.subject, event: JSON.parse(new TextDecoder().decode(m.data)) as WireEvent });
    })();
    await outside.flush();
  });
  after(async () => {
    for (const s of servers) await s.stop();
    await outside.drain();
    await nats.stop();
    tmp.cleanup();
  });

  void it("an outside subscriber sees every transition of a job in order; the record survives a server restart in KV", { timeout: 180_000 }, async () => {
    const args = ["--store", nats.url, "--nats", nats.url];
    const first = await startServer({ stateDir: join(tmp.dir, "state-1"), args });
    servers.push(first);
    const client = first.client();
    const info = await client.serverInfo();
    client.close();
    assert.match(info.store, /nats/i, `ServerInfo.store: ${info.store}`);
    assert.equal(info.events, nats.url);

    const spec = writeTinySpec(tmp.dir, { name: "over-nats", steps: 12, batch: 16, everySteps: 6 });
    const sub = await runCli(["submit", spec, "--server", first.address]);
    assert.equal(sub.code, 0, sub.stderr);
    const id = sub.stdout.trim();
    const c1 = first.client();
    const done = await waitEnd(c1, id, "SUCCEEDED").finally(() => c1.close());

    const s = await statusJson(id, { args: ["--server", first.address] });
    const recorded = s.job.recentEvents;
    const lastSeq = recorded.at(-1)!.seq;
    await waitFor("the last event on NATS", () => received.some((r) => r.event.jobId === id && r.event.seq === lastSeq), 10_000);

    const mine = received.filter((r) => r.event.jobId === id);
    for (const r of mine) {
      assert.equal(r.subject, `clipfleet.jobs.${id}.events`);
      assert.equal(r.event.schemaVersion, 1);
      assert.equal(typeof r.event.tsMs, "number");
    }
    // Persisted events (seq > 0 or the submit event): exactly the record's, same order, nothing missing or extra.
    const persisted = mine.filter((r) => r.event.type !== "step").map((r) => r.event);
    assert.deepEqual(
      persisted.map((e) => [e.seq, e.stage, e.type, e.state, e.reason]),
      recorded.map((e) => [e.seq, e.stage, e.type, stateName(e.state), e.reason]),
    );
    // Every state transition, in order, from PENDING to SUCCEEDED.
    const jobStates = persisted.filter((e) => e.type === "state" && e.stage === "").map((e) => e.state);
    assert.deepEqual(jobStates, ["PENDING", "STARTING", "RUNNING", "SUCCEEDED"]);
    const stageStates = persisted.filter((e) => e.type === "state" && e.stage === "main").map((e) => [e.data.from, e.state]);
    assert.deepEqual(stageStates, [
      ["PENDING", "STARTING"],
      ["STARTING", "RUNNING"],
      ["RUNNING", "SUCCEEDED"],
    ]);
    assert.deepEqual(
      persisted.filter((e) => e.type === "checkpoint").map((e) => e.data.step),
      [6, 12],
    );
    // Live progress travels too (not persisted: seq 0).
    const steps = mine.filter((r) => r.event.type === "step").map((r) => r.event);
    assert.ok(steps.length > 0, "no step events on NATS");
    assert.equal(steps.at(-1)!.data.step, 12);
    assert.ok(steps.every((e) => e.seq === 0));

    // Restart on a fresh state dir, same KV store: the record is there.
    const r = await first.stop();
    assert.equal(r.code, 0, r.stderr);
    const second = await startServer({ stateDir: join(tmp.dir, "state-2"), args });
    servers.push(second);
    assert.equal(existsSync(join(tmp.dir, "state-2", "jobs", id, "job.json")), false, "the record is not on disk");
    const again = await statusJson(id, { env: { CLIPFLEET_SERVER: second.address } });
    assert.equal(again.state, "SUCCEEDED");
    assert.equal(again.steps, 12);
    assert.deepEqual(again.job.recentEvents.map((e) => e.seq), recorded.map((e) => e.seq));
    assert.deepEqual(again.checkpoints.map((c) => c.step), [6, 12]);
    const list = await runCli(["list", "--json", "--server", second.address]);
    assert.deepEqual((JSON.parse(list.stdout) as { jobId: string; state: string }[]).map((j) => [j.jobId, j.state]), [[id, "SUCCEEDED"]]);
    for (const pid of attemptPids(done)) assert.equal(alive(pid), false);

    // delete through the second server: the record leaves the KV bucket, the checkpoints the first server wrote go too.
    assert.ok(existsSync(join(tmp.dir, "state-1", "checkpoints", id, "main")));
    const del = await runCli(["delete", id, "--json", "--server", second.address]);
    assert.equal(del.code, 0, del.stderr);
    assert.equal((JSON.parse(del.stdout) as { deleted: string }).deleted, id);
    assert.equal(existsSync(join(tmp.dir, "state-1", "checkpoints", id)), false, "the job's checkpoints, under the first server's state dir, are gone");
    const third = await startServer({ stateDir: join(tmp.dir, "state-3"), args });
    servers.push(third);
    const none = await runCli(["list", "--json", "--server", third.address]);
    assert.deepEqual(JSON.parse(none.stdout), [], "a new server on the same KV bucket finds no job");
  });
});
