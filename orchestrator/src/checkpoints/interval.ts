/**
 * checkpoint.every: auto — the checkpoint interval from the measured save
 * cost and the observed failure rate (Young-Daly), bounded so checkpointing
 * costs at most a fixed share of run time (CheckFreq's 3.5 %).
 *
 * The orchestrator computes it, not rank 0: it sees the failures of every
 * attempt of a stage (a rank only its own), it already receives every rank's
 * save cost with its checkpoint report, and it already coordinates timed
 * checkpoints (CheckpointAt at one step on every rank, `every_minutes`).
 */

/** CheckFreq's bound on checkpoint overhead: the stall per save over the interval. */
export const MAX_CHECKPOINT_OVERHEAD = 0.035;

export interface IntervalInput {
  /** Seconds training stalls per checkpoint (the slowest rank's save_seconds); null: not measured yet. */
  readonly saveCostS: number | null;
  /** Failures the stage has seen (restarts of earlier attempts). */
  readonly failures: number;
  /** Seconds the stage has been observed running (without a failure counted in `failures` after it). */
  readonly observedS: number;
  /** Mean time between failures assumed before any is seen (checkpoint.mtbf_prior_hours), seconds. */
  readonly mtbfPriorS: number;
}

/**
 * The estimated MTBF: the prior counts as one failure-free stretch of its
 * length, so with no failure seen the estimate grows with the observed time,
 * and each failure pulls it towards observed time / failures.
 */
export function estimatedMtbfS(failures: number, observedS: number, mtbfPriorS: number): number {
  return (mtbfPriorS + Math.max(0, observedS)) / (1 + Math.max(0, failures));
}

/**
 * Seconds between checkpoints: sqrt(2 x save cost x MTBF) (Young-Daly),
 * never less than save cost / 3.5 %, so the stall stays <= 3.5 % of run
 * time. 0 while the save cost is unknown: save at once to measure it.
 */
export function autoIntervalS(x: IntervalInput): number {
  if (x.saveCostS === null) return 0;
  const cost = Math.max(0, x.saveCostS);
  const youngDaly = Math.sqrt(2 * cost * estimatedMtbfS(x.failures, x.observedS, x.mtbfPriorS));
  return Math.max(youngDaly, cost / MAX_CHECKPOINT_OVERHEAD);
}
