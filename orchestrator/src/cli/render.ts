/** Text and JSON views of jobs for the CLI (status, list, summaries). */
import type { Job, JobEvent, Stage } from "../gen/clipfleet/v1/control.js";
import { JobState } from "../gen/clipfleet/v1/control.js";
import { fmtDuration } from "./progress.js";

/** "RUNNING" for JobState.JOB_STATE_RUNNING. */
export function stateName(s: JobState): string {
  return (JobState[s] ?? "UNKNOWN").replace(/^JOB_STATE_/, "");
}

/** The machine-readable summary printed by `run --json` and `status --json`. */
export function jobSummary(job: Job): Record<string, unknown> {
  const stages = job.stages.map((s) => stageSummary(s));
  const single = job.stages.length === 1 ? job.stages[0] : undefined;
  const metrics: Record<string, number> = {};
  for (const s of job.stages) {
    for (const [k, v] of Object.entries(s.metrics)) metrics[single ? k : `${s.name}/${k}`] = v;
  }
  const lastWithLoss = [...job.stages].reverse().find((s) => (s.progress?.step ?? 0) > 0);
  const started = Math.min(...job.stages.map((s) => s.startedAtMs || Infinity));
  const ended = Math.max(...job.stages.map((s) => s.endedAtMs || 0));
  return {
    jobId: job.id,
    name: job.name,
    state: stateName(job.state),
    reason: job.reason,
    submittedBy: job.submittedBy,
    steps: job.stages.reduce((a, s) => a + (s.progress?.step ?? 0), 0),
    totalSteps: job.stages.reduce((a, s) => a + (s.progress?.totalSteps ?? 0), 0),
    samplesSeen: job.stages.reduce((a, s) => a + (s.progress?.samplesSeen ?? 0), 0),
    skippedSamples: job.stages.reduce((a, s) => a + (s.progress?.skippedSamples ?? 0), 0),
    skippedByReason: sumCounts(job.stages.map((s) => s.progress?.skippedByReason ?? {})),
    evalSkippedByReason: sumCounts(job.stages.map((s) => s.evalSkippedByReason)),
    warnings: job.stages.flatMap((s) => s.warnings.map((w) => (single ? w : `${s.name}: ${w}`))),
    ...shardCacheSummary(job),
    restarts: job.stages.reduce((a, s) => a + s.restarts, 0),
    preemptions: job.stages.reduce((a, s) => a + s.preemptions, 0),
    firstLoss: (lastWithLoss ?? single)?.progress?.firstLoss ?? null,
    finalLoss: lastWithLoss?.progress?.loss ?? null,
    metrics,
    finalParamsSha256: single ? single.finalParamsSha256 : (lastWithLoss?.finalParamsSha256 ?? ""),
    checkpoints: job.stages.flatMap((s) =>
      s.checkpoints.filter((c) => c.status === "committed").map((c) => ({ stage: c.stage, step: c.step, dir: c.dir, manifestSha256: c.manifestSha256, sizeBytes: c.sizeBytes })),
    ),
    wallSeconds: Number.isFinite(started) && ended > 0 ? (ended - started) / 1000 : null,
    stages,
  };
}

function stageSummary(s: Stage): Record<string, unknown> {
  return {
    name: s.name,
    task: s.task,
    state: stateName(s.state),
    reason: s.reason,
    needs: s.needs,
    steps: s.progress?.step ?? 0,
    totalSteps: s.progress?.totalSteps ?? 0,
    restarts: s.restarts,
    preemptions: s.preemptions,
    attempts: s.attempts.length + s.attemptsOmitted,
    firstLoss: s.progress?.firstLoss ?? null,
    finalLoss: s.progress?.loss ?? null,
    metrics: s.metrics,
    finalParamsSha256: s.finalParamsSha256,
    skippedSamples: s.progress?.skippedSamples ?? 0,
    skippedByReason: { ...(s.progress?.skippedByReason ?? {}) },
    evalSkippedByReason: { ...s.evalSkippedByReason },
    warnings: [...s.warnings],
    error: s.error || undefined,
  };
}

/** Key-wise sum of count maps. */
function sumCounts(maps: readonly Readonly<Record<string, number>>[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of maps) for (const [k, n] of Object.entries(m)) out[k] = (out[k] ?? 0) + n;
  return out;
}

/** "12 samples: no caption 10, undecodable image 2" (largest first), or null when none. */
export function fmtSkips(total: number, byReason: Readonly<Record<string, number>>, noun = "samples"): string | null {
  const counted = Object.values(byReason).reduce((a, n) => a + n, 0);
  const n = Math.max(total, counted);
  if (n === 0) return null;
  const parts = Object.entries(byReason)
    .filter(([, c]) => c > 0)
    .sort(([a, x], [b, y]) => y - x || a.localeCompare(b))
    .map(([r, c]) => `${r} ${c}`);
  // Reports of workers from before reasons were counted leave some unexplained.
  if (counted < n) parts.push(`unknown ${n - counted}`);
  return `${n} ${n === 1 ? noun.replace(/s$/, "") : noun}: ${parts.join(", ")}`;
}

/** `shardCache` of the summary (bytes fetched, hits, misses, fetch seconds over every stage), when any shard went through a cache. */
function shardCacheSummary(job: Job): { shardCache?: Record<string, number> } {
  const sum = job.stages.reduce(
    (acc, s) => {
      const p = s.progress;
      return p ? { bytesFetched: acc.bytesFetched + p.shardBytesFetched, hits: acc.hits + p.shardCacheHits, misses: acc.misses + p.shardCacheMisses, fetchSeconds: acc.fetchSeconds + p.shardFetchSeconds } : acc;
    },
    { bytesFetched: 0, hits: 0, misses: 0, fetchSeconds: 0 },
  );
  return sum.hits + sum.misses > 0 ? { shardCache: sum } : {};
}

/** 1.5 GiB, 12.0 MiB, 300 B. */
export function fmtBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/** The shard cache line of a stage: what its ranks fetched and found cached (remote and .tar.gz shards). */
function fmtShardCache(p: Stage["progress"]): string | null {
  if (!p || p.shardCacheHits + p.shardCacheMisses === 0) return null;
  return `shard cache: ${p.shardCacheMisses} fetched (${fmtBytes(p.shardBytesFetched)} in ${p.shardFetchSeconds.toFixed(1)} s), ${p.shardCacheHits} found cached`;
}

/** A table with left-aligned columns. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

function ago(ms: number, now: number): string {
  if (!ms) return "-";
  return `${fmtDuration((now - ms) / 1000)} ago`;
}

/** The human view of `clipfleet status`. */
export function renderStatus(job: Job, now: number): string {
  const lines: string[] = [];
  lines.push(`job ${job.id} (${job.name}): ${stateName(job.state)}${job.reason ? ` - ${job.reason}` : ""}`);
  if (job.submittedBy) lines.push(`submitted by ${job.submittedBy} ${ago(job.createdAtMs, now)}`);
  if (job.pendingReason) lines.push(`waiting: ${job.pendingReason}`);
  lines.push("");
  lines.push(
    table(
      ["STAGE", "TASK", "STATE", "STEP", "LOSS", "RESTARTS", "REASON"],
      job.stages.map((s) => [
        s.name,
        s.task,
        stateName(s.state),
        `${s.progress?.step ?? 0}/${s.progress?.totalSteps ?? 0}`,
        s.progress && s.progress.step > 0 ? s.progress.loss.toFixed(4) : "-",
        String(s.restarts),
        s.reason,
      ]),
    ),
  );
  for (const s of job.stages) {
    const a = s.attempts.at(-1);
    if (!a) continue;
    lines.push("");
    lines.push(`stage ${s.name}, attempt ${a.number} (${a.outcome}${a.reason ? `: ${a.reason}` : ""}), world size ${a.worldSize}, resumed from step ${a.resumedFromStep}`);
    lines.push(
      table(
        ["RANK", "NODE", "PID", "STATE", "PHASE", "STEP", "HEARTBEAT"],
        a.ranks.map((r) => [String(r.rank), r.node, r.pid ? String(r.pid) : "-", r.state, r.phase, String(r.step), ago(r.lastHeartbeatMs, now)]),
      ),
    );
    if (s.preemptions > 0) lines.push(`preempted ${s.preemptions} time(s): each checkpointed and restarted, not counted as a restart`);
    const metrics = Object.entries(s.metrics);
    if (metrics.length > 0) lines.push(`metrics: ${metrics.map(([k, v]) => `${k}=${fmtMetric(v)}`).join(" ")}`);
    const skipped = fmtSkips(s.progress?.skippedSamples ?? 0, s.progress?.skippedByReason ?? {});
    if (skipped) lines.push(`skipped ${skipped}`);
    const evalSkipped = fmtSkips(0, s.evalSkippedByReason, "val samples");
    if (evalSkipped) lines.push(`evaluation skipped ${evalSkipped}`);
    for (const w of s.warnings) lines.push(`warning: ${w}`);
    const cache = fmtShardCache(s.progress);
    if (cache) lines.push(cache);
    const ckpt = s.checkpoints.filter((c) => c.status === "committed").at(-1);
    if (ckpt) lines.push(`newest checkpoint: step ${ckpt.step}, ${ckpt.dir}`);
    if (s.error) {
      lines.push("error:");
      lines.push(...s.error.trimEnd().split("\n").map((l) => `  ${l}`));
    }
  }
  const events = job.recentEvents.slice(-10);
  if (events.length > 0) {
    lines.push("");
    lines.push("recent events:");
    for (const e of events) lines.push(`  ${renderEvent(e)}`);
  }
  return lines.join("\n");
}

export function fmtMetric(v: number): string {
  return Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v * 100) / 100) : v.toFixed(4);
}

/** One event as a line: time, stage, what happened. */
export function renderEvent(e: JobEvent): string {
  const t = new Date(Number(e.tsMs)).toISOString().slice(11, 19);
  const where = e.stage ? `[${e.stage}] ` : "";
  const what = e.type === "state" ? `${stateName(e.state)}` : e.type;
  return `${t} ${where}${what}${e.reason ? `: ${e.reason}` : ""}`;
}
