/**
 * The ledger (jobs/ledger.ts): every mutation is persisted before its events
 * are published, a failed write publishes nothing and changes nothing, and
 * concurrent mutations of one job are serialised (each sees the previous
 * one's result; writes never overlap) while other jobs are not held up.
 * In-memory fakes for the store and the bus, a fake clock, no sleeps.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { FailedPreconditionError, type Clock, type JobEvent, type JobRecord } from "../../src/domain/index.js";
import type { EventBus, Unsubscribe } from "../../src/events/index.js";
import { JobLedger, newJobRecord } from "../../src/jobs/index.js";
import { loadPresets, parseSpec } from "../../src/spec/index.js";
import { gate, MemoryStore } from "../helpers/memory-store.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));
const T0 = 1_790_000_000_000;

class FakeClock implements Clock {
  constructor(public ms: number) {}
  now(): number {
    return this.ms;
  }
}

/** Lets queued microtasks and immediate callbacks run (no timers, no sleeps). */
function settle(rounds = 5): Promise<void> {
  let p = Promise.resolve();
  for (let i = 0; i < rounds; i++) p = p.then(() => new Promise<void>((r) => setImmediate(r)));
  return p;
}


/** What the bus saw, and what the store held at that moment. */
interface Published {
  event: JobEvent;
  /** The stored record already included this event (its nextEventSeq is past the event's seq). */
  persisted: boolean;
  /** The stored state of the job at publish time. */
  storedState: string | null;
}

class RecordingBus implements EventBus {
  readonly published: Published[] = [];
  constructor(private readonly store: MemoryStore) {}
  publish(event: JobEvent): Promise<void> {
    // Synchronous look at the store: exactly what a subscriber acting on the event would find.
    const stored = this.store.records.get(event.jobId)?.job ?? null;
    const persisted = stored !== null && stored.nextEventSeq > event.seq && stored.recentEvents.some((e) => e.seq === event.seq);
    this.published.push({ event, persisted, storedState: stored?.state ?? null });
    return Promise.resolve();
  }
  subscribe(): Unsubscribe {
    return () => undefined;
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  describe(): string {
    return "recording";
  }
}

function job(id: string): { job: JobRecord; events: JobEvent[] } {
  const spec = parseSpec({ task: "pretrain", data: { train: "s/{00000..00001}.tar" }, train: { steps: 10, batch_size: 8 }, cluster: { workers: 2 } }, { specPath: "/s/j.yaml", baseDir: "/s", presets });
  const rec = newJobRecord(spec, id, T0);
  const event: JobEvent = { schemaVersion: 1, seq: 0, jobId: id, stage: "", type: "state", state: "PENDING", reason: "submitted", tsMs: T0, attempt: 0, rank: -1, data: {} };
  rec.recentEvents.push(event);
  rec.nextEventSeq = 1;
  return { job: rec, events: [event] };
}

function setup(): { store: MemoryStore; bus: RecordingBus; clock: FakeClock; ledger: JobLedger } {
  const store = new MemoryStore();
  const bus = new RecordingBus(store);
  const clock = new FakeClock(T0);
  return { store, bus, clock, ledger: new JobLedger(store, bus, clock) };
}

const A = "j-20260101-000000-aaaaaa";
const B = "j-20260101-000000-bbbbbb";

void describe("ledger: persist before publish", () => {
  void it("create, transition and note: each event is published only once the store holds the record that contains it", async () => {
    const { store, bus, clock, ledger } = setup();
    const j = job(A);
    await ledger.create(j.job, j.events);
    clock.ms = T0 + 1000;
    await ledger.transition(A, "main", "STARTING", "attempt 1: 2 rank(s)");
    clock.ms = T0 + 2000;
    await ledger.transition(A, "main", "RUNNING", "all 2 ranks connected");
    clock.ms = T0 + 3000;
    await ledger.note(A, "main", "checkpoint", "checkpoint committed at step 5", { data: { step: 5 } });
    clock.ms = T0 + 4000;
    await ledger.transition(A, "main", "SUCCEEDED", "finished 10 steps");

    assert.deepEqual(
      bus.published.map((p) => [p.event.seq, p.event.stage, p.event.type, p.event.state]),
      [
        [0, "", "state", "PENDING"],
        [1, "main", "state", "STARTING"],
        [2, "", "state", "STARTING"],
        [3, "main", "state", "RUNNING"],
        [4, "", "state", "RUNNING"],
        [5, "main", "checkpoint", "RUNNING"],
        [6, "main", "state", "SUCCEEDED"],
        [7, "", "state", "SUCCEEDED"],
      ],
    );
    for (const p of bus.published) assert.ok(p.persisted, `event ${p.event.seq} published before its record was stored`);
    // A watcher reacting to a state event finds at least that state in the store.
    for (const p of bus.published.filter((x) => x.event.type === "state" && x.event.stage === "")) assert.equal(p.storedState, p.event.state);
    assert.deepEqual(bus.published.map((p) => p.event.tsMs), [T0, T0 + 1000, T0 + 1000, T0 + 2000, T0 + 2000, T0 + 3000, T0 + 4000, T0 + 4000], "timestamps from the clock");
    assert.deepEqual(store.writes.map((w) => w.revision), [1, 2, 3, 4, 5]);
    assert.deepEqual(ledger.get(A), store.records.get(A)!.job, "the in-memory view equals the store");
  });

  void it("a failed write publishes nothing, changes nothing, and the next mutation still runs", async () => {
    const { store, bus, ledger } = setup();
    const j = job(A);
    await ledger.create(j.job, j.events);
    const before = structuredClone(ledger.get(A));
    store.failNext = new Error("disk full");
    await assert.rejects(ledger.transition(A, "main", "STARTING", "attempt 1"), /disk full/);
    assert.deepEqual(ledger.get(A), before);
    assert.equal(bus.published.length, 1, "only the submit event");
    const after = await ledger.transition(A, "main", "STARTING", "attempt 1");
    assert.equal(after.state, "STARTING");
    assert.deepEqual(bus.published.slice(1).map((p) => [p.event.seq, p.persisted]), [[1, true], [2, true]], "the seq of the lost write is reused: it was never seen");
  });

  void it("a refused transition (not in the table) writes and publishes nothing", async () => {
    const { store, bus, ledger } = setup();
    const j = job(A);
    await ledger.create(j.job, j.events);
    await assert.rejects(ledger.transition(A, "main", "SUCCEEDED", "too early"), FailedPreconditionError);
    assert.equal(store.writes.length, 1);
    assert.equal(bus.published.length, 1);
  });

  void it("update persists without publishing; apply returning null writes nothing", async () => {
    const { store, bus, ledger } = setup();
    const j = job(A);
    await ledger.create(j.job, j.events);
    await ledger.update(A, (r) => {
      r.pendingReason = "needs 2 slots, 0 free";
    });
    assert.equal(store.records.get(A)!.job.pendingReason, "needs 2 slots, 0 free");
    assert.equal(bus.published.length, 1);
    await ledger.apply(A, () => null);
    assert.equal(store.writes.length, 2);
  });

  void it("load reads every job back from the store, with its revision (the next write is a compare-and-set that succeeds)", async () => {
    const first = setup();
    for (const id of [B, A]) {
      const j = job(id);
      await first.ledger.create(j.job, j.events);
    }
    await first.ledger.transition(A, "main", "STARTING", "attempt 1");
    const second = new JobLedger(first.store, new RecordingBus(first.store), new FakeClock(T0 + 60_000));
    const loaded = await second.load();
    assert.deepEqual(loaded.map((x) => x.id).sort(), [A, B]);
    assert.equal(second.get(A).state, "STARTING");
    assert.deepEqual(second.list().map((x) => x.id), [A, B].sort(), "by creation time");
    await second.transition(A, "main", "RESTARTING", "orchestrator restarted");
    assert.equal(first.store.records.get(A)!.revision, 3);
    assert.throws(() => second.get("j-20260101-000000-cccccc"), /not found/);
  });
});

void describe("ledger: serialisation", () => {
  void it("concurrent mutations of one job run one at a time, in call order, each on the previous result", async () => {
    const { store, bus, ledger } = setup();
    const j = job(A);
    await ledger.create(j.job, j.events);
    await ledger.transition(A, "main", "STARTING", "attempt 1");
    await ledger.transition(A, "main", "RUNNING", "go");
    const n = 25;
    const calls: Promise<JobRecord>[] = [];
    for (let i = 0; i < n; i++) {
      calls.push(i % 5 === 4 ? ledger.update(A, (r) => {
            r.stages[0]!.progress.step = i;
          }) : ledger.note(A, "main", "checkpoint", `fact ${i}`, { data: { i } }));
    }
    const results = await Promise.all(calls);
    assert.equal(store.maxInFlightPerJob, 1, "two writes of one job overlapped");
    const facts = bus.published.filter((p) => p.event.type === "checkpoint");
    assert.deepEqual(facts.map((p) => p.event.data.i), Array.from({ length: n }, (_, i) => i).filter((i) => i % 5 !== 4), "call order");
    const seqs = bus.published.map((p) => p.event.seq);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i), "no seq lost or reused");
    assert.ok(bus.published.every((p) => p.persisted));
    // Each result saw every earlier mutation (revisions strictly increase by one).
    const revs = store.writes.map((w) => w.revision);
    assert.deepEqual(revs, Array.from({ length: revs.length }, (_, i) => i + 1));
    assert.equal(results.at(-1)!.nextEventSeq, ledger.get(A).nextEventSeq);
    assert.equal(ledger.get(A).stages[0]!.progress.step, 24);
  });

  void it("a held-back write of one job holds back that job only", async () => {
    const { store, ledger } = setup();
    for (const id of [A, B]) {
      const j = job(id);
      await ledger.create(j.job, j.events);
    }
    const g = gate();
    store.gates.set(A, g);
    let aDone = false;
    const aFirst = ledger.transition(A, "main", "STARTING", "attempt 1").then(() => (aDone = true));
    let aSecondRan = false;
    const aSecond = ledger.apply(A, (r) => {
      aSecondRan = true;
      assert.equal(r.state, "STARTING", "the second mutation sees the first one's result");
      return null;
    });
    const b = await ledger.transition(B, "main", "STARTING", "attempt 1");
    assert.equal(b.state, "STARTING", "job B went ahead while A's write was held");
    await settle();
    assert.equal(aDone, false);
    assert.equal(aSecondRan, false, "A's next mutation waits for the held write");
    assert.equal(ledger.get(A).state, "PENDING", "nothing is visible before it is stored");
    g.open();
    store.gates.delete(A);
    await Promise.all([aFirst, aSecond]);
    assert.equal(aSecondRan, true);
    assert.equal(ledger.get(A).state, "STARTING");
  });

  void it("a failing mutation does not block the ones queued behind it", async () => {
    const { store, ledger } = setup();
    const j = job(A);
    await ledger.create(j.job, j.events);
    const g = gate();
    store.gates.set(A, g);
    const first = ledger.transition(A, "main", "STARTING", "attempt 1");
    const bad = ledger.transition(A, "main", "PENDING", "not allowed from STARTING");
    const third = ledger.transition(A, "main", "RUNNING", "go");
    g.open();
    store.gates.delete(A);
    await first;
    await assert.rejects(bad, /cannot go from STARTING to PENDING/);
    assert.equal((await third).state, "RUNNING");
    await ledger.drain();
  });
});

void describe("ledger: delete's tombstone", () => {
  void it("a tombstoned job is hidden from get and list (get says how to finish it), reloads hidden, and remove drops it from the store", async () => {
    const { store, bus, clock, ledger } = setup();
    for (const id of [A, B]) {
      const j = job(id);
      await ledger.create(j.job, j.events);
    }
    await ledger.update(A, (rec) => {
      rec.deletingSinceMs = T0;
    });
    assert.throws(() => ledger.get(A), /job j-20260101-000000-aaaaaa not found \(its deletion was interrupted; `clipfleet delete j-20260101-000000-aaaaaa` finishes it\)/);
    assert.deepEqual(ledger.list().map((j) => j.id), [B]);
    assert.equal(ledger.getTombstoned(A).deletingSinceMs, T0);
    // A new orchestrator on the same store (a crash after the tombstone): still hidden, still there to finish.
    const reloaded = new JobLedger(store, bus, clock);
    await reloaded.load();
    assert.deepEqual(reloaded.list().map((j) => j.id), [B]);
    assert.equal(reloaded.getTombstoned(A).id, A);
    await reloaded.remove(A);
    assert.equal(store.records.has(A), false);
    assert.throws(() => reloaded.getTombstoned(A), /job j-20260101-000000-aaaaaa not found$/);
  });
});
