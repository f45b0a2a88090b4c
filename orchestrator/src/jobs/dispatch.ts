/**
 * The scheduling pass: queue the stages that may start (needs met, backoff
 * over), ask the scheduler for placements, start the placed attempts, and
 * record why the others wait. One pass at a time; triggers that arrive
 * during a pass coalesce into one more pass after it.
 */
import { isTerminal, type JobRecord, type StageSpec, type TimerHandle } from "../domain/index.js";
import { allowedWorldSizes } from "../data/index.js";
import type { PlacementRequest } from "../scheduler/index.js";
import { stageKey, type JobContext } from "./context.js";
import type { Launch } from "./launch.js";
import { needsMet, stageRecordOf, stageSpecOf } from "./records.js";

/** What the scheduler is asked for a stage: its gang, the world sizes its global batch allows, its node labels. */
export function placementRequest(jobId: string, spec: StageSpec, priority: number, now: number): PlacementRequest {
  return {
    jobId,
    stage: spec.name,
    workers: spec.cluster.workers,
    minWorkers: spec.cluster.min_workers,
    allowedWorldSizes: allowedWorldSizes(spec.train.batch_size, spec.cluster.min_workers, spec.cluster.workers),
    gpusPerWorker: spec.cluster.gpus_per_worker,
    nodeSelector: spec.cluster.node_selector,
    priority,
    enqueuedAtMs: now,
  };
}

export class Dispatcher {
  /** Stages in the scheduler's queue (keys of stageKey). */
  private readonly queued = new Set<string>();
  private scheduled = false;
  private passRunning = false;
  private passAgain = false;
  private wakeTimer: TimerHandle | null = null;
  private closed = false;
  /** The pass in flight (or the last one, settled): close() waits for it. */
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly ctx: JobContext,
    private readonly launch: Launch,
  ) {}

  /** Runs a scheduling pass soon (coalescing bursts of triggers). */
  wake(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      // One pass at a time: a pass awaits launches, and a second one meanwhile would see
      // a stage that is neither queued nor started and queue it twice. Run again after.
      if (this.passRunning) {
        this.passAgain = true;
        return;
      }
      if (this.closed) return;
      this.passRunning = true;
      this.running = this.pass()
        .catch((err: unknown) => {
          process.stderr.write(`clipfleet: scheduling pass failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
        })
        .finally(() => {
          this.passRunning = false;
          if (this.passAgain) {
            this.passAgain = false;
            this.wake();
          }
        });
    });
  }

  /** No pass after this; resolves once a pass in flight (and the launches it awaits) is over. */
  async close(): Promise<void> {
    this.closed = true;
    this.wakeTimer?.cancel();
    await this.running;
  }

  /** Takes a stage out of the scheduler's queue (a cancel of a waiting stage). */
  unqueue(jobId: string, stage: string): void {
    if (!this.queued.delete(stageKey(jobId, stage))) return;
    this.ctx.scheduler.release(jobId, stage);
  }

  private async pass(): Promise<void> {
    const { ledger, scheduler, deps } = this.ctx;
    const now = this.ctx.now();
    let wakeAt = Infinity;
    for (const job of ledger.list()) {
      if (isTerminal(job.state) || job.cancelRequested) continue;
      if (deps.scope && !deps.scope.has(job.id)) continue;
      for (const stage of job.stages) {
        if (this.queued.has(stageKey(job.id, stage.name)) || this.ctx.live.has(job.id, stage.name) || this.ctx.live.isAllocating(job.id, stage.name)) continue;
        const spec = stageSpecOf(job, stage.name);
        if (stage.state === "PENDING") {
          if (!needsMet(job, spec)) continue;
        } else if (stage.state === "RESTARTING") {
          if (stage.notBeforeMs !== null && stage.notBeforeMs > now) {
            wakeAt = Math.min(wakeAt, stage.notBeforeMs);
            continue;
          }
        } else continue;
        scheduler.enqueue({
          ...placementRequest(job.id, spec, job.priority, now),
          // After a failure the stage may continue with fewer ranks if its node is gone (global batch unchanged).
          allowShrink: stage.state === "RESTARTING" && spec.cluster.min_workers < spec.cluster.workers,
        });
        this.queued.add(stageKey(job.id, stage.name));
      }
    }
    const { placements, waiting } = scheduler.schedule(now);
    for (const p of placements) {
      this.queued.delete(stageKey(p.jobId, p.stage));
      // Shutting down: what was not started stays PENDING/RESTARTING in the store for the next start.
      if (this.closed) {
        scheduler.release(p.jobId, p.stage);
        continue;
      }
      const started = this.launch.start(p).catch(async (err: unknown) => {
        scheduler.release(p.jobId, p.stage);
        await this.failBeforeStart(ledger.get(p.jobId), p.stage, err);
      });
      // A Slurm allocation may pend for hours: the pass goes on (the stage counts as allocating until it starts).
      if (!this.launch.allocates(p)) await started;
    }
    for (const w of waiting) {
      const job = ledger.has(w.jobId) ? ledger.get(w.jobId) : null;
      if (job && !isTerminal(job.state) && job.pendingReason !== w.reason) {
        await ledger.update(w.jobId, (j) => {
          // A cancel may have ended the job since this pass looked: a finished job waits for nothing.
          if (!isTerminal(j.state)) j.pendingReason = w.reason;
        });
      }
    }
    this.wakeTimer?.cancel();
    this.wakeTimer = null;
    if (wakeAt !== Infinity && !this.closed) {
      this.wakeTimer = this.ctx.timers.after(Math.max(0, wakeAt - this.ctx.now()) + 5, () => this.wake());
    }
  }

  /** A placed stage could not start (its data, checkpoint or interpreter is gone): it fails with the reason. */
  private async failBeforeStart(job: JobRecord, stage: string, err: unknown): Promise<void> {
    const msg = err instanceof Error ? err.message : String(err);
    this.ctx.log(job.id, stage, 0, `could not start: ${msg}`);
    const s = stageRecordOf(job, stage);
    if (s && (s.state === "PENDING" || s.state === "RESTARTING")) {
      await this.ctx.ledger.transition(job.id, stage, "FAILED", `could not start: ${msg}`);
    }
  }
}
