/**
 * The shard lists of a stage by reference: an assignment carries a manifest
 * id and the lists' sizes, and a rank pages the lists with GetShards (a
 * 40,000-shard list is about 3 MB, which every rank's Register answer used to
 * carry). The id is the sha256 of both lists in a canonical form the worker
 * recomputes, so a node-local copy of the lists can be checked against it.
 * Page tokens come from the network: they are parsed strictly and bounded.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError } from "../domain/index.js";
import type { ShardInfo } from "./manifest.js";

/** Shards in a page when the request asks for none (page_size 0). */
export const DEFAULT_SHARDS_PAGE = 1024;
/** Most shards in one page, whatever the request asks. */
export const MAX_SHARDS_PAGE = 4096;
/** Most bytes of URLs in one page (a page always holds at least one shard). */
export const MAX_SHARDS_PAGE_BYTES = 1 << 20;

/** One page of a shard list. */
export interface ShardsPage {
  readonly shards: readonly ShardInfo[];
  /** "" after the last page. */
  readonly nextPageToken: string;
  readonly total: number;
}

/**
 * The manifest id of a stage's train and val shard lists: sha256 (hex) of
 * one line per shard, `<split> <samples> <utf-8 byte length of url>:<url>\n`,
 * train first (clipfleet_worker/agent.py manifest_id computes the same).
 */
export function manifestIdOf(train: readonly ShardInfo[], val: readonly ShardInfo[]): string {
  const h = createHash("sha256");
  for (const [split, list] of [["train", train], ["val", val]] as const) {
    for (const s of list) h.update(`${split} ${s.samples} ${Buffer.byteLength(s.url)}:${s.url}\n`);
  }
  return h.digest("hex");
}

/** A page token is the decimal offset of the page's first shard; anything else is refused. */
const TOKEN = /^(?:0|[1-9][0-9]{0,9})$/;

/**
 * The page of `shards` a request names: from the offset in `pageToken`
 * ("" is 0), at most `pageSize` shards (0: the default; capped at
 * MAX_SHARDS_PAGE) and MAX_SHARDS_PAGE_BYTES of URLs.
 */
export function shardsPage(shards: readonly ShardInfo[], pageToken: string, pageSize: number): ShardsPage {
  let from = 0;
  if (pageToken !== "") {
    if (!TOKEN.test(pageToken)) throw new InvalidArgumentError(`page_token: not a token this server gave out: ${JSON.stringify(pageToken.slice(0, 32))}`, "page_token");
    from = Number(pageToken);
    if (from >= shards.length) throw new InvalidArgumentError(`page_token: offset ${from} is past the ${shards.length} shards`, "page_token");
  }
  if (!Number.isSafeInteger(pageSize) || pageSize < 0) throw new InvalidArgumentError(`page_size: expected a non-negative integer, got ${pageSize}`, "page_size");
  const size = Math.min(pageSize === 0 ? DEFAULT_SHARDS_PAGE : pageSize, MAX_SHARDS_PAGE);
  const end = Math.min(shards.length, from + size);
  let bytes = 0;
  let to = from;
  while (to < end) {
    bytes += (shards[to] as ShardInfo).url.length;
    if (to > from && bytes > MAX_SHARDS_PAGE_BYTES) break;
    to++;
  }
  return { shards: shards.slice(from, to), nextPageToken: to < shards.length ? String(to) : "", total: shards.length };
}
