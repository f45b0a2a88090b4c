/**
 * The dataset manifest: the ordered shard list with each shard's sample
 * count and their prefix sums. It is what makes a global sample id
 * addressable as (shard, index in shard) in O(log shards), and all the
 * memory the data plan needs (O(shards)).
 *
 * Sample counts come, per shard, from the first source that has it:
 * `sizes.json` next to the shard (open_clip's basename -> count map),
 * img2dataset's `<shard>_stats.json` (`successes`), or indexing the tar's
 * headers (cached in memory by path, size and mtime). A `data.index`
 * directory comes first for any shard; remote shards (http(s)://, pipe:)
 * are counted from it or their sidecars only (remote.ts).
 */
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { createGunzip, gunzipSync } from "node:zlib";
import { expandShardPattern, InvalidArgumentError } from "../domain/index.js";
import { indexKey, isGzipName, isRemote, parseSizes, parseStats, readIndexDir, remoteCounts } from "./remote.js";
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
  /** data.index: a `clipfleet data index` directory (absolute), consulted first for every shard. */
  readonly index?: string | null;
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
  const urls = expanded.flatMap((e) => e.urls);
  const patternOf = expanded.flatMap((e) => e.urls.map(() => e.pattern));
  const index = opts.index ? await readIndexDir(opts.index) : null;
  const counts = new Array<number>(urls.length).fill(-1);
  const remote = urls.flatMap((u, i) => (isRemote(u) ? [i] : []));
  for (const [i, n] of await remoteCounts(urls, remote, index, field, (i) => patternOf[i] as string)) counts[i] = n;

  const local = expanded.map((e) => ({ pattern: e.pattern, urls: e.urls.filter((u) => !isRemote(u)) })).filter((e) => e.urls.length > 0);
  const listings = await listDirectories(local.flatMap((e) => e.urls.map((u) => dirname(toPath(u)))));
  for (const { pattern, urls: some } of local) {
    const missing = some.map(toPath).filter((p) => !listings.get(dirname(p))?.has(basename(p)));
    if (missing.length === 0) continue;
    const first = missing[0] as string;
    if (missing.length === some.length) {
      const dir = dirname(first);
      const why =
        listings.get(dir) === null
          ? `directory ${dir} does not exist`
          : some.length === 1
            ? `${first} does not exist`
            : `none of its ${some.length} files exist in ${dir}`;
      throw new InvalidArgumentError(`${field}: no shard matches ${JSON.stringify(pattern)} (${why})`, field);
    }
    throw new InvalidArgumentError(
      `${field}: shard ${first} does not exist (${missing.length} of the ${some.length} shards of ${JSON.stringify(pattern)} are missing)`,
      field,
    );
  }

  const sizes = new Map<string, Map<string, number> | null>();
  for (const [dir, names] of listings) {
    sizes.set(dir, names?.has("sizes.json") ? await readSizesJson(`${dir}/sizes.json`) : null);
  }
  const toIndex: number[] = [];
  urls.forEach((url, i) => {
    if (isRemote(url)) return;
    const path = toPath(url);
    const known = index?.get(indexKey(url))?.samples ?? sizes.get(dirname(path))?.get(basename(path));
    if (known !== undefined) counts[i] = known;
    else toIndex.push(i);
  });
  await forEachLimited(toIndex, opts.concurrency ?? 8, async (i) => {
    const path = toPath(urls[i] as string);
    const stats = `${basename(path).replace(/\.(tar|tar\.gz|tgz)$/i, "")}_stats.json`;
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
export async function peekCaptionSources(manifest: Manifest, n = 8): Promise<Set<string> | null> {
  const sources = new Set<string>();
  const shard = manifest.shards.find((s) => s.samples > 0);
  if (shard === undefined) return sources;
  // Submit never downloads a shard: the check is left to the workers for remote data (null: unknown).
  if (isRemote(shard.url)) return null;
  return withPlainTar(toPath(shard.url), (path) => peekTar(path, n, toPath(shard.url)));
}

async function peekTar(path: string, n: number, name: string): Promise<Set<string>> {
  const sources = new Set<string>();
  const reader = await TarReader.open(path, name);
  try {
    for (const sample of await firstSamples(reader, n)) {
      for (const [member, entry] of sample.members) {
        const gz = member.endsWith(".gz");
        const ext = gz ? member.slice(0, -".gz".length) : member;
        const json = async (): Promise<Record<string, unknown> | null> => parseObject(gz ? gunzipped(await reader.read(entry)) : await reader.read(entry));
        if (ext === "txt") sources.add("alt");
        // NAME.txt: caption source NAME (what a recaption stage writes, e.g. vecap.txt).
        else if (/^[A-Za-z0-9_-]+\.txt$/.test(ext)) sources.add(ext.slice(0, -".txt".length));
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

/** Local shard URLs are paths; a `file://` prefix is accepted. */
function toPath(url: string): string {
  return resolve(url.startsWith("file://") ? url.slice("file://".length) : url);
}

/**
 * Runs `fn` on an uncompressed tar: `path` itself, or for a `.tar.gz`/`.tgz`
 * its decompressed copy in a temporary directory (removed afterwards).
 */
async function withPlainTar<T>(path: string, fn: (tar: string) => Promise<T>): Promise<T> {
  if (!isGzipName(path)) return fn(path);
  const dir = await mkdtemp(join(tmpdir(), "clipfleet-gunzip-"));
  try {
    const tar = join(dir, "shard.tar");
    try {
      await pipeline(createReadStream(path), createGunzip(), createWriteStream(tar));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "EACCES") throw ioError(path, err);
      throw new InvalidArgumentError(`${path}: not a gzip-compressed tar (${(err as Error).message})`);
    }
    return await fn(tar);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
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

async function readSizesJson(path: string): Promise<Map<string, number>> {
  return parseSizes(await readJson(path), path);
}

async function readStatsJson(path: string): Promise<number> {
  return parseStats(await readJson(path), path);
}

const indexCache = new Map<string, number>();

/** Tar indexing, cached for the process by (path, size, mtime) so a resubmitted job does not re-read its shards. */
async function indexedCount(path: string): Promise<number> {
  const st = await statFile(path);
  const key = `${path}\0${st.size}\0${st.mtimeMs}`;
  const cached = indexCache.get(key);
  if (cached !== undefined) return cached;
  const n = await withPlainTar(path, (tar) => countTarSamples(tar, path));
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
