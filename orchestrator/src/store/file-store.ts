/**
 * The default store: one JSON file per job under `<stateDir>/jobs/<id>/job.json`,
 * replaced atomically, so the directory stays readable after a SIGKILL or a
 * power loss at any moment. A lock file keeps a second orchestrator out.
 *
 * A file holds `{"revision": n, "job": {...}}`; revisions count the writes of
 * one record (a deleted and re-created job starts again at 1).
 */
import { mkdir, readdir, readFile, rmdir, unlink } from "node:fs/promises";
import path from "node:path";
import { ClipfleetError, type JobRecord } from "../domain/index.js";
import { fsyncDir, isTempFile, writeFileAtomic } from "../util/index.js";
import { decodeJob, encodeJob, parseJson } from "./codec.js";
import { StateDirLock } from "./lock.js";
import { checkExpectedRevision, checkJobId, RevisionConflictError, type JobStore, type StoredJob } from "./store.js";

/** The record file's name inside a job's directory. */
export const JOB_FILE = "job.json";

const LIST_BATCH = 32;

/** File-backed JobStore; construct with `FileJobStore.open`. */
export class FileJobStore implements JobStore {
  readonly jobsDir: string;
  /** Current revision per job (0: none), known once a put or delete ran; valid because we hold the lock. */
  private readonly revisions = new Map<string, number>();
  /** Per-job tail of queued writes: read-check-write of one job never interleaves. */
  private readonly queues = new Map<string, Promise<void>>();
  private closed = false;

  private constructor(
    readonly stateDir: string,
    private readonly lock: StateDirLock,
  ) {
    this.jobsDir = path.join(stateDir, "jobs");
  }

  /**
   * Creates the directories if needed, takes the state-dir lock (refusing if a
   * live orchestrator holds it) and removes temp files a crash left behind.
   */
  static async open(stateDir: string): Promise<FileJobStore> {
    const dir = path.resolve(stateDir);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const lock = await StateDirLock.acquire(dir);
    try {
      const store = new FileJobStore(dir, lock);
      await mkdir(store.jobsDir, { recursive: true, mode: 0o700 });
      await store.sweepTempFiles();
      return store;
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  describe(): string {
    return `file:${this.jobsDir}`;
  }

  async put(job: JobRecord, expectedRevision?: number): Promise<number> {
    this.checkOpen();
    checkJobId(job.id);
    checkExpectedRevision(expectedRevision);
    const data = encodeJob(job);
    return this.serial(job.id, async () => {
      const current = this.revisions.get(job.id) ?? (await this.readRevision(job.id));
      if (expectedRevision !== undefined && expectedRevision !== current) {
        // The same record already stored is a retried put that landed: success.
        const stored = current > 0 ? await this.read(job.id) : null;
        if (stored !== null && JSON.stringify(stored.job) === data) return stored.revision;
        throw new RevisionConflictError(job.id, expectedRevision, current);
      }
      const next = current + 1;
      const dir = this.jobDir(job.id);
      // Until the write is known to have landed (or not), the file is the truth.
      this.revisions.delete(job.id);
      if (current === 0) {
        await mkdir(dir, { recursive: true, mode: 0o700 });
        await fsyncDir(this.jobsDir);
      }
      await writeFileAtomic(path.join(dir, JOB_FILE), `{"revision":${next},"job":${data}}\n`);
      this.revisions.set(job.id, next);
      return next;
    });
  }

  async get(id: string): Promise<StoredJob | null> {
    this.checkOpen();
    checkJobId(id);
    return this.read(id);
  }

  async list(): Promise<JobRecord[]> {
    this.checkOpen();
    const ids = (await readdir(this.jobsDir, { withFileTypes: true }))
      .filter((e) => e.isDirectory() && !isTempFile(e.name))
      .map((e) => e.name)
      .sort();
    const jobs: JobRecord[] = [];
    for (let i = 0; i < ids.length; i += LIST_BATCH) {
      const batch = await Promise.all(ids.slice(i, i + LIST_BATCH).map((id) => this.read(id)));
      for (const stored of batch) if (stored !== null) jobs.push(stored.job);
    }
    return jobs;
  }

  async delete(id: string): Promise<void> {
    this.checkOpen();
    checkJobId(id);
    await this.serial(id, async () => {
      const dir = this.jobDir(id);
      try {
        await unlink(path.join(dir, JOB_FILE));
        await fsyncDir(dir);
      } catch (err) {
        if (!isMissing(err)) throw err;
      }
      this.revisions.set(id, 0);
      // The directory may hold other modules' files (logs); it goes only when empty.
      try {
        await rmdir(dir);
        await fsyncDir(this.jobsDir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== "ENOENT" && code !== "ENOTEMPTY" && code !== "EEXIST") throw err;
      }
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.queues.values());
    await this.lock.release();
  }

  private jobDir(id: string): string {
    return path.join(this.jobsDir, id);
  }

  private async read(id: string): Promise<StoredJob | null> {
    const file = path.join(this.jobDir(id), JOB_FILE);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if (isMissing(err)) return null;
      throw err;
    }
    const envelope = parseJson(text, file);
    const revision = (envelope as { revision?: unknown } | null)?.revision;
    if (typeof revision !== "number" || !Number.isSafeInteger(revision) || revision < 1) {
      throw new ClipfleetError("INTERNAL", `${file}: corrupt job record: revision is ${JSON.stringify(revision)}`);
    }
    return { job: decodeJob((envelope as { job?: unknown }).job, file, id), revision };
  }

  private async readRevision(id: string): Promise<number> {
    return (await this.read(id))?.revision ?? 0;
  }

  /** Runs `fn` after every earlier queued operation on job `id` has settled. */
  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.queues.get(id) ?? Promise.resolve();
    const run = prev.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(id, tail);
    void tail.then(() => {
      if (this.queues.get(id) === tail) this.queues.delete(id);
    });
    return run;
  }

  /** Leftover temp files are harmless to readers; removing them keeps the directory tidy. */
  private async sweepTempFiles(): Promise<void> {
    for (const entry of await readdir(this.jobsDir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const dir = this.jobDir(entry.name);
      for (const name of await readdir(dir)) {
        if (isTempFile(name)) await unlink(path.join(dir, name)).catch(() => undefined);
      }
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new ClipfleetError("INTERNAL", `job store ${this.describe()} used after close`);
  }
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}
