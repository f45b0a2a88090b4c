/**
 * Prometheus metrics (prom-client). Naming follows Prometheus conventions:
 * `clipfleet_` prefix, base units, `_seconds`/`_bytes`/`_total` suffixes.
 * Labels are limited to job, stage, rank, node and state (plus `metric` on
 * evaluation results); the process's default metrics keep prom-client's own
 * labels. A finished job's series are dropped after a retention time so
 * cardinality stays bounded.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { isTerminal, type JobState } from "../domain/index.js";

const STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const RECOVERY_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600];
const SAVE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** How long a finished job's series stay exported unless told otherwise. */
export const DEFAULT_RETENTION_SECONDS = 3600;

/** A read-only view the metrics need from the orchestrator at scrape time. */
export interface MetricsSource {
  /** Count of jobs by state. */
  jobsByState(): Record<string, number>;
  /** Every job the orchestrator knows, with its state and when its record last changed (ms). */
  jobs(): { job: string; state: JobState; updatedAtMs: number }[];
  /** Live ranks: job, stage, rank, node, state, heartbeat age (s). */
  ranks(): { job: string; stage: string; rank: number; node: string; state: string; heartbeatAgeSeconds: number | null }[];
  /** Newest committed checkpoint per active stage. */
  newestCheckpoints(): { job: string; stage: string; committedAtMs: number; sizeBytes: number }[];
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

  readonly attempts = this.counter("clipfleet_attempts_total", "Attempts started (gangs launched), the first one included.", ["job", "stage"]);
  readonly restarts = this.counter("clipfleet_restarts_total", "Restarts after a failure.", ["job", "stage"]);
  readonly preemptions = this.counter("clipfleet_preemptions_total", "Restarts after a preemption (the preemption signal: checkpoint at one step, restart from it); not in clipfleet_restarts_total.", ["job", "stage"]);
  readonly failures = this.counter("clipfleet_failures_total", "Attempt failures, by the state the stage was in when it failed.", ["job", "stage", "state"]);
  readonly step = this.gauge("clipfleet_train_step", "Last completed optimizer step (1-based count).", ["job", "stage"]);
  readonly stepsTotal = this.gauge("clipfleet_train_steps_planned", "Optimizer steps the stage runs in all.", ["job", "stage"]);
  readonly loss = this.gauge("clipfleet_train_loss", "Training loss of the last step (mean over the global batch).", ["job", "stage"]);
  readonly lr = this.gauge("clipfleet_train_learning_rate", "Learning rate of the last step.", ["job", "stage"]);
  readonly temperature = this.gauge("clipfleet_train_logit_scale", "Contrastive logit scale (1/temperature) of the last step.", ["job", "stage"]);
  readonly samplesPerSecond = this.gauge("clipfleet_train_samples_per_second", "Training throughput over the global batch, measured on rank 0.", ["job", "stage"]);
  readonly samplesSeen = this.counter("clipfleet_train_samples_total", "Training samples consumed (steps redone after a restart count again).", ["job", "stage"]);
  readonly stepDuration = this.histogram("clipfleet_train_step_duration_seconds", "Wall time of one optimizer step, per rank.", ["job", "stage", "rank"], STEP_BUCKETS);
  readonly dataWait = this.counter("clipfleet_train_data_wait_seconds_total", "Time a rank waited for input data.", ["job", "stage", "rank"]);
  readonly computeTime = this.counter("clipfleet_train_compute_seconds_total", "Time ranks spent computing (forward, backward, update), summed over ranks: with the data wait it tells input-bound from compute-bound.", ["job", "stage"]);
  readonly outOfRangeLabels = this.counter("clipfleet_dense_labels_out_of_range_total", "Segmentation label pixels with a class id outside dense.num_classes (ignored in the loss), summed over ranks.", ["job", "stage"]);
  readonly shardFetchBytes = this.counter("clipfleet_shard_fetch_bytes_total", "Bytes of remote shards (http(s)://, pipe:) fetched into the nodes' shard caches or read by range, summed over ranks.", ["job", "stage"]);
  readonly shardCacheHits = this.counter("clipfleet_shard_cache_hits_total", "Remote or compressed shards a rank found in its node's shard cache.", ["job", "stage"]);
  readonly shardCacheMisses = this.counter("clipfleet_shard_cache_misses_total", "Remote or compressed shards a rank fetched into its node's shard cache.", ["job", "stage"]);
  readonly shardFetchSeconds = this.counter("clipfleet_shard_fetch_seconds_total", "Time ranks spent fetching shards (retries and backoff included), summed over ranks.", ["job", "stage"]);
  readonly valuesDropped = this.counter("clipfleet_report_values_dropped_total", "Values in ranks' reports that were dropped: NaN, infinite or negative numbers, and evaluation metrics past the name length or per-stage count limits.", ["job", "stage"]);
  readonly skipped = this.counter("clipfleet_train_samples_skipped_total", "Samples skipped as undecodable.", ["job", "stage"]);
  readonly skippedByReason = this.counter("clipfleet_train_samples_skipped_by_reason_total", "Training samples skipped, by reason (`no caption`, `undecodable image`, ...; a fixed set, unknown reasons count as `other`).", ["job", "stage", "reason"]);
  readonly nanSkipped = this.counter("clipfleet_train_nan_steps_skipped_total", "Steps whose update was skipped for a NaN or Inf loss.", ["job", "stage"]);
  readonly checkpointSave = this.histogram("clipfleet_checkpoint_save_duration_seconds", "Time a rank's training loop stalled to save a checkpoint.", ["job", "stage"], SAVE_BUCKETS);
  readonly checkpointsCommitted = this.counter("clipfleet_checkpoints_committed_total", "Checkpoints committed (every rank wrote its files, the manifest is on disk).", ["job", "stage"]);
  readonly detect = this.histogram("clipfleet_failure_detection_seconds", "Seconds from a failure (last heartbeat or step) to its detection.", ["job", "stage"], RECOVERY_BUCKETS);
  readonly recovery = this.histogram("clipfleet_recovery_seconds", "Seconds from a failure to the first completed step of the attempt that replaced it.", ["job", "stage"], RECOVERY_BUCKETS);
  readonly stepsLost = this.counter("clipfleet_steps_lost_total", "Steps done but not checkpointed when an attempt failed (redone after the restart).", ["job", "stage"]);
  readonly evalResult = this.gauge("clipfleet_eval_result", "Latest evaluation results (retrieval R@k, zero-shot top-1, mIoU, RMSE, ...), by metric name.", ["job", "stage", "metric"]);
  readonly gpuUtil = this.gauge("clipfleet_gpu_utilization_ratio", "GPU utilisation of a rank's device (0-1), when CUDA is present.", ["job", "stage", "rank"]);
  readonly serverInsecure = new Gauge({ name: "clipfleet_server_insecure", help: "1 when the server was started with --insecure: no TLS, no authentication, every caller an admin.", registers: [this.registry] });
  readonly gpuMemory = this.gauge("clipfleet_gpu_memory_bytes", "GPU memory allocated by a rank, when CUDA is present.", ["job", "stage", "rank"]);

  constructor(opts: { defaultMetrics?: boolean; retentionSeconds?: number } = {}) {
    this.retentionMs = (opts.retentionSeconds ?? DEFAULT_RETENTION_SECONDS) * 1000;
    if (opts.defaultMetrics !== false) {
      collectDefaultMetrics({ register: this.registry, prefix: "clipfleet_" });
      // prom-client exports a few gauges named *_total (active handles, requests, resources);
      // `promtool check metrics` rejects that, and their per-type twins carry the same counts.
      for (const m of this.registry.getMetricsAsArray()) {
        if (!(m instanceof Counter) && m.name.endsWith("_total")) this.registry.removeSingleMetric(m.name);
      }
    }
    this.collected("clipfleet_jobs", "Jobs the orchestrator knows, by state.", ["state"], (set) => {
      for (const [state, n] of Object.entries(this.source?.jobsByState() ?? {})) set({ state }, n);
    });
    this.collected("clipfleet_job_state", "1 for the state a job is in; finished jobs are shown for the retention time.", ["job", "state"], (set) => {
      const now = this.source?.now() ?? Date.now();
      for (const j of this.source?.jobs() ?? []) {
        if (isTerminal(j.state) && now - j.updatedAtMs >= this.retentionMs) continue;
        set({ job: j.job, state: j.state }, 1);
      }
    });
    this.collected("clipfleet_workers", "Worker ranks of running attempts, by state.", ["job", "stage", "state"], (set) => {
      const counts = new Map<string, { job: string; stage: string; state: string; n: number }>();
      for (const r of this.source?.ranks() ?? []) {
        const k = `${r.job}\0${r.stage}\0${r.state}`;
        const c = counts.get(k) ?? { job: r.job, stage: r.stage, state: r.state, n: 0 };
        c.n += 1;
        counts.set(k, c);
      }
      for (const c of counts.values()) set({ job: c.job, stage: c.stage, state: c.state }, c.n);
    });
    this.collected("clipfleet_heartbeat_age_seconds", "Seconds since a live rank's last message (heartbeat or report).", ["job", "stage", "rank", "node"], (set) => {
      for (const r of this.source?.ranks() ?? []) {
        // A rank that has exited or finished is not expected to send heartbeats.
        if (r.heartbeatAgeSeconds === null || r.state === "exited" || r.state === "finished") continue;
        set({ job: r.job, stage: r.stage, rank: String(r.rank), node: r.node }, r.heartbeatAgeSeconds);
      }
    });
    this.collected("clipfleet_checkpoint_age_seconds", "Age of the newest committed checkpoint of an unfinished stage.", ["job", "stage"], (set) => {
      const now = this.source?.now() ?? Date.now();
      for (const c of this.source?.newestCheckpoints() ?? []) set({ job: c.job, stage: c.stage }, Math.max(0, (now - c.committedAtMs) / 1000));
    });
    this.collected("clipfleet_checkpoint_size_bytes", "Size of the newest committed checkpoint of an unfinished stage (all ranks' files).", ["job", "stage"], (set) => {
      for (const c of this.source?.newestCheckpoints() ?? []) set({ job: c.job, stage: c.stage }, c.sizeBytes);
    });
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
    const labels = { job: jobId, stage };
    this.finished.delete(jobId);
    this.attempts.inc(labels);
    this.stepsTotal.set(labels, totalSteps);
    for (const c of [this.restarts, this.preemptions, this.stepsLost, this.samplesSeen, this.skipped, this.nanSkipped, this.checkpointsCommitted]) c.inc(labels, 0);
  }

  /** A job ended: its series are dropped after the retention time (see sweep). */
  jobFinished(jobId: string, atMs: number): void {
    this.finished.set(jobId, atMs);
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
        const job = v.labels.job;
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
    for (const job of due) this.finished.delete(job);
    return removed;
  }

  /** The Prometheus text exposition of every metric. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
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
