/**
 * The dataset manifest: the ordered shard list with each shard's sample
 * count and their prefix sums. It is what makes a global sample id
 * addressable as (shard, index in shard) in O(log shards), and all the
 * memory the data plan needs (O(shards)).
 *
 * Sample counts come, per shard, from the first source that has it:
 * `sizes.json` next to the shard (open_clip's basename -> count map),
 * img2dataset's `<shard>_stats.json` (`successes`), or indexing the tar's
 * headers (cached in memory by path, size and mtime).
 */
import { readdir, readFile } from "node:fs/promises";
import { basename, dirname, resolve } from "node:path";
import { gunzipSync } from "node:zlib";
import { expandShardPattern, InvalidArgumentError } from "../domain/index.js";
import { countTarSamples, firstSamples, ioError, statFile, TarReader } from "./tar.js";

/** One shard of a manifest (the wire's `Shard`). */
export interface ShardInfo {
  readonly url: string;
  readonly samples: number;
}

/** Shards in plan order with their sample counts; `prefix[i]` = samples of shards before i (length shards+1). */
export interface Manifest {
  readonly shards: readonly ShardInfo[];
  readonly totalSamples: number;
  readonly prefix: Float64Array;
}

/** Options of resolveManifest; `field` names the spec field in messages ("data.train" by default). */
export interface ResolveManifestOptions {
  /** data.fraction, checked to select at least one sample of the resolved dataset. */
  readonly fraction?: number;
  readonly field?: string;
  /** Shards indexed at once when their tar headers must be read. */
  readonly concurrency?: number;
}

/** Builds a manifest from known shard counts (also how jobs/ restores a persisted one). */
export function manifestOf(shards: readonly ShardInfo[]): Manifest {
  const prefix = new Float64Array(shards.length + 1);
  let total = 0;
  for (let i = 0; i < shards.length; i++) {
    total += (shards[i] as ShardInfo).samples;
    prefix[i + 1] = total;
  }
  if (!Number.isSafeInteger(total)) throw new InvalidArgumentError(`dataset too large: ${total} samples (limit 2^53)`);
  return { shards, totalSamples: total, prefix };
}

/** Shard index and index within the shard of global sample `id` (binary search over the prefix sums). */
export function locateSample(manifest: Manifest, id: number): { shard: number; index: number } {
  const prefix = manifest.prefix;
  if (!(id >= 0 && id < manifest.totalSamples)) {
    throw new RangeError(`sample id ${id} is outside [0, ${manifest.totalSamples})`);
  }
  // Largest s with prefix[s] <= id; empty shards (equal prefixes) are skipped over.
  let lo = 0;
  let hi = prefix.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if ((prefix[mid] as number) <= id) lo = mid;
    else hi = mid;
  }
  return { shard: lo, index: id - (prefix[lo] as number) };
}

/** floor(fraction * n), robust to binary rounding (0.29 * 100 is 28.999999999999996, meant as 29). */
export function subsetSize(n: number, fraction: number): number {
  return Math.floor(Number((fraction * n).toPrecision(15)));
}

/** Checks data.fraction against a dataset of `n` samples and returns the subset size. */
export function checkFraction(n: number, fraction: number): number {
  if (!(typeof fraction === "number" && fraction > 0 && fraction <= 1)) {
    throw new InvalidArgumentError(`data.fraction: expected a number in (0, 1], got ${String(fraction)}`, "data.fraction");
  }
  const m = subsetSize(n, fraction);
  if (m < 1) {
    throw new InvalidArgumentError(`data.fraction: ${fraction} of ${n} samples selects no sample`, "data.fraction");
  }
  return m;
}

/** Expands `patterns`, checks every shard exists and counts its samples. */
export async function resolveManifest(
  patterns: readonly string[],
  opts: ResolveManifestOptions = {},
): Promise<Manifest> {
  const field = opts.field ?? "data.train";
  if (patterns.length === 0) throw new InvalidArgumentError(`${field}: no shard patterns given`, field);
  const expanded = patterns.map((p) => ({ pattern: p, urls: expandShardPattern(p, field) }));
  const listings = await listDirectories(expanded.flatMap((e) => e.urls.map((u) => dirname(toPath(u)))));

  for (const { pattern, urls } of expanded) {
    const missing = urls.map(toPath).filter((p) => !listings.get(dirname(p))?.has(basename(p)));
    if (missing.length === 0) continue;
    const first = missing[0] as string;
    if (missing.length === urls.length) {
      const dir = dirname(first);
      const why =
        listings.get(dir) === null
          ? `directory ${dir} does not exist`
          : urls.length === 1
            ? `${first} does not exist`
            : `none of its ${urls.length} files exist in ${dir}`;
      throw new InvalidArgumentError(`${field}: no shard matches ${JSON.stringify(pattern)} (${why})`, field);
    }
    throw new InvalidArgumentError(
      `${field}: shard ${first} does not exist (${missing.length} of the ${urls.length} shards of ${JSON.stringify(pattern)} are missing)`,
      field,
    );
  }

  const urls = expanded.flatMap((e) => e.urls);
  const sizes = new Map<string, Map<string, number> | null>();
  for (const [dir, names] of listings) {
    sizes.set(dir, names?.has("sizes.json") ? await readSizesJson(`${dir}/sizes.json`) : null);
  }
  const counts = new Array<number>(urls.length).fill(-1);
  const toIndex: number[] = [];
  urls.forEach((url, i) => {
    const path = toPath(url);
    const known = sizes.get(dirname(path))?.get(basename(path));
    if (known !== undefined) counts[i] = known;
    else toIndex.push(i);
  });
  await forEachLimited(toIndex, opts.concurrency ?? 8, async (i) => {
    const path = toPath(urls[i] as string);
    const stats = `${basename(path).replace(/\.tar$/, "")}_stats.json`;
    counts[i] = listings.get(dirname(path))?.has(stats)
      ? await readStatsJson(`${dirname(path)}/${stats}`)
      : await indexedCount(path);
  });

  const manifest = manifestOf(urls.map((url, i) => ({ url, samples: counts[i] as number })));
  if (manifest.totalSamples === 0) {
    throw new InvalidArgumentError(`${field}: the ${urls.length} shard(s) hold no samples`, field);
  }
  if (opts.fraction !== undefined) checkFraction(manifest.totalSamples, opts.fraction);
  return manifest;
}

/**
 * Which caption sources the first `n` samples of the dataset carry: "alt" for
 * a .txt member, each key of the .json member holding a string or a list with
 * a string, "syn" when a syn.json has syn_text. Members gzipped one by one
 * (`.txt.gz`, `.json.gz`) count as the worker reads them. Lets the
 * orchestrator reject `data.captions` naming a source no sample has before
 * any worker starts.
 */
export async function peekCaptionSources(manifest: Manifest, n = 8): Promise<Set<string>> {
  const sources = new Set<string>();
  const shard = manifest.shards.find((s) => s.samples > 0);
  if (shard === undefined) return sources;
  const reader = await TarReader.open(toPath(shard.url));
  try {
    for (const sample of await firstSamples(reader, n)) {
      for (const [member, entry] of sample.members) {
        const gz = member.endsWith(".gz");
        const ext = gz ? member.slice(0, -".gz".length) : member;
        const json = async (): Promise<Record<string, unknown> | null> => parseObject(gz ? gunzipped(await reader.read(entry)) : await reader.read(entry));
        if (ext === "txt") sources.add("alt");
        else if (ext === "json") {
          for (const [k, v] of Object.entries((await json()) ?? {})) if (isCaption(v)) sources.add(k);
        } else if (ext === "syn.json") {
          const obj = await json();
          if (obj !== null && "syn_text" in obj) sources.add("syn");
        }
      }
    }
  } finally {
    await reader.close();
  }
  return sources;
}

/** Shard URLs are local paths; a `file://` prefix is accepted. */
function toPath(url: string): string {
  return resolve(url.startsWith("file://") ? url.slice("file://".length) : url);
}

/** One readdir per directory (a 1e6-shard dataset is not 1e6 stats); null for a missing directory. */
async function listDirectories(dirs: readonly string[]): Promise<Map<string, Set<string> | null>> {
  const out = new Map<string, Set<string> | null>();
  for (const dir of new Set(dirs)) {
    try {
      out.set(dir, new Set(await readdir(dir)));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") out.set(dir, null);
      else throw ioError(dir, err);
    }
  }
  return out;
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw ioError(path, err);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidArgumentError(`${path}: invalid JSON (${(err as Error).message})`);
  }
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

async function readSizesJson(path: string): Promise<Map<string, number>> {
  const data = await readJson(path);
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new InvalidArgumentError(`${path}: expected an object mapping shard names to sample counts`);
  }
  const out = new Map<string, number>();
  for (const [name, v] of Object.entries(data)) {
    if (!isCount(v)) {
      throw new InvalidArgumentError(`${path}: ${JSON.stringify(name)}: expected an integer >= 0, got ${JSON.stringify(v)}`);
    }
    out.set(name, v);
  }
  return out;
}

async function readStatsJson(path: string): Promise<number> {
  const data = await readJson(path);
  const v = typeof data === "object" && data !== null ? (data as Record<string, unknown>).successes : undefined;
  if (!isCount(v)) {
    throw new InvalidArgumentError(`${path}: successes: expected an integer >= 0, got ${JSON.stringify(v) ?? "nothing"}`);
  }
  return v;
}

const indexCache = new Map<string, number>();

/** Tar indexing, cached for the process by (path, size, mtime) so a resubmitted job does not re-read its shards. */
async function indexedCount(path: string): Promise<number> {
  const st = await statFile(path);
  const key = `${path}\0${st.size}\0${st.mtimeMs}`;
  const cached = indexCache.get(key);
  if (cached !== undefined) return cached;
  const n = await countTarSamples(path);
  indexCache.set(key, n);
  return n;
}

/** A `.json` field the worker reads as a caption source: a string, or a list holding one. */
function isCaption(v: unknown): boolean {
  return typeof v === "string" || (Array.isArray(v) && v.some((x) => typeof x === "string"));
}

/** Decompressed bytes a peeked `.json.gz` member may take (as the worker's cap on any member). */
const MAX_GUNZIP_BYTES = 64 * 1024 * 1024;

/** A gzipped member's bytes; an empty buffer (no captions) when it is not gzip or expands past the cap. */
function gunzipped(buf: Buffer): Buffer {
  try {
    return gunzipSync(buf, { maxOutputLength: MAX_GUNZIP_BYTES });
  } catch {
    return Buffer.alloc(0); // the worker skips such a sample (undecodable gzip member)
  }
}

function parseObject(buf: Buffer): Record<string, unknown> | null {
  try {
    const v = JSON.parse(buf.toString("utf8")) as unknown;
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null; // an undecodable sample; the worker skips those too
  }
}

async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}
