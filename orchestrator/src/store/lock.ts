/**
 * One orchestrator per state directory. The lock file names its holder (pid,
 * process start time, boot id, host) so a lock left by a dead process is
 * recognised as stale and taken over, while a live holder gets a message
 * naming its pid. The start time and boot id catch pid reuse: in a restarted
 * container the new orchestrator often gets the very pid of the old one.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { link, open, readFile, unlink } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ClipfleetError, FailedPreconditionError } from "../domain/index.js";
import { fsyncDir } from "../util/index.js";

/** What a lock file records about its holder. */
export interface LockHolder {
  pid: number;
  /** Process start time in clock ticks since boot (/proc/<pid>/stat field 22); null off Linux. */
  startTicks: number | null;
  bootId: string | null;
  hostname: string;
  startedAtMs: number;
  /** Random per acquisition, so release never removes a lock someone else took over. */
  nonce: string;
}

/** The lock file's name inside the state directory. */
export const LOCK_FILE = "orchestrator.lock";

/** An acquired state-directory lock; `release` it on shutdown (a crash leaves it stale, which is fine). */
export class StateDirLock {
  private released = false;

  private constructor(
    readonly file: string,
    readonly holder: LockHolder,
  ) {}

  /**
   * Takes `<stateDir>/orchestrator.lock`, replacing a stale one. Rejects with a
   * FailedPreconditionError naming the holder when a live process has it.
   */
  static async acquire(stateDir: string): Promise<StateDirLock> {
    const file = path.join(stateDir, LOCK_FILE);
    const holder: LockHolder = {
      pid: process.pid,
      startTicks: processStartTicks(process.pid),
      bootId: bootId(),
      hostname: os.hostname(),
      startedAtMs: Date.now(),
      nonce: randomBytes(8).toString("hex"),
    };
    const content = `${JSON.stringify(holder)}\n`;
    // Takeover of a stale lock races with other starters; each round either
    // wins the link or re-reads a fresher holder, so a few rounds suffice.
    for (let round = 0; round < 5; round++) {
      if (await createExclusive(file, content)) {
        await fsyncDir(stateDir);
        return new StateDirLock(file, holder);
      }
      let raw: string;
      try {
        raw = await readFile(file, "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // released meanwhile
        throw err;
      }
      const other = parseHolder(raw);
      if (other === null) {
        throw new FailedPreconditionError(
          `${file}: unreadable lock file; remove it if no orchestrator is using ${stateDir}`,
        );
      }
      if (!isStale(other)) throw heldError(stateDir, other);
      // Remove the stale lock only if it is still the one judged stale: a
      // concurrent starter may have replaced it with its own live lock.
      const now = await readFile(file, "utf8").catch(() => null);
      if (now === raw) await unlink(file).catch(() => undefined);
    }
    throw new ClipfleetError("INTERNAL", `${file}: could not take the lock after several attempts; retry`);
  }

  /** Removes the lock file if it is still ours. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const raw = await readFile(this.file, "utf8").catch(() => null);
    if (raw !== null && parseHolder(raw)?.nonce === this.holder.nonce) {
      await unlink(this.file);
      await fsyncDir(path.dirname(this.file));
    }
  }
}

/**
 * Creates `file` with `content` only if it does not exist. The content goes
 * to a temp file first and is hard-linked into place, so the lock file never
 * exists half-written (an O_EXCL create followed by a write would leave an
 * empty lock if the process died in between).
 */
async function createExclusive(file: string, content: string): Promise<boolean> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  const fh = await open(tmp, "wx", 0o644);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await link(tmp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  } finally {
    await unlink(tmp);
  }
}

function parseHolder(raw: string): LockHolder | null {
  try {
    const v = JSON.parse(raw) as Partial<LockHolder>;
    if (typeof v.pid !== "number" || typeof v.hostname !== "string" || typeof v.nonce !== "string") return null;
    return {
      pid: v.pid,
      startTicks: typeof v.startTicks === "number" ? v.startTicks : null,
      bootId: typeof v.bootId === "string" ? v.bootId : null,
      hostname: v.hostname,
      startedAtMs: typeof v.startedAtMs === "number" ? v.startedAtMs : 0,
      nonce: v.nonce,
    };
  } catch {
    return null;
  }
}

/** A holder on another host cannot be checked, so it counts as live. */
function isStale(h: LockHolder): boolean {
  if (h.hostname !== os.hostname()) return false;
  const boot = bootId();
  if (h.bootId !== null && boot !== null && h.bootId !== boot) return true;
  if (!processExists(h.pid)) return true;
  const ticks = processStartTicks(h.pid);
  return h.startTicks !== null && ticks !== null && ticks !== h.startTicks;
}

function heldError(stateDir: string, h: LockHolder): FailedPreconditionError {
  const who = h.pid === process.pid ? "this process" : `pid ${h.pid}`;
  const since = h.startedAtMs > 0 ? `, since ${new Date(h.startedAtMs).toISOString()}` : "";
  return new FailedPreconditionError(
    `state dir ${stateDir} is in use by another orchestrator (${who} on ${h.hostname}${since}); ` +
      "stop it or choose another --state-dir",
  );
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM"; // alive, owned by another user
  }
}

/** Start time of `pid` in clock ticks since boot, or null where /proc is unavailable. */
export function processStartTicks(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[19]); // field 22 overall; fields[0] is field 3
    return Number.isFinite(ticks) ? ticks : null;
  } catch {
    return null;
  }
}

function bootId(): string | null {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return null;
  }
}
