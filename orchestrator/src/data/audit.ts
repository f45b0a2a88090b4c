/**
 * The data audit (data.audit: true): checks, from the sample ids workers
 * report, the invariant "for a fixed seed, the samples of epoch e are each
 * seen exactly once (up to the dropped remainder), whatever the failures and
 * world sizes along the way", counting only the steps of the final trajectory.
 *
 * Final trajectory: step s belongs to the last attempt that ran it, i.e. the
 * highest-numbered attempt a with resumedFromStep(a) <= s < lastStep(a). Work
 * an attempt did past its last committed checkpoint is redone by the next
 * attempt (which resumes from that checkpoint), so the redo replaces it.
 * Reports of a superseded attempt are discarded as soon as a later attempt
 * reports the same step, so memory holds one attempt's ids per step.
 *
 * Counting uses one bitmap of M bits (the epoch's positions), reused epoch by
 * epoch: a reported id maps back to its position through the inverse
 * permutation, so the audit never materialises an epoch's order.
 */
import assert from "node:assert/strict";
import type { DataPlan } from "./plan.js";

/** Steps [fromStep, toStep) run by `attempt` (0-based step indices). */
export interface TrajectorySegment {
  readonly attempt: number;
  readonly fromStep: number;
  readonly toStep: number;
}

/** The exactly-once verdict of one epoch. */
export interface EpochAudit {
  readonly epoch: number;
  /** Steps of this epoch in the final trajectory. */
  readonly steps: number;
  /** Samples those steps should consume: steps * B (M rounded down to a multiple of B for a full epoch). */
  readonly expected: number;
  /** Planned samples reported at least once. */
  readonly unique: number;
  /** Extra reports of planned samples beyond the first. */
  readonly duplicates: number;
  /** Planned samples never reported. */
  readonly missing: number;
  /** Reported ids that are not planned in this epoch's trajectory steps. */
  readonly unexpected: number;
  /** Samples the plan leaves out of every epoch by design (M mod B). */
  readonly dropped: number;
  /** Trajectory steps with no report from their owning attempt. */
  readonly unreportedSteps: number;
  readonly exactlyOnce: boolean;
}

/** The whole audit, JSON-serialisable (the control API's AuditReport.json). */
export interface AuditReport {
  readonly batchSize: number;
  readonly samplesPerEpoch: number;
  readonly stepsPerEpoch: number;
  readonly steps: number;
  /** Reports dropped because a later attempt redid their step. */
  readonly supersededReports: number;
  /** Reports from an attempt older than one that already reported the step (fenced stragglers). */
  readonly staleReports: number;
  readonly epochs: EpochAudit[];
  readonly exactlyOnce: boolean;
}

/**
 * The trajectory of a stage from its attempts' records: attempt a ran steps
 * [resumedFromStep, lastStep) (lastStep is the count of completed steps, the
 * StepReport numbering); later attempts override earlier ones where they overlap.
 */
export function trajectoryOf(
  attempts: readonly { readonly number: number; readonly resumedFromStep: number; readonly lastStep: number }[],
): TrajectorySegment[] {
  return [...attempts]
    .sort((a, b) => a.number - b.number)
    .map((a) => ({ attempt: a.number, fromStep: a.resumedFromStep, toStep: Math.max(a.resumedFromStep, a.lastStep) }));
}

/** Collects per-step sample ids reported by workers and checks them against the plan. */
export class Audit {
  private readonly reports = new Map<number, { attempt: number; chunks: Float64Array[] }>();
  private superseded = 0;
  private stale = 0;

  constructor(private readonly plan: DataPlan) {}

  /**
   * Adds the ids one rank of `attempt` consumed in 0-based step `step` (a
   * StepReport's `step` is the 1-based count, so pass report.step - 1).
   */
  record(attempt: number, step: number, sampleIds: readonly number[]): void {
    const held = this.reports.get(step);
    const ids = Float64Array.from(sampleIds);
    if (held === undefined || attempt > held.attempt) {
      if (held !== undefined) this.superseded += held.chunks.length;
      this.reports.set(step, { attempt, chunks: [ids] });
    } else if (attempt === held.attempt) {
      held.chunks.push(ids);
    } else {
      this.stale++;
    }
  }

  /** Per-epoch counts over the steps of `trajectory` (see trajectoryOf). */
  finalize(trajectory: readonly TrajectorySegment[]): AuditReport {
    const plan = this.plan;
    const spe = plan.stepsPerEpoch;
    const b = plan.batchSize;
    const total = trajectory.reduce((mx, s) => Math.max(mx, s.toStep), 0);
    const owner = new Int32Array(total).fill(-1);
    for (const seg of trajectory) {
      assert.ok(seg.fromStep >= 0 && seg.fromStep <= seg.toStep, `bad trajectory segment ${JSON.stringify(seg)}`);
      owner.fill(seg.attempt, seg.fromStep, seg.toStep);
    }

    const seen = new Uint8Array(Math.ceil(plan.samplesPerEpoch / 8));
    const epochs: EpochAudit[] = [];
    for (let epoch = 0; epoch * spe < total; epoch++) {
      const first = epoch * spe;
      const last = Math.min(first + spe, total);
      // Positions [start, start+B) of an owned step are planned.
      const planned = (pos: number): boolean => {
        const s = first + Math.floor(pos / b);
        return s < last && (owner[s] as number) >= 0;
      };
      seen.fill(0);
      let steps = 0;
      let unique = 0;
      let duplicates = 0;
      let unexpected = 0;
      let unreported = 0;
      for (let s = first; s < last; s++) {
        const attempt = owner[s] as number;
        if (attempt < 0) continue;
        steps++;
        const held = this.reports.get(s);
        if (held === undefined || held.attempt !== attempt) {
          unreported++;
          continue;
        }
        for (const chunk of held.chunks) {
          for (const id of chunk) {
            const pos = plan.positionOf(epoch, id);
            if (pos === null || pos >= spe * b || !planned(pos)) {
              unexpected++;
              continue;
            }
            const bit = 1 << pos % 8;
            const byte = Math.floor(pos / 8);
            if ((seen[byte] as number) & bit) duplicates++;
            else {
              seen[byte] = (seen[byte] as number) | bit;
              unique++;
            }
          }
        }
      }
      const expected = steps * b;
      const missing = expected - unique;
      epochs.push({
        epoch,
        steps,
        expected,
        unique,
        duplicates,
        missing,
        unexpected,
        dropped: plan.droppedPerEpoch,
        unreportedSteps: unreported,
        exactlyOnce: missing === 0 && duplicates === 0 && unexpected === 0,
      });
    }
    return {
      batchSize: b,
      samplesPerEpoch: plan.samplesPerEpoch,
      stepsPerEpoch: spe,
      steps: owner.reduce((n, a) => (a >= 0 ? n + 1 : n), 0),
      supersededReports: this.superseded,
      staleReports: this.stale,
      epochs,
      exactlyOnce: epochs.every((e) => e.exactlyOnce),
    };
  }
}
