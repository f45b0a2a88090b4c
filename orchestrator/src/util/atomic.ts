/**
 * Crash-safe file replacement: a reader sees either the old or the new
 * content, never a mix, whenever the writer dies (SIGKILL, power loss).
 */
import { open, rename, unlink } from "node:fs/promises";
import path from "node:path";

let tempCounter = 0;

/** Temp files are dot-files ending in `.tmp`; readers never open them and `isTempFile` spots leftovers. */
export function isTempFile(name: string): boolean {
  return name.startsWith(".") && name.endsWith(".tmp");
}

/**
 * Replaces `file` with `data`: write a temp file in the same directory, fsync
 * it, rename it over the target (atomic within one file system), fsync the
 * directory so the rename itself survives a power loss.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}-${++tempCounter}.tmp`);
  const fh = await open(tmp, "wx", mode);
  try {
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

/** Makes a directory's entries (creations, renames, unlinks) durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
