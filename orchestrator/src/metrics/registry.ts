/**
 * Prometheus metrics (prom-client). Naming follows Prometheus conventions:
 * `clipfleet_` prefix, base units, `_seconds`/`_bytes`/`_total` suffixes.
 * Labels are limited to job, stage, rank, node and state (plus `metric` on
 * evaluation results), and a finished job's series are dropped after a
 * retention time so cardinality stays bounded.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

const STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const RECOVERY_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600];

/** A read-only view the metrics need from the orchestrator at scrape time. */
export interface MetricsSource {
  /** Count of jobs by state. */
  jobsByState(): Record<string, number>;
  /** Live ranks: job, stage, rank, node, state, heartbeat age (s). */
  ranks(): { job: string; stage: string; rank: number; node: string; state: string; heartbeatAgeSeconds: number | null }[];
  /** Newest committed checkpoint per active stage. */
  newestCheckpoints(): { job: string; stage: string; committedAtMs: number; sizeBytes: number }[];
  now(): number;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly jobLabels = new Map<string, number>(); // job id -> finished at (ms), for retention
  private source: MetricsSource | null = null;

  readonly attempts = new Counter({ name: "clipfleet_attempts_total", help: "Attempts started (gangs launched).", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly restarts = new Counter({ name: "clipfleet_restarts_total", help: "Restarts after a failure.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly failures = new Counter({ name: "clipfleet_failures_total", help: "Attempt failures, by the state the stage was in.", labelNames: ["job", "stage", "state"], registers: [this.registry] });
  readonly step = new Gauge({ name: "clipfleet_train_step", help: "Last completed optimizer step.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly stepsTotal = new Gauge({ name: "clipfleet_train_steps_planned", help: "Optimizer steps the stage will run in all.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly loss = new Gauge({ name: "clipfleet_train_loss", help: "Training loss of the last step (mean over the global batch).", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly lr = new Gauge({ name: "clipfleet_learning_rate", help: "Learning rate of the last step.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly temperature = new Gauge({ name: "clipfleet_logit_scale", help: "Contrastive logit scale (1/temperature) of the last step.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly samplesPerSecond = new Gauge({ name: "clipfleet_samples_per_second", help: "Training throughput over the global batch.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly samplesSeen = new Counter({ name: "clipfleet_samples_total", help: "Training samples consumed.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly stepDuration = new Histogram({ name: "clipfleet_step_duration_seconds", help: "Wall time of one optimizer step, per rank.", labelNames: ["job", "stage", "rank"], buckets: STEP_BUCKETS, registers: [this.registry] });
  readonly dataWait = new Counter({ name: "clipfleet_data_wait_seconds_total", help: "Time ranks waited for input data.", labelNames: ["job", "stage", "rank"], registers: [this.registry] });
  readonly skipped = new Counter({ name: "clipfleet_samples_skipped_total", help: "Samples skipped as undecodable.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly nanSkipped = new Counter({ name: "clipfleet_nan_steps_skipped_total", help: "Steps whose update was skipped for a NaN/Inf loss.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly checkpointSave = new Histogram({ name: "clipfleet_checkpoint_save_duration_seconds", help: "Time the training loop stalled to save a checkpoint.", labelNames: ["job", "stage"], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers: [this.registry] });
  readonly checkpointsCommitted = new Counter({ name: "clipfleet_checkpoints_committed_total", help: "Checkpoints committed.", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly detect = new Histogram({ name: "clipfleet_failure_detection_seconds", help: "Seconds from a failure to its detection.", labelNames: ["job", "stage"], buckets: RECOVERY_BUCKETS, registers: [this.registry] });
  readonly recovery = new Histogram({ name: "clipfleet_recovery_seconds", help: "Seconds from detecting a failure to the first completed step of the new attempt.", labelNames: ["job", "stage"], buckets: RECOVERY_BUCKETS, registers: [this.registry] });
  readonly stepsLost = new Counter({ name: "clipfleet_steps_lost_total", help: "Steps redone after restarts (done but not checkpointed).", labelNames: ["job", "stage"], registers: [this.registry] });
  readonly evalResult = new Gauge({ name: "clipfleet_eval_result", help: "Evaluation results (retrieval R@k, zero-shot top-1, mIoU, RMSE, ...), by metric name.", labelNames: ["job", "stage", "metric"], registers: [this.registry] });
  readonly gpuUtil = new Gauge({ name: "clipfleet_gpu_utilization_ratio", help: "GPU utilisation of a rank's device (0-1), when CUDA is present.", labelNames: ["job", "stage", "rank"], registers: [this.registry] });
  readonly gpuMemory = new Gauge({ name: "clipfleet_gpu_memory_bytes", help: "GPU memory allocated by a rank, when CUDA is present.", labelNames: ["job", "stage", "rank"], registers: [this.registry] });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: "clipfleet_process_" });
    const self = this;
    new Gauge({
      name: "clipfleet_jobs",
      help: "Jobs by state.",
      labelNames: ["state"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [state, n] of Object.entries(self.source?.jobsByState() ?? {})) this.set({ state }, n);
      },
    });
    new Gauge({
      name: "clipfleet_workers",
      help: "Worker ranks by state.",
      labelNames: ["job", "stage", "state"],
      registers: [this.registry],
      collect() {
        this.reset();
        const counts = new Map<string, { job: string; stage: string; state: string; n: number }>();
        for (const r of self.source?.ranks() ?? []) {
          const k = `${r.job}\0${r.stage}\0${r.state}`;
          const c = counts.get(k) ?? { job: r.job, stage: r.stage, state: r.state, n: 0 };
          c.n += 1;
          counts.set(k, c);
        }
        for (const c of counts.values()) this.set({ job: c.job, stage: c.stage, state: c.state }, c.n);
      },
    });
    new Gauge({
      name: "clipfleet_heartbeat_age_seconds",
      help: "Seconds since a rank's last heartbeat.",
      labelNames: ["job", "stage", "rank", "node"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const r of self.source?.ranks() ?? []) {
          if (r.heartbeatAgeSeconds !== null) this.set({ job: r.job, stage: r.stage, rank: String(r.rank), node: r.node }, r.heartbeatAgeSeconds);
        }
      },
    });
    new Gauge({
      name: "clipfleet_checkpoint_age_seconds",
      help: "Age of the newest committed checkpoint of a stage.",
      labelNames: ["job", "stage"],
      registers: [this.registry],
      collect() {
        this.reset();
        const now = self.source?.now() ?? Date.now();
        for (const c of self.source?.newestCheckpoints() ?? []) this.set({ job: c.job, stage: c.stage }, (now - c.committedAtMs) / 1000);
      },
    });
    new Gauge({
      name: "clipfleet_checkpoint_size_bytes",
      help: "Size of the newest committed checkpoint of a stage.",
      labelNames: ["job", "stage"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const c of self.source?.newestCheckpoints() ?? []) this.set({ job: c.job, stage: c.stage }, c.sizeBytes);
      },
    });
  }

  /** Connects the scrape-time view (set once by the composition root). */
  setSource(source: MetricsSource): void {
    this.source = source;
  }

  /** A job ended: its series are dropped `retentionMs` later (see sweep). */
  jobFinished(jobId: string, atMs: number): void {
    this.jobLabels.set(jobId, atMs);
  }

  /** Drops the series of jobs that ended more than `retentionMs` ago. */
  sweep(nowMs: number, retentionMs: number): void {
    for (const [job, at] of this.jobLabels) {
      if (nowMs - at < retentionMs) continue;
      for (const m of this.registry.getMetricsAsArray()) {
        const metric = m as unknown as { remove?: (labels: Record<string, string>) => void; hashMap?: Record<string, { labels: Record<string, string> }> };
        const entries = Object.values(metric.hashMap ?? {});
        for (const e of entries) if (e.labels.job === job) metric.remove?.(e.labels);
      }
      this.jobLabels.delete(job);
    }
  }

  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
