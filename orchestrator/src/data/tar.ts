/**
 * A header-only tar reader and WebDataset's sample grouping. Counting the
 * samples of a shard reads the 512-byte headers and seeks over member data,
 * so indexing a 1 GB shard of images reads a few MB.
 *
 * The grouping rule must match the worker's reader exactly (the plan
 * addresses samples as (shard, index in shard)); it is webdataset's
 * `tar_file_iterator` + `group_by_keys`:
 * - only regular files count (directories, links, pax and GNU long-name
 *   records are not members);
 * - names matching `__[^/]*__($|/)` (webdataset metadata) are skipped;
 * - key = path up to the first dot of the basename, extension = the rest,
 *   lower-cased (`d/0001.syn.json` -> key `d/0001`, extension `syn.json`);
 *   names without such a dot, and dot-files in any directory, are skipped;
 * - consecutive members with the same key form one sample.
 */
import { type FileHandle, open, stat } from "node:fs/promises";
import { EnvironmentError, InvalidArgumentError } from "../domain/index.js";

const BLOCK = 512;
/** Headers are read through a small window: after a large member we seek; small members share one read. */
const WINDOW = 8192;

/** One entry of a tar archive, as its (possibly pax- or GNU-extended) header describes it. */
export interface TarEntry {
  readonly name: string;
  /** Byte offset of the entry's data in the file. */
  readonly offset: number;
  readonly size: number;
  /** True for regular files (typeflag '0', NUL or '7'): the only entries WebDataset reads. */
  readonly isFile: boolean;
}

/** A member's sample key and extension, or null when WebDataset would skip the name. */
export function sampleKeyOf(name: string): { key: string; ext: string } | null {
  if (!name.includes("/") && name.startsWith("__") && name.endsWith("__")) return null;
  if (/^__[^/]*__($|\/)/.test(name)) return null;
  // A dot-file is not a member in any directory (webdataset's pattern alone would read `d/.x` as key `d/`).
  if (name.slice(name.lastIndexOf("/") + 1).startsWith(".")) return null;
  const m = /^((?:.*\/|)[^.]+)[.]([^/]*)$/.exec(name);
  if (!m) return null;
  return { key: m[1] ?? "", ext: (m[2] ?? "").toLowerCase() };
}

/** Sequential reader of a tar file's entries; data is read only on request. */
export class TarReader {
  private pos = 0;
  private window: Buffer = Buffer.alloc(0);
  private windowStart = 0;
  private entries = 0;
  private lastName: string | null = null;

  private constructor(
    /** The name messages give the file (the shard's path, also for a decompressed copy of a .tar.gz). */
    readonly path: string,
    private readonly fh: FileHandle,
    readonly fileSize: number,
  ) {}

  /** Opens `path`; a missing file is the user's error, other I/O failures the environment's. */
  static async open(path: string, name = path): Promise<TarReader> {
    let fh: FileHandle;
    try {
      fh = await open(path, "r");
    } catch (err) {
      throw ioError(name, err);
    }
    const st = await fh.stat();
    return new TarReader(name, fh, st.size);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** The next entry, or null at the end of the archive (zero block or end of file on a boundary). */
  async next(): Promise<TarEntry | null> {
    let longName: string | null = null;
    let pax: Map<string, string> | null = null;
    for (;;) {
      const at = this.pos;
      if (at >= this.fileSize) {
        if (this.fileSize === 0) throw this.fail("not a tar file (it is empty)");
        return null;
      }
      if (at + BLOCK > this.fileSize) {
        if (this.entries === 0) {
          await this.block(at); // for the gzip check
          throw this.notTar(at);
        }
        throw this.fail(`truncated tar (header at byte ${at} needs ${BLOCK} bytes, file has ${this.fileSize})`);
      }
      const h = await this.block(at);
      if (isZero(h)) return null;
      if (!checksumOk(h)) {
        if (this.entries === 0) throw this.notTar(at);
        throw this.fail(`corrupt tar (header at byte ${at} has a wrong checksum${this.afterLast()})`);
      }
      this.entries++;
      const type = String.fromCharCode(h[156] ?? 0);
      // pax records describe the next real entry, not another extension record.
      const extension = type === "L" || type === "K" || type === "x" || type === "g";
      const paxSize = extension ? undefined : pax?.get("size");
      const size = paxSize !== undefined ? Number(paxSize) : parseNumber(h.subarray(124, 136));
      if (!Number.isSafeInteger(size) || size < 0) {
        throw this.fail(`corrupt tar (header at byte ${at} has an invalid size field${this.afterLast()})`);
      }
      const name = pax?.get("path") ?? longName ?? headerName(h);
      const offset = at + BLOCK;
      const end = offset + size;
      if (end > this.fileSize) {
        throw this.fail(`truncated tar (member ${name} ends at byte ${end}, file has ${this.fileSize})`);
      }
      this.pos = offset + Math.ceil(size / BLOCK) * BLOCK;
      switch (type) {
        case "L":
          longName = cString(await this.readAt(offset, size));
          continue;
        case "x":
          pax = parsePax(await this.readAt(offset, size), () => this.fail(`corrupt tar (bad pax header at byte ${at})`));
          continue;
        case "g":
        case "K":
          // Global pax defaults and GNU long link names say nothing about
          // which regular files exist or how big they are.
          continue;
      }
      this.lastName = name;
      return { name, offset, size, isFile: type === "0" || type === "\0" || type === "7" };
    }
  }

  /** The data of `entry`. */
  async read(entry: TarEntry): Promise<Buffer> {
    return this.readAt(entry.offset, entry.size);
  }

  /** The header block at `at` (shorter only at the end of a file too short for a header). */
  private async block(at: number): Promise<Buffer> {
    if (at < this.windowStart || at + BLOCK > this.windowStart + this.window.length) {
      const len = Math.min(WINDOW, this.fileSize - at);
      this.window = await this.readAt(at, len);
      this.windowStart = at;
    }
    return this.window.subarray(at - this.windowStart, at - this.windowStart + BLOCK);
  }

  private async readAt(at: number, len: number): Promise<Buffer> {
    const buf = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await this.fh.read(buf, done, len - done, at + done);
      if (bytesRead === 0) throw this.fail(`truncated tar (file shrank to ${at + done} bytes while being read)`);
      done += bytesRead;
    }
    return buf;
  }

  private afterLast(): string {
    return this.lastName === null ? "" : `, after member ${this.lastName}`;
  }

  private notTar(at: number): InvalidArgumentError {
    const gz = this.window[0] === 0x1f && this.window[1] === 0x8b && this.windowStart === 0;
    // A .tar that is really gzip: say so, since a sizes.json would only move the failure to the worker.
    if (gz && !/\.(tar\.gz|tgz)$/i.test(this.path)) return this.fail("gzip-compressed data, but the name does not end in .tar.gz or .tgz; decompress it (gzip -dc < FILE > NEW.tar)");
    // A .tar.gz reaches here decompressed (manifest.ts withPlainTar): gzip again inside.
    if (gz) return this.fail("not a tar file once decompressed (it holds gzip data again)");
    return this.fail(`not a tar file (no valid tar header at byte ${at})`);
  }

  private fail(what: string): InvalidArgumentError {
    return new InvalidArgumentError(`${this.path}: ${what}`);
  }
}

/** Number of WebDataset samples in the tar file at `path` (headers only). */
export async function countTarSamples(path: string, name = path): Promise<number> {
  const reader = await TarReader.open(path, name);
  try {
    let samples = 0;
    let key: string | null = null;
    for (let e = await reader.next(); e !== null; e = await reader.next()) {
      if (!e.isFile) continue;
      const k = sampleKeyOf(e.name);
      if (k === null) continue;
      if (k.key !== key) {
        samples++;
        key = k.key;
      }
    }
    return samples;
  } finally {
    await reader.close();
  }
}

/** One sample's members (extension -> entry), in archive order. */
export interface TarSample {
  readonly key: string;
  readonly members: ReadonlyMap<string, TarEntry>;
}

/** The first `n` samples of a tar file, grouped as WebDataset does; `reader` stays open. */
export async function firstSamples(reader: TarReader, n: number): Promise<TarSample[]> {
  const out: TarSample[] = [];
  let current: { key: string; members: Map<string, TarEntry> } | null = null;
  for (let e = await reader.next(); e !== null; e = await reader.next()) {
    if (!e.isFile) continue;
    const k = sampleKeyOf(e.name);
    if (k === null) continue;
    if (current === null || current.key !== k.key) {
      if (current !== null) out.push(current);
      if (out.length === n) return out;
      current = { key: k.key, members: new Map() };
    }
    current.members.set(k.ext, e);
  }
  if (current !== null && out.length < n) out.push(current);
  return out;
}

/** Size and mtime of a file, mapping ENOENT to a user error naming it. */
export async function statFile(path: string): Promise<{ size: number; mtimeMs: number }> {
  try {
    const st = await stat(path);
    return { size: st.size, mtimeMs: st.mtimeMs };
  } catch (err) {
    throw ioError(path, err);
  }
}

/** ENOENT is the user's (a wrong path); anything else (EACCES, EIO) is the environment's. */
export function ioError(path: string, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return new InvalidArgumentError(`${path}: no such file`);
  const message = err instanceof Error ? err.message : String(err);
  return new EnvironmentError(`${path}: cannot read (${message})`, { cause: err });
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** POSIX checksum: the header's byte sum with the checksum field read as spaces (signed sums from old tars too). */
function checksumOk(h: Buffer): boolean {
  const stored = parseOctal(h.subarray(148, 156));
  if (stored === null) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : (h[i] ?? 0);
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

function parseOctal(field: Buffer): number | null {
  const text = field.toString("latin1").replace(/[\0 ]+$/, "").replace(/^[ \0]+/, "");
  if (!/^[0-7]+$/.test(text)) return null;
  return parseInt(text, 8);
}

/** Octal ASCII, or GNU base-256 (high bit set) for sizes beyond 8 GiB. */
function parseNumber(field: Buffer): number {
  const first = field[0] ?? 0;
  if (first & 0x80) {
    if (first === 0xff) return -1;
    let v = BigInt(first & 0x7f);
    for (let i = 1; i < field.length; i++) v = (v << 8n) | BigInt(field[i] ?? 0);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(v);
  }
  const text = field.toString("latin1").replace(/[\0 ]+$/, "").replace(/^[ \0]+/, "");
  if (text === "") return 0;
  return /^[0-7]+$/.test(text) ? parseInt(text, 8) : -1;
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString("utf8");
}

/** ustar joins `prefix/name`; the GNU format uses the prefix bytes for other fields. */
function headerName(h: Buffer): string {
  const name = cString(h.subarray(0, 100));
  const ustar = h.subarray(257, 263).toString("latin1") === "ustar\0";
  const prefix = ustar ? cString(h.subarray(345, 500)) : "";
  return prefix === "" ? name : `${prefix}/${name}`;
}

/** pax records: "<len> <key>=<value>\n", len counting the whole record. */
function parsePax(data: Buffer, bad: () => Error): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length && data[i] !== 0) {
    const space = data.indexOf(0x20, i);
    const len = space < 0 ? NaN : Number(data.subarray(i, space).toString("latin1"));
    if (!Number.isInteger(len) || len <= 0 || i + len > data.length) throw bad();
    const record = data.subarray(space + 1, i + len - 1).toString("utf8");
    const eq = record.indexOf("=");
    if (eq < 0) throw bad();
    out.set(record.slice(0, eq), record.slice(eq + 1));
    i += len;
  }
  return out;
}
