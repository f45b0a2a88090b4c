/**
 * Sample counts of shards the orchestrator cannot list: http(s):// and
 * pipe: sources, and `data.index` directories written by `clipfleet data
 * index`. Shards are never downloaded at submit: counts come from small
 * sidecars (`sizes.json` next to http(s) shards, one request per directory,
 * or img2dataset's `<stem>_stats.json`) or from the index directory. The
 * sidecars are hostile input: every response is size-capped, time-limited
 * and type-checked.
 */
import { readFile } from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { InvalidArgumentError } from "../domain/index.js";

/** Largest sidecar (sizes.json, _stats.json) read over HTTP, and largest index.json read from disk. */
export const MAX_SIDECAR_BYTES = 16 << 20;
const MAX_INDEX_BYTES = 1 << 30;
/** How long one sidecar request may take. */
export const SIDECAR_TIMEOUT_MS = 15_000;

/** True for shards read through the workers' shard cache from elsewhere: http(s):// and pipe:. */
export function isRemote(url: string): boolean {
  return /^(https?:\/\/|pipe:)/i.test(url);
}

/** True for gzip-compressed shards (`.tar.gz`, `.tgz`). */
export function isGzipName(url: string): boolean {
  return /\.(tar\.gz|tgz)$/i.test(url);
}

/** How index.json names a shard: remote URLs as given, local paths absolute (the worker's `index_key`). */
export function indexKey(url: string): string {
  if (isRemote(url)) return url;
  const path = url.replace(/^file:(\/\/)?/i, "");
  return isAbsolute(path) ? path : resolve(path);
}

/** One shard of an index directory. */
export interface IndexEntry {
  readonly samples: number;
  readonly bytes: number;
  readonly sha256: string | null;
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Checks a parsed `index.json`; `where` names it in messages. */
export function parseIndex(data: unknown, where: string): Map<string, IndexEntry> {
  if (!isRecord(data) || data.version !== 1 || !isRecord(data.shards)) {
    throw new InvalidArgumentError(`${where}: expected {"version": 1, "shards": {...}} (written by clipfleet data index)`);
  }
  const out = new Map<string, IndexEntry>();
  for (const [url, e] of Object.entries(data.shards)) {
    if (!isRecord(e) || !isCount(e.samples) || !isCount(e.bytes) || !(e.sha256 === undefined || e.sha256 === null || (typeof e.sha256 === "string" && /^[0-9a-f]{64}$/.test(e.sha256)))) {
      throw new InvalidArgumentError(`${where}: shard ${JSON.stringify(url.slice(0, 200))}: expected integer samples and bytes >= 0 and a sha256 hex digest`);
    }
    out.set(url, { samples: e.samples, bytes: e.bytes, sha256: typeof e.sha256 === "string" ? e.sha256 : null });
  }
  return out;
}

/** Checks a parsed open_clip `sizes.json` (shard base name -> count). */
export function parseSizes(data: unknown, where: string): Map<string, number> {
  if (!isRecord(data)) throw new InvalidArgumentError(`${where}: expected an object mapping shard names to sample counts`);
  const out = new Map<string, number>();
  for (const [name, v] of Object.entries(data)) {
    if (!isCount(v)) throw new InvalidArgumentError(`${where}: ${JSON.stringify(name.slice(0, 200))}: expected an integer >= 0, got ${JSON.stringify(v)?.slice(0, 80)}`);
    out.set(name, v);
  }
  return out;
}

/** The `successes` count of a parsed img2dataset `_stats.json`. */
export function parseStats(data: unknown, where: string): number {
  const v = isRecord(data) ? data.successes : undefined;
  if (!isCount(v)) throw new InvalidArgumentError(`${where}: successes: expected an integer >= 0, got ${JSON.stringify(v)?.slice(0, 80) ?? "nothing"}`);
  return v;
}

/** The shards of a `clipfleet data index` directory (`data.index`). */
export async function readIndexDir(dir: string): Promise<Map<string, IndexEntry>> {
  const path = join(dir, "index.json");
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InvalidArgumentError(`data.index: ${path} ${code === "ENOENT" ? "does not exist (write it with clipfleet data index)" : `cannot be read (${code ?? String(err)})`}`, "data.index");
  }
  if (text.length > MAX_INDEX_BYTES) throw new InvalidArgumentError(`data.index: ${path} is larger than ${MAX_INDEX_BYTES} bytes`, "data.index");
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`data.index: ${path}: invalid JSON (${(err as Error).message})`, "data.index");
  }
  return parseIndex(data, `data.index: ${path}`);
}

/** A JSON sidecar over HTTP: undefined on 404/410, the parsed body otherwise; capped and time-limited. */
export async function fetchJson(url: string, limit = MAX_SIDECAR_BYTES, timeoutMs = SIDECAR_TIMEOUT_MS): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: "follow" });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new InvalidArgumentError(`${url}: cannot be fetched (${cause?.code ?? cause?.message ?? (err as Error).message})`);
  }
  if (res.status === 404 || res.status === 410) {
    await res.body?.cancel();
    return undefined;
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new InvalidArgumentError(`${url}: HTTP ${res.status}`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  if (res.body !== null) {
    for await (const chunk of res.body) {
      total += (chunk as Uint8Array).length;
      if (total > limit) {
        throw new InvalidArgumentError(`${url}: larger than ${limit} bytes`);
      }
      chunks.push(Buffer.from(chunk as Uint8Array));
    }
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8")) as unknown;
  } catch (err) {
    throw new InvalidArgumentError(`${url}: invalid JSON (${(err as Error).message})`);
  }
}

/**
 * Counts of remote shards (indices into `urls`), from the index or the
 * sidecars; a shard with neither is a one-line user error naming `field`.
 */
export async function remoteCounts(urls: readonly string[], which: readonly number[], index: Map<string, IndexEntry> | null, field: string, pattern: (i: number) => string, concurrency = 8): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  const http: number[] = [];
  for (const i of which) {
    const url = urls[i] as string;
    const known = index?.get(indexKey(url));
    if (known !== undefined) out.set(i, known.samples);
    else if (/^https?:\/\//i.test(url)) http.push(i);
    else throw needIndex(field, url, pattern(i), index !== null);
  }
  const dirs = new Map<string, Promise<Map<string, number> | null>>();
  const sizesOf = (dir: string): Promise<Map<string, number> | null> => {
    let p = dirs.get(dir);
    if (p === undefined) {
      const url = `${dir}/sizes.json`;
      p = fetchJson(url).then((d) => (d === undefined ? null : parseSizes(d, url)));
      dirs.set(dir, p);
    }
    return p;
  };
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < http.length) {
      const i = http[next++] as number;
      const url = urls[i] as string;
      const { dir, name } = splitHttpUrl(url, field);
      const n = (await sizesOf(dir))?.get(name);
      if (n !== undefined) {
        out.set(i, n);
        continue;
      }
      const statsUrl = `${dir}/${name.replace(/\.(tar|tar\.gz|tgz)$/i, "")}_stats.json`;
      const stats = await fetchJson(statsUrl);
      if (stats === undefined) throw needIndex(field, url, pattern(i), index !== null);
      out.set(i, parseStats(stats, statsUrl));
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, http.length) }, lane));
  return out;
}

/**
 * The directory URL and file name of an http(s) shard, without its query or
 * fragment: a signed URL (`.../00001.tar?X-Amz-Signature=...`) has its
 * sidecars at `.../sizes.json` and is named `00001.tar` there.
 */
export function splitHttpUrl(url: string, field = "data.train"): { dir: string; name: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidArgumentError(`${field}: ${JSON.stringify(url.slice(0, 200))} is not a valid URL`, field);
  }
  const cut = u.pathname.lastIndexOf("/");
  return { dir: `${u.origin}${u.pathname.slice(0, cut)}`, name: decodeURIComponent(u.pathname.slice(cut + 1)) };
}

function needIndex(field: string, url: string, pattern: string, haveIndex: boolean): InvalidArgumentError {
  const short = (s: string): string => (s.length > 120 ? `${s.slice(0, 117)}...` : s);
  const what = url.startsWith("pipe:") ? "a pipe: shard has no sizes.json beside it" : "no sizes.json or _stats.json beside it";
  return new InvalidArgumentError(
    `${field}: ${JSON.stringify(short(url))}: sample count unknown (${what}${haveIndex ? "; data.index does not list it" : ""}); run clipfleet data index ${JSON.stringify(short(pattern))} --out DIR and set data.index: DIR`,
    field,
  );
}
