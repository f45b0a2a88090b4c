/**
 * Where a step report goes: metrics, the data audit's log, the step history
 * (rank 0), a throttled `step` event, and the stage's progress, which is
 * kept live in memory and persisted on a timer (a record write per step
 * would cost more than the step). Also the live view of a job: the stored
 * record with its running attempts' progress laid over it.
 */
import { appendFileSync } from "node:fs";
import { addShardCache, addSkips, boundedMetrics, MAX_EVAL_WARNINGS, MAX_WARNING_BYTES, truncateHead, type JobRecord, type ProgressRecord, type StageRecord } from "../domain/index.js";
import type { EvalResult, Heartbeat, StepReport } from "../gen/clipfleet/v1/worker.js";
import type { Attempt } from "./attempt.js";
import type { JobContext } from "./context.js";
import type { Datasets } from "./datasets.js";
import { stageRecordOf } from "./records.js";
import { rankRecordFields, type RankRuntime } from "./runtime.js";
import { stepHistoryPath, StepHistoryWriter, stepPointOf, type StepPointRecord } from "./step-history.js";

const STEP_EVENT_INTERVAL_MS = 250;

export class Progress {
  private readonly dirty = new Set<Attempt>();
  /** Rank 0's step points, appended once per event-loop turn. */
  readonly history: StepHistoryWriter;

  constructor(
    private readonly ctx: JobContext,
    private readonly datasets: Datasets,
  ) {
    this.history = new StepHistoryWriter((file, err) => process.stderr.write(`clipfleet: could not append to ${file}: ${String(err)}\n`));
  }

  /** A rank's step report: every rank feeds the stage's histograms and counters; rank 0 speaks for the stage. */
  step(a: Attempt, rank: RankRuntime, rep: StepReport, now: number): void {
    const m = this.ctx.metrics;
    const labels = { job_id: a.jobId, stage: a.stage };
    // A rank's numbers are not trusted: a NaN, an infinity or a negative duration is dropped and
    // counted, never fed to a metric (prom-client throws on some, and a NaN poisons a sum forever).
    let dropped = 0;
    const duration = (v: number): boolean => (Number.isFinite(v) && v >= 0) || (dropped++, false);
    const finite = (v: number): boolean => Number.isFinite(v) || (dropped++, false);
    if (duration(rep.stepSeconds)) m.stepDuration.observe(labels, rep.stepSeconds);
    if (rep.samples.length > 0) {
      appendFileSync(this.datasets.auditPath(a.jobId, a.stage), JSON.stringify({ a: a.attempt, s: rep.step - 1, ids: rep.samples }) + "\n", { mode: 0o600 });
    }
    if (duration(rep.dataWaitSeconds)) m.dataWait.inc(labels, rep.dataWaitSeconds);
    if (duration(rep.computeSeconds) && rep.computeSeconds > 0) m.computeTime.inc(labels, rep.computeSeconds);
    if (rep.skippedSamples > 0) m.skipped.inc(labels, rep.skippedSamples);
    for (const [reason, n] of Object.entries(addSkips({}, rep.skippedByReason))) m.skippedByReason.inc({ ...labels, reason }, n);
    if (rep.outOfRangeLabels > 0) m.outOfRangeLabels.inc(labels, rep.outOfRangeLabels);
    if (rep.shardBytesFetched > 0) m.shardFetchBytes.inc(labels, rep.shardBytesFetched);
    if (rep.shardCacheHits > 0) m.shardCacheHits.inc(labels, rep.shardCacheHits);
    if (rep.shardCacheMisses > 0) m.shardCacheMisses.inc(labels, rep.shardCacheMisses);
    if (duration(rep.shardFetchSeconds) && rep.shardFetchSeconds > 0) m.shardFetchSeconds.inc(labels, rep.shardFetchSeconds);
    if (rank.rank !== 0) {
      if (dropped > 0) m.valuesDropped.inc(labels, dropped);
      return;
    }

    if (a.recoveringSince !== null) {
      m.recovery.observe(labels, (now - a.recoveringSince) / 1000);
      a.recoveringSince = null;
    }
    if (rep.nanSkipped) m.nanSkipped.inc(labels);
    m.goodput.step(a.jobId, a.stage, rep.step, rep.stepSeconds);
    m.step.set(labels, rep.step);
    // A skipped step (train.on_nan: skip) reports its NaN loss: the gauge keeps the last real one.
    if (finite(rep.loss)) m.loss.set(labels, rep.loss);
    if (finite(rep.lr)) m.lr.set(labels, rep.lr);
    if (finite(rep.temperature)) m.temperature.set(labels, rep.temperature);
    if (duration(rep.samplesPerSecond)) m.samplesPerSecond.set(labels, rep.samplesPerSecond);
    if (a.samplesDone === null) m.samplesSeen.inc(labels, a.globalBatch);
    if (dropped > 0) m.valuesDropped.inc(labels, dropped);
    const point = stepPointOf(a.stage, a.attempt, rep, now);
    this.history.append(stepHistoryPath(this.ctx.deps.stateDir, a.jobId, a.stage), point);
    this.dirty.add(a);
    if (now - a.lastStepEventMs >= STEP_EVENT_INTERVAL_MS || rep.step >= a.totalSteps) {
      a.lastStepEventMs = now;
      const job = this.ctx.ledger.get(a.jobId);
      void this.ctx.ledger.publishTransient({
        schemaVersion: 1,
        seq: 0,
        jobId: a.jobId,
        stage: a.stage,
        type: "step",
        state: job.stages.find((s) => s.name === a.stage)?.state ?? job.state,
        reason: "",
        tsMs: now,
        attempt: a.attempt,
        rank: 0,
        data: progressData(a, point),
      });
    }
  }

  heartbeat(a: Attempt, rank: RankRuntime, hb: Heartbeat): void {
    if (hb.gpuMemoryBytes <= 0) return;
    this.ctx.metrics.gpuSample(a.jobId, a.stage, rank.rank, hb.gpuUtilization, hb.gpuMemoryBytes);
  }

  /**
   * Evaluation results: a gauge per metric, an event, and the stage's metrics (names and count
   * bounded); the val samples skipped by reason and the warnings (a metric left out and why) replace
   * the stage's previous ones, and each warning is also a `warning` event.
   */
  eval(a: Attempt, rank: RankRuntime, result: EvalResult, onError: (err: unknown) => void): void {
    const metrics = this.bounded(a, result.metrics);
    for (const [k, v] of Object.entries(metrics)) this.ctx.metrics.evalResult.set({ job_id: a.jobId, stage: a.stage, metric: k }, v);
    const skippedByReason = addSkips({}, result.skippedByReason);
    const warnings = result.warnings.slice(0, MAX_EVAL_WARNINGS).map((w) => truncateHead(w, MAX_WARNING_BYTES));
    // Evaluations during training repeat their warnings: an event only for one the previous evaluation did not give.
    let fresh: string[] = [];
    void this.ctx.ledger
      .note(a.jobId, a.stage, "eval", `evaluation at step ${result.step}`, {
        attempt: a.attempt,
        rank: rank.rank,
        data: { step: result.step, split: result.split, metrics, skippedByReason, warnings },
        update: (s) => {
          Object.assign(s.metrics, metrics);
          fresh = warnings.filter((w) => !(s.warnings ?? []).includes(w));
          s.evalSkippedByReason = skippedByReason;
          s.warnings = warnings;
        },
      })
      .then(async () => {
        for (const w of fresh) await this.ctx.ledger.note(a.jobId, a.stage, "warning", w, { attempt: a.attempt, rank: rank.rank, data: { step: result.step } });
      })
      .catch(onError);
  }

  /** The metrics of a report that are kept (see boundedMetrics); the others are counted as dropped. */
  bounded(a: Attempt, incoming: Readonly<Record<string, number>>): Record<string, number> {
    const known = new Set(Object.keys(stageRecordOf(this.ctx.ledger.get(a.jobId), a.stage)?.metrics ?? {}));
    const { kept, dropped } = boundedMetrics(incoming, known);
    if (dropped > 0) this.ctx.metrics.valuesDropped.inc({ job_id: a.jobId, stage: a.stage }, dropped);
    return kept;
  }

  /** Lays the attempt's live progress onto its stage record (inside a ledger update, or on a clone). */
  apply(s: StageRecord, a: Attempt): void {
    const rep = a.lastReport;
    const p: ProgressRecord = s.progress;
    p.totalSteps = a.totalSteps;
    p.worldSize = a.worldSize;
    if (!rep) return;
    p.step = rep.step;
    p.epoch = rep.epoch;
    p.sampleInEpoch = rep.sampleInEpoch;
    p.samplesSeen = a.samplesDone ?? rep.step * a.globalBatch;
    p.loss = rep.loss;
    if (p.firstLoss === null) p.firstLoss = a.firstLoss;
    p.lr = rep.lr;
    p.temperature = rep.temperature;
    p.samplesPerSecond = rep.samplesPerSecond;
    p.stepSeconds = rep.stepSeconds;
    p.skippedSamples = a.facts.skippedBefore + a.skippedSamples;
    p.skippedByReason = addSkips(addSkips({}, a.facts.skippedByReasonBefore), a.skippedByReason);
    if (a.facts.shardCacheBefore !== undefined || a.shardCache.hits + a.shardCache.misses > 0) p.shardCache = addShardCache(a.facts.shardCacheBefore, a.shardCache);
    const rec = s.attempts.find((x) => x.number === a.attempt);
    if (rec) rec.lastStep = rep.step;
  }

  /** apply(), plus the ranks' live facts on the attempt's record. */
  applyWithRanks(s: StageRecord, a: Attempt): void {
    this.apply(s, a);
    const rec = s.attempts.find((x) => x.number === a.attempt);
    for (const r of rec?.ranks ?? []) {
      const live = a.ranks[r.rank];
      if (live) Object.assign(r, rankRecordFields(live));
    }
  }

  /** A job as persisted, with the live progress of its running attempts laid over it (not persisted). */
  liveView(job: JobRecord): JobRecord {
    if (!job.stages.some((s) => this.ctx.live.has(job.id, s.name))) return job;
    const view = structuredClone(job);
    for (const s of view.stages) {
      const a = this.ctx.live.get(job.id, s.name);
      if (a) this.applyWithRanks(s, a);
    }
    return view;
  }

  /** Persists the progress of attempts that reported steps since the last flush. */
  async flush(): Promise<void> {
    this.history.flush();
    const attempts = [...this.dirty];
    this.dirty.clear();
    for (const a of attempts) {
      if (a.over) continue;
      await this.ctx.ledger
        .update(a.jobId, (j) => {
          const s = j.stages.find((x) => x.name === a.stage);
          if (s) this.applyWithRanks(s, a);
        })
        .catch(() => undefined);
    }
  }
}

/** The data of a `step` event: the step's point plus what progress lines and dashboards derive from it. */
function progressData(a: Attempt, point: StepPointRecord): Record<string, unknown> {
  const { stage: _stage, attempt: _attempt, tsMs: _ts, ...fields } = point;
  const remaining = Math.max(0, a.totalSteps - point.step);
  const data = { ...fields, totalSteps: a.totalSteps, etaSeconds: remaining * point.stepSeconds, worldSize: a.worldSize };
  // A recaption's step is a committed shard and it has no loss: progress lines count shards instead.
  return a.samplesDone === null ? data : { ...data, unit: "shards", samplesSeen: a.samplesDone };
}
