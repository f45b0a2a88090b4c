/**
 * What the dashboard shows, as plain JSON built from the job service's
 * records: summaries for the job list, a job's detail (stages, attempts,
 * checkpoints, metrics, events), nodes. Pure; nothing secret (no tokens, no
 * spec environment) leaves here.
 */
import { attemptTally, describeTally, type JobEvent, type JobRecord, type StageRecord } from "../domain/index.js";
import type { JobService, StepPointRecord } from "../jobs/index.js";

/** Most jobs the list shows (the newest). */
export const MAX_LISTED_JOBS = 500;
/** Most checkpoints and events shown per job (the newest). */
const MAX_CHECKPOINTS = 200;
const MAX_EVENTS = 200;

/** A row of the job list. */
export interface JobSummary {
  id: string;
  name: string;
  state: string;
  reason: string;
  pendingReason: string;
  owner: string;
  createdAtMs: number;
  updatedAtMs: number;
  step: number;
  totalSteps: number;
  loss: number | null;
  restarts: number;
  stages: number;
}

function totals(job: JobRecord): { step: number; totalSteps: number; restarts: number } {
  let step = 0;
  let totalSteps = 0;
  let restarts = 0;
  for (const s of job.stages) {
    step += s.progress.step;
    totalSteps += s.progress.totalSteps;
    restarts += attemptTally(s.attempts, s.state).failureRestarts;
  }
  return { step, totalSteps, restarts };
}

/** The job list's row of a job. */
export function jobSummary(job: JobRecord): JobSummary {
  const live = [...job.stages].reverse().find((s) => s.progress.loss !== null);
  return {
    id: job.id,
    name: job.name,
    state: job.state,
    reason: job.reason,
    pendingReason: job.pendingReason,
    owner: job.submittedBy ?? "",
    createdAtMs: job.createdAtMs,
    updatedAtMs: job.updatedAtMs,
    ...totals(job),
    loss: live?.progress.loss ?? null,
    stages: job.stages.length,
  };
}

/** The newest jobs first, at most MAX_LISTED_JOBS. */
export function jobList(jobs: readonly JobRecord[]): { jobs: JobSummary[]; total: number } {
  const newest = [...jobs].sort((a, b) => b.createdAtMs - a.createdAtMs || (a.id < b.id ? 1 : -1)).slice(0, MAX_LISTED_JOBS);
  return { jobs: newest.map(jobSummary), total: jobs.length };
}

function stageDetail(s: StageRecord): Record<string, unknown> {
  return {
    name: s.name,
    state: s.state,
    reason: s.reason,
    startedAtMs: s.startedAtMs,
    endedAtMs: s.endedAtMs,
    restarts: s.restarts,
    tally: describeTally(attemptTally(s.attempts, s.state)),
    progress: s.progress,
    metrics: s.metrics,
    warnings: s.warnings ?? [],
    notBeforeMs: s.notBeforeMs,
    error: s.error,
    attempts: s.attempts.map((a) => ({
      number: a.number,
      startedAtMs: a.startedAtMs,
      endedAtMs: a.endedAtMs,
      outcome: a.outcome,
      reason: a.reason,
      worldSize: a.worldSize,
      resumedFromStep: a.resumedFromStep,
      lastStep: a.lastStep,
      ranks: a.ranks.map((r) => ({ rank: r.rank, node: r.node, host: r.host, slot: r.slot, pid: r.pid, state: r.state, step: r.step, exitCode: r.exitCode, signal: r.signal })),
    })),
    checkpoints: s.checkpoints.slice(-MAX_CHECKPOINTS).map((c) => ({ step: c.step, attempt: c.attempt, status: c.status, reason: c.reason, committedAtMs: c.committedAtMs, sizeBytes: c.sizeBytes, dir: c.dir })),
  };
}

/** A job's page: everything but the curves and the logs, which stream. */
export function jobDetail(job: JobRecord): Record<string, unknown> {
  return {
    ...jobSummary(job),
    stages: job.stages.map(stageDetail),
    events: job.recentEvents.slice(-MAX_EVENTS).map(eventView),
  };
}

/** An event as the page shows it. */
export function eventView(e: JobEvent): Record<string, unknown> {
  return { seq: e.seq, stage: e.stage, type: e.type, state: e.state, reason: e.reason, tsMs: e.tsMs, attempt: e.attempt, rank: e.rank, data: e.type === "eval" || e.type === "checkpoint" ? e.data : {} };
}

/** The nodes page's rows. */
export function nodeList(nodes: ReturnType<JobService["nodes"]>): Record<string, unknown>[] {
  return nodes.map((n) => ({
    name: n.node.name,
    host: n.node.host,
    launcher: n.node.launcher,
    slots: n.node.slots,
    freeSlots: n.freeSlots,
    gpus: n.node.gpus,
    labels: n.node.labels,
    state: n.state,
    quarantinedUntilMs: n.quarantinedUntilMs === null || !Number.isFinite(n.quarantinedUntilMs) ? n.quarantinedUntilMs === null ? null : -1 : n.quarantinedUntilMs,
    failures: n.failures,
  }));
}

/** A step point as the charts take it: short keys, one line per step. */
export function pointView(p: StepPointRecord): (number | string)[] {
  return [p.tsMs, p.step, p.attempt, p.loss, p.lr, p.temperature, p.samplesPerSecond, p.stepSeconds, p.dataWaitSeconds, p.stage];
}
