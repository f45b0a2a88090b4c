/** Following a job to its end with live progress (run, resume, watch). */
import type { ControlClient } from "../client/index.js";
import { JobState, type Job, type JobEvent } from "../gen/clipfleet/v1/control.js";
import { ProgressView, type ProgressSample } from "./progress.js";
import { renderEvent } from "./render.js";

export interface FollowOptions {
  /** Print state changes and other events as lines (not step events). */
  showEvents: boolean;
  /** Force plain lines instead of a bar. */
  plain?: boolean;
  signal?: AbortSignal;
  fromSeq?: number;
}

/** The progress a step event carries; null for other events. */
export function stepSample(e: JobEvent): ProgressSample | null {
  if (e.type !== "step") return null;
  const raw = JSON.parse(e.dataJson) as Record<string, unknown>;
  const d = raw as Record<string, number | undefined>;
  return {
    ...(raw.unit === "shards" ? { unit: "shards" as const } : {}),
    stage: e.stage,
    step: d.step ?? 0,
    totalSteps: d.totalSteps ?? 0,
    epoch: d.epoch ?? 0,
    loss: d.loss ?? NaN,
    samplesPerSecond: d.samplesPerSecond ?? 0,
    etaSeconds: d.etaSeconds ?? NaN,
    worldSize: d.worldSize ?? 0,
  };
}

/** Streams the job's events to a progress view until it ends; returns the final job. */
const TERMINAL = new Set([JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED]);

export async function followJob(client: ControlClient, jobId: string, opts: FollowOptions): Promise<Job> {
  const view = new ProgressView({ stream: process.stderr, plain: opts.plain ?? process.env.CI === "true" });
  const stages = (await client.getJob(jobId)).stages.length;
  let lastStageEvent: JobEvent | null = null;
  const onEvent = (e: JobEvent): void => {
    const sample = stepSample(e);
    if (sample) {
      view.update(sample);
      return;
    }
    if (!opts.showEvents) return;
    // A job-level state change that only repeats its single stage's is not worth a second line;
    // in a pipeline the stages' lines tell the story, and the job's own line only its end.
    if (e.stage === "" && e.type === "state" && lastStageEvent && lastStageEvent.state === e.state && lastStageEvent.reason === e.reason) return;
    if (e.stage === "" && e.type === "state" && stages > 1 && !TERMINAL.has(e.state)) return;
    if (e.stage !== "") lastStageEvent = e;
    view.message(renderEvent(e));
  };
  try {
    await client.watch(jobId, onEvent, opts.fromSeq ?? 0, opts.signal);
  } finally {
    view.finish();
  }
  return client.getJob(jobId);
}
