/**
 * Reading what a JSON-lines file (a stage's step history, a job's logs) got
 * since last time: from a byte offset to the last complete line, at most a
 * bounded number of bytes per read. The first read of a large file starts
 * near its end: a page shows the tail, not the whole history.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

/** Bytes one read takes at most. */
export const MAX_TAIL_READ_BYTES = 8 * 1024 * 1024;

/** A reader of one appended-to file. */
export class JsonlTail {
  private offset: number | null = null;

  constructor(
    private readonly path: string,
    private readonly firstReadBytes = MAX_TAIL_READ_BYTES,
  ) {}

  /** The complete lines added since the last call, parsed (a torn or bad line is skipped). */
  read<T>(): T[] {
    let fd: number;
    try {
      fd = openSync(this.path, "r");
    } catch {
      return [];
    }
    try {
      const size = fstatSync(fd).size;
      let start = this.offset ?? Math.max(0, size - this.firstReadBytes);
      let skipFirst = this.offset === null && start > 0;
      if (size < start) {
        // Truncated or replaced (a deleted job's files): start over.
        start = 0;
        skipFirst = false;
      }
      const len = Math.min(size - start, MAX_TAIL_READ_BYTES);
      if (len <= 0) {
        this.offset = start;
        return [];
      }
      const buf = Buffer.alloc(len);
      const got = readSync(fd, buf, 0, len, start);
      const lastNl = buf.lastIndexOf(0x0a, got - 1);
      if (lastNl < 0) {
        // No complete line yet (or one longer than a read: skip it).
        this.offset = len === MAX_TAIL_READ_BYTES ? start + got : start;
        return [];
      }
      this.offset = start + lastNl + 1;
      const lines = buf.subarray(0, lastNl).toString("utf8").split("\n");
      if (skipFirst) lines.shift();
      const out: T[] = [];
      for (const line of lines) {
        if (!line) continue;
        try {
          out.push(JSON.parse(line) as T);
        } catch {
          // a line torn by a crash mid-write
        }
      }
      return out;
    } finally {
      closeSync(fd);
    }
  }
}
