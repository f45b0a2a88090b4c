/** NatsKvJobStore against a real `nats-server -js`: records, compare-and-set, errors, a server crash. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect } from "nats";
import { RECORD_SCHEMA_VERSION, type JobRecord } from "../../src/domain/index.js";
import { NatsKvJobStore, openStore, RevisionConflictError } from "../../src/store/index.js";
import { natsSkipReason, startNatsServer, type NatsServer } from "../helpers/nats.js";

function job(id: string, note = ""): JobRecord {
  return {
    schemaVersion: RECORD_SCHEMA_VERSION,
    id,
    name: `name-${id}`,
    state: "PENDING",
    reason: note,
    pendingReason: "",
    createdAtMs: 1_700_000_000_000,
    updatedAtMs: 1_700_000_000_000,
    priority: 0,
    spec: { name: `name-${id}`, priority: 0, stages: [], base_dir: "/tmp", config_sha256: "0".repeat(64) },
    nextAttempt: 1,
    stages: [],
    nextEventSeq: 1,
    recentEvents: [],
    cancelRequested: null,
  };
}

void describe("NatsKvJobStore", { skip: natsSkipReason() }, () => {
  let nats: NatsServer;
  let bucketN = 0;
  /** A store on a fresh bucket, so tests do not see each other's jobs. */
  const freshStore = () => NatsKvJobStore.open(nats.url, { bucket: `t${++bucketN}` });

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
  });
  after(() => nats.stop());

  void it("puts, gets, lists in id order and deletes", async () => {
    const store = await freshStore();
    try {
      assert.equal(await store.get("j-1"), null);
      const r2 = await store.put(job("j-2"));
      const r1 = await store.put(job("j-1"));
      const r1b = await store.put(job("j-1", "second"));
      assert.ok(r1 > r2 && r1b > r1, `revisions ${r2}, ${r1}, ${r1b} increase`);
      assert.deepEqual(await store.get("j-1"), { job: job("j-1", "second"), revision: r1b });
      assert.deepEqual(
        (await store.list()).map((j) => j.id),
        ["j-1", "j-2"],
      );
      await store.delete("j-1");
      await store.delete("j-404");
      assert.equal(await store.get("j-1"), null);
      assert.deepEqual(
        (await store.list()).map((j) => j.id),
        ["j-2"],
      );
      assert.equal(store.describe(), `nats-kv:${nats.url} bucket=t${bucketN} replicas=1`);
    } finally {
      await store.close();
    }
  });

  void it("refuses a stale or unexpected revision and writes nothing", async () => {
    const store = await freshStore();
    try {
      const r1 = await store.put(job("j-1"), 0);
      await assert.rejects(store.put(job("j-1", "lost"), 0), (err: unknown) => {
        assert.ok(err instanceof RevisionConflictError);
        assert.equal(err.code, "FAILED_PRECONDITION");
        assert.equal(err.actualRevision, r1);
        assert.match(err.message, /^job j-1: write expected no record but the store has revision \d+/);
        return true;
      });
      const r2 = await store.put(job("j-1", "b"), r1);
      await assert.rejects(store.put(job("j-1", "lost"), r1), new RegExp(`expected revision ${r1} but the store has revision ${r2}`));
      assert.deepEqual(await store.get("j-1"), { job: job("j-1", "b"), revision: r2 });
      // A deleted job can be created again with "must not exist".
      await store.delete("j-1");
      await assert.rejects(store.put(job("j-1"), r2), RevisionConflictError);
      const r3 = await store.put(job("j-1", "again"), 0);
      assert.deepEqual(await store.get("j-1"), { job: job("j-1", "again"), revision: r3 });
    } finally {
      await store.close();
    }
  });

  void it("treats a repeated put that already landed as success (retry after UNAVAILABLE)", async () => {
    const store = await freshStore();
    try {
      const r1 = await store.put(job("j-1"), 0);
      assert.equal(await store.put(job("j-1"), 0), r1);
      const r2 = await store.put(job("j-1", "b"), r1);
      assert.equal(await store.put(job("j-1", "b"), r1), r2);
      await assert.rejects(store.put(job("j-1", "c"), r1), RevisionConflictError);
    } finally {
      await store.close();
    }
  });

  void it("keeps two orchestrators on one bucket from overwriting each other", async () => {
    const a = await freshStore();
    const b = await NatsKvJobStore.open(nats.url, { bucket: `t${bucketN}` });
    try {
      const r1 = await a.put(job("j-1"), 0);
      const seenByB = await b.get("j-1");
      assert.equal(seenByB?.revision, r1);
      await b.put(job("j-1", "by b"), r1);
      await assert.rejects(a.put(job("j-1", "by a"), r1), RevisionConflictError);
      assert.equal((await a.get("j-1"))?.job.reason, "by b");
    } finally {
      await a.close();
      await b.close();
    }
  });

  void it("refuses a record written by a newer clipfleet, naming the key", async () => {
    const store = await freshStore();
    const nc = await connect({ servers: nats.url });
    try {
      const kv = await nc.jetstream().views.kv(`t${bucketN}`);
      const newer = { ...job("j-1"), schemaVersion: RECORD_SCHEMA_VERSION + 1 };
      await kv.put("jobs.j-1", JSON.stringify(newer));
      await assert.rejects(store.get("j-1"), {
        code: "FAILED_PRECONDITION",
        message: `NATS KV t${bucketN} key jobs.j-1: record schemaVersion 2 is newer than this clipfleet supports (1); upgrade clipfleet to read it`,
      });
    } finally {
      await nc.close();
      await store.close();
    }
  });

  void it("says UNAVAILABLE, naming the URL, when NATS cannot be reached", async () => {
    const down = await startNatsServer({ jetstream: true });
    const url = down.url;
    await down.stop();
    await assert.rejects(NatsKvJobStore.open(url), (err: unknown) => {
      assert.equal((err as { code?: string }).code, "UNAVAILABLE");
      assert.ok((err as Error).message.startsWith(`job store: cannot connect to NATS at ${url}: `));
      return true;
    });
  });

  void it("says what to do when the server has no JetStream", async () => {
    const plain = await startNatsServer({ jetstream: false });
    try {
      await assert.rejects(NatsKvJobStore.open(plain.url), {
        code: "ENVIRONMENT",
        message: `job store: NATS at ${plain.url} has no JetStream; start nats-server with -js (see deploy/nats/README.md)`,
      });
    } finally {
      await plain.stop();
    }
  });

  void it("opens from a --store spec with bucket options", async () => {
    const store = await openStore(`${nats.url}?bucket=from-spec&history=3`, "/nonexistent");
    const nc = await connect({ servers: nats.url });
    try {
      assert.ok(store instanceof NatsKvJobStore);
      assert.equal(store.bucket, "from-spec");
      const status = await (await nc.jetstream().views.kv("from-spec", { bindOnly: true })).status();
      assert.equal(status.history, 3);
    } finally {
      await nc.close();
      await store.close();
    }
  });

  void it("keeps records through a nats-server SIGKILL and reconnects", async () => {
    const own = await startNatsServer({ jetstream: true });
    let restarted: NatsServer | null = null;
    const store = await NatsKvJobStore.open(own.url);
    try {
      const r1 = await store.put(job("j-1", "before crash"), 0);
      await own.kill9();
      restarted = await startNatsServer({ jetstream: true, port: own.port, storeDir: own.storeDir ?? "" });
      // The same store object: requests wait for the client's reconnect.
      assert.deepEqual(await store.get("j-1"), { job: job("j-1", "before crash"), revision: r1 });
      await store.put(job("j-1", "after"), r1);
    } finally {
      await store.close();
      await restarted?.stop();
      await own.stop();
    }
  });
});
