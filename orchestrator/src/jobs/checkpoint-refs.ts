/**
 * Which checkpoint an attempt starts from: the stage's own newest intact one
 * (resume), or the one a fine-tune or eval stage is initialised from (a stage
 * of this pipeline, another job, a checkpoint directory, or one imported at
 * submit). A rank is told only the files and digests of a manifest whose
 * signature verifies with this orchestrator's key, never the store's copy
 * of them, and only after the files matched those digests here.
 */
import {
  InvalidArgumentError,
  UntrustedCheckpointError,
  type CheckpointRecord,
  type JobRecord,
  type SignedManifestRecord,
  type StageRecord,
  type StageSpec,
} from "../domain/index.js";
import {
  importCheckpoint,
  importOpenClipWeights,
  readImportedManifest,
  readRecordedManifest,
  readVerifiedManifest,
  recordedManifestProblem,
  verifyCheckpoint,
  verifyFiles,
  type ManifestSigner,
  type VerifiedManifest,
} from "../checkpoints/index.js";
import type { CheckpointRef } from "../gen/clipfleet/v1/worker.js";
import type { JobLedger } from "./ledger.js";
import { newestCommitted, stageRecordOf } from "./records.js";

export class CheckpointRefs {
  constructor(
    private readonly ledger: JobLedger,
    private readonly key: ManifestSigner,
  ) {}

  /**
   * Checks the signatures (not the files) of every committed checkpoint of a
   * stage and of its init checkpoint: what `resume` checks before it changes
   * anything, so an untrusted manifest is refused at once, naming its directory.
   */
  checkSigned(job: JobRecord, stage: StageRecord, spec: StageSpec): void {
    for (const c of committed(stage)) this.verified(c, job.id, stage.name);
    if (spec.init.kind !== "checkpoint") return;
    try {
      this.initManifest(job, spec, stageRecordOf(job, spec.name)?.initImport);
    } catch (err) {
      // Anything else (a stage it needs has not committed yet) is for the launch to report, when the stage can start.
      if (err instanceof UntrustedCheckpointError) throw err;
    }
  }

  /**
   * The newest committed checkpoint of the stage that is intact. A corrupt
   * one (files that no longer match their signed digests) is marked, the
   * event says why, and the previous one is tried. An untrusted manifest is
   * not corruption: it stops the launch (UntrustedCheckpointError).
   */
  async pickResume(job: JobRecord, stage: StageRecord): Promise<CheckpointRef | undefined> {
    for (const c of committed(stage)) {
      const v = this.verified(c, job.id, stage.name);
      const problem = v === null ? `${c.dir}: manifest.json missing` : await verifyCheckpoint({ dir: c.dir, files: v.manifest.files });
      if (problem === null && v !== null) return refOf(c.dir, v);
      await this.ledger.note(job.id, stage.name, "checkpoint", `checkpoint at step ${c.step} is corrupt (${problem}); using the previous committed one`, {
        data: { step: c.step, dir: c.dir, problem },
        update: (s) => {
          const rec = s.checkpoints.find((x) => x.dir === c.dir);
          if (rec) {
            rec.status = "corrupt";
            rec.reason = problem ?? "";
          }
        },
      });
    }
    return undefined;
  }

  /**
   * The checkpoint a fine-tune or eval stage starts from, its files checked
   * against their signed digests (`job` null: at submit, before the job
   * exists; `imported`: the stage's import, when the job has none yet).
   */
  async resolveInit(job: JobRecord | null, spec: StageSpec, imported?: SignedManifestRecord): Promise<CheckpointRef> {
    const { dir, verified } = this.trustedInit(job, spec, imported);
    // Imported open_clip weights: one file, in the export directory or beside the weights file named, with no manifest.json.
    const filesDir = verified.manifest.importedFrom?.openClip?.filesDir;
    const problem = filesDir !== undefined ? await verifyFiles({ dir: filesDir, files: verified.manifest.files }) : await verifyCheckpoint({ dir, files: verified.manifest.files });
    if (problem) throw new InvalidArgumentError(`init.checkpoint: ${dir} is corrupt: ${problem}`);
    return refOf(filesDir ?? dir, verified);
  }

  /** Submit of open_clip weights as init.checkpoint: `weights` (checked by the worker runtime) hashed now, in a manifest this orchestrator signs. */
  async importOpenClip(spec: StageSpec, weights: string, nowMs: number): Promise<SignedManifestRecord> {
    if (spec.init.kind !== "checkpoint" || !spec.init.import) throw new Error("unreachable: not an import");
    return importOpenClipWeights(spec.init.ref, weights, spec.model.image, this.key, nowMs);
  }

  /** Submit of `init: {checkpoint: DIR, import: true}`: the directory's files hashed now, in a manifest this orchestrator signs. */
  async importInit(spec: StageSpec, nowMs: number): Promise<SignedManifestRecord> {
    if (spec.init.kind !== "checkpoint" || !spec.init.import) throw new Error("unreachable: not an import");
    const imported = await importCheckpoint(spec.init.ref, this.key, nowMs);
    this.trustedInit(null, spec, imported);
    return imported;
  }

  /** The init checkpoint's verified manifest, checked against the stage's image tower. */
  private trustedInit(job: JobRecord | null, spec: StageSpec, imported: SignedManifestRecord | undefined): { dir: string; verified: VerifiedManifest } {
    const found = this.initManifest(job, spec, imported ?? (job ? stageRecordOf(job, spec.name)?.initImport : undefined));
    const tower = found.verified.manifest.imageTower;
    if (!sameImageTower(tower, spec.model.image)) {
      throw new InvalidArgumentError(`init.checkpoint: ${found.dir} holds image tower ${towerName(tower)}, the stage needs ${towerName(spec.model.image)}`);
    }
    return found;
  }

  private initManifest(job: JobRecord | null, spec: StageSpec, imported: SignedManifestRecord | undefined): { dir: string; verified: VerifiedManifest } {
    if (spec.init.kind !== "checkpoint") throw new Error("unreachable: no init checkpoint");
    const ref = spec.init.ref;
    if (spec.init.import) {
      if (!imported) throw new UntrustedCheckpointError(ref, `init.checkpoint: ${ref}: the job holds no manifest imported at submit; submit it again`);
      return { dir: ref, verified: readImportedManifest(imported, ref, this.key) };
    }
    return this.signedManifest(job, ref, "init.checkpoint", `init: {checkpoint: ${ref}, import: true}`);
  }

  /**
   * task train-captioner's `eval.clip`: the CLIP's checkpoint (a stage of this job, another job,
   * or a directory this orchestrator signed), its files checked against their signed digests and
   * its image tower against the stage's `model.image`; undefined when the stage names none.
   */
  async resolveEvalClip(job: JobRecord | null, spec: StageSpec): Promise<CheckpointRef | undefined> {
    const ref = spec.eval?.clip;
    if (!ref) return undefined;
    const { dir, verified } = this.signedManifest(job, ref, "eval.clip", null);
    if (!sameImageTower(verified.manifest.imageTower, spec.model.image)) {
      throw new InvalidArgumentError(`eval.clip: ${dir} holds image tower ${towerName(verified.manifest.imageTower)}, the stage's model.image is ${towerName(spec.model.image)}`);
    }
    const problem = await verifyCheckpoint({ dir, files: verified.manifest.files });
    if (problem) throw new InvalidArgumentError(`eval.clip: ${dir} is corrupt: ${problem}`);
    return refOf(dir, verified);
  }

  /** The verified manifest of a checkpoint this orchestrator signed: a stage of `job`, another job (`JOB`, `JOB:STAGE`), or a directory. */
  private signedManifest(job: JobRecord | null, ref: string, field: string, importHint: string | null): { dir: string; verified: VerifiedManifest } {
    const owned = this.ownRecord(job, ref, field);
    if (owned) {
      const verified = this.verified(owned.record, owned.jobId, owned.record.stage);
      if (!verified) throw new InvalidArgumentError(`${field}: ${owned.record.dir} is corrupt: manifest.json missing`);
      return { dir: owned.record.dir, verified };
    }
    let verified: VerifiedManifest | null;
    try {
      verified = readVerifiedManifest(ref, this.key);
    } catch (err) {
      if (!(err instanceof UntrustedCheckpointError)) throw err;
      throw new UntrustedCheckpointError(ref, `${field}: ${err.message}${importHint ? `; or import it for this job: ${importHint}` : ""}`);
    }
    if (!verified) throw new InvalidArgumentError(`${field}: ${ref} is neither a job, a stage of this job, nor a committed checkpoint directory`);
    return { dir: ref, verified };
  }

  /** The record of a checkpoint this orchestrator holds (a stage of this job, another job), or null for a directory. */
  private ownRecord(job: JobRecord | null, ref: string, field: string): { jobId: string; record: CheckpointRecord } | null {
    const own = job?.stages.find((s) => s.name === ref);
    if (job && own) {
      const record = newestCommitted(own);
      if (!record) throw new InvalidArgumentError(`${field}: stage ${ref} has no committed checkpoint`);
      return { jobId: job.id, record };
    }
    const [jobId, stageName] = ref.includes(":") ? ref.split(":", 2) : [ref, undefined];
    if (!jobId || !this.ledger.has(jobId)) return null;
    const other = this.ledger.get(jobId);
    const st = stageName ? other.stages.find((s) => s.name === stageName) : [...other.stages].reverse().find((s) => newestCommitted(s));
    const record = st ? newestCommitted(st) : undefined;
    if (!record) throw new InvalidArgumentError(`${field}: job ${ref} has no committed checkpoint`);
    return { jobId, record };
  }

  /** A recorded checkpoint's verified manifest (UntrustedCheckpointError when it is not this orchestrator's, or another's). */
  private verified(c: CheckpointRecord, jobId: string, stage: string): VerifiedManifest | null {
    return readRecordedManifest(c, jobId, stage, this.key);
  }

  /** Why a committed checkpoint would be refused (ListCheckpoints shows it `untrusted`), or null. */
  problem(c: CheckpointRecord, jobId: string, stage: string): string | null {
    return recordedManifestProblem(c, jobId, stage, this.key);
  }
}

/** Committed checkpoints of a stage, newest first. */
function committed(stage: StageRecord): CheckpointRecord[] {
  return stage.checkpoints.filter((c) => c.status === "committed").sort((a, b) => b.step - a.step);
}

/** The assignment's reference to a checkpoint: its files and digests from the verified manifest only. */
function refOf(dir: string, v: VerifiedManifest): CheckpointRef {
  return { dir, step: v.manifest.step, files: v.manifest.files.map((f) => ({ path: f.path, sha256: f.sha256, size: f.size })), manifestSha256: v.sha256 };
}

function sameImageTower(a: StageSpec["model"]["image"], b: StageSpec["model"]["image"]): boolean {
  const keys: (keyof StageSpec["model"]["image"])[] = ["family", "width", "depth", "heads", "patch", "layers", "widths", "mlp_ratio"];
  return keys.every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));
}

function towerName(t: StageSpec["model"]["image"]): string {
  const shape = t.family === "vit" ? `vit width ${t.width} depth ${t.depth} patch ${t.patch}` : `mci layers [${t.layers.join(",")}] widths [${t.widths.join(",")}]`;
  return t.preset ? `${t.preset} (${shape})` : shape;
}
