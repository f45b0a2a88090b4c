/**
 * Admission: a submitted spec is validated (once), checked against the
 * inventory and its data (synthetic data generated, manifests read, caption
 * sources present, outside init checkpoints intact), and only then persisted
 * as a PENDING job. Nothing is persisted on bad input.
 */
import { ClipfleetError, InvalidArgumentError, MAX_SPEC_BYTES, newJobId, type JobEvent, type JobRecord, type JobSpec, type SignedManifestRecord, type StageSpec } from "../domain/index.js";
import { DataPlan, peekCaptionSources, type Manifest } from "../data/index.js";
import { checkSpecPolicy, isOpenClipRef, parseSpec, SpecValidationError } from "../spec/index.js";
import type { CheckpointRefs } from "./checkpoint-refs.js";
import type { JobContext } from "./context.js";
import { synthOutState, type Datasets } from "./datasets.js";
import { placementRequest } from "./dispatch.js";
import { newJobRecord, stageField, totalStepsOf } from "./records.js";

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
    const { imports } = await this.preflight(spec, where, { collect: false, dryRun: false });
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
   * What submit would check, without persisting or generating anything (for
   * `clipfleet validate`): every problem of every stage, and what each
   * stage's data holds.
   */
  async check(spec: JobSpec, where: string): Promise<AdmissionCheck> {
    const problems: AdmissionProblem[] = [];
    if (this.ctx.deps.policy) {
      try {
        checkSpecPolicy(spec, this.ctx.deps.policy, where);
      } catch (err) {
        problems.push(problemOf(null, "", err, where));
      }
    }
    const { data } = await this.preflight(spec, where, { collect: true, dryRun: true }, problems);
    return { problems, data };
  }

  /**
   * The dry run of submit for a spec from the network (ValidateJob): validated
   * here, as submit validates it (size bound, JSON, every spec problem), then,
   * when the spec itself is valid, `check`. Problems of the spec itself carry
   * their full field path in `specPath`.
   */
  async checkInput(input: SubmitInput): Promise<AdmissionCheck> {
    const where = input.specPath || "spec";
    let spec: JobSpec;
    try {
      spec = this.validate(input, where);
    } catch (err) {
      if (!(err instanceof SpecValidationError)) throw err;
      return { problems: err.issues.map((i) => ({ stage: null, field: "", message: i.message, specPath: i.path })), data: new Map() };
    }
    return this.check(spec, where);
  }

  /**
   * Before a job is accepted: the inventory can place every stage; generate synthetic data when
   * asked, read manifests, check caption sources, hash imported init checkpoints; returns the
   * imports' signed manifests by stage. `collect`: problems go into `problems` instead of being
   * thrown at the first; `dryRun`: no synthetic data is generated (a folder that would be
   * generated is only checked to be free, and its manifests are not read).
   */
  private async preflight(
    spec: JobSpec,
    where: string,
    mode: { collect: boolean; dryRun: boolean },
    problems: AdmissionProblem[] = [],
  ): Promise<{ imports: Map<string, SignedManifestRecord>; data: Map<string, StageData> }> {
    const data = new Map<string, StageData>();
    // Each check of a stage runs even when an earlier one failed, when collecting.
    const attempt = async (st: StageSpec, field: string, fn: () => Promise<void> | void): Promise<boolean> => {
      try {
        await fn();
        return true;
      } catch (err) {
        if (!mode.collect || !(err instanceof ClipfleetError) || err.code === "INTERNAL") throw err;
        problems.push(problemOf(st, field, err, where));
        return false;
      }
    };
    for (const st of spec.stages) {
      const why = this.ctx.scheduler.unsatisfiable({ ...placementRequest("", st, 0, 0), allowShrink: true });
      if (why) {
        const err = new InvalidArgumentError(`${where}: ${stageField(st, "cluster.workers")}: ${why}`, "cluster.workers");
        if (!mode.collect) throw err;
        problems.push({ stage: st.name, field: "cluster.workers", message: why });
      }
    }
    const localNodes = this.ctx.scheduler.nodes().filter((n) => n.node.launcher === "local");
    const imports = new Map<string, SignedManifestRecord>();
    for (const st of spec.stages) {
      const counted: StageData = { train: null, steps: st.train.steps, val: null, synth: null };
      data.set(st.name, counted);
      // Fail before anything runs when this machine has no interpreter with torch for local ranks.
      if (localNodes.length > 0) await attempt(st, "worker.python", () => this.ctx.resolvePython(st.worker.python ?? this.ctx.deps.python).then(() => undefined));
      // A checkpoint from outside this pipeline must exist, be committed, signed (or imported now) and intact, and fit the image tower.
      const init = st.init;
      if (init.kind === "checkpoint" && init.import) {
        await attempt(st, "init.checkpoint", async () => {
          imports.set(st.name, isOpenClipRef(init.ref) ? await this.importOpenClip(st, init.ref) : await this.refs.importInit(st, this.ctx.now()));
        });
      } else if (init.kind === "checkpoint" && !spec.stages.some((x) => x.name === init.ref)) {
        await attempt(st, "init.checkpoint", () => this.refs.resolveInit(null, st).then(() => undefined));
      }
      // task recaption: a plugin that does not import is refused now, not on every rank.
      const plugins: [string, string | null][] = [
        ["captioner.entry_point", st.captioner?.entry_point ?? null],
        ["fusion.entry_point", typeof st.fusion === "object" && st.fusion !== null ? st.fusion.entry_point : null],
      ];
      const checkPlugin = this.ctx.deps.checkPlugin;
      for (const [field, entryPoint] of plugins) {
        if (entryPoint === null || !checkPlugin) continue;
        await attempt(st, field, async () => {
          const python = await this.ctx.resolvePython(st.worker.python ?? this.ctx.deps.python);
          await checkPlugin(python, entryPoint, field).catch((err: unknown) => {
            throw err instanceof InvalidArgumentError ? new InvalidArgumentError(`${where}: ${stageField(st, "")}${err.message}`, field) : err;
          });
        });
      }
      const clip = st.eval?.clip;
      if (clip && !spec.stages.some((x) => x.name === clip)) await attempt(st, "eval.clip", () => this.refs.resolveEvalClip(null, st).then(() => undefined));
      // data.train: {stage: NAME}: written by that recaption stage, counted when this stage starts.
      let readData = !producedByRecaption(spec, st);
      const synth = st.data.synth;
      if (synth) {
        // A dry run generates nothing: data still to be generated is not there to read yet.
        if (mode.dryRun) {
          await attempt(st, "data.synth", () => {
            counted.synth = synthOutState(synth);
          });
          readData = counted.synth === "reuse";
        } else await this.datasets.ensureSynth(st);
      }
      if (!readData) continue;
      // Manifest errors start with the field they name (data.train, data.val).
      const inStage = (err: unknown): never => {
        throw new InvalidArgumentError(`${where}: ${stageField(st, "")}${(err as Error).message}`);
      };
      if (st.data.train.length > 0) {
        let train: Manifest | null = null;
        await attempt(st, "data.train", async () => {
          const read = this.datasets.manifest(st.data.train, st.data.fraction, "data.train", st.data.index);
          train = await (mode.collect ? read : read.catch(inStage));
          counted.train = { samples: train.totalSamples, shards: train.shards.length };
        });
        const m: Manifest | null = train;
        if (m !== null && st.task !== "eval") {
          // The data plan the stage will run: its length in steps, and a batch larger than the data refused now, not at start.
          await attempt(st, "train.batch_size", () => {
            try {
              counted.steps = resolvedSteps(st, m);
            } catch (err) {
              if (mode.collect) throw err;
              inStage(err);
            }
          });
        }
        if (m !== null && (st.task === "pretrain" || st.task === "train-captioner")) {
          await attempt(st, "data.captions", async () => {
            const sources = await peekCaptionSources(m);
            for (const source of Object.keys(st.data.captions)) {
              if (sources !== null && (st.data.captions[source] ?? 0) > 0 && !sources.has(source)) {
                throw new InvalidArgumentError(
                  `${where}: ${stageField(st, "data.captions")}: no sample has a "${source}" caption (the shards have: ${[...sources].sort().join(", ") || "none"})`,
                  "data.captions",
                );
              }
            }
          });
        }
      }
      if (st.data.val.length > 0) {
        await attempt(st, "data.val", async () => {
          const read = this.datasets.manifest(st.data.val, 1, "data.val", st.data.index);
          const m = await (mode.collect ? read : read.catch(inStage));
          counted.val = { samples: m.totalSamples, shards: m.shards.length };
        });
      }
    }
    return { imports, data };
  }

  /**
   * open_clip weights as init.checkpoint: the worker runtime loads them (weights_only) and checks
   * every key and shape against the stage's towers, then the file is hashed into a signed manifest.
   */
  private async importOpenClip(st: StageSpec, ref: string): Promise<SignedManifestRecord> {
    const check = this.ctx.deps.checkOpenClip;
    if (!check) throw new InvalidArgumentError(`init.checkpoint: ${ref}: this orchestrator cannot read open_clip weights`, "init.checkpoint");
    const python = await this.ctx.resolvePython(st.worker.python ?? this.ctx.deps.python);
    const weights = await check(python, ref, JSON.stringify(st.model));
    return this.refs.importOpenClip(st, weights, this.ctx.now());
  }
}

/** One problem submit would refuse a spec for: the stage ("" the job) and its field, and what is wrong (without the field). */
export interface AdmissionProblem {
  /** The stage's name; null for the job as a whole. */
  readonly stage: string | null;
  /** The field within the stage (data.train, init.checkpoint, cluster.workers); "" when none is named. */
  readonly field: string;
  readonly message: string;
  /** A problem of the spec itself (before any check of its data): its full field path (`stages[1].train.lr`). */
  readonly specPath?: string;
}

/** A stage's data as submit would count it: samples and shards of data.train and data.val (null: none, or not readable yet). */
export interface StageData {
  train: { samples: number; shards: number } | null;
  /** The steps the stage will run, once its train data is counted (an epochs length resolved through the data plan); null when unknown. */
  steps: number | null;
  val: { samples: number; shards: number } | null;
  /** data.synth's folder: to be generated by run (then not read now), or holding the dataset already; null without data.synth. */
  synth: "generate" | "reuse" | null;
}

/** What Admission.check found: every problem, and each stage's data. */
export interface AdmissionCheck {
  readonly problems: AdmissionProblem[];
  readonly data: Map<string, StageData>;
}

/**
 * The field and message of a check's error. Messages start with the spec file
 * (`where: `), the stage's prefix, and the field they name when they name one
 * (`data.train: no shard matches ...`, `data.synth.out: ...`); that field wins
 * over the check's own when it is the same or inside it.
 */
export function problemOf(st: StageSpec | null, field: string, err: unknown, where: string): AdmissionProblem {
  let message = err instanceof Error ? err.message : String(err);
  if (message.startsWith(`${where}: `)) message = message.slice(where.length + 2);
  const prefix = st ? stageField(st, "") : "";
  if (prefix && message.startsWith(prefix)) message = message.slice(prefix.length);
  const named = /^([A-Za-z_][\w.]*(?:\[\d+\])?[\w.]*): /.exec(message);
  if (named && (field === "" || named[1] === field || named[1]!.startsWith(`${field}.`))) {
    return { stage: st?.name ?? null, field: named[1]!, message: message.slice(named[0].length) };
  }
  return { stage: st?.name ?? null, field, message };
}

/** Whether a stage's data.train is the output of a recaption stage of the same spec (`data.train: {stage: NAME}`). */
function producedByRecaption(spec: JobSpec, st: StageSpec): boolean {
  const outs = spec.stages.filter((x) => x.task === "recaption" && x.recaption !== null).map((x) => `${x.recaption!.out}/`);
  return st.data.train.length > 0 && st.data.train.every((p) => outs.some((o) => p.startsWith(o) && !p.slice(o.length).includes("/")));
}

/** The steps a stage's length resolves to over its counted train data, as launch computes them (the same data plan); throws the plan's user error (a batch larger than the data). */
function resolvedSteps(st: StageSpec, train: Manifest): number {
  const plan = new DataPlan({ manifest: train, seed: st.seed, batchSize: st.train.batch_size, shuffle: st.data.shuffle, fraction: st.data.fraction });
  return totalStepsOf(st, plan.stepsPerEpoch);
}
