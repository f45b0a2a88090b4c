/**
 * The JobStore contract shared by the file store and the JetStream KV store.
 * Every write carries optimistic concurrency: a single orchestrator never
 * conflicts with itself, but two orchestrators pointed at one store (a
 * misconfiguration, or a failover that overlaps) must not silently overwrite
 * each other's view of a job.
 */
import { FailedPreconditionError, InvalidArgumentError, isValidJobId, type JobRecord } from "../domain/index.js";

/** A stored job and the revision it was read at (pass it back to `put` for compare-and-set). */
export interface StoredJob {
  job: JobRecord;
  revision: number;
}

/**
 * Durable job records. Revisions are opaque positive integers that only the
 * store interprets: compare them for equality, never do arithmetic on them.
 */
export interface JobStore {
  /**
   * Writes `job` under `job.id` and resolves to the new revision once the write
   * is durable. `expectedRevision`: undefined writes unconditionally; 0 requires
   * that no record exists; n > 0 requires the current revision to be n.
   * A mismatch rejects with a RevisionConflictError and writes nothing.
   * A put that rejected with UNAVAILABLE may or may not have landed; repeating
   * the same put is safe: if the first landed, the repeat resolves to its revision.
   */
  put(job: JobRecord, expectedRevision?: number): Promise<number>;
  /** The current record and its revision, or null when there is none. */
  get(id: string): Promise<StoredJob | null>;
  /** Every stored job, ordered by id (ids sort by creation time). */
  list(): Promise<JobRecord[]>;
  /** Removes the record; deleting a missing job is not an error. */
  delete(id: string): Promise<void>;
  /** Waits for in-flight writes, then releases locks and connections; the store is unusable after. */
  close(): Promise<void>;
  /** One line for logs and ServerInfo.store, e.g. `file:/var/lib/clipfleet/jobs`. */
  describe(): string;
}

/** A compare-and-set write lost: the record changed (or appeared) since the caller read it. */
export class RevisionConflictError extends FailedPreconditionError {
  readonly jobId: string;
  readonly expectedRevision: number;
  /** The store's current revision when it is known (0: no record), else null. */
  readonly actualRevision: number | null;
  constructor(jobId: string, expectedRevision: number, actualRevision: number | null) {
    const expected = expectedRevision === 0 ? "no record" : `revision ${expectedRevision}`;
    const actual =
      actualRevision === null ? "a different one" : actualRevision === 0 ? "no record" : `revision ${actualRevision}`;
    super(
      `job ${jobId}: write expected ${expected} but the store has ${actual}; ` +
        "the job was changed by someone else (is another orchestrator using this store?)",
    );
    this.jobId = jobId;
    this.expectedRevision = expectedRevision;
    this.actualRevision = actualRevision;
  }
}

/**
 * Job ids become file names and KV keys, so the store refuses anything that
 * could escape its directory or split a subject, whoever validated it before.
 */
export function checkJobId(id: string): void {
  if (!isValidJobId(id)) {
    throw new InvalidArgumentError(`job id ${JSON.stringify(id)} is not a valid id (letters, digits, '-' and '_')`, "id");
  }
}

/** Asserts a caller passed a usable expectedRevision (a programming error otherwise). */
export function checkExpectedRevision(expected: number | undefined): void {
  if (expected !== undefined && !(Number.isSafeInteger(expected) && expected >= 0)) {
    throw new RangeError(`expectedRevision must be a non-negative integer, got ${expected}`);
  }
}
