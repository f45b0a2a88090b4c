/**
 * The ledger: the orchestrator's in-memory view of every job, kept equal to
 * the store. Mutations of one job are serialised; each is persisted before
 * its events are published (and so before anyone acts on them).
 */
import { isTerminal, NotFoundError, UnavailableError, type Clock, type JobEvent, type JobRecord, type JobState } from "../domain/index.js";
import type { EventBus } from "../events/index.js";
import type { JobStore } from "../store/index.js";
import { note, transition, type TransitionFacts, type TransitionResult } from "./lifecycle.js";

interface Entry {
  job: JobRecord;
  revision: number | undefined;
}

export class JobLedger {
  private readonly entries = new Map<string, Entry>();
  private readonly queues = new Map<string, Promise<unknown>>();
  /** Set by close(): nothing reaches the store or the bus after it (they are closed next). */
  private closed = false;

  constructor(
    private readonly store: JobStore,
    private readonly bus: EventBus,
    private readonly clock: Clock,
  ) {}

  /** Reads every job from the store (at start-up). */
  async load(): Promise<JobRecord[]> {
    const jobs = await this.store.list();
    for (const job of jobs) {
      const got = await this.store.get(job.id);
      if (got) this.entries.set(job.id, { job: got.job, revision: got.revision });
    }
    return [...this.entries.values()].map((e) => e.job);
  }

  has(id: string): boolean {
    return this.entries.has(id);
  }

  /** The current record; throws NOT_FOUND for an unknown id or a job being deleted (tombstoned). */
  get(id: string): JobRecord {
    const job = this.getTombstoned(id);
    if (job.deletingSinceMs !== undefined) throw new NotFoundError(`job ${id} not found (its deletion was interrupted; \`clipfleet delete ${id}\` finishes it)`);
    return job;
  }

  /** The current record, a tombstoned one too (for `delete`, which finishes it); NOT_FOUND for an unknown id. */
  getTombstoned(id: string): JobRecord {
    const e = this.entries.get(id);
    if (!e) throw new NotFoundError(`job ${id} not found`);
    return e.job;
  }

  /** Every job but those being deleted, oldest first. */
  list(): JobRecord[] {
    return [...this.entries.values()]
      .map((e) => e.job)
      .filter((j) => j.deletingSinceMs === undefined)
      .sort((a, b) => a.createdAtMs - b.createdAtMs);
  }

  /** Removes a job's record from the store, then from memory (the last step of `delete`). */
  async remove(id: string): Promise<void> {
    await this.serial(id, async () => {
      await this.store.delete(id);
      this.entries.delete(id);
    });
  }

  /** Persists a new job, then publishes its first events. */
  async create(job: JobRecord, events: JobEvent[]): Promise<JobRecord> {
    return this.serial(job.id, async () => {
      const revision = await this.store.put(job);
      this.entries.set(job.id, { job, revision });
      await this.publish(events);
      return job;
    });
  }

  /** Applies a state transition of one stage (see lifecycle.transition). */
  transition(id: string, stage: string, to: JobState, reason: string, facts: TransitionFacts = {}): Promise<JobRecord> {
    return this.apply(id, (job) => {
      const current = job.stages.find((s) => s.name === stage)?.state;
      if (facts.unlessTerminal && current !== undefined && isTerminal(current)) return null;
      return transition(job, stage, to, reason, this.clock.now(), facts);
    });
  }

  /** Records a fact as an event, with optional changes to the stage. */
  note(id: string, stage: string, type: string, reason: string, facts: TransitionFacts = {}): Promise<JobRecord> {
    return this.apply(id, (job) => note(job, stage, type, reason, this.clock.now(), facts));
  }

  /** Changes that are not events (progress, pids): persisted, nothing published. */
  update(id: string, change: (job: JobRecord) => void): Promise<JobRecord> {
    return this.apply(id, (job) => {
      const next = structuredClone(job);
      change(next);
      next.updatedAtMs = this.clock.now();
      return { job: next, events: [] };
    });
  }

  /**
   * The general form: `fn` computes the next record from the current one
   * (or returns null to change nothing); it runs after every earlier mutation
   * of the same job has been persisted.
   */
  apply(id: string, fn: (job: JobRecord) => TransitionResult | null): Promise<JobRecord> {
    return this.serial(id, async () => {
      const entry = this.entries.get(id);
      if (!entry) throw new NotFoundError(`job ${id} not found`);
      const result = fn(entry.job);
      if (!result) return entry.job;
      const revision = await this.store.put(result.job, entry.revision);
      this.entries.set(id, { job: result.job, revision });
      await this.publish(result.events);
      return result.job;
    });
  }

  /** Publishes events that are not persisted in the record (step progress); dropped once closed (nobody is left to watch). */
  async publishTransient(event: JobEvent): Promise<void> {
    if (this.closed) return;
    await this.bus.publish(event);
  }

  /** Waits for every queued mutation to finish. */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.queues.values()]);
  }

  /**
   * The orchestrator is going away: later mutations are refused (UNAVAILABLE)
   * without touching the store or the bus, and this resolves once every
   * mutation already queued has been persisted and published. The store and
   * the bus may be closed after it; a straggler (a rank's last report, a
   * write that was waiting on a slow store) can no longer reach them.
   */
  async close(): Promise<void> {
    this.closed = true;
    // A mutation queued behind another is in that job's tail: loop until no tail is left.
    while (this.queues.size > 0) await this.drain();
  }

  private async publish(events: JobEvent[]): Promise<void> {
    for (const e of events) await this.bus.publish(e);
  }

  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new UnavailableError(`job ${id}: not changed, the orchestrator is shutting down`));
    const prev = this.queues.get(id) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.queues.set(id, tail);
    void tail.then(() => {
      if (this.queues.get(id) === tail) this.queues.delete(id);
    });
    return run;
  }
}
