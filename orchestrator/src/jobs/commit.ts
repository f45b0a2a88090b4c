/**
 * The checkpoint commit, phase two of the two-phase protocol: every rank
 * writes its files and reports their digests; when the last rank of the
 * attempt has reported a step, the orchestrator writes the manifest (the
 * commit), records the checkpoint, tells the ranks, and applies retention.
 */
import { lstatSync } from "node:fs";
import { isAbsolute, join, normalize, resolve, sep } from "node:path";
import type { CheckpointRecord, JobRecord, StageSpec } from "../domain/index.js";
import { checkpointDirName, commitManifest, recordedManifestProblem, removeCheckpointDir, retentionVictims, type CheckpointManifest } from "../checkpoints/index.js";
import type { CheckpointWritten } from "../gen/clipfleet/v1/worker.js";
import type { Attempt } from "./attempt.js";
import type { JobContext } from "./context.js";
import type { Progress } from "./progress.js";
import type { RankRuntime } from "./runtime.js";

export class CheckpointCommit {
  /** Reports of ranks per attempt and checkpoint step, until every rank has reported. */
  private readonly pending = new WeakMap<Attempt, Map<number, Map<number, CheckpointWritten>>>();

  constructor(
    private readonly ctx: JobContext,
    private readonly progress: Progress,
  ) {}

  /** Collects a rank's report; commits when it is the attempt's last one for that step. */
  written(a: Attempt, rank: RankRuntime, rep: CheckpointWritten, onError: (err: unknown) => void): void {
    // A rank runs the user's code: the files it names must be its own, inside the checkpoint directory.
    const expectedDir = join(a.facts.checkpointRoot, checkpointDirName(rep.step, a.attempt));
    if (rep.dir !== expectedDir) {
      a.fail({ kind: "fatal", message: `rank ${rank.rank} reported checkpoint directory ${JSON.stringify(rep.dir.slice(0, 200))} for step ${rep.step}, expected ${expectedDir}` });
      return;
    }
    const stray = rep.files.find((f) => !confined(expectedDir, f.path));
    if (stray) {
      a.fail({ kind: "fatal", message: `rank ${rank.rank} reported a checkpoint file outside its directory: ${JSON.stringify(stray.path.slice(0, 200))}` });
      return;
    }
    let byStep = this.pending.get(a);
    if (!byStep) {
      byStep = new Map();
      this.pending.set(a, byStep);
    }
    let reports = byStep.get(rep.step);
    if (!reports) {
      reports = new Map();
      byStep.set(rep.step, reports);
    }
    reports.set(rank.rank, rep);
    this.ctx.metrics.checkpointSave.observe({ job_id: a.jobId, stage: a.stage }, rep.saveSeconds);
    if (reports.size < a.worldSize) return;
    byStep.delete(rep.step);
    void this.commit(a, rep.step, [...reports.values()]).catch(onError);
  }

  /** Every rank has reported its files: write the manifest and record the checkpoint. */
  async commit(a: Attempt, step: number, reports: CheckpointWritten[]): Promise<void> {
    const expectedDir = join(a.facts.checkpointRoot, checkpointDirName(step, a.attempt));
    const dirs = new Set(reports.map((r) => r.dir));
    if (dirs.size !== 1 || !dirs.has(expectedDir)) {
      throw new Error(`ranks reported checkpoint dirs ${[...dirs].join(", ")} for step ${step}, expected ${expectedDir}`);
    }
    const files = reports.flatMap((r) => r.files.map((f) => ({ path: f.path, sha256: f.sha256, size: f.size })));
    const cursor = reports[0]?.cursor ?? { epoch: 0, sampleInEpoch: 0 };
    const now = this.ctx.now();
    const manifest: CheckpointManifest = {
      schemaVersion: 1,
      jobId: a.jobId,
      stage: a.stage,
      task: a.spec.task,
      step,
      attempt: a.attempt,
      worldSize: a.worldSize,
      configSha256: a.facts.configSha256,
      cursor: { epoch: cursor.epoch, sampleInEpoch: cursor.sampleInEpoch },
      imageTower: a.spec.model.image,
      files,
      committedAtMs: now,
    };
    const manifestSha256 = await commitManifest(expectedDir, manifest, this.ctx.deps.manifestKey);
    const record: CheckpointRecord = {
      stage: a.stage,
      step,
      dir: expectedDir,
      attempt: a.attempt,
      status: "committed",
      reason: "",
      committedAtMs: now,
      files,
      sizeBytes: files.reduce((acc, f) => acc + f.size, 0),
      manifestSha256,
      cursor: manifest.cursor,
    };
    a.committed(step, now, Math.max(...reports.map((r) => r.saveSeconds)));
    this.ctx.metrics.checkpointsCommitted.inc({ job_id: a.jobId, stage: a.stage });
    const job = await this.ctx.ledger.note(a.jobId, a.stage, "checkpoint", `checkpoint committed at step ${step}`, {
      attempt: a.attempt,
      data: { step, dir: expectedDir, sizeBytes: record.sizeBytes, manifestSha256 },
      update: (s) => {
        s.checkpoints.push(record);
        this.progress.apply(s, a);
      },
    });
    a.broadcast({ $case: "committed", value: { step, dir: expectedDir } });
    await this.retain(job, a.stage, a.spec);
  }

  /** Retention: delete superseded committed checkpoints beyond keep_last (never the newest). */
  private async retain(job: JobRecord, stageName: string, spec: StageSpec): Promise<void> {
    const stage = job.stages.find((s) => s.name === stageName);
    if (!stage) return;
    const victims = retentionVictims(stage.checkpoints, spec.checkpoint);
    if (victims.length === 0) return;
    // Only a directory whose signed manifest names this very checkpoint is deleted: a record
    // edited in the store cannot turn retention into `rm -rf` of anything else.
    const outcome = new Map<string, { status: "deleted" | "corrupt"; reason: string }>();
    for (const v of victims) {
      const refused = recordedManifestProblem(v, job.id, stageName, this.ctx.deps.manifestKey);
      if (refused) {
        this.ctx.log(job.id, stageName, 0, `retention: not deleting ${v.dir}: ${refused}`);
        outcome.set(v.dir, { status: "corrupt", reason: refused });
        continue;
      }
      removeCheckpointDir(v.dir);
      outcome.set(v.dir, { status: "deleted", reason: "retention" });
    }
    await this.ctx.ledger.update(job.id, (j) => {
      const s = j.stages.find((x) => x.name === stageName);
      for (const c of s?.checkpoints ?? []) {
        const o = outcome.get(c.dir);
        if (o && c.status === "committed") {
          c.status = o.status;
          c.reason = o.reason;
        }
      }
    });
  }
}

/**
 * Whether `path` names a regular file inside `dir`: relative, without `..`
 * or a NUL, and not a symbolic link (which could point anywhere: its target
 * would be hashed and verified on every resume).
 */
export function confined(dir: string, path: string): boolean {
  if (path === "" || path.includes("\0") || isAbsolute(path)) return false;
  const normal = normalize(path);
  if (normal === ".." || normal.startsWith(`..${sep}`) || normal.split(sep).includes("..")) return false;
  const full = resolve(dir, normal);
  if (!full.startsWith(resolve(dir) + sep)) return false;
  try {
    return lstatSync(full).isFile();
  } catch {
    return false;
  }
}
