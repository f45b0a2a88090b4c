/**
 * The gang arithmetic of a placement, free of queue and node health: how
 * many slots a rank takes, packing ranks onto nodes' free slots, the rank
 * table with torchrun's local and group ranks, and each rank's environment.
 * scheduler.ts decides which nodes are usable and when.
 */
import assert from "node:assert/strict";
import type { Node } from "./inventory.js";

/** A stage asking for a gang of ranks. */
export interface PlacementRequest {
  readonly jobId: string;
  readonly stage: string;
  /** Ranks wanted (cluster.workers). */
  readonly workers: number;
  /** Fewest ranks the stage may run with when shrinking (cluster.min_workers). */
  readonly minWorkers: number;
  /** 0 for CPU ranks. */
  readonly gpusPerWorker: number;
  /** Labels a node must carry, all of them (cluster.node_selector). */
  readonly nodeSelector: Readonly<Record<string, string>>;
  readonly priority: number;
  readonly enqueuedAtMs: number;
  /** May place fewer than `workers` (jobs/ sets it after a node loss); default false. */
  readonly allowShrink?: boolean;
  /** World sizes the stage can run with (those dividing the global batch); absent: any in [minWorkers, workers]. */
  readonly allowedWorldSizes?: readonly number[];
}

/** Where one rank runs, with torchrun's rank arithmetic. */
export interface RankPlacement {
  readonly rank: number;
  readonly node: Node;
  /** The rank's first slot on the node. */
  readonly slot: number;
  /** All its slots (gpusPerWorker of them on GPU ranks). */
  readonly slots: readonly number[];
  /** CUDA_VISIBLE_DEVICES of the rank (physical ids, comma-separated); null for a CPU rank. */
  readonly device: string | null;
  readonly localRank: number;
  readonly localWorldSize: number;
  /** Index of the rank's node among the gang's nodes. */
  readonly groupRank: number;
}

/** A placed gang. */
export interface Placement {
  readonly jobId: string;
  readonly stage: string;
  readonly worldSize: number;
  /** What was asked for; worldSize < requestedWorkers after an elastic shrink. */
  readonly requestedWorkers: number;
  /** The gang's nodes in group-rank order. */
  readonly nodes: readonly string[];
  /** Indexed by rank. */
  readonly ranks: readonly RankPlacement[];
  /** Address of rank 0's node (MASTER_ADDR). */
  readonly masterAddress: string;
  /** Whether GPU ranks (CUDA_VISIBLE_DEVICES set per rank) or CPU ranks. */
  readonly gpusPerWorker: number;
}

/** A node's slot table, as packing sees it. */
export interface NodeSlots {
  readonly node: Node;
  /** Position in the inventory: nodes of a gang are in this order. */
  readonly order: number;
  /** Owner key per slot, null when free. */
  readonly slots: (string | null)[];
}

/**
 * The environment torchrun would give a rank, plus CUDA_VISIBLE_DEVICES:
 * a GPU rank sees only its devices (so its device is cuda:0, whatever
 * LOCAL_RANK says), a CPU rank sees none. MASTER_PORT is the launcher's to choose.
 */
export function rankEnv(p: Placement, rank: number): Record<string, string> {
  const r = p.ranks[rank];
  assert.ok(r !== undefined, `rank ${rank} is outside [0, ${p.worldSize})`);
  const env: Record<string, string> = {
    RANK: String(r.rank),
    WORLD_SIZE: String(p.worldSize),
    LOCAL_RANK: String(r.localRank),
    LOCAL_WORLD_SIZE: String(r.localWorldSize),
    GROUP_RANK: String(r.groupRank),
    GROUP_WORLD_SIZE: String(p.nodes.length),
    ROLE_RANK: String(r.rank),
    ROLE_WORLD_SIZE: String(p.worldSize),
    MASTER_ADDR: p.masterAddress,
  };
  env.CUDA_VISIBLE_DEVICES = r.device ?? "";
  return env;
}

/** Slots one rank of `req` takes: one per GPU, at least one. */
export function slotsPerRank(req: PlacementRequest): number {
  return Math.max(1, req.gpusPerWorker);
}

/** Indexes of the node's free slots, ascending. */
export function freeSlots(s: NodeSlots): number[] {
  const out: number[] = [];
  s.slots.forEach((owner, i) => {
    if (owner === null) out.push(i);
  });
  return out;
}

/**
 * Fewest nodes for `w` ranks: take nodes by descending capacity until the
 * last one, which is the smallest that still holds the remainder (best fit
 * keeps big nodes whole for big gangs). Null when they do not fit.
 */
export function pack(usable: readonly NodeSlots[], w: number, per: number): { s: NodeSlots; ranks: number }[] | null {
  const cap = (s: NodeSlots): number => Math.floor(freeSlots(s).length / per);
  const byCap = usable.filter((s) => cap(s) > 0).sort((a, b) => cap(b) - cap(a) || a.order - b.order);
  const chosen: { s: NodeSlots; ranks: number }[] = [];
  let left = w;
  for (let i = 0; i < byCap.length && left > 0; i++) {
    const s = byCap[i] as NodeSlots;
    if (cap(s) >= left) {
      // Best fit for the last node among those not yet chosen.
      let best = s;
      for (let j = i + 1; j < byCap.length; j++) {
        const t = byCap[j] as NodeSlots;
        if (cap(t) >= left && cap(t) < cap(best)) best = t;
      }
      chosen.push({ s: best, ranks: left });
      return chosen;
    }
    chosen.push({ s, ranks: cap(s) });
    left -= cap(s);
  }
  return null;
}

/** The gang on the nodes pack() chose: nodes in inventory order, ranks contiguous per node, on each node's lowest free slots. */
export function buildPlacement(req: PlacementRequest, chosen: { s: NodeSlots; ranks: number }[], per: number): Placement {
  chosen.sort((a, b) => a.s.order - b.s.order);
  const ranks: RankPlacement[] = [];
  chosen.forEach(({ s, ranks: count }, groupRank) => {
    const free = freeSlots(s);
    for (let local = 0; local < count; local++) {
      const slots = free.slice(local * per, (local + 1) * per);
      ranks.push({
        rank: ranks.length,
        node: s.node,
        slot: slots[0] as number,
        slots,
        device: req.gpusPerWorker > 0 ? slots.map((i) => s.node.devices[i] ?? String(i)).join(",") : null,
        localRank: local,
        localWorldSize: count,
        groupRank,
      });
    }
  });
  const first = chosen[0];
  assert.ok(first !== undefined);
  return {
    jobId: req.jobId,
    stage: req.stage,
    worldSize: ranks.length,
    requestedWorkers: req.workers,
    nodes: chosen.map((c) => c.s.node.name),
    ranks,
    masterAddress: first.s.node.address,
    gpusPerWorker: req.gpusPerWorker,
  };
}
