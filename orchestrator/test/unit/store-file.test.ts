/** FileJobStore: records, compare-and-set, crash leftovers, schema versions, the state-dir lock. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { RECORD_SCHEMA_VERSION, type JobRecord } from "../../src/domain/index.js";
import {
  FileJobStore,
  LOCK_FILE,
  openStore,
  RevisionConflictError,
  StateDirLock,
  type JobStore,
} from "../../src/store/index.js";
import { processStartTicks } from "../../src/store/lock.js";

/** A minimal but complete record; `note` varies the content between versions. */
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

void describe("FileJobStore", () => {
  let dir: string;
  let store: FileJobStore;

  beforeEach(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-store-"));
    store = await FileJobStore.open(dir);
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it("puts, gets, lists in id order and deletes", async () => {
    assert.equal(await store.get("j-1"), null);
    assert.equal(await store.put(job("j-2")), 1);
    assert.equal(await store.put(job("j-1")), 1);
    assert.equal(await store.put(job("j-1", "second")), 2);
    assert.deepEqual(await store.get("j-1"), { job: job("j-1", "second"), revision: 2 });
    assert.deepEqual(
      (await store.list()).map((j) => j.id),
      ["j-1", "j-2"],
    );
    await store.delete("j-1");
    await store.delete("j-1"); // deleting a missing job is fine
    assert.equal(await store.get("j-1"), null);
    assert.deepEqual(
      (await store.list()).map((j) => j.id),
      ["j-2"],
    );
    assert.deepEqual(readdirSync(path.join(dir, "jobs")), ["j-2"]);
    assert.match(store.describe(), /^file:.*jobs$/);
  });

  void it("keeps records private to the owner (they hold worker tokens)", async () => {
    await store.put(job("j-1"));
    const mode = statSync(path.join(dir, "jobs", "j-1", "job.json")).mode & 0o777;
    assert.equal(mode, 0o600);
  });

  void it("refuses a stale or unexpected revision and writes nothing", async () => {
    assert.equal(await store.put(job("j-1"), 0), 1);
    await assert.rejects(store.put(job("j-1", "lost"), 0), (err: unknown) => {
      assert.ok(err instanceof RevisionConflictError);
      assert.equal(err.code, "FAILED_PRECONDITION");
      assert.equal(err.actualRevision, 1);
      assert.match(err.message, /job j-1: write expected no record but the store has revision 1/);
      return true;
    });
    assert.equal(await store.put(job("j-1", "b"), 1), 2);
    await assert.rejects(store.put(job("j-1", "lost"), 1), /expected revision 1 but the store has revision 2/);
    await assert.rejects(store.put(job("j-9"), 3), /expected revision 3 but the store has no record/);
    assert.deepEqual(await store.get("j-1"), { job: job("j-1", "b"), revision: 2 });
    assert.equal(await store.get("j-9"), null);
  });

  void it("treats a repeated put that already landed as success", async () => {
    assert.equal(await store.put(job("j-1"), 0), 1);
    assert.equal(await store.put(job("j-1"), 0), 1);
    assert.equal(await store.put(job("j-1", "b"), 1), 2);
    assert.equal(await store.put(job("j-1", "b"), 1), 2);
    await assert.rejects(store.put(job("j-1", "c"), 1), RevisionConflictError);
  });

  void it("serialises concurrent compare-and-set writes of one job: exactly one wins", async () => {
    await store.put(job("j-1"));
    const results = await Promise.allSettled([1, 2, 3, 4].map((n) => store.put(job("j-1", `w${n}`), 1)));
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    assert.equal(results.filter((r) => r.status === "rejected").length, 3);
    assert.equal((await store.get("j-1"))?.revision, 2);
  });

  void it("ignores temp files left by a crash and sweeps them on open", async () => {
    await store.put(job("j-1"));
    const jobDir = path.join(dir, "jobs", "j-1");
    writeFileSync(path.join(jobDir, ".job.json.999-1.tmp"), '{"revision":7,"job":{"torn');
    mkdirSync(path.join(dir, "jobs", "j-2")); // crashed before its first rename
    writeFileSync(path.join(dir, "jobs", "j-2", ".job.json.999-2.tmp"), "{");
    assert.deepEqual(await store.get("j-1"), { job: job("j-1"), revision: 1 });
    assert.equal(await store.get("j-2"), null);
    assert.deepEqual(
      (await store.list()).map((j) => j.id),
      ["j-1"],
    );
    await store.close();
    store = await FileJobStore.open(dir);
    assert.deepEqual(readdirSync(jobDir), ["job.json"]);
    assert.deepEqual(readdirSync(path.join(dir, "jobs", "j-2")), []);
    assert.equal(await store.put(job("j-2"), 0), 1);
  });

  void it("keeps revisions across reopening", async () => {
    await store.put(job("j-1"));
    await store.put(job("j-1", "x"));
    await store.close();
    store = await FileJobStore.open(dir);
    await assert.rejects(store.put(job("j-1"), 1), RevisionConflictError);
    assert.equal(await store.put(job("j-1", "y"), 2), 3);
  });

  void it("refuses a record written by a newer clipfleet, naming the file", async () => {
    const newer = { ...job("j-1"), schemaVersion: RECORD_SCHEMA_VERSION + 1 };
    mkdirSync(path.join(dir, "jobs", "j-1"));
    const file = path.join(dir, "jobs", "j-1", "job.json");
    writeFileSync(file, JSON.stringify({ revision: 1, job: newer }));
    await assert.rejects(store.get("j-1"), (err: unknown) => {
      assert.equal((err as { code?: string }).code, "FAILED_PRECONDITION");
      assert.ok((err as Error).message.includes(file));
      assert.match((err as Error).message, /schemaVersion 2 is newer .* upgrade clipfleet/);
      return true;
    });
    await assert.rejects(store.list(), /newer than this clipfleet supports/);
  });

  void it("names the file of a corrupt record", async () => {
    mkdirSync(path.join(dir, "jobs", "j-1"));
    writeFileSync(path.join(dir, "jobs", "j-1", "job.json"), "{not json");
    await assert.rejects(store.get("j-1"), /jobs\/j-1\/job\.json: corrupt job record: not valid JSON/);
    mkdirSync(path.join(dir, "jobs", "j-2"));
    writeFileSync(path.join(dir, "jobs", "j-2", "job.json"), JSON.stringify({ revision: 1, job: job("j-3") }));
    await assert.rejects(store.get("j-2"), /holds job "j-3", expected j-2/);
  });

  void it("refuses ids that would escape the jobs directory", async () => {
    await assert.rejects(store.put(job("../x")), { code: "INVALID_ARGUMENT" });
    await assert.rejects(store.get("a/b"), /job id "a\/b" is not a valid id/);
  });

  void it("refuses a second store on the same state dir, naming the holder", async () => {
    await assert.rejects(FileJobStore.open(dir), (err: unknown) => {
      assert.equal((err as { code?: string }).code, "FAILED_PRECONDITION");
      assert.match((err as Error).message, /state dir .* is in use by another orchestrator \(this process on /);
      return true;
    });
    // After close the directory is free again.
    await store.close();
    store = await FileJobStore.open(dir);
  });

  void it("refuses a lock held by another live process", async () => {
    await store.close();
    const holder = process.ppid; // alive for the whole test
    writeFileSync(
      path.join(dir, LOCK_FILE),
      JSON.stringify({
        pid: holder,
        startTicks: processStartTicks(holder),
        bootId: readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim(),
        hostname: os.hostname(),
        startedAtMs: Date.now(),
        nonce: "other",
      }),
    );
    await assert.rejects(FileJobStore.open(dir), new RegExp(`in use by another orchestrator \\(pid ${holder} on `));
    rmSync(path.join(dir, LOCK_FILE));
    store = await FileJobStore.open(dir);
  });

  void it("takes over a lock whose process is dead or whose pid was reused", async () => {
    await store.close();
    const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
    const deadPid = child.pid ?? -1;
    await new Promise((resolve) => child.once("exit", resolve));
    const lockFile = path.join(dir, LOCK_FILE);
    const base = { hostname: os.hostname(), bootId: null, startedAtMs: 1, nonce: "stale" };
    writeFileSync(lockFile, JSON.stringify({ ...base, pid: deadPid, startTicks: 1 }));
    store = await FileJobStore.open(dir);
    assert.equal((JSON.parse(readFileSync(lockFile, "utf8")) as { pid: number }).pid, process.pid);
    await store.close();
    // Our own pid, but another start time: a previous incarnation (a restarted container).
    writeFileSync(lockFile, JSON.stringify({ ...base, pid: process.pid, startTicks: 1 }));
    store = await FileJobStore.open(dir);
    await store.close();
    // A different boot: nothing of it can be alive.
    writeFileSync(lockFile, JSON.stringify({ ...base, pid: process.ppid, startTicks: null, bootId: "old-boot" }));
    store = await FileJobStore.open(dir);
  });

  void it("releases only its own lock", async () => {
    const lock = await StateDirLock.acquire(mkdtempSync(path.join(dir, "other-")));
    writeFileSync(lock.file, JSON.stringify({ ...lock.holder, nonce: "someone-else" }));
    await lock.release();
    assert.match(readFileSync(lock.file, "utf8"), /someone-else/);
  });
});

void describe("openStore", () => {
  void it("opens the file store by default and refuses unknown specs", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-store-"));
    try {
      for (const spec of ["", "file"]) {
        const store: JobStore = await openStore(spec, dir);
        assert.ok(store instanceof FileJobStore);
        await store.close();
      }
      await assert.rejects(openStore("redis://x", dir), {
        code: "INVALID_ARGUMENT",
        message: '--store: expected "file", nats://HOST:PORT or tls://HOST:PORT, got "redis://x"',
      });
      await assert.rejects(openStore("nats://127.0.0.1:1?replicas=2x", dir), /--store: replicas must be an integer/);
      await assert.rejects(openStore("nats://127.0.0.1:1?bucket=a.b", dir), /--store: bucket must be/);
      await assert.rejects(openStore("nats://127.0.0.1:1?colour=red", dir), /unknown parameter "colour"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
