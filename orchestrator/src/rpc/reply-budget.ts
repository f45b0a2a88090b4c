/**
 * Control replies kept under a byte budget. A job's record grows with its
 * history (attempts, their reasons, tracebacks, checkpoints, eval metrics),
 * and `list` carries every job; a reply past a client's receive limit fails
 * for good ("Received message larger than max"), which is how one job with a
 * 20 MB failure message once broke `list` and `status` for everyone. So
 * replies hold the latest attempts only, and when a reply is still too large
 * its long fields are cut with a marker, most expendable first; the job
 * record itself is never cut.
 */
import { MAX_REPLY_BYTES, REPLY_ATTEMPTS, truncateHead, truncateTail } from "../domain/index.js";
import { Job, type ListJobsResponse, type Stage } from "../gen/clipfleet/v1/control.js";

/** Longest attempt reason, stage reason or error once a reply has to shrink. */
const SHRUNK_TEXT_BYTES = 1024;
/** Recent events a shrunk reply keeps. */
const SHRUNK_EVENTS = 10;

function encodedSize(job: Job): number {
  return Job.encode(job).finish().length;
}

/** The stage with only its latest `keep` attempts (the count of the others in attemptsOmitted). */
function latestAttempts(stage: Stage, keep: number): Stage {
  const omitted = Math.max(0, stage.attempts.length - keep);
  return omitted === 0 ? stage : { ...stage, attempts: stage.attempts.slice(omitted), attemptsOmitted: stage.attemptsOmitted + omitted };
}

/** The job cut down step by step, most expendable first, until it fits `budget`. */
function shrink(job: Job, budget: number): Job {
  let out = job;
  const steps: ((j: Job) => Job)[] = [
    (j) => ({
      ...j,
      reason: truncateHead(j.reason, SHRUNK_TEXT_BYTES),
      recentEvents: j.recentEvents.slice(-SHRUNK_EVENTS).map((e) => ({ ...e, reason: truncateHead(e.reason, SHRUNK_TEXT_BYTES), dataJson: e.dataJson.length > SHRUNK_TEXT_BYTES ? "{}" : e.dataJson })),
      stages: j.stages.map((s) => ({
        ...latestAttempts(s, 1),
        reason: truncateHead(s.reason, SHRUNK_TEXT_BYTES),
        error: truncateTail(s.error, SHRUNK_TEXT_BYTES),
      })),
    }),
    (j) => ({
      ...j,
      stages: j.stages.map((s) => ({
        ...s,
        attempts: s.attempts.map((a) => ({ ...a, reason: truncateHead(a.reason, SHRUNK_TEXT_BYTES) })),
        checkpoints: s.checkpoints.map((c) => ({ ...c, files: [], reason: truncateHead(c.reason, SHRUNK_TEXT_BYTES) })),
      })),
    }),
    (j) => ({ ...j, recentEvents: [], stages: j.stages.map((s) => ({ ...s, error: truncateTail(s.error, 128), attempts: s.attempts.map((a) => ({ ...a, ranks: [] })) })) }),
    // Last: the spec. It is bounded (MAX_RESOLVED_SPEC_BYTES), so only a
    // record of many stages with long histories gets here.
    (j) => ({ ...j, specJson: JSON.stringify({ truncated: true, bytes: Buffer.byteLength(j.specJson, "utf8") }) }),
  ];
  for (const step of steps) {
    if (encodedSize(out) <= budget) return out;
    out = step(out);
  }
  return out;
}

/** A GetJob / Submit / Cancel reply: the latest REPLY_ATTEMPTS attempts of each stage, within `budget` bytes. */
export function fitJob(job: Job, budget = MAX_REPLY_BYTES): Job {
  return shrink({ ...job, stages: job.stages.map((s) => latestAttempts(s, REPLY_ATTEMPTS)) }, budget);
}

/** The list view of a job: no spec, no events, each stage's last attempt. */
export function listView(job: Job, budget: number): Job {
  return shrink({ ...job, specJson: "", recentEvents: [], stages: job.stages.map((s) => latestAttempts(s, 1)) }, budget);
}

/**
 * A ListJobs reply: `jobs` (oldest first) in the list view, the newest that
 * fit `budget` (bytes); the rest counted in `omitted`. One job alone may use
 * at most a quarter of the budget, so one huge record cannot crowd out the rest.
 */
export function fitJobList(jobs: readonly Job[], budget = MAX_REPLY_BYTES): ListJobsResponse {
  const kept: Job[] = [];
  let used = 0;
  for (let i = jobs.length - 1; i >= 0; i--) {
    const view = listView(jobs[i]!, Math.floor(budget / 4));
    // A repeated field costs its bytes plus a tag and a length prefix.
    const size = encodedSize(view) + 6;
    if (used + size > budget) return { jobs: kept.reverse(), omitted: i + 1 };
    used += size;
    kept.push(view);
  }
  return { jobs: kept.reverse(), omitted: 0 };
}
