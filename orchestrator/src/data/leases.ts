/**
 * The lease ledger of a recaption stage: which input shard each rank works
 * on, and which are committed. Pure: no I/O, no clock of its own. One ledger
 * lives per attempt, built from the commits the store holds; a commit is
 * decided here (`commit` reserves it), persisted by the caller, then applied
 * (`confirm`) or given up (`abandon`). Leases are never persisted: an attempt
 * that ends takes its leases with it, and the next attempt's ledger leases
 * every uncommitted shard again. So a shard is committed at most once per
 * stage, whatever fails in between (the property test drives this).
 */

import type { RecaptionShardRecord } from "../domain/index.js";

/** A committed output shard, as the stage record keeps it. */
export type LeaseCommitRecord = RecaptionShardRecord;

/** What a rank gets when it asks for work. */
export type LeaseGrant = { readonly kind: "granted"; readonly shard: number } | { readonly kind: "wait" } | { readonly kind: "done" };

/** The digest a rank reports for the output of its leased shard. */
export interface OutputDigest {
  readonly shard: number;
  readonly output: string;
  readonly sha256: string;
  readonly bytes: number;
  readonly samples: number;
  readonly seconds: number;
}

/** The decision on a reported commit. */
export type CommitDecision =
  | { readonly kind: "commit"; readonly record: LeaseCommitRecord }
  /** The same digest was committed already (a retried call): nothing to persist. */
  | { readonly kind: "duplicate" }
  | { readonly kind: "refused"; readonly why: string };

export class LeaseLedger {
  private readonly committed = new Map<number, LeaseCommitRecord>();
  /** shard -> rank holding its lease in this attempt. */
  private readonly leased = new Map<number, number>();
  /** rank -> its shard (one lease per rank at a time). */
  private readonly byRank = new Map<number, number>();
  /** Commits decided and being persisted. */
  private readonly committing = new Set<number>();
  /** Where the next search for a free shard starts. */
  private cursor = 0;

  constructor(
    readonly inputs: readonly string[],
    readonly outputs: readonly string[],
    readonly attempt: number,
    persisted: readonly LeaseCommitRecord[],
  ) {
    for (const c of persisted) if (c.shard >= 0 && c.shard < inputs.length && !this.committed.has(c.shard)) this.committed.set(c.shard, c);
  }

  get total(): number {
    return this.inputs.length;
  }

  get committedCount(): number {
    return this.committed.size;
  }

  /** Every commit, in input order. */
  commits(): LeaseCommitRecord[] {
    return [...this.committed.values()].sort((a, b) => a.shard - b.shard);
  }

  /** The shard `rank` holds, if any. */
  leaseOf(rank: number): number | undefined {
    return this.byRank.get(rank);
  }

  /**
   * Work for `rank`: the shard it already holds (a retried call), else the
   * next shard neither committed nor leased, in input order; `wait` while
   * others' leases are still out; `done` once every shard is committed.
   */
  lease(rank: number): LeaseGrant {
    const held = this.byRank.get(rank);
    if (held !== undefined) return { kind: "granted", shard: held };
    if (this.committed.size === this.inputs.length) return { kind: "done" };
    const n = this.inputs.length;
    for (let k = 0; k < n; k++) {
      const shard = (this.cursor + k) % n;
      if (this.committed.has(shard) || this.leased.has(shard) || this.committing.has(shard)) continue;
      this.cursor = (shard + 1) % n;
      this.leased.set(shard, rank);
      this.byRank.set(rank, shard);
      return { kind: "granted", shard };
    }
    return { kind: "wait" };
  }

  /**
   * Decides on `rank`'s report for its leased shard. Refused: a shard it
   * does not hold, an output other than the shard's, a commit already being
   * persisted; a second report of a committed digest is a duplicate.
   */
  commit(rank: number, d: OutputDigest, nowMs: number): CommitDecision {
    const done = this.committed.get(d.shard);
    if (done) {
      return done.sha256 === d.sha256 && done.output === d.output ? { kind: "duplicate" } : { kind: "refused", why: `shard ${d.shard} is committed already (attempt ${done.attempt}, rank ${done.rank})` };
    }
    if (this.leased.get(d.shard) !== rank || this.byRank.get(rank) !== d.shard) return { kind: "refused", why: `shard ${d.shard} is not leased to rank ${rank} in attempt ${this.attempt}` };
    if (this.committing.has(d.shard)) return { kind: "refused", why: `shard ${d.shard} is being committed` };
    if (d.output !== this.outputs[d.shard]) return { kind: "refused", why: `shard ${d.shard} is written as ${this.outputs[d.shard]}, not ${d.output.slice(0, 200)}` };
    if (!/^[0-9a-f]{64}$/.test(d.sha256)) return { kind: "refused", why: "sha256: expected 64 hex digits" };
    if (!Number.isSafeInteger(d.bytes) || d.bytes <= 0 || !Number.isSafeInteger(d.samples) || d.samples < 0) return { kind: "refused", why: "bytes and samples: expected counts" };
    this.committing.add(d.shard);
    return {
      kind: "commit",
      record: {
        shard: d.shard,
        input: this.inputs[d.shard] ?? "",
        output: d.output,
        sha256: d.sha256,
        bytes: d.bytes,
        samples: d.samples,
        attempt: this.attempt,
        rank,
        committedAtMs: nowMs,
        seconds: Number.isFinite(d.seconds) && d.seconds >= 0 ? d.seconds : 0,
      },
    };
  }

  /** The decided commit is persisted: it counts, and the rank's lease is released. */
  confirm(record: LeaseCommitRecord): void {
    this.committing.delete(record.shard);
    this.committed.set(record.shard, record);
    this.leased.delete(record.shard);
    if (this.byRank.get(record.rank) === record.shard) this.byRank.delete(record.rank);
  }

  /** Persisting the decided commit failed: the shard stays leased to its rank, uncommitted. */
  abandon(record: LeaseCommitRecord): void {
    this.committing.delete(record.shard);
  }
}
