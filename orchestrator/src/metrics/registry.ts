/**
 * Prometheus metrics (prom-client). Naming follows Prometheus conventions:
 * `clipfleet_` prefix, base units, `_seconds`/`_bytes`/`_total` suffixes.
 * Labels are limited to job_id, stage, rank, node and state (plus `name` on
 * clipfleet_job_state, `metric` on evaluation results, `reason` on skips);
 * `job_id`, not `job`, so Prometheus's own `job` (the scrape job) is left
 * alone and no honor_labels is needed. The process's default metrics keep
 * prom-client's own labels.
 *
 * Cardinality is bounded by jobs and nodes, not by ranks: histograms and
 * counters are per job and stage; per rank only the k stalest ranks'
 * heartbeat age and the k ranks furthest behind (their last step) of each
 * stage, enough to find a stuck or slow rank. A finished job's series are
 * dropped after a retention time. The scrape body is built one metric at a
 * time, yielding to the event loop after every 5 ms of work, and cached
 * briefly, so scrapes in a row or at once cost one build.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { setImmediate as yieldToLoop } from "node:timers/promises";
import { isTerminal, type JobState } from "../domain/index.js";
import { GoodputLedger } from "./goodput.js";

const STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const RECOVERY_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600];
const SAVE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** How long a finished job's series stay exported unless told otherwise. */
export const DEFAULT_RETENTION_SECONDS = 3600;

/** Ranks per stage shown by heartbeat age and by last step (the stalest, the furthest behind). */
export const DEFAULT_RANK_TOP_K = 10;

/** Longest stretch (ms) a scrape build runs before it yields to the event loop. */
const BUILD_SLICE_MS = 5;

/** How long a built scrape body is served again (ms): Prometheus servers scraping at once share one build. */
export const DEFAULT_SCRAPE_CACHE_MS = 1000;

/** A read-only view the metrics need from the orchestrator at scrape time. */
export interface MetricsSource {
  /** Count of jobs by state. */
  jobsByState(): Record<string, number>;
  /** Every job the orchestrator knows, with its state and when its record last changed (ms). */
  jobs(): { job: string; name: string; state: JobState; updatedAtMs: number }[];
  /** Live ranks: job, stage, rank, node, state, heartbeat age (s), last completed step. */
  ranks(): { job: string; stage: string; rank: number; node: string; state: string; heartbeatAgeSeconds: number | null; step: number }[];
  /** Newest committed checkpoint per active stage. */
  newestCheckpoints(): { job: string; stage: string; committedAtMs: number; sizeBytes: number }[];
  /** The inventory's nodes: slots, free slots, and whether cordoned or quarantined. */
  nodeSlots(): { node: string; slots: number; freeSlots: number; cordoned: boolean; quarantined: boolean }[];
  now(): number;
}

type JobMetric = Counter<string> | Gauge<string> | Histogram<string>;

/**
 * The orchestrator's metrics. The job service updates the public metrics as
 * reports arrive; gauges that describe current state (jobs, workers,
 * heartbeats, checkpoint age) are computed from the MetricsSource at scrape
 * time, so they can never go stale.
 */
export class Metrics {
  /** The registry /metrics serves. */
  readonly registry = new Registry();
  private readonly finished = new Map<string, number>(); // job id -> finished at (ms), for retention
  private readonly jobMetrics: { metric: JobMetric; labelNames: readonly string[] }[] = [];
  private readonly retentionMs: number;
  private source: MetricsSource | null = null;

  readonly attempts = this.counter("clipfleet_attempts_total", "Attempts started (gangs launched), the first one included.", ["job_id", "stage"]);
  readonly restarts = this.counter("clipfleet_restarts_total", "Restarts after a failure.", ["job_id", "stage"]);
  readonly preemptions = this.counter("clipfleet_preemptions_total", "Restarts after a preemption (the preemption signal: checkpoint at one step, restart from it); not in clipfleet_restarts_total.", ["job_id", "stage"]);
  readonly failures = this.counter("clipfleet_failures_total", "Attempt failures, by the state the stage was in when it failed.", ["job_id", "stage", "state"]);
  readonly step = this.gauge("clipfleet_train_step", "Last completed optimizer step (1-based count).", ["job_id", "stage"]);
  readonly stepsTotal = this.gauge("clipfleet_train_steps_planned", "Optimizer steps the stage runs in all.", ["job_id", "stage"]);
  readonly loss = this.gauge("clipfleet_train_loss", "Training loss of the last step (mean over the global batch).", ["job_id", "stage"]);
  readonly lr = this.gauge("clipfleet_train_learning_rate", "Learning rate of the last step.", ["job_id", "stage"]);
  readonly temperature = this.gauge("clipfleet_train_logit_scale", "Contrastive logit scale (1/temperature) of the last step.", ["job_id", "stage"]);
  readonly samplesPerSecond = this.gauge("clipfleet_train_samples_per_second", "Training throughput over the global batch, measured on rank 0.", ["job_id", "stage"]);
  readonly samplesSeen = this.counter("clipfleet_train_samples_total", "Training samples consumed (steps redone after a restart count again).", ["job_id", "stage"]);
  readonly stepDuration = this.histogram("clipfleet_train_step_duration_seconds", "Wall time of one optimizer step, every rank's steps in one histogram per stage.", ["job_id", "stage"], STEP_BUCKETS);
  readonly dataWait = this.counter("clipfleet_train_data_wait_seconds_total", "Time ranks waited for input data, summed over ranks.", ["job_id", "stage"]);
  readonly computeTime = this.counter("clipfleet_train_compute_seconds_total", "Time ranks spent computing (forward, backward, update), summed over ranks: with the data wait it tells input-bound from compute-bound.", ["job_id", "stage"]);
  readonly outOfRangeLabels = this.counter("clipfleet_dense_labels_out_of_range_total", "Segmentation label pixels with a class id outside dense.num_classes (ignored in the loss), summed over ranks.", ["job_id", "stage"]);
  readonly shardFetchBytes = this.counter("clipfleet_shard_fetch_bytes_total", "Bytes of remote shards (http(s)://, pipe:) fetched into the nodes' shard caches or read by range, summed over ranks.", ["job_id", "stage"]);
  readonly shardCacheHits = this.counter("clipfleet_shard_cache_hits_total", "Remote or compressed shards a rank found in its node's shard cache.", ["job_id", "stage"]);
  readonly shardCacheMisses = this.counter("clipfleet_shard_cache_misses_total", "Remote or compressed shards a rank fetched into its node's shard cache.", ["job_id", "stage"]);
  readonly shardFetchSeconds = this.counter("clipfleet_shard_fetch_seconds_total", "Time ranks spent fetching shards (retries and backoff included), summed over ranks.", ["job_id", "stage"]);
  readonly valuesDropped = this.counter("clipfleet_report_values_dropped_total", "Values in ranks' reports that were dropped: NaN, infinite or negative numbers, and evaluation metrics past the name length or per-stage count limits.", ["job_id", "stage"]);
  readonly skipped = this.counter("clipfleet_train_samples_skipped_total", "Samples skipped as undecodable.", ["job_id", "stage"]);
  readonly skippedByReason = this.counter("clipfleet_train_samples_skipped_by_reason_total", "Training samples skipped, by reason (`no caption`, `undecodable image`, ...; a fixed set, unknown reasons count as `other`).", ["job_id", "stage", "reason"]);
  readonly nanSkipped = this.counter("clipfleet_train_nan_steps_skipped_total", "Steps whose update was skipped for a NaN or Inf loss.", ["job_id", "stage"]);
  readonly checkpointSave = this.histogram("clipfleet_checkpoint_save_duration_seconds", "Time a rank's training loop stalled to save a checkpoint.", ["job_id", "stage"], SAVE_BUCKETS);
  readonly checkpointsCommitted = this.counter("clipfleet_checkpoints_committed_total", "Checkpoints committed (every rank wrote its files, the manifest is on disk).", ["job_id", "stage"]);
  readonly detect = this.histogram("clipfleet_failure_detection_seconds", "Seconds from a failure (last heartbeat or step) to its detection.", ["job_id", "stage"], RECOVERY_BUCKETS);
  readonly recovery = this.histogram("clipfleet_recovery_seconds", "Seconds from a failure to the first completed step of the attempt that replaced it.", ["job_id", "stage"], RECOVERY_BUCKETS);
  readonly stepsLost = this.counter("clipfleet_steps_lost_total", "Steps done but not checkpointed when an attempt failed (redone after the restart).", ["job_id", "stage"]);
  readonly evalResult = this.gauge("clipfleet_eval_result", "Latest evaluation results (retrieval R@k, zero-shot top-1, mIoU, RMSE, ...), by metric name.", ["job_id", "stage", "metric"]);
  /** Productive step time per job (clipfleet_job_goodput_ratio, computed at scrape time). */
  readonly goodput = new GoodputLedger();
  readonly serverInsecure = new Gauge({ name: "clipfleet_server_insecure", help: "1 when the server was started with --insecure: no TLS, no authentication, every caller an admin.", registers: [this.registry] });
  /** Per rank (job\0stage -> rank -> last heartbeat's GPU figures); exported per stage at scrape time. */
  private readonly gpu = new Map<string, Map<number, { util: number; mem: number }>>();
  private readonly rankTopK: number;
  private readonly scrapeCacheMs: number;
  private cached: { body: string; atMs: number } | null = null;
  private building: Promise<string> | null = null;
  private view: RankView | null = null;

  constructor(opts: { defaultMetrics?: boolean; retentionSeconds?: number; rankTopK?: number; scrapeCacheMs?: number } = {}) {
    this.retentionMs = (opts.retentionSeconds ?? DEFAULT_RETENTION_SECONDS) * 1000;
    this.rankTopK = opts.rankTopK ?? DEFAULT_RANK_TOP_K;
    this.scrapeCacheMs = opts.scrapeCacheMs ?? DEFAULT_SCRAPE_CACHE_MS;
    if (opts.defaultMetrics !== false) {
      // The event-loop lag histogram samples with a timer: prom-client's default, every 10 ms, woke
      // an idle orchestrator 100 times a second (about 3 ms of CPU a second in epoll and timers, as
      // much as the ranks' reports of a 2-rank job cost); every 100 ms still sees any stall longer
      // than that, and a scrape every 15 s still gets 150 samples.
      collectDefaultMetrics({ register: this.registry, prefix: "clipfleet_", eventLoopMonitoringPrecision: 100 });
      // prom-client exports a few gauges named *_total (active handles, requests, resources);
      // `promtool check metrics` rejects that, and their per-type twins carry the same counts.
      for (const m of this.registry.getMetricsAsArray()) {
        if (!(m instanceof Counter) && m.name.endsWith("_total")) this.registry.removeSingleMetric(m.name);
      }
    }
    this.collected("clipfleet_jobs", "Jobs the orchestrator knows, by state.", ["state"], (set) => {
      for (const [state, n] of Object.entries(this.source?.jobsByState() ?? {})) set({ state }, n);
    });
    this.collected("clipfleet_job_state", "1 for the state a job is in, with the job's name; finished jobs are shown for the retention time.", ["job_id", "name", "state"], (set) => {
      const now = this.source?.now() ?? Date.now();
      for (const j of this.source?.jobs() ?? []) {
        if (isTerminal(j.state) && now - j.updatedAtMs >= this.retentionMs) continue;
        set({ job_id: j.job, name: j.name, state: j.state }, 1);
      }
    });
    this.collected("clipfleet_job_goodput_ratio", "Productive step time (rank 0's steps that count: redone ones once) over wall time since the job started running; frozen when it ends (docs/recovery.md).", ["job_id", "name"], (set) => {
      const now = this.source?.now() ?? Date.now();
      for (const j of this.source?.jobs() ?? []) {
        if (isTerminal(j.state) && now - j.updatedAtMs >= this.retentionMs) continue;
        const r = this.goodput.ratio(j.job, now);
        if (r !== null) set({ job_id: j.job, name: j.name }, r);
      }
    });
    const ranks = (): RankView => this.rankViewNow();
    this.collected("clipfleet_workers", "Worker ranks of running attempts, by state.", ["job_id", "stage", "state"], (set) => {
      for (const c of ranks().counts.values()) set({ job_id: c.job, stage: c.stage, state: c.state }, c.n);
    });
    this.collected(
      "clipfleet_heartbeat_age_seconds",
      `Seconds since a live rank's last message (heartbeat or report), for the ${this.rankTopK} stalest live ranks of each stage (per rank: the one to look at).`,
      ["job_id", "stage", "rank", "node"],
      (set) => {
        for (const r of ranks().stalest) set({ job_id: r.job, stage: r.stage, rank: String(r.rank), node: r.node }, r.heartbeatAgeSeconds ?? 0);
      },
    );
    this.collected(
      "clipfleet_rank_last_step",
      `Last completed step of the ${this.rankTopK} live ranks furthest behind in each stage (compare with clipfleet_train_step: a rank far behind is slow or stuck).`,
      ["job_id", "stage", "rank", "node"],
      (set) => {
        for (const r of ranks().behind) set({ job_id: r.job, stage: r.stage, rank: String(r.rank), node: r.node }, r.step);
      },
    );
    this.collected("clipfleet_heartbeat_age_max_seconds", "Largest heartbeat age among a stage's live ranks.", ["job_id", "stage"], (set) => {
      for (const g of ranks().groups.values()) if (g.maxAge !== null) set({ job_id: g.job, stage: g.stage }, g.maxAge);
    });
    this.collected("clipfleet_gpu_utilization_ratio", "Mean GPU utilisation (0-1) over a stage's ranks' devices, from their last heartbeat, when CUDA is present.", ["job_id", "stage"], (set) => {
      for (const [key, byRank] of this.gpu) {
        if (byRank.size === 0) continue;
        let sum = 0;
        for (const g of byRank.values()) sum += g.util;
        set(this.stageLabels(key), sum / byRank.size);
      }
    });
    this.collected("clipfleet_gpu_memory_bytes", "Largest GPU memory allocated by one of a stage's ranks, from their last heartbeat, when CUDA is present.", ["job_id", "stage"], (set) => {
      for (const [key, byRank] of this.gpu) {
        if (byRank.size === 0) continue;
        let max = 0;
        for (const g of byRank.values()) max = Math.max(max, g.mem);
        set(this.stageLabels(key), max);
      }
    });
    this.collected("clipfleet_checkpoint_age_seconds", "Age of the newest committed checkpoint of an unfinished stage.", ["job_id", "stage"], (set) => {
      const now = this.source?.now() ?? Date.now();
      for (const c of this.source?.newestCheckpoints() ?? []) set({ job_id: c.job, stage: c.stage }, Math.max(0, (now - c.committedAtMs) / 1000));
    });
    this.collected("clipfleet_checkpoint_size_bytes", "Size of the newest committed checkpoint of an unfinished stage (all ranks' files).", ["job_id", "stage"], (set) => {
      for (const c of this.source?.newestCheckpoints() ?? []) set({ job_id: c.job, stage: c.stage }, c.sizeBytes);
    });
    this.collected("clipfleet_node_slots", "Slots (ranks it can hold) of an inventory node.", ["node"], (set) => {
      for (const n of this.source?.nodeSlots() ?? []) set({ node: n.node }, n.slots);
    });
    this.collected("clipfleet_node_free_slots", "Free slots of an inventory node.", ["node"], (set) => {
      for (const n of this.source?.nodeSlots() ?? []) set({ node: n.node }, n.freeSlots);
    });
    this.collected("clipfleet_node_cordoned", "1 while an operator has cordoned the node (`clipfleet cordon`): no new ranks go there.", ["node"], (set) => {
      for (const n of this.source?.nodeSlots() ?? []) set({ node: n.node }, n.cordoned ? 1 : 0);
    });
    this.collected("clipfleet_node_quarantined", "1 while the node is quarantined after repeated failures (failure.quarantine_after).", ["node"], (set) => {
      for (const n of this.source?.nodeSlots() ?? []) set({ node: n.node }, n.quarantined ? 1 : 0);
    });
  }

  /** A rank's GPU figures from its heartbeat; the stage's gauges show their mean (utilisation) and max (memory). */
  gpuSample(jobId: string, stage: string, rank: number, utilization: number, memoryBytes: number): void {
    // A rank's numbers are not trusted: a NaN would poison the stage's mean until the rank's next heartbeat.
    if (!Number.isFinite(utilization) || !Number.isFinite(memoryBytes)) return;
    const key = `${jobId}\0${stage}`;
    let byRank = this.gpu.get(key);
    if (!byRank) this.gpu.set(key, (byRank = new Map<number, { util: number; mem: number }>()));
    byRank.set(rank, { util: utilization, mem: memoryBytes });
  }

  private stageLabels(key: string): { job_id: string; stage: string } {
    const i = key.indexOf("\0");
    return { job_id: key.slice(0, i), stage: key.slice(i + 1) };
  }

  /**
   * One pass over the source's ranks, shared by the rank gauges: counts by
   * state, and per stage the k stalest and the k furthest-behind live ranks,
   * kept in small bounded arrays so the pass is O(ranks x k) with no sort of
   * every rank. A scrape build makes it first, in slices (yielding to the
   * event loop every 5 ms), and the gauges read it; outside a build
   * (registry.metrics()) each gauge makes it in one go.
   */
  private rankViewNow(): RankView {
    if (this.view) return this.view;
    const view = emptyRankView();
    for (const r of this.source?.ranks() ?? []) this.addRank(view, r);
    return finishRankView(view);
  }

  private async rankViewSliced(): Promise<RankView> {
    const view = emptyRankView();
    const ranks = this.source?.ranks() ?? [];
    let slice = performance.now();
    for (let i = 0; i < ranks.length; i++) {
      this.addRank(view, ranks[i] as RankRow);
      if ((i & 255) === 255 && performance.now() - slice >= BUILD_SLICE_MS) {
        await yieldToLoop();
        slice = performance.now();
      }
    }
    return finishRankView(view);
  }

  private addRank(view: RankView, r: RankRow): void {
    const k = `${r.job}\0${r.stage}\0${r.state}`;
    const c = view.counts.get(k) ?? { job: r.job, stage: r.stage, state: r.state, n: 0 };
    c.n += 1;
    view.counts.set(k, c);
    // A rank that has exited or finished is not expected to send heartbeats or steps.
    if (r.state === "exited" || r.state === "finished") return;
    const gk = `${r.job}\0${r.stage}`;
    let g = view.groups.get(gk);
    if (!g) view.groups.set(gk, (g = { job: r.job, stage: r.stage, maxAge: null, stalest: [], behind: [] }));
    if (r.heartbeatAgeSeconds !== null) {
      g.maxAge = Math.max(g.maxAge ?? 0, r.heartbeatAgeSeconds);
      insertTopK(g.stalest, r, this.rankTopK, byStalest);
    }
    insertTopK(g.behind, r, this.rankTopK, byBehind);
  }

  /** Connects the scrape-time view (set once by the composition root). */
  setSource(source: MetricsSource): void {
    this.source = source;
  }

  /**
   * An attempt of a stage started: counts it, records the planned steps, and
   * creates the stage's counters at zero so `increase()` sees their first
   * increment. A job that runs again (resume) is no longer due for removal.
   */
  attemptStarted(jobId: string, stage: string, totalSteps: number): void {
    const labels = { job_id: jobId, stage };
    this.finished.delete(jobId);
    this.attempts.inc(labels);
    this.stepsTotal.set(labels, totalSteps);
    for (const c of [this.restarts, this.preemptions, this.stepsLost, this.samplesSeen, this.skipped, this.nanSkipped, this.checkpointsCommitted]) c.inc(labels, 0);
  }

  /** A job ended: its series are dropped after the retention time (see sweep). */
  jobFinished(jobId: string, atMs: number): void {
    this.finished.set(jobId, atMs);
    this.goodput.finished(jobId, atMs);
  }

  /**
   * Drops every series of the jobs that ended at least `retentionMs` ago:
   * those reported through jobFinished, and those the source shows terminal
   * since then (however they ended); never a job the source shows active.
   * Resolves to the number of series removed. Scrape-time gauges need no
   * sweeping: they only ever show what the source reports.
   */
  async sweep(nowMs: number, retentionMs = this.retentionMs): Promise<number> {
    const due = new Set<string>();
    for (const [job, at] of this.finished) if (nowMs - at >= retentionMs) due.add(job);
    const jobs = this.source?.jobs() ?? [];
    for (const j of jobs) if (isTerminal(j.state) && nowMs - j.updatedAtMs >= retentionMs) due.add(j.job);
    for (const j of jobs) if (!isTerminal(j.state)) due.delete(j.job);
    return this.removeSeries(due);
  }

  /** A deleted job: every series of it goes now, whatever the retention. */
  async forgetJob(jobId: string): Promise<number> {
    return this.removeSeries(new Set([jobId]));
  }

  private async removeSeries(due: Set<string>): Promise<number> {
    if (due.size === 0) return 0;
    let removed = 0;
    for (const { metric, labelNames } of this.jobMetrics) {
      const seen = new Set<string>();
      for (const v of (await metric.get()).values) {
        const job = v.labels.job_id;
        if (typeof job !== "string" || !due.has(job)) continue;
        // Histogram values carry `le` and per-sample names; a series is identified by the metric's own labels.
        const labels: Record<string, string | number> = {};
        for (const n of labelNames) if (v.labels[n] !== undefined) labels[n] = v.labels[n];
        const key = JSON.stringify(labels);
        if (seen.has(key)) continue;
        seen.add(key);
        metric.remove(labels);
        removed += 1;
      }
    }
    for (const job of due) {
      this.finished.delete(job);
      this.goodput.forget(job);
      for (const key of this.gpu.keys()) if (key.startsWith(`${job}\0`)) this.gpu.delete(key);
    }
    this.cached = null;
    return removed;
  }

  /**
   * The Prometheus text exposition of every metric: the cached body when it
   * is younger than the cache time, else one build shared by every scrape
   * that arrives while it runs. The build formats one metric at a time and
   * yields to the event loop after every slice of 5 ms, so report handling
   * goes on.
   */
  async scrape(): Promise<{ contentType: string; body: string }> {
    const now = Date.now();
    if (this.cached && now - this.cached.atMs < this.scrapeCacheMs) return { contentType: this.registry.contentType, body: this.cached.body };
    this.building ??= this.build().finally(() => {
      this.building = null;
    });
    const body = await this.building;
    return { contentType: this.registry.contentType, body };
  }

  private async build(): Promise<string> {
    this.view = await this.rankViewSliced();
    try {
      return await this.buildBody();
    } finally {
      this.view = null;
    }
  }

  private async buildBody(): Promise<string> {
    const parts: string[] = [];
    let slice = performance.now();
    for (const m of this.registry.getMetricsAsArray()) {
      parts.push(await this.registry.getSingleMetricAsString(m.name));
      // Yield only once a slice of work is done: a yield per metric would make a scrape wait
      // behind the whole queue of reports once per metric when the loop is busy.
      if (performance.now() - slice >= BUILD_SLICE_MS) {
        await yieldToLoop();
        slice = performance.now();
      }
    }
    const body = `${parts.join("\n\n")}\n`;
    this.cached = { body, atMs: Date.now() };
    return body;
  }

  private counter(name: string, help: string, labelNames: readonly string[]): Counter<string> {
    const metric = new Counter({ name, help, labelNames, registers: [this.registry] });
    this.jobMetrics.push({ metric, labelNames });
    return metric;
  }

  private gauge(name: string, help: string, labelNames: readonly string[]): Gauge<string> {
    const metric = new Gauge({ name, help, labelNames, registers: [this.registry] });
    this.jobMetrics.push({ metric, labelNames });
    return metric;
  }

  private histogram(name: string, help: string, labelNames: readonly string[], buckets: number[]): Histogram<string> {
    const metric = new Histogram({ name, help, labelNames, buckets, registers: [this.registry] });
    this.jobMetrics.push({ metric, labelNames });
    return metric;
  }

  /** A gauge rebuilt from the source on every scrape. */
  private collected(name: string, help: string, labelNames: readonly string[], fill: (set: (labels: Record<string, string>, v: number) => void) => void): void {
    new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect() {
        this.reset();
        fill((labels, v) => this.set(labels, v));
      },
    });
  }
}

interface RankRow {
  job: string;
  stage: string;
  rank: number;
  node: string;
  state: string;
  heartbeatAgeSeconds: number | null;
  step: number;
}

interface RankView {
  counts: Map<string, { job: string; stage: string; state: string; n: number }>;
  groups: Map<string, { job: string; stage: string; maxAge: number | null; stalest: RankRow[]; behind: RankRow[] }>;
  stalest: RankRow[];
  behind: RankRow[];
}

function emptyRankView(): RankView {
  return { counts: new Map(), groups: new Map(), stalest: [], behind: [] };
}

function finishRankView(view: RankView): RankView {
  for (const g of view.groups.values()) {
    view.stalest.push(...g.stalest);
    view.behind.push(...g.behind);
  }
  return view;
}

/** Stalest first (largest heartbeat age), ties by rank. */
const byStalest = (a: RankRow, b: RankRow): number => (b.heartbeatAgeSeconds ?? 0) - (a.heartbeatAgeSeconds ?? 0) || a.rank - b.rank;

/** Furthest behind first (lowest last step), ties by rank. */
const byBehind = (a: RankRow, b: RankRow): number => a.step - b.step || a.rank - b.rank;

/** Keeps `top` the k first of its items by `cmp` (ascending), inserting `r` where it belongs. */
export function insertTopK<T>(top: T[], r: T, k: number, cmp: (a: T, b: T) => number): void {
  if (k <= 0) return;
  const last = top[top.length - 1];
  if (top.length >= k && last !== undefined && cmp(r, last) >= 0) return;
  let i = top.length;
  while (i > 0 && cmp(r, top[i - 1] as T) < 0) i--;
  top.splice(i, 0, r);
  if (top.length > k) top.pop();
}
