/**
 * SIGTERM of a server leaves no rank behind, with the NATS KV store as with
 * the file store: the shutdown stops scheduling (a launch in flight starts no
 * further rank), closes the ports, kills the ranks, lets the last writes land
 * and only then closes the bus and the store, so nothing is published on a
 * closed bus ("event bus used after close" never shows on stderr). Injected
 * for real: a server process, a real job, a real signal; every process whose
 * environment names the job is looked for afterwards, recorded or not.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection } from "nats";
import { natsSkipReason, startNatsServer, type NatsServer } from "../../orchestrator/test/helpers/nats.js";
import { alive, runCli, startServer, tempDir, waitFor, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { attemptPids, rankPidsOf, stateName, waitJob } from "./control-helpers.js";

void describe("SIGTERM of a server while a job runs", { skip: natsSkipReason() }, () => {
  const tmp = tempDir("clipfleet-shutdown-");
  let nats: NatsServer;
  let outside: NatsConnection;
  const servers: ServerHandle[] = [];

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
    outside = await connect({ servers: nats.url, name: "test-subscriber" });
  });
  after(async () => {
    for (const s of servers) await s.stop();
    await outside.close();
    await nats.stop();
    tmp.cleanup();
  });

  /** A server on `store` (events on NATS too). */
  async function serverOn(name: string, store: string): Promise<ServerHandle> {
    const server = await startServer({ stateDir: join(tmp.dir, name), args: ["--store", store, "--nats", nats.url] });
    servers.push(server);
    return server;
  }

  /** Submits a long job (checkpoints every 3 steps); returns its id. */
  async function submitLong(server: ServerHandle, name: string): Promise<string> {
    const spec = writeTinySpec(tmp.dir, { name, steps: 5000, batch: 16, everySteps: 3 });
    const sub = await runCli(["submit", spec, "--server", server.address]);
    assert.equal(sub.code, 0, sub.stderr);
    return sub.stdout.trim();
  }

  /** SIGTERM, exit 0, nothing of the job alive, no use of a closed bus or store on stderr. */
  async function stopAndCheck(server: ServerHandle, id: string, recorded: number[]): Promise<void> {
    const r = await server.stop(60_000);
    assert.equal(r.code, 0, `server exit ${r.code ?? r.signal}:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /used after close|internal error|scheduling pass failed/, r.stderr);
    for (const pid of recorded) assert.equal(alive(pid), false, `rank pid ${pid} survived the server`);
    assert.deepEqual(rankPidsOf(id), [], "a process of the job survived the server");
  }

  for (const kind of ["nats", "file"] as const) {
    void it(`with the ${kind} store: every rank of a training job is gone once the server has exited`, { timeout: 180_000 }, async () => {
      const server = await serverOn(`running-${kind}`, kind === "nats" ? `${nats.url}?bucket=shutdown-${kind}` : "file");
      const id = await submitLong(server, `running-${kind}`);
      const c = server.client();
      // Training, with checkpoints being committed (writes in flight when the signal lands).
      const j = await waitJob(c, id, "training past a checkpoint", (x) => stateName(x.state) === "RUNNING" && (x.stages[0]?.progress?.step ?? 0) >= 4).finally(() => c.close());
      const pids = attemptPids(j);
      assert.equal(pids.length, 2, "two ranks recorded");
      assert.ok(pids.every(alive));
      await stopAndCheck(server, id, pids);
    });
  }

  void it("with the NATS store: a SIGTERM while the ranks are being launched starts none after the launchers closed", { timeout: 180_000 }, async () => {
    let server: ServerHandle | null = null;
    let signalled = false;
    // The moment STARTING is persisted, the launch is between its store writes and its first rank.
    const sub = outside.subscribe("clipfleet.jobs.*.events", {
      callback: (_err, m) => {
        const e = JSON.parse(new TextDecoder().decode(m.data)) as { type: string; state: string };
        if (!signalled && server !== null && e.type === "state" && e.state === "STARTING") {
          signalled = true;
          server.child.kill("SIGTERM");
        }
      },
    });
    await outside.flush();
    try {
      const s = await serverOn("launching-nats", `${nats.url}?bucket=shutdown-launch`);
      server = s;
      const id = await submitLong(s, "launching-nats");
      await waitFor("the STARTING event", () => signalled, 60_000, 20);
      // One signal only: a second SIGTERM during the shutdown kills the server outright (as a second Ctrl-C does).
      await waitFor("the server to exit", () => s.child.exitCode !== null || s.child.signalCode !== null, 60_000);
      await stopAndCheck(s, id, []);
    } finally {
      sub.unsubscribe();
    }
  });
});
