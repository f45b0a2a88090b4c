/**
 * Limits on what arrives in a spec or over a network, checked at the server
 * (not only in the CLI) before anything is expanded or stored. Each is
 * documented in docs/security.md.
 */

/** Largest spec file or Submit spec_json. */
export const MAX_SPEC_BYTES = 1024 * 1024;

/** Most shard names the patterns of one data field may stand for (counted before expanding). */
export const MAX_SHARDS = 1_000_000;

/** Most stages of a pipeline. */
export const MAX_STAGES = 128;

/**
 * Largest spec once defaults are filled in and every stage inherits the
 * top-level fields (a 1 MiB spec of many stages could otherwise expand to
 * hundreds of MiB in the job record and every status reply).
 */
export const MAX_RESOLVED_SPEC_BYTES = 2 * 1024 * 1024;

/**
 * Largest control reply the server sends (GetJob, ListJobs, ...): gRPC
 * clients refuse messages past 4 MiB unless configured, the CLI takes up
 * to 64 MiB. Larger replies are cut (rpc/reply-budget.ts), never refused.
 */
export const MAX_REPLY_BYTES = 4 * 1024 * 1024;

/** Attempts of each stage a job reply holds (the latest; the others are counted). */
export const REPLY_ATTEMPTS = 16;

/** Most items of a command stage's `command`. */
export const MAX_COMMAND_ARGS = 1024;

/** Longest item of a command stage's `command`. */
export const MAX_COMMAND_ARG_CHARS = 4096;

/** Most entries of a stage's `labels` or a job's `cluster.node_selector`. */
export const MAX_LABELS = 64;

/** Longest label key. */
export const MAX_LABEL_KEY_CHARS = 64;

/** Longest label value. */
export const MAX_LABEL_CHARS = 256;

/** A failure message a rank reports, kept at most this long (bytes of UTF-8). */
export const MAX_FAILURE_MESSAGE_BYTES = 4 * 1024;

/** A traceback a rank reports: its last this many bytes are kept (the end holds the error). */
export const MAX_TRACEBACK_BYTES = 16 * 1024;

/** Distinct evaluation metric names a stage may report (each is a metric series). */
export const MAX_EVAL_METRICS_PER_STAGE = 256;

/** Longest evaluation metric name. */
export const MAX_METRIC_NAME_CHARS = 128;

/** The first `max` bytes of `s` as UTF-8 (never splitting a character), with a marker when cut. */
export function truncateHead(s: string, max: number): string {
  const b = Buffer.from(s, "utf8");
  if (b.length <= max) return s;
  const marker = " [...truncated]";
  let end = Math.max(0, max - marker.length);
  // Back off to a character boundary: UTF-8 continuation bytes are 10xxxxxx.
  while (end > 0 && ((b[end] ?? 0) & 0xc0) === 0x80) end--;
  return b.subarray(0, end).toString("utf8") + marker;
}

/** The last `max` bytes of `s` as UTF-8 (never splitting a character), with a marker when cut (a traceback's end holds the error). */
export function truncateTail(s: string, max: number): string {
  const b = Buffer.from(s, "utf8");
  if (b.length <= max) return s;
  const marker = "[...truncated] ";
  let start = b.length - Math.max(0, max - marker.length);
  while (start < b.length && ((b[start] ?? 0) & 0xc0) === 0x80) start++;
  return marker + b.subarray(start).toString("utf8");
}

/**
 * The metrics of an evaluation report that are kept: finite values under
 * names of at most MAX_METRIC_NAME_CHARS, and no new name once the stage
 * has MAX_EVAL_METRICS_PER_STAGE (each name is a metric series). `known`:
 * the names the stage already has.
 */
export function boundedMetrics(incoming: Readonly<Record<string, number>>, known: ReadonlySet<string>): { kept: Record<string, number>; dropped: number } {
  const kept: Record<string, number> = {};
  const names = new Set(known);
  let dropped = 0;
  for (const [name, value] of Object.entries(incoming)) {
    if (name.length === 0 || name.length > MAX_METRIC_NAME_CHARS || !Number.isFinite(value) || (!names.has(name) && names.size >= MAX_EVAL_METRICS_PER_STAGE)) {
      dropped += 1;
      continue;
    }
    names.add(name);
    kept[name] = value;
  }
  return { kept, dropped };
}

/**
 * Why a worker skips a sample (worker-runtime/clipfleet_worker/data/loader.py SKIP_REASONS).
 * Reports carry counts by these names; any other name is counted as "other", so the
 * set a stage record and a metric label can hold stays fixed.
 */
export const SKIP_REASONS: readonly string[] = [
  "no image",
  "undecodable image",
  "no caption",
  "undecodable gzip member",
  "gzip member too large",
  "no seg.png",
  "undecodable seg.png",
  "no depth.png",
  "undecodable depth.png",
  "other",
];

/** Warnings of one evaluation report kept (each cut to MAX_WARNING_BYTES). */
export const MAX_EVAL_WARNINGS = 8;

/** Longest evaluation warning kept (bytes of UTF-8). */
export const MAX_WARNING_BYTES = 1024;

/** A worker's skip reason as kept: one of SKIP_REASONS, else "other". */
export function skipReasonOf(reason: string): string {
  return SKIP_REASONS.includes(reason) ? reason : "other";
}

/** `into` plus the counts of `add` (reasons bounded by skipReasonOf; non-counts ignored); returns `into`. */
export function addSkips(into: Record<string, number>, add: Readonly<Record<string, number>>): Record<string, number> {
  for (const [reason, n] of Object.entries(add)) {
    if (!Number.isSafeInteger(n) || n <= 0) continue;
    const r = skipReasonOf(reason);
    into[r] = (into[r] ?? 0) + n;
  }
  return into;
}

/** Most warm spare processes per node of a stage (`cluster.spares`): each holds a Python process with torch in memory. */
export const MAX_SPARES_PER_NODE = 8;
