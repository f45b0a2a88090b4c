/**
 * JobStore on a NATS JetStream key-value bucket: the store to use when the
 * orchestrator's state must survive the loss of its machine (a 3-replica
 * bucket on a 3-server cluster, see deploy/nats/README.md). Key `jobs.<id>`,
 * value the record's JSON, revision the KV revision (compare-and-set through
 * the server's expected-last-subject-sequence check).
 *
 * While the client is reconnecting, operations wait for the reconnect (up to
 * the request timeout) instead of being sent: nats.js discards what it
 * buffered during a disconnect, so a request sent then would only time out.
 * Requests nobody answered (no stream leader during an election) are retried
 * within the same budget.
 */
import { setTimeout as delay } from "node:timers/promises";
import { Events, type KV, type NatsConnection } from "nats";
import { ClipfleetError, EnvironmentError, UnavailableError, type JobRecord } from "../domain/index.js";
import { connectNats, natsTarget, type NatsTarget } from "../nats/index.js";
import { decodeJob, encodeJob, parseJson } from "./codec.js";
import { checkExpectedRevision, checkJobId, RevisionConflictError, type JobStore, type StoredJob } from "./store.js";

/** Bucket settings; they apply when the bucket is created, an existing bucket is used as it is. */
export interface NatsKvStoreOptions {
  /** Default "clipfleet-jobs". */
  bucket?: string;
  /** JetStream replicas (1, 3 or 5; at most the cluster size). Default 1. */
  replicas?: number;
  /** Revisions kept per key; older ones help post-mortems. Default 1. */
  history?: number;
  /** Timeout of each JetStream request in ms. Default 5000. */
  timeoutMs?: number;
  /** How long opening retries while a cluster forms (no placement peers, no leader yet), in ms. Default 30000. */
  formingTimeoutMs?: number;
}

/** The default bucket name. */
export const DEFAULT_BUCKET = "clipfleet-jobs";

const KEY_PREFIX = "jobs.";
/** JetStream API error: the expected last sequence of the subject did not match. */
const WRONG_LAST_SEQUENCE = 10071;

/** NATS-backed JobStore; construct with `NatsKvJobStore.open`. */
export class NatsKvJobStore implements JobStore {
  private closed = false;
  /** Set while the connection is down; resolved (and cleared) on reconnect or close. */
  private down: { promise: Promise<void>; resolve: () => void } | null = null;
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder();

  private constructor(
    readonly url: string,
    readonly bucket: string,
    /** Replicas of the bucket as the server reports them (may differ from the option if it existed). */
    readonly replicas: number,
    private readonly nc: NatsConnection,
    private readonly kv: KV,
    private readonly timeoutMs: number,
  ) {
    void this.trackConnection();
  }

  /**
   * Connects to `server` (a URL, one server or a comma-separated list, or a
   * target with TLS and credentials from nats/) and binds the bucket,
   * creating it if absent. Unreachable servers reject with an
   * UnavailableError naming the URL (never its credentials), refused
   * credentials or TLS with an UnauthenticatedError; a server without
   * JetStream with an EnvironmentError.
   */
  static async open(server: string | NatsTarget, options: NatsKvStoreOptions = {}): Promise<NatsKvJobStore> {
    const target = typeof server === "string" ? natsTarget(server, "store") : server;
    const url = target.url;
    const bucket = options.bucket ?? DEFAULT_BUCKET;
    // The store is the system of record: ride out NATS outages rather than give up.
    const nc = await connectNats(target, "job store", { name: "clipfleet-store", maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    const timeoutMs = options.timeoutMs ?? 5000;
    // A cluster that is still forming answers "no suitable peers for placement" or "JetStream
    // system temporarily unavailable": both pass within seconds, so retry them until a deadline.
    // (A 503, no responders, is a server without JetStream: said at once.)
    const deadline = Date.now() + (options.formingTimeoutMs ?? 30_000);
    for (let wait = 100; ; wait = Math.min(2000, wait * 2)) {
      try {
        const js = nc.jetstream({ timeout: timeoutMs });
        const kv = await js.views.kv(bucket, {
          history: options.history ?? 1,
          replicas: options.replicas ?? 1,
          // Direct gets may be answered by a lagging replica; a read followed by
          // a compare-and-set needs the leader's current revision.
          allow_direct: false,
        });
        const status = await kv.status();
        return new NatsKvJobStore(url, bucket, status.replicas, nc, kv, timeoutMs);
      } catch (err) {
        const forming = natsCode(err) !== "503" && /no suitable peers|temporarily unavailable/i.test((err as Error).message ?? "");
        if (forming && Date.now() + wait < deadline) {
          await delay(wait);
          continue;
        }
        await nc.close();
        if (natsCode(err) === "503") {
          throw new EnvironmentError(
            `job store: NATS at ${url} has no JetStream; start nats-server with -js (see deploy/nats/README.md)`,
            { cause: err },
          );
        }
        throw mapError(err, `job store: NATS at ${url}: cannot open bucket ${bucket}${forming ? " (the cluster did not become ready in time)" : ""}`);
      }
    }
  }

  describe(): string {
    return `nats-kv:${this.url} bucket=${this.bucket} replicas=${this.replicas}`;
  }

  async put(job: JobRecord, expectedRevision?: number): Promise<number> {
    this.checkOpen();
    checkJobId(job.id);
    checkExpectedRevision(expectedRevision);
    const key = KEY_PREFIX + job.id;
    const data = this.encoder.encode(encodeJob(job));
    try {
      return await this.call(() => {
        if (expectedRevision === undefined) return this.kv.put(key, data);
        // create() also succeeds over a delete marker, which update(key, _, 0) would refuse.
        if (expectedRevision === 0) return this.kv.create(key, data);
        return this.kv.update(key, data, expectedRevision);
      });
    } catch (err) {
      const apiError = (err as { api_error?: { err_code?: number; description?: string } }).api_error;
      if (apiError?.err_code !== WRONG_LAST_SEQUENCE) throw mapError(err, `job store ${this.url}: put ${key}`);
      // A retry of a put whose reply was lost (UNAVAILABLE) finds its own
      // write: that is success, not a conflict.
      const current = await this.call(() => this.kv.get(key)).catch(() => null);
      if (current?.operation === "PUT" && Buffer.compare(current.value, data) === 0) return current.revision;
      // "wrong last sequence: 42" carries the current revision.
      const m = /wrong last sequence: (\d+)/.exec(apiError.description ?? "");
      throw new RevisionConflictError(job.id, expectedRevision ?? 0, m ? Number(m[1]) : null);
    }
  }

  async get(id: string): Promise<StoredJob | null> {
    this.checkOpen();
    checkJobId(id);
    const key = KEY_PREFIX + id;
    let entry;
    try {
      entry = await this.call(() => this.kv.get(key));
    } catch (err) {
      throw mapError(err, `job store ${this.url}: get ${key}`);
    }
    if (entry === null || entry.operation !== "PUT") return null;
    const where = `NATS KV ${this.bucket} key ${key}`;
    const job = decodeJob(parseJson(this.decoder.decode(entry.value), where), where, id);
    return { job, revision: entry.revision };
  }

  async list(): Promise<JobRecord[]> {
    this.checkOpen();
    let ids: string[];
    try {
      ids = await this.call(async () => {
        const keys: string[] = [];
        for await (const key of await this.kv.keys(`${KEY_PREFIX}*`)) keys.push(key.slice(KEY_PREFIX.length));
        return keys;
      });
    } catch (err) {
      throw mapError(err, `job store ${this.url}: list keys of ${this.bucket}`);
    }
    ids.sort();
    // Requests pipeline on the one connection; a key deleted meanwhile reads as null.
    const stored = await Promise.all(ids.map((id) => this.get(id)));
    return stored.filter((s): s is StoredJob => s !== null).map((s) => s.job);
  }

  async delete(id: string): Promise<void> {
    this.checkOpen();
    checkJobId(id);
    try {
      // purge, not delete: drops the key's history too (records hold the job's token).
      await this.call(() => this.kv.purge(KEY_PREFIX + id));
    } catch (err) {
      throw mapError(err, `job store ${this.url}: delete ${KEY_PREFIX}${id}`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Every write is a request the caller awaits, so nothing is left to flush.
    await this.nc.close();
  }

  /** Follows the client's status stream for the store's lifetime. */
  private async trackConnection(): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type === Events.Disconnect && this.down === null) {
        let resolve = (): void => undefined;
        const promise = new Promise<void>((r) => (resolve = r));
        this.down = { promise, resolve };
      } else if (status.type === Events.Reconnect && this.down !== null) {
        this.down.resolve();
        this.down = null;
      }
    }
    this.down?.resolve(); // closed: let waiters fail on the closed connection
  }

  /**
   * Runs one KV operation once connected. "No responders" (503) means no
   * server took the request, typically while the stream elects a leader:
   * nothing was applied, so it is retried with backoff within the timeout.
   */
  private async call<T>(op: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.timeoutMs;
    for (let backoff = 50; ; backoff = Math.min(backoff * 2, 500)) {
      await this.connected();
      try {
        return await op();
      } catch (err) {
        if (natsCode(err) !== "503" || Date.now() + backoff > deadline) throw err;
      }
      await delay(backoff);
    }
  }

  /** Waits out a reconnect, or rejects with UNAVAILABLE after the request timeout. */
  private async connected(): Promise<void> {
    const down = this.down;
    if (down === null) return;
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), this.timeoutMs)));
    const late = await Promise.race([down.promise.then(() => false), gaveUp]);
    clearTimeout(timer);
    if (late) {
      throw new UnavailableError(`job store: NATS at ${this.url} unreachable for ${this.timeoutMs} ms (reconnecting)`);
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new ClipfleetError("INTERNAL", `job store ${this.describe()} used after close`);
  }
}

function natsCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** Client error codes that mean "NATS cannot be reached or did not answer in time". */
const UNAVAILABLE_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_DRAINING",
  "CONNECTION_REFUSED",
  "CONNECTION_TIMEOUT",
  "DISCONNECT",
  "TIMEOUT",
  "503", // no responders: JetStream has no leader for the stream right now
]);

/** Connection trouble becomes UNAVAILABLE (retryable); anything else (API refusals, limits) INTERNAL. */
function mapError(err: unknown, context: string): ClipfleetError {
  if (err instanceof ClipfleetError) return err;
  const message = `${context}: ${(err as Error).message}`;
  const code = natsCode(err);
  if (code !== undefined && UNAVAILABLE_CODES.has(code)) return new UnavailableError(message, { cause: err });
  return new ClipfleetError("INTERNAL", message, { cause: err });
}
