import { test } from "node:test";
import assert from "node:assert/strict";
import type { Clock } from "../../src/domain/index.js";
import {
  localInventory,
  parseInventory,
  rankEnv,
  Scheduler,
  type Node,
  type Placement,
  type PlacementRequest,
  type ScheduleResult,
} from "../../src/scheduler/index.js";

/** A clock the test moves by hand. */
class FakeClock implements Clock {
  constructor(private t: number) {}
  now(): number {
    return this.t;
  }
  advance(seconds: number): void {
    this.t += seconds * 1000;
  }
}

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const QUARANTINE = { after: 2, seconds: 300, windowSeconds: 60 };

function nodes(spec: string): Node[] {
  return parseInventory(spec, "nodes.yaml");
}

/** n nodes `n1..` of `slots` CPU slots each. */
function cpuNodes(...slots: number[]): Node[] {
  return nodes(`nodes:\n${slots.map((s, i) => `  - {name: n${i + 1}, host: 10.0.0.${i + 1}, slots: ${s}}`).join("\n")}\n`);
}

function scheduler(inventory: Node[], clock = new FakeClock(T0)): { s: Scheduler; clock: FakeClock } {
  return { s: new Scheduler(inventory, clock, QUARANTINE), clock };
}

let enqueued = 0;
function req(jobId: string, workers: number, over: Partial<PlacementRequest> = {}): PlacementRequest {
  return {
    jobId,
    stage: "main",
    workers,
    minWorkers: workers,
    gpusPerWorker: 0,
    nodeSelector: {},
    priority: 0,
    enqueuedAtMs: T0 + enqueued++,
    ...over,
  };
}

function slotsOf(p: Placement): string[] {
  return p.ranks.flatMap((r) => r.slots.map((i) => `${r.node.name}:${i}`));
}

/** jobId -> reason of everything a schedule() pass left waiting. */
function reasons(r: ScheduleResult): Record<string, string> {
  return Object.fromEntries(r.waiting.map((w) => [w.jobId, w.reason]));
}

function placed(r: ScheduleResult): string[] {
  return r.placements.map((p) => p.jobId);
}

void test("gang: all ranks or none; the reason says what is short", () => {
  const { s } = scheduler(cpuNodes(2, 2));
  s.enqueue(req("big", 5));
  const r = s.schedule();
  assert.deepEqual(r.placements, []);
  assert.deepEqual(r.waiting, [{ jobId: "big", stage: "main", reason: "needs 5 slots, 4 free" }]);
  assert.deepEqual(
    s.nodes().map((n) => n.freeSlots),
    [2, 2],
  );
  s.release("big", "main");
  s.enqueue(req("fits", 4));
  const [p] = s.schedule().placements;
  assert.equal(p?.worldSize, 4);
  assert.deepEqual(s.placementOf("fits", "main"), p);
  assert.deepEqual(
    s.nodes().map((n) => n.freeSlots),
    [0, 0],
  );
});

void test("no slot holds two ranks, across many placements and releases", () => {
  const { s } = scheduler(cpuNodes(4, 3, 2));
  const live = new Map<string, Placement>();
  let id = 0;
  for (let round = 0; round < 30; round++) {
    s.enqueue(req(`j${id++}`, 1 + (round % 4)));
    for (const p of s.schedule().placements) live.set(p.jobId, p);
    const used = [...live.values()].flatMap(slotsOf);
    assert.equal(new Set(used).size, used.length, `round ${round}: a slot is used twice`);
    assert.equal(s.nodes().reduce((n, x) => n + x.freeSlots, 0), 9 - used.length);
    if (round % 3 === 2) {
      const victim = [...live.keys()][0];
      if (victim !== undefined) {
        assert.equal(s.release(victim, "main"), true);
        live.delete(victim);
      }
    }
  }
});

void test("higher priority first, FIFO within a priority, and no backfill past a blocked head on its nodes", () => {
  const { s } = scheduler(cpuNodes(2, 2));
  s.enqueue(req("a", 3, { enqueuedAtMs: T0 + 1 }));
  s.enqueue(req("b", 1, { enqueuedAtMs: T0 + 2 }));
  s.enqueue(req("urgent", 2, { enqueuedAtMs: T0 + 3, priority: 5 }));
  const first = s.schedule();
  assert.deepEqual(placed(first), ["urgent"]);
  // a needs 3 of the 2 left; b would fit, but only on nodes a is waiting for.
  assert.deepEqual(reasons(first), {
    a: "needs 3 slots, 2 free",
    b: "needs 1 slot, 0 free; node n1 held for a/main ahead in the queue; node n2 held for a/main ahead in the queue",
  });
  s.release("urgent", "main");
  assert.deepEqual(
    s.schedule().placements.map((p) => [p.jobId, p.worldSize]),
    [
      ["a", 3],
      ["b", 1],
    ],
  );
  // Among equal priorities, the earlier enqueuedAtMs wins regardless of enqueue order.
  const { s: s2 } = scheduler(cpuNodes(1));
  s2.enqueue(req("late", 1, { enqueuedAtMs: T0 + 100 }));
  s2.enqueue(req("early", 1, { enqueuedAtMs: T0 + 50 }));
  assert.deepEqual(placed(s2.schedule()), ["early"]);
});

void test("conservative backfill: requests behind a blocked head may use nodes the head can never use", () => {
  const inv = nodes(`
nodes:
  - {name: g1, host: 10.0.0.1, gpus: 2, labels: {gpu: a100}}
  - {name: c1, host: 10.0.0.2, slots: 4, labels: {kind: cpu}}
`);
  const { s } = scheduler(inv);
  s.enqueue(req("hold", 2, { gpusPerWorker: 1 }));
  s.schedule();
  s.enqueue(req("head", 2, { gpusPerWorker: 1, nodeSelector: { gpu: "a100" } }));
  s.enqueue(req("cpu-job", 3, { nodeSelector: { kind: "cpu" } }));
  s.enqueue(req("anywhere", 1));
  const r = s.schedule();
  assert.deepEqual(
    r.placements.map((p) => [p.jobId, p.nodes]),
    [
      ["cpu-job", ["c1"]],
      ["anywhere", ["c1"]],
    ],
  );
  assert.deepEqual(reasons(r), { head: "needs 2 slots on nodes with gpu=a100, gpus>=1, 0 free" });
});

void test("reasons: no matching node, quarantined nodes, unreachable nodes", () => {
  const { s, clock } = scheduler(cpuNodes(2, 2));
  s.enqueue(req("sel", 2, { nodeSelector: { gpu: "a100" } }));
  assert.deepEqual(reasons(s.schedule()), { sel: "needs 2 slots on nodes with gpu=a100, 0 such nodes" });
  s.release("sel", "main");

  assert.equal(s.recordFailure("n2"), false);
  clock.advance(10);
  assert.equal(s.recordFailure("n2"), true); // 2 failures within 60 s
  s.markUnavailable("n1");
  s.enqueue(req("x", 1));
  const r = s.schedule();
  assert.deepEqual(r.placements, []);
  assert.deepEqual(reasons(r), { x: "needs 1 slot, 0 free; node n1 unreachable; node n2 quarantined until 12:05:10 UTC" });
  assert.deepEqual(
    s.nodes().map((n) => [n.node.name, n.state, n.quarantinedUntilMs]),
    [
      ["n1", "unreachable", null],
      ["n2", "quarantined", T0 + 310_000],
    ],
  );
});

void test("quarantine needs `after` failures within the window and expires with the fake clock", () => {
  const { s, clock } = scheduler(cpuNodes(1));
  s.enqueue(req("j", 1));
  assert.equal(s.recordFailure("n1"), false);
  clock.advance(61); // the first failure leaves the window
  assert.equal(s.recordFailure("n1"), false);
  clock.advance(30);
  assert.equal(s.recordFailure("n1"), true);
  const until = T0 + 91_000 + 300_000;
  assert.deepEqual(s.schedule().placements, []);
  clock.advance(299);
  const still = s.schedule();
  assert.deepEqual(still.placements, []);
  assert.match(reasons(still).j ?? "", /quarantined until 12:06:31 UTC$/);
  clock.advance(1);
  assert.equal(clock.now(), until);
  assert.deepEqual(placed(s.schedule()), ["j"]);
  assert.deepEqual([s.nodes()[0]?.state, s.nodes()[0]?.failures], ["ready", 0]);
  // A stage's own policy can turn quarantine off (failure.quarantine_after: 0).
  const off = { after: 0, seconds: 600, windowSeconds: 600 };
  for (let i = 0; i < 5; i++) assert.equal(s.recordFailure("n1", clock.now(), off), false);
  assert.equal(s.nodes()[0]?.state, "ready");
});

void test("elastic: with shrinking allowed, the largest allowed world size that fits", () => {
  const { s } = scheduler(cpuNodes(2, 2, 1));
  s.markUnavailable("n3");
  // Batch 12: world sizes dividing it in [2, 6] are 6, 4, 3, 2; 4 slots are up.
  const allowed = [6, 4, 3, 2];
  s.enqueue(req("rigid", 6, { minWorkers: 2, allowedWorldSizes: allowed }));
  const r = s.schedule();
  assert.deepEqual(r.placements, []);
  assert.equal(reasons(r).rigid, "needs 6 slots, 4 free; node n3 unreachable");
  s.release("rigid", "main");

  s.markAvailable("n3"); // 5 slots now, but 5 does not divide the batch
  s.enqueue(req("elastic", 6, { minWorkers: 2, allowedWorldSizes: allowed, allowShrink: true }));
  const [p] = s.schedule().placements;
  assert.deepEqual([p?.worldSize, p?.requestedWorkers], [4, 6]);
  s.enqueue(req("small", 3, { minWorkers: 2, allowShrink: true, allowedWorldSizes: [3, 2] }));
  assert.equal(reasons(s.schedule()).small, "needs 3 slots, 1 free (shrinking allowed down to 2 workers)");
});

void test("GPU ranks get device i for slot i, gpusPerWorker devices each, CUDA_VISIBLE_DEVICES set", () => {
  const local = localInventory({ env: { CUDA_VISIBLE_DEVICES: "4,5,6,7" } });
  const { s } = scheduler([local]);
  s.enqueue(req("one", 1, { gpusPerWorker: 1 }));
  s.enqueue(req("two", 1, { gpusPerWorker: 2 }));
  const [one, two] = s.schedule().placements;
  assert.deepEqual([one?.ranks[0]?.slot, one?.ranks[0]?.slots, one?.ranks[0]?.device], [0, [0], "4"]);
  assert.deepEqual([two?.ranks[0]?.slot, two?.ranks[0]?.slots, two?.ranks[0]?.device], [1, [1, 2], "5,6"]);
  assert.equal(rankEnv(two as Placement, 0).CUDA_VISIBLE_DEVICES, "5,6");
  // Two more ranks of 1 GPU need 2 slots; 1 is left.
  s.enqueue(req("more", 2, { gpusPerWorker: 1 }));
  assert.equal(reasons(s.schedule()).more, "needs 2 slots on nodes with gpus>=1, 1 free");
  // A GPU job never lands on a CPU node.
  const { s: cpu } = scheduler(cpuNodes(8));
  cpu.enqueue(req("g", 1, { gpusPerWorker: 1 }));
  assert.equal(reasons(cpu.schedule()).g, "needs 1 slot on nodes with gpus>=1, 0 such nodes");
});

void test("packing: fewest nodes, best fit for the last, rank 0 on the first node, torchrun's local and group ranks", () => {
  const inv = nodes(`
nodes:
  - {name: n1, host: 10.0.0.1, address: 192.168.1.1, gpus: 4}
  - {name: n2, host: 10.0.0.2, gpus: 4}
  - {name: n3, host: 10.0.0.3, gpus: 2}
`);
  const { s } = scheduler(inv);
  s.enqueue(req("six", 6, { gpusPerWorker: 1 }));
  const [p] = s.schedule().placements;
  assert.ok(p);
  // 4 on n1, the remaining 2 best-fit on n3: n2 stays whole for a 4-GPU gang.
  assert.deepEqual(p.nodes, ["n1", "n3"]);
  assert.equal(p.masterAddress, "192.168.1.1");
  assert.deepEqual(
    p.ranks.map((r) => [r.rank, r.node.name, r.localRank, r.localWorldSize, r.groupRank, r.device]),
    [
      [0, "n1", 0, 4, 0, "0"],
      [1, "n1", 1, 4, 0, "1"],
      [2, "n1", 2, 4, 0, "2"],
      [3, "n1", 3, 4, 0, "3"],
      [4, "n3", 0, 2, 1, "0"],
      [5, "n3", 1, 2, 1, "1"],
    ],
  );
  assert.deepEqual(rankEnv(p, 5), {
    RANK: "5",
    WORLD_SIZE: "6",
    LOCAL_RANK: "1",
    LOCAL_WORLD_SIZE: "2",
    GROUP_RANK: "1",
    GROUP_WORLD_SIZE: "2",
    ROLE_RANK: "5",
    ROLE_WORLD_SIZE: "6",
    MASTER_ADDR: "192.168.1.1",
    CUDA_VISIBLE_DEVICES: "1",
  });
  s.enqueue(req("four", 4, { gpusPerWorker: 1 }));
  assert.deepEqual(
    s.schedule().placements.map((x) => x.nodes),
    [["n2"]],
  );

  // A small gang goes to the smallest node that holds it whole.
  const { s: s2 } = scheduler(cpuNodes(8, 2, 4));
  s2.enqueue(req("pair", 2));
  assert.deepEqual(
    s2.schedule().placements.map((x) => x.nodes),
    [["n2"]],
  );
  // CPU ranks see no GPU.
  const pair = s2.placementOf("pair", "main") as Placement;
  assert.deepEqual([pair.ranks[0]?.device, rankEnv(pair, 0).CUDA_VISIBLE_DEVICES], [null, ""]);
});

void test("release frees slots or dequeues; unsatisfiable requests are recognised up front", () => {
  const { s } = scheduler(cpuNodes(2));
  s.enqueue(req("a", 2));
  s.enqueue(req("b", 1));
  assert.deepEqual(placed(s.schedule()), ["a"]);
  assert.equal(s.release("b", "main"), true); // queued: dropped
  assert.deepEqual(s.schedule().waiting, []);
  assert.equal(s.release("a", "main"), true); // placed: freed
  assert.equal(s.release("a", "main"), false);
  assert.equal(s.nodes()[0]?.freeSlots, 2);
  assert.equal(s.unsatisfiable(req("c", 2)), null);
  assert.equal(s.unsatisfiable(req("d", 3)), "needs 3 slots, the inventory's 1 such node(s) have 2");
  assert.equal(s.unsatisfiable(req("e", 3, { minWorkers: 2, allowShrink: true })), null);
});
