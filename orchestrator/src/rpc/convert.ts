/** Conversions between domain records and control-API messages (the wire never leaks into jobs/). */
import type { CheckpointRecord, JobEvent as DomainEvent, JobRecord, JobState as DomainState, StageRecord } from "../domain/index.js";
import { JOB_STATES } from "../domain/index.js";
import { JobState, type CheckpointInfo, type Job, type JobEvent, type Stage } from "../gen/clipfleet/v1/control.js";

const STATE_TO_PROTO: Record<DomainState, JobState> = {
  PENDING: JobState.JOB_STATE_PENDING,
  STARTING: JobState.JOB_STATE_STARTING,
  RUNNING: JobState.JOB_STATE_RUNNING,
  RESTARTING: JobState.JOB_STATE_RESTARTING,
  STOPPING: JobState.JOB_STATE_STOPPING,
  SUCCEEDED: JobState.JOB_STATE_SUCCEEDED,
  FAILED: JobState.JOB_STATE_FAILED,
  CANCELLED: JobState.JOB_STATE_CANCELLED,
};

export function stateToProto(s: DomainState): JobState {
  return STATE_TO_PROTO[s];
}

/** The domain state of a proto enum value, or null for UNSPECIFIED/unknown. */
export function stateFromProto(s: JobState): DomainState | null {
  return JOB_STATES.find((d) => STATE_TO_PROTO[d] === s) ?? null;
}

export function checkpointToProto(c: CheckpointRecord): CheckpointInfo {
  return {
    stage: c.stage,
    step: c.step,
    dir: c.dir,
    committedAtMs: c.committedAtMs,
    sizeBytes: c.sizeBytes,
    manifestSha256: c.manifestSha256,
    files: c.files.map((f) => ({ path: f.path, sha256: f.sha256, size: f.size })),
    status: c.status,
    reason: c.reason,
    attempt: c.attempt,
    cursor: { epoch: c.cursor.epoch, sampleInEpoch: c.cursor.sampleInEpoch },
  };
}

function stageToProto(job: JobRecord, s: StageRecord): Stage {
  const spec = job.spec.stages.find((x) => x.name === s.name);
  const p = s.progress;
  return {
    name: s.name,
    task: spec?.task ?? "",
    state: stateToProto(s.state),
    reason: s.reason,
    needs: [...(spec?.needs ?? [])],
    progress: {
      step: p.step,
      totalSteps: p.totalSteps,
      epoch: p.epoch,
      sampleInEpoch: p.sampleInEpoch,
      samplesSeen: p.samplesSeen,
      loss: p.loss ?? 0,
      firstLoss: p.firstLoss ?? 0,
      lr: p.lr,
      temperature: p.temperature,
      samplesPerSecond: p.samplesPerSecond,
      stepSeconds: p.stepSeconds,
      etaSeconds: Math.max(0, p.totalSteps - p.step) * p.stepSeconds,
      skippedSamples: p.skippedSamples,
      skippedByReason: { ...(p.skippedByReason ?? {}) },
      shardBytesFetched: p.shardCache?.bytesFetched ?? 0,
      shardCacheHits: p.shardCache?.hits ?? 0,
      shardCacheMisses: p.shardCache?.misses ?? 0,
      shardFetchSeconds: p.shardCache?.fetchSeconds ?? 0,
      worldSize: p.worldSize,
    },
    attempts: s.attempts.map((a) => ({
      number: a.number,
      startedAtMs: a.startedAtMs,
      endedAtMs: a.endedAtMs ?? 0,
      outcome: a.outcome,
      reason: a.reason,
      worldSize: a.worldSize,
      resumedFromStep: a.resumedFromStep,
      lastStep: a.lastStep,
      ranks: a.ranks.map((r) => ({
        rank: r.rank,
        node: r.node,
        host: r.host,
        slot: r.slot,
        pid: r.pid ?? 0,
        state: r.state,
        step: r.step,
        lastHeartbeatMs: r.lastHeartbeatMs ?? 0,
        phase: r.phase,
      })),
    })),
    restarts: s.restarts,
    preemptions: s.preemptions ?? 0,
    metrics: { ...s.metrics },
    finalParamsSha256: s.finalParamsSha256,
    error: s.error,
    checkpoints: s.checkpoints.map(checkpointToProto),
    startedAtMs: s.startedAtMs ?? 0,
    endedAtMs: s.endedAtMs ?? 0,
    attemptsOmitted: 0,
    warnings: [...(s.warnings ?? [])],
    evalSkippedByReason: { ...(s.evalSkippedByReason ?? {}) },
  };
}

export function eventToProto(e: DomainEvent): JobEvent {
  return {
    schemaVersion: e.schemaVersion,
    seq: e.seq,
    jobId: e.jobId,
    stage: e.stage,
    type: e.type,
    state: stateToProto(e.state),
    reason: e.reason,
    tsMs: e.tsMs,
    attempt: e.attempt,
    rank: e.rank,
    dataJson: JSON.stringify(e.data),
  };
}

/** The control-API view of a job. The token never leaves the orchestrator. */
export function jobToProto(job: JobRecord): Job {
  return {
    id: job.id,
    name: job.name,
    state: stateToProto(job.state),
    reason: job.reason,
    createdAtMs: job.createdAtMs,
    updatedAtMs: job.updatedAtMs,
    stages: job.stages.map((s) => stageToProto(job, s)),
    specJson: JSON.stringify(job.spec),
    priority: job.priority,
    pendingReason: job.pendingReason,
    recentEvents: job.recentEvents.map(eventToProto),
    submittedBy: job.submittedBy ?? "",
  };
}
