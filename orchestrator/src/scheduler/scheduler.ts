/**
 * Gang placement of a stage's ranks on the inventory's slots, with a
 * priority queue, node quarantine and elastic shrinking. Pure bookkeeping:
 * no I/O, time comes in as arguments or from an injected Clock.
 *
 * Policy:
 * - Gang: all ranks of a request are placed at once or none is; a slot holds
 *   at most one rank. A rank needs max(1, gpusPerWorker) slots of one node.
 * - Order: higher priority first, then earlier enqueuedAtMs, then submission.
 * - Conservative backfill: a request that cannot be placed reserves every
 *   node it could ever use (label and GPU match, whatever the node's state);
 *   requests behind it may only use other nodes. The head's placement
 *   depends only on its own nodes' free slots, which nothing behind it can
 *   take, so backfill can never delay it.
 * - Packing: the fewest nodes (largest free capacity first), the last node
 *   chosen best-fit; ranks are contiguous per node, nodes in inventory order,
 *   so rank 0 is on the first node. Local/group ranks are torchrun's.
 * - Elastic: when `allowShrink` is set (jobs/ sets it after a node loss) and
 *   `workers` do not fit, the largest allowed world size >= minWorkers that
 *   fits is placed.
 * - Quarantine: quarantine.after failures of a node within windowSeconds
 *   exclude it for quarantine.seconds (after = 0: never).
 *
 * The packing and rank arithmetic themselves are in placement.ts.
 */
import assert from "node:assert/strict";
import type { Clock } from "../domain/index.js";
import type { Node } from "./inventory.js";
import { type NodeSlots, type Placement, type PlacementRequest, buildPlacement, freeSlots, pack, slotsPerRank } from "./placement.js";

/** Node quarantine after repeated failures (the spec's failure.quarantine_after / quarantine_seconds). */
export interface QuarantinePolicy {
  readonly after: number;
  readonly seconds: number;
  /** Failures older than this no longer count. */
  readonly windowSeconds: number;
}

/** A node as the control API shows it (the wire's Node). */
export interface NodeStatus {
  readonly node: Node;
  readonly freeSlots: number;
  readonly state: "ready" | "quarantined" | "unreachable" | "cordoned";
  readonly quarantinedUntilMs: number | null;
  /** Failures counted towards quarantine (within the window). */
  readonly failures: number;
}

/** A queued stage and why it is not placed (the job's pendingReason). */
export interface Waiting {
  readonly jobId: string;
  readonly stage: string;
  readonly reason: string;
}

/** What one schedule() pass did: new placements, and everything still queued with its reason. */
export interface ScheduleResult {
  readonly placements: Placement[];
  readonly waiting: Waiting[];
}

/** The spec's defaults (failure.quarantine_after 3, quarantine_seconds 600), counting failures over the same 600 s. */
export const DEFAULT_QUARANTINE: QuarantinePolicy = { after: 3, seconds: 600, windowSeconds: 600 };

/** A node's slot table plus what decides whether it takes ranks now. */
interface NodeState extends NodeSlots {
  available: boolean;
  /** Taken out of placement by an operator (`clipfleet cordon`); running ranks are not touched. */
  cordoned: boolean;
  failures: number[];
  quarantinedUntil: number | null;
}

const keyOf = (jobId: string, stage: string): string => `${jobId}/${stage}`;

/** The queue and the slot table. */
export class Scheduler {
  private readonly states: NodeState[];
  private readonly byName = new Map<string, NodeState>();
  private readonly queue: { req: PlacementRequest; seq: number }[] = [];
  private readonly placed = new Map<string, Placement>();
  /** Failures and quarantine of nodes outside the inventory (a Slurm partition's), by name. */
  private readonly cluster = new Map<string, { failures: number[]; quarantinedUntil: number | null }>();
  private seq = 0;

  /** `quarantine` is the default policy; recordFailure can pass a stage's own. */
  constructor(
    nodes: readonly Node[],
    private readonly clock: Clock,
    private readonly policy: QuarantinePolicy = DEFAULT_QUARANTINE,
  ) {
    this.states = nodes.map((node, order) => ({
      node,
      order,
      slots: new Array<string | null>(node.slots).fill(null),
      available: true,
      cordoned: false,
      failures: [],
      quarantinedUntil: null,
    }));
    for (const s of this.states) {
      assert.ok(!this.byName.has(s.node.name), `duplicate node ${s.node.name}`);
      this.byName.set(s.node.name, s);
    }
  }

  /** Queues a request; a stage is queued or placed at most once. */
  enqueue(req: PlacementRequest): void {
    const key = keyOf(req.jobId, req.stage);
    assert.ok(!this.placed.has(key) && !this.queue.some((q) => keyOf(q.req.jobId, q.req.stage) === key), `${key} is already queued or placed`);
    assert.ok(req.workers >= 1 && req.minWorkers >= 1 && req.minWorkers <= req.workers, `bad worker counts for ${key}`);
    this.queue.push({ req, seq: this.seq++ });
  }

  /** Places what can be placed now, in queue order; says why each of the rest waits. */
  schedule(now: number = this.clock.now()): ScheduleResult {
    this.queue.sort(
      (a, b) => b.req.priority - a.req.priority || a.req.enqueuedAtMs - b.req.enqueuedAtMs || a.seq - b.seq,
    );
    const placements: Placement[] = [];
    const waiting: Waiting[] = [];
    const reserved = new Map<string, string>(); // node -> the blocked request holding it
    for (const q of [...this.queue]) {
      const result = this.tryPlace(q.req, now, reserved);
      if (typeof result !== "string") {
        this.allocate(result);
        this.placed.set(keyOf(q.req.jobId, q.req.stage), result);
        this.queue.splice(this.queue.indexOf(q), 1);
        placements.push(result);
        continue;
      }
      waiting.push({ jobId: q.req.jobId, stage: q.req.stage, reason: result });
      for (const s of this.matching(q.req)) {
        if (!reserved.has(s.node.name)) reserved.set(s.node.name, keyOf(q.req.jobId, q.req.stage));
      }
    }
    return { placements, waiting };
  }

  /** The current placement of a stage, if placed. */
  placementOf(jobId: string, stage: string): Placement | null {
    return this.placed.get(keyOf(jobId, stage)) ?? null;
  }

  /** Frees a stage's slots, or drops it from the queue; false when it was neither. */
  release(jobId: string, stage: string): boolean {
    const key = keyOf(jobId, stage);
    if (this.placed.delete(key)) {
      for (const s of this.states) for (let i = 0; i < s.slots.length; i++) if (s.slots[i] === key) s.slots[i] = null;
      return true;
    }
    const at = this.queue.findIndex((q) => keyOf(q.req.jobId, q.req.stage) === key);
    if (at < 0) return false;
    this.queue.splice(at, 1);
    return true;
  }

  /**
   * Counts a failure attributed to `node` (a lost rank, a launch error);
   * returns true when this failure puts the node in quarantine.
   */
  recordFailure(node: string, now: number = this.clock.now(), policy: QuarantinePolicy = this.policy): boolean {
    const s = this.byName.get(node) ?? this.clusterNode(node);
    this.expire(s, now);
    s.failures = s.failures.filter((t) => t > now - policy.windowSeconds * 1000);
    s.failures.push(now);
    if (policy.after <= 0 || s.failures.length < policy.after) return false;
    s.quarantinedUntil = now + policy.seconds * 1000;
    s.failures = [];
    return true;
  }

  /**
   * Nodes of a cluster manager (Slurm) that are quarantined now: not in the
   * inventory (Slurm picks them per attempt), so they are kept out by
   * excluding them from the next allocations (`--exclude`).
   */
  excludedClusterNodes(now: number = this.clock.now()): string[] {
    const out: string[] = [];
    for (const [name, s] of this.cluster) {
      if (s.quarantinedUntil !== null && now >= s.quarantinedUntil) s.quarantinedUntil = null;
      if (s.quarantinedUntil !== null) out.push(name);
    }
    return out.sort();
  }

  /** The failure record of a cluster-managed node, made on its first failure. */
  private clusterNode(node: string): { failures: number[]; quarantinedUntil: number | null } {
    let s = this.cluster.get(node);
    if (!s) {
      s = { failures: [], quarantinedUntil: null };
      this.cluster.set(node, s);
    }
    return s;
  }

  /** Takes a node out of placement (unreachable); ranks already on it stay until released. */
  markUnavailable(node: string): void {
    this.state(node).available = false;
  }

  /** An operator takes a node out of placement (true) or puts it back (false). Throws for an unknown node. */
  setCordoned(node: string, cordoned: boolean): void {
    this.state(node).cordoned = cordoned;
  }

  /** Whether the inventory has this node. */
  hasNode(node: string): boolean {
    return this.byName.has(node);
  }

  /** Puts a node back into placement. */
  markAvailable(node: string): void {
    this.state(node).available = true;
  }

  /** Every node with its free slots and state at `now`. */
  nodes(now: number = this.clock.now()): NodeStatus[] {
    return this.states.map((s) => {
      this.expire(s, now);
      return {
        node: s.node,
        freeSlots: s.slots.filter((o) => o === null).length,
        state: s.cordoned ? "cordoned" : !s.available ? "unreachable" : s.quarantinedUntil !== null ? "quarantined" : "ready",
        quarantinedUntilMs: s.quarantinedUntil,
        failures: s.failures.length,
      };
    });
  }

  /**
   * Why `req` can never be placed on this inventory even when every node is
   * free and healthy (for rejecting a spec at submit time), or null.
   */
  unsatisfiable(req: PlacementRequest): string | null {
    const per = slotsPerRank(req);
    const fit = this.matching(req).reduce((n, s) => n + Math.floor(s.slots.length / per), 0);
    const need = req.allowShrink === true ? req.minWorkers : req.workers;
    if (fit >= need) return null;
    const nodes = this.matching(req);
    const total = nodes.reduce((n, s) => n + s.slots.length, 0);
    return `needs ${slotCount(need * per)}${constraintText(req)}, the inventory's ${nodes.length} such node(s) have ${total}`;
  }

  private state(node: string): NodeState {
    const s = this.byName.get(node);
    assert.ok(s !== undefined, `unknown node ${node}`);
    return s;
  }

  private expire(s: { quarantinedUntil: number | null }, now: number): void {
    if (s.quarantinedUntil !== null && now >= s.quarantinedUntil) s.quarantinedUntil = null;
  }

  /** Nodes the request could ever use: selector labels match and, for GPU ranks, enough GPUs. */
  private matching(req: PlacementRequest): NodeState[] {
    return this.states.filter(
      (s) =>
        Object.entries(req.nodeSelector).every(([k, v]) => s.node.labels[k] === v) &&
        (req.gpusPerWorker === 0 || s.node.gpus >= req.gpusPerWorker),
    );
  }

  private tryPlace(req: PlacementRequest, now: number, reserved: ReadonlyMap<string, string>): Placement | string {
    const per = slotsPerRank(req);
    const matching = this.matching(req);
    if (matching.length === 0) return `needs ${slotCount(req.workers * per)}${constraintText(req)}, 0 such nodes`;
    const notes: string[] = [];
    const usable: NodeState[] = [];
    for (const s of matching) {
      this.expire(s, now);
      const held = reserved.get(s.node.name);
      if (s.cordoned) notes.push(`node ${s.node.name} cordoned`);
      else if (!s.available) notes.push(`node ${s.node.name} unreachable`);
      else if (s.quarantinedUntil !== null) {
        notes.push(`node ${s.node.name} quarantined until ${clockTime(s.quarantinedUntil)}`);
      } else if (held !== undefined) notes.push(`node ${s.node.name} held for ${held} ahead in the queue`);
      else usable.push(s);
    }

    for (const w of this.worldSizes(req)) {
      const chosen = pack(usable, w, per);
      if (chosen !== null) return buildPlacement(req, chosen, per);
    }

    const free = usable.reduce((n, s) => n + freeSlots(s).length, 0);
    const need = req.workers * per;
    let reason = `needs ${slotCount(need)}${constraintText(req)}, ${free} free`;
    if (free >= need) {
      const fit = usable.reduce((n, s) => n + Math.floor(freeSlots(s).length / per), 0);
      reason += ` but only ${fit} worker(s) fit with ${per} GPUs each on one node`;
    }
    const sizes = this.worldSizes(req);
    const smallest = sizes[sizes.length - 1];
    if (req.allowShrink === true && smallest !== undefined && smallest < req.workers) {
      reason += ` (shrinking allowed down to ${smallest} workers)`;
    }
    return notes.length === 0 ? reason : `${reason}; ${notes.join("; ")}`;
  }

  /** World sizes to try, largest first. */
  private worldSizes(req: PlacementRequest): number[] {
    const allowed = (w: number): boolean => req.allowedWorldSizes === undefined || req.allowedWorldSizes.includes(w);
    const out: number[] = [];
    const low = req.allowShrink === true ? req.minWorkers : req.workers;
    for (let w = req.workers; w >= low; w--) if (allowed(w)) out.push(w);
    return out;
  }

  private allocate(p: Placement): void {
    const key = keyOf(p.jobId, p.stage);
    for (const r of p.ranks) {
      const s = this.state(r.node.name);
      for (const i of r.slots) {
        assert.equal(s.slots[i], null, `slot ${i} of ${r.node.name} is taken`);
        s.slots[i] = key;
      }
    }
  }
}

function slotCount(n: number): string {
  return n === 1 ? "1 slot" : `${n} slots`;
}

function constraintText(req: PlacementRequest): string {
  const parts = Object.entries(req.nodeSelector).map(([k, v]) => `${k}=${v}`);
  if (req.gpusPerWorker > 0) parts.push(`gpus>=${req.gpusPerWorker}`);
  return parts.length === 0 ? "" : ` on nodes with ${parts.join(", ")}`;
}

/** HH:MM:SS in UTC, for reasons users read next to logs. */
function clockTime(ms: number): string {
  return `${new Date(ms).toISOString().slice(11, 19)} UTC`;
}
