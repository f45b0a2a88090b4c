/**
 * Shared by the metrics tests: a Metrics instance filled through its public
 * methods, a scrape-time source with settable state, promtool as a child
 * process, and the metric names a PromQL expression refers to.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { JobState } from "../../src/domain/index.js";
import { Metrics, type MetricsSource } from "../../src/metrics/index.js";

/** The repository root (tests run from dist/orchestrator/test/unit). */
export const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

export const PROMTOOL = "/usr/bin/promtool";

/** A MetricsSource whose answers the test sets directly. */
export class FakeSource implements MetricsSource {
  nowMs = 1_800_000_000_000;
  jobList: { job: string; name?: string; state: JobState; updatedAtMs: number }[] = [];
  rankList: ReturnType<MetricsSource["ranks"]> = [];
  checkpoints: ReturnType<MetricsSource["newestCheckpoints"]> = [];
  nodeList: ReturnType<MetricsSource["nodeSlots"]> = [];

  jobsByState(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const j of this.jobList) out[j.state] = (out[j.state] ?? 0) + 1;
    return out;
  }
  jobs(): ReturnType<MetricsSource["jobs"]> {
    return this.jobList.map((j) => ({ ...j, name: j.name ?? `name-of-${j.job}` }));
  }
  ranks(): ReturnType<MetricsSource["ranks"]> {
    return this.rankList;
  }
  newestCheckpoints(): ReturnType<MetricsSource["newestCheckpoints"]> {
    return this.checkpoints;
  }
  nodeSlots(): ReturnType<MetricsSource["nodeSlots"]> {
    return this.nodeList;
  }
  now(): number {
    return this.nowMs;
  }
}

/** Feeds one job/stage as the job service would: an attempt, steps on two ranks, a checkpoint, an evaluation, a restart. */
export function feedJob(m: Metrics, job: string, stage = "main"): void {
  const labels = { job_id: job, stage };
  m.attemptStarted(job, stage, 100);
  for (let step = 1; step <= 20; step++) {
    for (let rank = 0; rank < 2; rank++) {
      m.stepDuration.observe(labels, 0.05 + step / 1000);
      m.dataWait.inc(labels, 0.001);
    }
    m.step.set(labels, step);
    m.loss.set(labels, 4 - step / 10);
    m.lr.set(labels, 1e-3);
    m.temperature.set(labels, 14.3);
    m.samplesPerSecond.set(labels, 640);
    m.samplesSeen.inc(labels, 64);
  }
  m.skipped.inc(labels, 2);
  m.nanSkipped.inc(labels);
  m.checkpointSave.observe(labels, 0.3);
  m.checkpointsCommitted.inc(labels);
  m.failures.inc({ ...labels, state: "RUNNING" });
  m.detect.observe(labels, 1.5);
  m.restarts.inc(labels);
  m.stepsLost.inc(labels, 5);
  m.attemptStarted(job, stage, 100);
  m.recovery.observe(labels, 7.5);
  m.evalResult.set({ ...labels, metric: "retrieval/i2t_R@1" }, 0.25);
  m.evalResult.set({ ...labels, metric: "zeroshot/top1" }, 0.5);
  m.gpuSample(job, stage, 0, 0.9, 2 ** 30);
  m.gpuSample(job, stage, 1, 0.7, 2 ** 29);
}

/** A Metrics instance with two jobs fed and a source describing them. */
export function populatedMetrics(opts: { defaultMetrics?: boolean; retentionSeconds?: number; rankTopK?: number; scrapeCacheMs?: number } = {}): { metrics: Metrics; source: FakeSource } {
  // No scrape cache unless asked for: the tests change the source between scrapes.
  const metrics = new Metrics({ scrapeCacheMs: 0, ...opts });
  const source = new FakeSource();
  source.jobList = [
    { job: "j-a", state: "RUNNING", updatedAtMs: source.nowMs - 1000 },
    { job: "j-b", state: "SUCCEEDED", updatedAtMs: source.nowMs - 5000 },
  ];
  source.rankList = [
    { job: "j-a", stage: "main", rank: 0, node: "n1", state: "running", heartbeatAgeSeconds: 0.5, step: 20 },
    { job: "j-a", stage: "main", rank: 1, node: "n2", state: "running", heartbeatAgeSeconds: 1.5, step: 19 },
  ];
  source.checkpoints = [{ job: "j-a", stage: "main", committedAtMs: source.nowMs - 90_000, sizeBytes: 123456 }];
  source.nodeList = [
    { node: "n1", slots: 8, freeSlots: 7, cordoned: false, quarantined: false },
    { node: "n2", slots: 8, freeSlots: 7, cordoned: true, quarantined: true },
  ];
  metrics.setSource(source);
  feedJob(metrics, "j-a");
  feedJob(metrics, "j-b");
  return { metrics, source };
}

/** Runs promtool; resolves to its exit code and output (never rejects on a non-zero exit). */
export function promtool(args: string[], opts: { stdin?: string; cwd?: string } = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PROMTOOL, args, { cwd: opts.cwd ?? ROOT, stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out }));
    child.stdin.end(opts.stdin ?? "");
  });
}

/** Metric families of a text exposition: name -> type, from its `# TYPE` lines. */
export function familiesOf(body: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of body.split("\n")) {
    const m = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (m?.[1] && m[2]) out.set(m[1], m[2]);
  }
  return out;
}

/** Every sample name a family exposes (histograms: _bucket, _sum, _count). */
export function sampleNames(families: Map<string, string>): Set<string> {
  const out = new Set<string>();
  for (const [name, type] of families) {
    out.add(name);
    if (type === "histogram") for (const s of ["_bucket", "_sum", "_count"]) out.add(name + s);
    if (type === "summary") for (const s of ["_sum", "_count"]) out.add(name + s);
  }
  return out;
}

const PROMQL_WORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "inf", "nan"]);

/**
 * The metric names a PromQL expression selects: identifiers that are not
 * function calls, keywords, label names inside braces or grouping clauses,
 * durations or string contents. Good enough for dashboards and rules.
 */
export function promqlMetricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, "{}")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "$1")
    .replace(/\[[^\]]*\]/g, "[]")
    .replace(/\$\w+/g, "");
  const names = new Set<string>();
  for (const m of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const word = m[0];
    const after = stripped.slice((m.index ?? 0) + word.length).trimStart();
    if (after.startsWith("(") || /^(by|without)\b/.test(after)) continue; // a function, or an aggregation with a grouping clause
    if (PROMQL_WORDS.has(word.toLowerCase())) continue;
    const before = stripped.slice(0, m.index ?? 0);
    if (/[0-9.]$/.test(before)) continue; // 1e3, 5m and the like
    names.add(word);
  }
  return [...names];
}
