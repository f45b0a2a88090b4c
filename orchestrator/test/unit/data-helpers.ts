/**
 * Test factories for the data module: a minimal tar writer (ustar headers,
 * GNU 'L' and pax 'x' long names, directories) and temp directories.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One entry to write: a regular file unless `type` says otherwise ('5' directory). */
export interface TarInput {
  readonly name: string;
  readonly data?: string | Buffer;
  readonly type?: "0" | "5" | "2";
  /** How to store a name longer than 100 bytes. */
  readonly longName?: "gnu" | "pax";
}

function octal(h: Buffer, at: number, width: number, value: number): void {
  h.write(value.toString(8).padStart(width - 1, "0") + "\0", at, width, "latin1");
}

/** A 512-byte ustar header with a valid checksum. */
export function tarHeader(name: string, size: number, type: string): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, "utf8");
  octal(h, 100, 8, 0o644);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  octal(h, 124, 12, size);
  octal(h, 136, 12, 1_700_000_000);
  h.fill(0x20, 148, 156);
  h.write(type, 156, 1, "latin1");
  h.write("ustar\0", 257, 6, "latin1");
  h.write("00", 263, 2, "latin1");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148, 8, "latin1");
  return h;
}

function padded(data: Buffer): Buffer[] {
  const pad = (512 - (data.length % 512)) % 512;
  return [data, Buffer.alloc(pad)];
}

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bytes = Buffer.byteLength(body);
  let len = bytes + 1;
  while (String(len).length + bytes !== len) len = String(len).length + bytes;
  return `${len}${body}`;
}

/** The bytes of a tar archive holding `entries`, ended by two zero blocks. */
export function tarBytes(entries: readonly TarInput[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = Buffer.isBuffer(e.data) ? e.data : Buffer.from(e.data ?? "", "utf8");
    const type = e.type ?? "0";
    let name = e.name;
    if (Buffer.byteLength(name) > 100) {
      if (e.longName === "pax") {
        const pax = Buffer.from(paxRecord("path", name), "utf8");
        parts.push(tarHeader("PaxHeaders/x", pax.length, "x"), ...padded(pax));
      } else {
        const long = Buffer.from(name + "\0", "utf8");
        parts.push(tarHeader("././@LongLink", long.length, "L"), ...padded(long));
      }
      name = name.slice(0, 100);
    }
    parts.push(tarHeader(name, type === "0" ? data.length : 0, type));
    if (type === "0") parts.push(...padded(data));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** A fresh temp directory and its cleanup. */
export function tempDir(prefix = "clipfleet-data-"): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** `n` WebDataset samples `<prefix><i>.jpg/.txt` (the usual img2dataset layout), as tar entries. */
export function samples(n: number, prefix = "", extra: (i: number) => TarInput[] = () => []): TarInput[] {
  const out: TarInput[] = [];
  for (let i = 0; i < n; i++) {
    const key = `${prefix}${String(i).padStart(9, "0")}`;
    out.push({ name: `${key}.jpg`, data: Buffer.alloc(700 + i, 1) }, { name: `${key}.txt`, data: `caption ${i}` });
    out.push(...extra(i));
  }
  return out;
}
