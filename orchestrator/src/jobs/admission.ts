/**
 * Admission: a submitted spec is validated (once), checked against the
 * inventory and its data (synthetic data generated, manifests read, caption
 * sources present, outside init checkpoints intact), and only then persisted
 * as a PENDING job. Nothing is persisted on bad input.
 */
import { InvalidArgumentError, MAX_SPEC_BYTES, newJobId, type JobEvent, type JobRecord, type JobSpec, type SignedManifestRecord } from "../domain/index.js";
import { peekCaptionSources } from "../data/index.js";
import { checkSpecPolicy, parseSpec } from "../spec/index.js";
import type { CheckpointRefs } from "./checkpoint-refs.js";
import type { JobContext } from "./context.js";
import type { Datasets } from "./datasets.js";
import { placementRequest } from "./dispatch.js";
import { newJobRecord, stageField } from "./records.js";

/** Input of submit: the spec as JSON plus where it came from. */
export interface SubmitInput {
  readonly specJson: string;
  readonly specPath: string;
  readonly baseDir: string;
  /**
   * The spec already validated from this very JSON, path and folder by the
   * caller in this process (the CLI's embedded orchestrator), so it is not
   * validated twice. Never set from the network: the rpc layer does not.
   */
  readonly validated?: JobSpec;
  /** Who submits it (the caller's identity), recorded on the job. */
  readonly submittedBy?: string;
}

export class Admission {
  constructor(
    private readonly ctx: JobContext,
    private readonly datasets: Datasets,
    private readonly refs: CheckpointRefs,
  ) {}

  /** Validates a spec, checks its data, persists the job as PENDING. */
  async submit(input: SubmitInput): Promise<JobRecord> {
    const where = input.specPath || "spec";
    const spec = input.validated ?? this.validate(input, where);
    if (this.ctx.deps.policy) checkSpecPolicy(spec, this.ctx.deps.policy, where);
    for (const st of spec.stages) {
      const why = this.ctx.scheduler.unsatisfiable({ ...placementRequest("", st, 0, 0), allowShrink: true });
      if (why) throw new InvalidArgumentError(`${where}: ${stageField(st, "cluster.workers")}: ${why}`, "cluster.workers");
    }
    const imports = await this.preflight(spec, where);
    const now = this.ctx.now();
    const job = newJobRecord(spec, newJobId(new Date(now)), now);
    for (const s of job.stages) {
      const imported = imports.get(s.name);
      if (imported) s.initImport = imported;
    }
    if (input.submittedBy) job.submittedBy = input.submittedBy;
    const event: JobEvent = {
      schemaVersion: 1,
      seq: 0,
      jobId: job.id,
      stage: "",
      type: "state",
      state: "PENDING",
      reason: "submitted",
      tsMs: now,
      attempt: 0,
      rank: -1,
      data: { name: spec.name, stages: spec.stages.map((s) => s.name) },
    };
    job.recentEvents.push(event);
    job.nextEventSeq = 1;
    await this.ctx.ledger.create(job, [event]);
    this.ctx.log(job.id, "", 0, `job ${job.id} (${spec.name}) submitted${input.submittedBy ? ` by ${input.submittedBy}` : ""} with ${spec.stages.length} stage(s)`);
    return job;
  }

  private validate(input: SubmitInput, where: string): JobSpec {
    // The CLI checks this too; a client of the API may not, and the server must not parse a 60 MB spec.
    const bytes = Buffer.byteLength(input.specJson, "utf8");
    if (bytes > MAX_SPEC_BYTES) throw new InvalidArgumentError(`${where}: the spec is ${(bytes / 1048576).toFixed(1)} MiB, more than the limit of 1 MiB`, "spec_json");
    let raw: unknown;
    try {
      raw = JSON.parse(input.specJson);
    } catch (err) {
      throw new InvalidArgumentError(`${where}: not valid JSON: ${(err as Error).message}`);
    }
    return parseSpec(raw, { specPath: where, baseDir: input.baseDir, presets: this.ctx.deps.presets });
  }

  /**
   * Before a job is accepted: generate synthetic data when asked, read manifests, check caption
   * sources, hash imported init checkpoints; returns the imports' signed manifests by stage.
   */
  private async preflight(spec: JobSpec, where: string): Promise<Map<string, SignedManifestRecord>> {
    const localNodes = this.ctx.scheduler.nodes().filter((n) => n.node.launcher === "local");
    const imports = new Map<string, SignedManifestRecord>();
    for (const st of spec.stages) {
      // Fail before anything runs when this machine has no interpreter with torch for local ranks.
      if (localNodes.length > 0) await this.ctx.resolvePython(st.worker.python ?? this.ctx.deps.python);
      // A checkpoint from outside this pipeline must exist, be committed, signed (or imported now) and intact, and fit the image tower.
      if (st.init.kind === "checkpoint" && st.init.import) imports.set(st.name, await this.refs.importInit(st, this.ctx.now()));
      else if (st.init.kind === "checkpoint" && !spec.stages.some((x) => x.name === (st.init as { ref: string }).ref)) {
        await this.refs.resolveInit(null, st);
      }
      if (st.data.synth) await this.datasets.ensureSynth(st);
      // Manifest errors start with the field they name (data.train, data.val).
      const inStage = (err: unknown): never => {
        throw new InvalidArgumentError(`${where}: ${stageField(st, "")}${(err as Error).message}`);
      };
      if (st.data.train.length > 0) {
        const m = await this.datasets.manifest(st.data.train, st.data.fraction, "data.train", st.data.index).catch(inStage);
        if (st.task === "pretrain") {
          const sources = await peekCaptionSources(m);
          for (const source of Object.keys(st.data.captions)) {
            if (sources !== null && (st.data.captions[source] ?? 0) > 0 && !sources.has(source)) {
              throw new InvalidArgumentError(
                `${where}: ${stageField(st, "data.captions")}: no sample has a "${source}" caption (the shards have: ${[...sources].sort().join(", ") || "none"})`,
                "data.captions",
              );
            }
          }
        }
      }
      if (st.data.val.length > 0) {
        await this.datasets.manifest(st.data.val, 1, "data.val", st.data.index).catch(inStage);
      }
    }
    return imports;
  }
}
