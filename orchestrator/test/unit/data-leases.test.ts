/**
 * The recaption lease ledger as pure logic (data/leases.ts): a fake clock,
 * no processes. The property drives random sequences of lease, commit,
 * persist-ok, persist-failure, attempt failure and orchestrator restart
 * events over a model of the store, and checks that no input shard is ever
 * committed twice, that every persisted commit came from the rank holding the
 * lease in a live attempt, and that a run without failures commits them all.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { LeaseLedger, type LeaseCommitRecord, type OutputDigest } from "../../src/data/index.js";

const inputs = (n: number): string[] => Array.from({ length: n }, (_, i) => `/in/s-${i}.tar`);
const outputs = (n: number): string[] => Array.from({ length: n }, (_, i) => `/out/s-${i}.tar`);
const sha = (shard: number): string => shard.toString(16).padStart(64, "0");
const digest = (shard: number, over: Partial<OutputDigest> = {}): OutputDigest => ({ shard, output: `/out/s-${shard}.tar`, sha256: sha(shard), bytes: 100, samples: 10, seconds: 1, ...over });

void test("leases go out in input order, one per rank; a retried lease call gets the same shard", () => {
  const l = new LeaseLedger(inputs(3), outputs(3), 1, []);
  assert.deepEqual(l.lease(0), { kind: "granted", shard: 0 });
  assert.deepEqual(l.lease(1), { kind: "granted", shard: 1 });
  assert.deepEqual(l.lease(0), { kind: "granted", shard: 0 }, "the same rank again: its own shard");
  assert.deepEqual(l.lease(2), { kind: "granted", shard: 2 });
  assert.deepEqual(l.lease(3), { kind: "wait" }, "every shard is out");
});

void test("a commit is decided, then confirmed; a duplicate report is recognised; done once all are committed", () => {
  const l = new LeaseLedger(inputs(2), outputs(2), 4, []);
  l.lease(0);
  l.lease(1);
  const d = l.commit(0, digest(0), 1000);
  assert.equal(d.kind, "commit");
  if (d.kind !== "commit") return;
  assert.deepEqual({ attempt: d.record.attempt, rank: d.record.rank, input: d.record.input, at: d.record.committedAtMs }, { attempt: 4, rank: 0, input: "/in/s-0.tar", at: 1000 });
  assert.equal(l.commit(0, digest(0), 1001).kind, "refused", "being persisted: not decided twice");
  l.confirm(d.record);
  assert.equal(l.commit(0, digest(0), 1002).kind, "duplicate");
  assert.equal(l.commit(0, digest(0, { sha256: sha(9) }), 1002).kind, "refused", "another digest for a committed shard");
  assert.deepEqual(l.lease(0), { kind: "wait" }, "rank 1 still holds shard 1");
  const e = l.commit(1, digest(1), 1003);
  assert.equal(e.kind, "commit");
  if (e.kind === "commit") l.confirm(e.record);
  assert.deepEqual(l.lease(0), { kind: "done" });
  assert.deepEqual(
    l.commits().map((c) => c.shard),
    [0, 1],
  );
});

void test("refused: a shard the rank does not hold, another shard's output name, a malformed digest", () => {
  const l = new LeaseLedger(inputs(2), outputs(2), 1, []);
  l.lease(0);
  assert.match((l.commit(1, digest(0), 0) as { why: string }).why, /not leased to rank 1/);
  assert.match((l.commit(0, digest(0, { output: "/out/s-1.tar" }), 0) as { why: string }).why, /is written as \/out\/s-0.tar/);
  assert.match((l.commit(0, digest(0, { sha256: "xyz" }), 0) as { why: string }).why, /sha256/);
  assert.match((l.commit(0, digest(0, { bytes: -1 }), 0) as { why: string }).why, /counts/);
});

void test("a persist failure leaves the shard leased to its rank, uncommitted; it can be reported again", () => {
  const l = new LeaseLedger(inputs(1), outputs(1), 1, []);
  l.lease(0);
  const d = l.commit(0, digest(0), 0);
  assert.equal(d.kind, "commit");
  if (d.kind !== "commit") return;
  l.abandon(d.record);
  assert.equal(l.committedCount, 0);
  assert.equal(l.leaseOf(0), 0);
  assert.equal(l.commit(0, digest(0), 1).kind, "commit");
});

void test("a new attempt's ledger leases only what the store has not committed", () => {
  const persisted: LeaseCommitRecord[] = [{ shard: 1, input: "/in/s-1.tar", output: "/out/s-1.tar", sha256: sha(1), bytes: 1, samples: 1, attempt: 1, rank: 0, committedAtMs: 0, seconds: 0 }];
  const l = new LeaseLedger(inputs(3), outputs(3), 2, persisted);
  assert.deepEqual(l.lease(0), { kind: "granted", shard: 0 });
  assert.deepEqual(l.lease(1), { kind: "granted", shard: 2 });
  assert.deepEqual(l.lease(2), { kind: "wait" });
});

type Ev =
  | { t: "lease"; rank: number }
  | { t: "commit"; rank: number }
  | { t: "persist"; ok: boolean }
  | { t: "fail" }
  | { t: "restart" }
  | { t: "tick"; ms: number };

const event: fc.Arbitrary<Ev> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ t: fc.constant("lease" as const), rank: fc.integer({ min: 0, max: 3 }) }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant("commit" as const), rank: fc.integer({ min: 0, max: 3 }) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("persist" as const), ok: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ t: "fail" as const }) },
  { weight: 1, arbitrary: fc.constant({ t: "restart" as const }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("tick" as const), ms: fc.integer({ min: 1, max: 10_000 }) }) },
);

void test("property: over any sequence of leases, commits, persist failures, attempt failures and restarts, no shard is committed twice", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 8 }), fc.array(event, { maxLength: 200 }), (n, events) => {
      let now = 0; // the fake clock
      const store: LeaseCommitRecord[] = []; // what the job store holds
      let attempt = 1;
      let ledger = new LeaseLedger(inputs(n), outputs(n), attempt, store);
      // Commits decided and not yet persisted, as the jobs room holds them across its await.
      let inFlight: LeaseCommitRecord[] = [];
      const newAttempt = (): void => {
        // The attempt is over: its in-flight persists are lost with it (the room refuses or the process died).
        inFlight = [];
        attempt += 1;
        ledger = new LeaseLedger(inputs(n), outputs(n), attempt, store);
      };
      for (const e of events) {
        if (e.t === "tick") now += e.ms;
        else if (e.t === "lease") ledger.lease(e.rank);
        else if (e.t === "commit") {
          const shard = ledger.leaseOf(e.rank);
          const d = ledger.commit(e.rank, digest(shard ?? 0), now);
          if (d.kind === "commit") {
            assert.equal(shard, d.record.shard, "only the lease holder's report is a commit");
            inFlight.push(d.record);
          }
        } else if (e.t === "persist") {
          const r = inFlight.shift();
          if (!r) continue;
          if (e.ok) {
            store.push(r);
            ledger.confirm(r);
          } else ledger.abandon(r);
        } else newAttempt(); // fail and restart look the same to the ledger: a fresh one from the store
        const shards = store.map((c) => c.shard);
        assert.equal(new Set(shards).size, shards.length, `a shard committed twice: ${JSON.stringify(store)}`);
      }
      // Whatever happened, a failure-free run to the end commits every shard exactly once.
      newAttempt();
      for (let guard = 0; guard < 4 * n + 4; guard++) {
        const g = ledger.lease(0);
        if (g.kind === "done") break;
        assert.equal(g.kind, "granted");
        if (g.kind !== "granted") return;
        const d = ledger.commit(0, digest(g.shard), now);
        assert.equal(d.kind, "commit");
        if (d.kind !== "commit") return;
        store.push(d.record);
        ledger.confirm(d.record);
      }
      assert.deepEqual(
        store.map((c) => c.shard).sort((a, b) => a - b),
        Array.from({ length: n }, (_, i) => i),
      );
    }),
    { numRuns: 300 },
  );
});
