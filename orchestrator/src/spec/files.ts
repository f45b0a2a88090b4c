/** Reading spec and presets files: one place for the size limit and the text checks. */
import { closeSync, existsSync, fstatSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { isUtf8 } from "node:buffer";
import { InvalidArgumentError, MAX_SPEC_BYTES } from "../domain/index.js";

/** Specs are small; anything larger is a wrong file (a dataset, a checkpoint). */
export { MAX_SPEC_BYTES };

/** Offset of the first byte that is not part of a well-formed UTF-8 sequence, or -1. */
function firstInvalidUtf8(buf: Uint8Array): number {
  let i = 0;
  while (i < buf.length) {
    const b = buf[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    const extra = b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : 0;
    if (extra === 0) return i;
    // Second-byte limits exclude overlong forms, surrogates and code points above U+10FFFF.
    const lo = b === 0xe0 ? 0xa0 : b === 0xf0 ? 0x90 : 0x80;
    const hi = b === 0xed ? 0x9f : b === 0xf4 ? 0x8f : 0xbf;
    for (let k = 1; k <= extra; k++) {
      const c = buf[i + k];
      if (c === undefined || c < (k === 1 ? lo : 0x80) || c > (k === 1 ? hi : 0xbf)) return i;
    }
    i += extra + 1;
  }
  return -1;
}

/** 1-based line and column (in characters) of a byte offset whose prefix is valid UTF-8. */
function position(buf: Buffer, offset: number): string {
  // lastIndexOf with a negative start would search from the end.
  const lineStart = offset === 0 ? 0 : buf.lastIndexOf(0x0a, offset - 1) + 1;
  let line = 1;
  for (let i = 0; i < lineStart; i++) if (buf[i] === 0x0a) line++;
  const column = buf.subarray(lineStart, offset).toString("utf8").length + 1;
  return `line ${line}, column ${column}`;
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/**
 * The text of `file`, refusing what cannot be a spec: a missing or unreadable
 * file, a directory, more than `limit` bytes, invalid UTF-8 or NUL bytes.
 * Every message starts with `file` as given. A UTF-8 BOM is dropped.
 */
export function readTextFile(file: string, limit: number = MAX_SPEC_BYTES): string {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (err) {
    throw openError(file, err);
  }
  let buf: Buffer;
  try {
    const stat = fstatSync(fd);
    if (stat.isDirectory()) throw new InvalidArgumentError(`${file}: is a directory, not a file`);
    if (!stat.isFile()) throw new InvalidArgumentError(`${file}: not a regular file`);
    if (stat.size > limit) throw new InvalidArgumentError(`${file}: too large (${mib(stat.size)}; the limit is ${mib(limit)})`);
    // Read one byte past the limit: the file may have grown since fstat.
    buf = Buffer.alloc(Math.min(stat.size, limit) + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buf, length, buf.length - length, null);
      if (n === 0) break;
      length += n;
      if (length === buf.length) break;
    }
    if (length > limit) throw new InvalidArgumentError(`${file}: too large (over the ${mib(limit)} limit)`);
    buf = buf.subarray(0, length);
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw err;
    throw openError(file, err);
  } finally {
    closeSync(fd);
  }
  if (!isUtf8(buf)) {
    const at = firstInvalidUtf8(buf);
    throw new InvalidArgumentError(`${file}: not UTF-8 text (invalid byte 0x${buf[at]!.toString(16).padStart(2, "0")} at ${position(buf, at)})`);
  }
  const nul = buf.indexOf(0);
  if (nul >= 0) throw new InvalidArgumentError(`${file}: binary file (NUL byte at ${position(buf, nul)})`);
  const text = buf.toString("utf8");
  return text.startsWith("\ufeff") ? text.slice(1) : text;
}

function openError(file: string, err: unknown): InvalidArgumentError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return new InvalidArgumentError(`${file}: no such file`, null, { cause: err });
  if (code === "EACCES" || code === "EPERM") return new InvalidArgumentError(`${file}: cannot read (permission denied)`, null, { cause: err });
  if (code === "EISDIR") return new InvalidArgumentError(`${file}: is a directory, not a file`, null, { cause: err });
  const detail = err instanceof Error ? err.message : String(err);
  return new InvalidArgumentError(`${file}: cannot read (${detail})`, null, { cause: err });
}

/** The config file of an open_clip model directory (what `clipfleet export --format open_clip` writes, and open_clip's `local-dir:` reads). */
export const OPEN_CLIP_CONFIG_NAME = "open_clip_config.json";

/**
 * Whether an init.checkpoint path names open_clip weights: a file (a
 * state_dict saved by torch, or an open_clip training checkpoint), or a
 * directory holding open_clip_config.json. Such weights are never signed by
 * an orchestrator, so they are always imported (hashed at submit).
 */
export function isOpenClipRef(path: string): boolean {
  try {
    return statSync(path).isFile() || existsSync(join(path, OPEN_CLIP_CONFIG_NAME));
  } catch {
    return false;
  }
}
