/**
 * A JobStore in memory for unit tests, with the store contract's
 * compare-and-set revisions, injectable failures, writes held back at a
 * gate, and a record of concurrent writes.
 */
import type { JobRecord } from "../../src/domain/index.js";
import { RevisionConflictError, type JobStore, type StoredJob } from "../../src/store/index.js";

/** A write the test can hold back: put() waits on the gate of its job while one is set. */
export interface Gate {
  promise: Promise<void>;
  open: () => void;
}

export function gate(): Gate {
  let open: () => void = () => undefined;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/** JobStore in memory, with compare-and-set, injectable failures and gates, and a record of concurrent writes. */
export class MemoryStore implements JobStore {
  readonly records = new Map<string, StoredJob>();
  readonly gates = new Map<string, Gate>();
  readonly writes: { id: string; revision: number; nextEventSeq: number }[] = [];
  failNext: Error | null = null;
  inFlight = new Map<string, number>();
  maxInFlightPerJob = 0;

  async put(job: JobRecord, expectedRevision?: number): Promise<number> {
    const n = (this.inFlight.get(job.id) ?? 0) + 1;
    this.inFlight.set(job.id, n);
    this.maxInFlightPerJob = Math.max(this.maxInFlightPerJob, n);
    try {
      await Promise.resolve(); // a write is never synchronous
      const g = this.gates.get(job.id);
      if (g) await g.promise;
      if (this.failNext) {
        const err = this.failNext;
        this.failNext = null;
        throw err;
      }
      const current = this.records.get(job.id)?.revision ?? 0;
      if (expectedRevision !== undefined && expectedRevision !== current) throw new RevisionConflictError(job.id, expectedRevision, current);
      const revision = current + 1;
      this.records.set(job.id, { job: structuredClone(job), revision });
      this.writes.push({ id: job.id, revision, nextEventSeq: job.nextEventSeq });
      return revision;
    } finally {
      this.inFlight.set(job.id, (this.inFlight.get(job.id) ?? 1) - 1);
    }
  }
  get(id: string): Promise<StoredJob | null> {
    const r = this.records.get(id);
    return Promise.resolve(r ? structuredClone(r) : null);
  }
  list(): Promise<JobRecord[]> {
    return Promise.resolve([...this.records.values()].map((r) => structuredClone(r.job)).sort((a, b) => a.id.localeCompare(b.id)));
  }
  delete(id: string): Promise<void> {
    this.records.delete(id);
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  describe(): string {
    return "memory";
  }
}
