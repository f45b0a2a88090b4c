/**
 * Job logs: every line a rank writes, and the orchestrator's own lines about
 * the job, appended as JSON lines to <state-dir>/jobs/<id>/logs.jsonl, and
 * fanned out to followers (`clipfleet logs -f`).
 */
import { createReadStream, mkdirSync, openSync, closeSync, writeSync, existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

/** One log line of a job. rank -1 is the orchestrator. */
export interface LogEntry {
  readonly tsMs: number;
  readonly stage: string;
  readonly attempt: number;
  readonly rank: number;
  readonly stream: "stdout" | "stderr" | "orchestrator";
  readonly line: string;
}

export type LogListener = (entry: LogEntry) => void;

export class JobLogs {
  private readonly fds = new Map<string, number>();
  private readonly listeners = new Map<string, Set<LogListener>>();

  constructor(private readonly stateDir: string) {}

  path(jobId: string): string {
    return join(this.stateDir, "jobs", jobId, "logs.jsonl");
  }

  /** Appends a line (synchronously, so lines keep their order) and tells followers. */
  append(jobId: string, entry: LogEntry): void {
    let fd = this.fds.get(jobId);
    if (fd === undefined) {
      mkdirSync(join(this.stateDir, "jobs", jobId), { recursive: true, mode: 0o700 });
      // A rank's output may hold what its user would not show others: the owner's alone.
      fd = openSync(this.path(jobId), "a", 0o600);
      this.fds.set(jobId, fd);
    }
    writeSync(fd, JSON.stringify(entry) + "\n");
    for (const l of this.listeners.get(jobId) ?? []) l(entry);
  }

  /** Follow new lines of a job; returns the function that stops following. */
  follow(jobId: string, listener: LogListener): () => void {
    let set = this.listeners.get(jobId);
    if (!set) {
      set = new Set();
      this.listeners.set(jobId, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Every stored line of a job, in order (a torn last line after a crash is skipped). */
  async read(jobId: string, filter: (e: LogEntry) => boolean = () => true): Promise<LogEntry[]> {
    const file = this.path(jobId);
    if (!existsSync(file)) return [];
    const out: LogEntry[] = [];
    const rl = createInterface({ input: createReadStream(file, "utf8"), crlfDelay: Infinity });
    for await (const line of rl) {
      if (!line) continue;
      try {
        const e = JSON.parse(line) as LogEntry;
        if (filter(e)) out.push(e);
      } catch {
        // a line torn by a crash mid-write
      }
    }
    return out;
  }

  /** Closes the file of a finished job. */
  close(jobId: string): void {
    const fd = this.fds.get(jobId);
    if (fd !== undefined) closeSync(fd);
    this.fds.delete(jobId);
  }

  closeAll(): void {
    for (const id of [...this.fds.keys()]) this.close(id);
  }
}
