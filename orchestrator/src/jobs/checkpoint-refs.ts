/**
 * Which checkpoint an attempt starts from: the stage's own newest intact one
 * (resume), or the one a fine-tune or eval stage is initialised from (a stage
 * of this pipeline, another job, or a checkpoint directory). Every candidate
 * is verified against its digests before a rank is told about it.
 */
import { InvalidArgumentError, type CheckpointRecord, type JobRecord, type StageRecord, type StageSpec } from "../domain/index.js";
import { readManifest, verifyCheckpoint } from "../checkpoints/index.js";
import type { CheckpointRef } from "../gen/clipfleet/v1/worker.js";
import type { JobLedger } from "./ledger.js";
import { newestCommitted, toCheckpointRef } from "./records.js";

export class CheckpointRefs {
  constructor(private readonly ledger: JobLedger) {}

  /**
   * The newest committed checkpoint of the stage that is intact. A corrupt
   * one is marked (the event says why) and the previous one is tried.
   */
  async pickResume(job: JobRecord, stage: StageRecord): Promise<CheckpointRef | undefined> {
    const candidates = stage.checkpoints.filter((c) => c.status === "committed").sort((a, b) => b.step - a.step);
    for (const c of candidates) {
      const problem = await verifyCheckpoint(c);
      if (problem === null) return toCheckpointRef(c);
      await this.ledger.note(job.id, stage.name, "checkpoint", `checkpoint at step ${c.step} is corrupt (${problem}); using the previous committed one`, {
        data: { step: c.step, dir: c.dir, problem },
        update: (s) => {
          const rec = s.checkpoints.find((x) => x.dir === c.dir);
          if (rec) {
            rec.status = "corrupt";
            rec.reason = problem;
          }
        },
      });
    }
    return undefined;
  }

  /** The committed checkpoint a fine-tune or eval stage starts from (`job` null: at submit, before the job exists). */
  async resolveInit(job: JobRecord | null, spec: StageSpec): Promise<CheckpointRef> {
    if (spec.init.kind !== "checkpoint") throw new Error("unreachable");
    const record = this.initRecord(job, spec.init.ref);
    const problem = await verifyCheckpoint(record);
    if (problem) throw new InvalidArgumentError(`init.checkpoint: ${record.dir} is corrupt: ${problem}`);
    const manifest = readManifest(record.dir);
    if (manifest && !sameImageTower(manifest.imageTower, spec.model.image)) {
      throw new InvalidArgumentError(
        `init.checkpoint: ${record.dir} holds image tower ${towerName(manifest.imageTower)}, the stage needs ${towerName(spec.model.image)}`,
      );
    }
    return toCheckpointRef(record);
  }

  private initRecord(job: JobRecord | null, ref: string): CheckpointRecord {
    const own = job?.stages.find((s) => s.name === ref);
    if (own) {
      const record = newestCommitted(own);
      if (!record) throw new InvalidArgumentError(`init.checkpoint: stage ${ref} has no committed checkpoint`);
      return record;
    }
    const [jobId, stageName] = ref.includes(":") ? ref.split(":", 2) : [ref, undefined];
    if (jobId && this.ledger.has(jobId)) {
      const other = this.ledger.get(jobId);
      const st = stageName ? other.stages.find((s) => s.name === stageName) : [...other.stages].reverse().find((s) => newestCommitted(s));
      const record = st ? newestCommitted(st) : undefined;
      if (!record) throw new InvalidArgumentError(`init.checkpoint: job ${ref} has no committed checkpoint`);
      return record;
    }
    const m = readManifest(ref);
    if (!m) throw new InvalidArgumentError(`init.checkpoint: ${ref} is neither a job, a stage of this job, nor a committed checkpoint directory`);
    return {
      stage: m.stage,
      step: m.step,
      dir: ref,
      attempt: m.attempt,
      status: "committed",
      reason: "",
      committedAtMs: m.committedAtMs,
      files: m.files,
      sizeBytes: m.files.reduce((a, f) => a + f.size, 0),
      manifestSha256: "",
      cursor: m.cursor,
    };
  }
}

function sameImageTower(a: StageSpec["model"]["image"], b: StageSpec["model"]["image"]): boolean {
  const keys: (keyof StageSpec["model"]["image"])[] = ["family", "width", "depth", "heads", "patch", "layers", "widths", "mlp_ratio"];
  return keys.every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));
}

function towerName(t: StageSpec["model"]["image"]): string {
  const shape = t.family === "vit" ? `vit width ${t.width} depth ${t.depth} patch ${t.patch}` : `mci layers [${t.layers.join(",")}] widths [${t.widths.join(",")}]`;
  return t.preset ? `${t.preset} (${shape})` : shape;
}
