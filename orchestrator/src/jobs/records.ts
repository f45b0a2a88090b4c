/** Pure helpers on job records and specs, shared by the job machinery's rooms. */
import {
  isTerminal,
  jobStateOf,
  NotFoundError,
  RECORD_SCHEMA_VERSION,
  type CheckpointRecord,
  type JobRecord,
  type JobSpec,
  type StageRecord,
  type StageSpec,
} from "../domain/index.js";

/** The spec of a job's stage; NOT_FOUND for an unknown stage. */
export function stageSpecOf(job: JobRecord, stage: string): StageSpec {
  const s = job.spec.stages.find((x) => x.name === stage);
  if (!s) throw new NotFoundError(`job ${job.id} has no stage "${stage}"`);
  return s;
}

/** A stage's record, if the job has it. */
export function stageRecordOf(job: JobRecord, stage: string): StageRecord | undefined {
  return job.stages.find((s) => s.name === stage);
}

/** How many optimizer steps a stage runs: `train.steps`, else `train.epochs` (default 1) of its data plan's whole steps; an eval stage none. */
export function totalStepsOf(spec: StageSpec, stepsPerEpoch: number): number {
  return spec.task === "eval" ? 0 : (spec.train.steps ?? Math.floor((spec.train.epochs ?? 1) * stepsPerEpoch));
}

/** A spec field as users write it: `cluster.workers` for a single-stage spec, `stages.NAME.cluster.workers` in a pipeline ("" gives the prefix). */
export function stageField(st: StageSpec, field: string): string {
  const prefix = st.name === "main" ? "" : `stages.${st.name}.`;
  return field ? `${prefix}${field}` : prefix;
}

/** Whether every stage a stage needs has succeeded. */
export function needsMet(job: JobRecord, spec: StageSpec): boolean {
  return spec.needs.every((n) => job.stages.find((s) => s.name === n)?.state === "SUCCEEDED");
}

/** The newest committed checkpoint of a stage. */
export function newestCommitted(s: StageRecord): CheckpointRecord | undefined {
  return s.checkpoints.filter((c) => c.status === "committed").sort((a, b) => b.step - a.step)[0];
}

/** A fresh job record for a validated spec. */
export function newJobRecord(spec: JobSpec, id: string, nowMs: number): JobRecord {
  return {
    schemaVersion: RECORD_SCHEMA_VERSION,
    id,
    name: spec.name,
    state: "PENDING",
    reason: "submitted",
    pendingReason: "",
    createdAtMs: nowMs,
    updatedAtMs: nowMs,
    priority: spec.priority,
    spec,
    nextAttempt: 1,
    stages: spec.stages.map((s) => ({
      name: s.name,
      state: "PENDING",
      reason: s.needs.length > 0 ? `waiting for ${s.needs.join(", ")}` : "waiting for slots",
      startedAtMs: null,
      endedAtMs: null,
      attempts: [],
      restarts: 0,
      preemptions: 0,
      checkpoints: [],
      progress: {
        step: 0,
        totalSteps: 0,
        epoch: 0,
        sampleInEpoch: 0,
        samplesSeen: 0,
        loss: null,
        firstLoss: null,
        lr: 0,
        temperature: 0,
        samplesPerSecond: 0,
        stepSeconds: 0,
        skippedSamples: 0,
        worldSize: 0,
      },
      failures: [],
      metrics: {},
      finalParamsSha256: "",
      error: "",
      notBeforeMs: null,
    })),
    nextEventSeq: 0,
    recentEvents: [],
    cancelRequested: null,
  };
}

/**
 * How a job looks once the orchestrator that ran it is gone (a read command
 * on a state dir whose lock holder died): every unfinished stage is FAILED
 * as interrupted, its live attempt lost, with the command that continues it.
 * A view only: nothing is persisted, so a restarted server still restarts it.
 */
export function interruptedView(job: JobRecord): JobRecord {
  if (isTerminal(job.state)) return job;
  const view = structuredClone(job);
  const reason = `interrupted: the orchestrator running it is gone; \`clipfleet resume ${job.id}\` continues from the last committed checkpoint`;
  for (const s of view.stages) {
    if (isTerminal(s.state)) continue;
    s.state = "FAILED";
    s.reason = reason;
    const a = s.attempts.at(-1);
    if (a && a.outcome === "running") {
      a.outcome = "lost";
      a.reason = "the orchestrator is gone";
      for (const r of a.ranks) {
        if (r.state === "exited") continue;
        r.state = "lost";
        r.phase = "-"; // its last phase (launching, training) is no longer going on
      }
    }
  }
  view.state = jobStateOf(view.stages.map((s) => s.state));
  view.reason = reason;
  view.pendingReason = "";
  return view;
}

/** A plugin as a rank loads it: `module:factory` and the arguments its factory gets. */
export interface PluginRef {
  readonly entry_point: string;
  readonly args: Readonly<Record<string, unknown>>;
}

/** The built-in captioner and fusions behind `captioner: {checkpoint}` and `fusion: none | template`. */
export const BUILTIN_CAPTIONER = "clipfleet_worker.captioning.builtin:make";
export const BUILTIN_FUSION = { none: "clipfleet_worker.captioning.fusion:make_none", template: "clipfleet_worker.captioning.fusion:make_template" } as const;

/**
 * task recaption's plugins as its ranks load them: a `checkpoint` captioner is
 * the built-in one on a `model.pt` (a stage's newest committed checkpoint, or
 * the given file or directory); null for other tasks.
 */
export function recaptionPlugins(job: JobRecord, spec: StageSpec): { captioner: PluginRef; fusion: PluginRef } | null {
  const c = spec.captioner;
  if (spec.task !== "recaption" || c === null) return null;
  let captioner: PluginRef;
  if (c.entry_point !== null) captioner = { entry_point: c.entry_point, args: { ...c.args } };
  else {
    const ref = c.checkpoint ?? "";
    const stage = job.stages.find((s) => s.name === ref);
    const dir = stage ? (newestCommitted(stage)?.dir ?? "") : ref;
    const model = dir === "" || dir.endsWith(".pt") ? dir : `${dir}/model.pt`;
    captioner = { entry_point: BUILTIN_CAPTIONER, args: { ...c.args, checkpoint: model, max_tokens: c.max_tokens, batch_size: c.batch_size } };
  }
  const f = spec.fusion ?? "none";
  const fusion: PluginRef = typeof f === "string" ? { entry_point: BUILTIN_FUSION[f], args: {} } : { entry_point: f.entry_point, args: { ...f.args } };
  return { captioner, fusion };
}
