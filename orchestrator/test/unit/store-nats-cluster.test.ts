/**
 * deploy/nats: the three cluster configs pass `nats-server -t`, and, started
 * on this machine (ports, hosts and store dirs rewritten, nothing else), form
 * a JetStream cluster on which a 3-replica job store keeps working when the
 * server it is connected to, the stream's leader, is killed.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { connect } from "nats";
import { RECORD_SCHEMA_VERSION, type JobRecord } from "../../src/domain/index.js";
import { NatsKvJobStore, openStore } from "../../src/store/index.js";
import { natsServerBinary, natsSkipReason, startNatsServer, type NatsServer } from "../helpers/nats.js";

const DEPLOY = fileURLToPath(new URL("../../../../deploy/nats/", import.meta.url));
const CONFIGS = [1, 2, 3].map((i) => path.join(DEPLOY, `nats-${i}.conf`));

function job(id: string, note: string): JobRecord {
  return {
    schemaVersion: RECORD_SCHEMA_VERSION,
    id,
    name: id,
    state: "RUNNING",
    reason: note,
    pendingReason: "",
    createdAtMs: 1,
    updatedAtMs: 1,
    priority: 0,
    spec: { name: id, priority: 0, stages: [], base_dir: "/", config_sha256: "" },
    nextAttempt: 1,
    stages: [],
    nextEventSeq: 1,
    recentEvents: [],
    cancelRequested: null,
  };
}

/** Distinct ports free right now (bound together, then released). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => {
      const s = createServer();
      return new Promise<typeof s>((resolve) => s.listen(0, "127.0.0.1", () => resolve(s)));
    }),
  );
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Replaces `from` (which must occur exactly `times` times) so config drift fails loudly. */
function rewrite(text: string, from: string, to: string, times = 1): string {
  const parts = text.split(from);
  assert.equal(parts.length - 1, times, `expected ${times} x ${JSON.stringify(from)} in the config`);
  return parts.join(to);
}

void describe("deploy/nats cluster configs", { skip: natsSkipReason() }, () => {
  void it("pass `nats-server -t`", async () => {
    const bin = natsServerBinary() ?? "nats-server";
    for (const file of CONFIGS) {
      assert.ok(existsSync(file), `${file} is missing`);
      const { stderr } = await promisify(execFile)(bin, ["-t", "-c", file]);
      assert.match(stderr, /is valid/, file);
    }
  });

  void describe("a cluster from them", () => {
    let dir: string;
    let servers: NatsServer[] = [];

    before(async () => {
      dir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-cluster-"));
      const routePorts = await freePorts(3);
      servers = await Promise.all(
        CONFIGS.map((file, i) => {
          let conf = readFileSync(file, "utf8");
          conf = rewrite(conf, "listen: 0.0.0.0:4222", "listen: 127.0.0.1:-1");
          conf = rewrite(conf, "http: 0.0.0.0:8222", "http: 127.0.0.1:-1");
          conf = rewrite(conf, "store_dir: /var/lib/nats", `store_dir: ${JSON.stringify(path.join(dir, `store-${i + 1}`))}`);
          conf = rewrite(conf, "listen: 0.0.0.0:6222", `listen: 127.0.0.1:${routePorts[i]}`);
          for (const [k, port] of routePorts.entries()) {
            conf = rewrite(conf, `nats-route://nats-${k + 1}:6222`, `nats-route://127.0.0.1:${port}`);
          }
          const local = path.join(dir, `nats-${i + 1}.conf`);
          writeFileSync(local, conf);
          return startNatsServer({ args: ["-c", local] });
        }),
      );
      // The cluster is usable once its servers have elected a JetStream meta leader.
      await Promise.race(servers.map((s) => s.waitForLog(/metadata leader/, 15_000)));
    });
    after(async () => {
      await Promise.all(servers.map((s) => s.stop()));
      rmSync(dir, { recursive: true, force: true });
    });

    void it("hosts a 3-replica job store that survives the loss of the stream leader and its server", async () => {
      // As the README says: clipfleet creates the bucket with 3 replicas on first start.
      const created = await openStore(`${servers[0]?.url}?replicas=3`, "/nonexistent");
      assert.match(created.describe(), / bucket=clipfleet-jobs replicas=3$/);
      await created.close();

      const nc = await connect({ servers: servers[0]?.url });
      const info = await (await nc.jetstreamManager()).streams.info("KV_clipfleet-jobs");
      await nc.close();
      assert.equal(info.cluster?.replicas?.length, 2, "two followers next to the leader");
      const leader = servers[Number(/^nats-(\d)$/.exec(info.cluster?.leader ?? "")?.[1]) - 1];
      assert.ok(leader, `leader ${info.cluster?.leader} is one of ours`);

      // Connected to the leader only: the client must find the other servers by itself.
      const store = await NatsKvJobStore.open(leader.url, { timeoutMs: 2000 });
      try {
        const r1 = await store.put(job("j-1", "before"), 0);
        await leader.kill9();
        // Until a new stream leader is elected (seconds) puts fail with UNAVAILABLE;
        // repeating the same put is safe (see JobStore.put).
        let r2 = 0;
        for (let attempt = 1; r2 === 0; attempt++) {
          try {
            r2 = await store.put(job("j-1", "after"), r1);
          } catch (err) {
            if ((err as { code?: string }).code !== "UNAVAILABLE" || attempt >= 15) throw err;
          }
        }
        assert.deepEqual(await store.get("j-1"), { job: job("j-1", "after"), revision: r2 });
      } finally {
        await store.close();
      }
    });
  });
});
