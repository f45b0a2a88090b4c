/**
 * Goodput per job (`clipfleet_job_goodput_ratio`): productive step time over
 * wall time since the job started running. Productive time is the sum of
 * rank 0's step times of the steps that count: when an attempt resumes from a
 * checkpoint, the steps after it that the failed attempt had done are
 * redone, and only the redone ones count. So failures (detection, teardown,
 * restart, steps lost), checkpoint stalls, evaluation and start-up all lower
 * the ratio. Pure: times come in as arguments.
 */

/** Steps remembered per stage (each a step number and the productive seconds up to it); older ones fold into a floor. */
export const GOODPUT_STEPS_KEPT = 65_536;

interface StageTally {
  /** (step, productive seconds through it), increasing steps, for unwinding to a resume point. */
  steps: number[];
  cums: number[];
  /** What was folded away: a resume before it unwinds only to it (a checkpoint that old is rarely resumed). */
  floorStep: number;
  floorCum: number;
}

interface JobTally {
  startMs: number | null;
  endMs: number | null;
  stages: Map<string, StageTally>;
}

export class GoodputLedger {
  private readonly jobs = new Map<string, JobTally>();

  /** The job is running (an attempt's ranks all connected): the wall clock starts at the first time; a resumed job runs on. */
  running(jobId: string, nowMs: number): void {
    const j = this.job(jobId);
    j.startMs ??= nowMs;
    j.endMs = null;
  }

  /** Rank 0 completed `step` (1-based) in `seconds`; a step at or below ones already counted means a resume: those are redone. */
  step(jobId: string, stage: string, step: number, seconds: number): void {
    if (!Number.isSafeInteger(step) || step < 1 || !Number.isFinite(seconds) || seconds < 0) return;
    const j = this.job(jobId);
    let s = j.stages.get(stage);
    if (!s) j.stages.set(stage, (s = { steps: [], cums: [], floorStep: 0, floorCum: 0 }));
    while (s.steps.length > 0 && (s.steps.at(-1) ?? 0) >= step) {
      s.steps.pop();
      s.cums.pop();
    }
    const base = s.cums.at(-1) ?? s.floorCum;
    s.steps.push(step);
    s.cums.push(base + seconds);
    if (s.steps.length > GOODPUT_STEPS_KEPT) {
      const drop = s.steps.length - GOODPUT_STEPS_KEPT / 2;
      s.floorStep = s.steps[drop - 1] ?? s.floorStep;
      s.floorCum = s.cums[drop - 1] ?? s.floorCum;
      s.steps.splice(0, drop);
      s.cums.splice(0, drop);
    }
  }

  /** The job ended: its ratio stops moving. */
  finished(jobId: string, nowMs: number): void {
    const j = this.jobs.get(jobId);
    if (j && j.startMs !== null) j.endMs ??= nowMs;
  }

  /** Productive seconds so far (every stage). */
  productiveSeconds(jobId: string): number {
    let sum = 0;
    for (const s of this.jobs.get(jobId)?.stages.values() ?? []) sum += s.cums.at(-1) ?? s.floorCum;
    return sum;
  }

  /** Productive over wall time since the job started running, in [0, 1]; null before it ran or with no wall time yet. */
  ratio(jobId: string, nowMs: number): number | null {
    const j = this.jobs.get(jobId);
    if (!j || j.startMs === null) return null;
    const wall = ((j.endMs ?? nowMs) - j.startMs) / 1000;
    if (!(wall > 0)) return null;
    return Math.min(1, Math.max(0, this.productiveSeconds(jobId) / wall));
  }

  /** The job's series are gone (retention, deletion). */
  forget(jobId: string): void {
    this.jobs.delete(jobId);
  }

  private job(jobId: string): JobTally {
    let j = this.jobs.get(jobId);
    if (!j) this.jobs.set(jobId, (j = { startMs: null, endMs: null, stages: new Map() }));
    return j;
  }
}
