/**
 * Datasets as the job machinery sees them: shard manifests (read once per
 * shard list and cached), synthetic datasets generated on demand (once per
 * output folder, however many stages ask), and the data audit's log.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { FailedPreconditionError, InvalidArgumentError, synthValShards, type JobRecord, type RecaptionShardRecord, type StageSpec, type SynthSpec } from "../domain/index.js";
import { Audit, DataPlan, manifestOf, resolveManifest, trajectoryOf, type AuditReport, type Manifest } from "../data/index.js";
import type { JobContext } from "./context.js";
import { stageSpecOf } from "./records.js";

export class Datasets {
  private readonly manifests = new Map<string, Promise<Manifest>>();
  private readonly synthRuns = new Map<string, Promise<void>>();

  constructor(private readonly ctx: JobContext) {}

  /** The (cached) manifest of a shard list; `field` names the spec field in error messages. */
  manifest(patterns: readonly string[], fraction: number, field = "data.train", index: string | null = null): Promise<Manifest> {
    const key = JSON.stringify([patterns, fraction, field, index]);
    let m = this.manifests.get(key);
    if (!m) {
      m = resolveManifest([...patterns], { fraction, field, index });
      this.manifests.set(key, m);
      m.catch(() => this.manifests.delete(key));
    }
    return m;
  }

  /**
   * Generates the stage's data.synth dataset unless its folder already holds
   * the one these parameters make (see synthOutState); one generation per
   * folder at a time, and a stage waiting on another's re-checks afterwards.
   */
  async ensureSynth(st: StageSpec): Promise<void> {
    const synth = st.data.synth;
    if (!synth) return;
    for (;;) {
      const running = this.synthRuns.get(synth.out);
      if (running) {
        await running.catch(() => undefined);
        continue;
      }
      // Checked and claimed with no await in between, so two stages never generate into one folder at once.
      if (synthOutState(synth) === "reuse") return;
      const run = (async () => {
        const python = await this.ctx.resolvePython(st.worker.python ?? this.ctx.deps.python);
        await this.ctx.deps.synthesize(python, synth, (line) => process.stderr.write(`synth: ${line}\n`));
      })();
      this.synthRuns.set(synth.out, run);
      run.finally(() => this.synthRuns.delete(synth.out)).catch(() => undefined);
      return run;
    }
  }

  /** The data audit's log of a stage: one JSON line per rank step, `{a: attempt, s: step, ids}`. */
  auditPath(jobId: string, stage: string): string {
    const dir = join(this.ctx.deps.stateDir, "jobs", jobId, "audit");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    return join(dir, `${stage}.jsonl`);
  }

  /**
   * The samples a stage trains on: its shards, or for task command the
   * data.num_samples items its script indexes (one pseudo-shard); null
   * when it has neither.
   */
  async trainManifest(spec: StageSpec): Promise<Manifest | null> {
    if (spec.data.num_samples !== null) return manifestOf([{ url: `num_samples:${spec.data.num_samples}`, samples: spec.data.num_samples }]);
    return spec.data.train.length > 0 ? this.manifest(spec.data.train, spec.data.fraction, "data.train", spec.data.index) : null;
  }

  /**
   * The data audit of a job's stages with data.audit: per epoch, samples
   * consumed once, twice or never, counting only the steps of the final
   * trajectory (steps redone after a restart replace the lost ones).
   */
  async audit(job: JobRecord): Promise<{ jobId: string; stages: ((AuditReport & { stage: string }) | RecaptionAudit)[] }> {
    const stages: ((AuditReport & { stage: string }) | RecaptionAudit)[] = [];
    for (const stage of job.stages) {
      const spec = stageSpecOf(job, stage.name);
      if (spec.task === "recaption") {
        const commits = [...(stage.recaption ?? [])].sort((a, b) => a.shard - b.shard);
        const total = stage.state === "PENDING" && commits.length === 0 ? null : (await this.trainManifest(spec))?.shards.length ?? 0;
        const counts = new Map<number, number>();
        for (const c of commits) counts.set(c.shard, (counts.get(c.shard) ?? 0) + 1);
        const twice = [...counts.values()].filter((n) => n > 1).length;
        stages.push({ stage: stage.name, recaption: { inputs: total, committed: counts.size, duplicates: twice, missing: total === null ? null : total - counts.size, shards: commits } });
        continue;
      }
      const manifest = spec.data.audit && spec.task !== "eval" ? await this.trainManifest(spec) : null;
      if (!manifest) continue;
      const audit = new Audit(new DataPlan({ manifest, seed: spec.seed, batchSize: spec.train.batch_size, shuffle: spec.data.shuffle, fraction: spec.data.fraction }));
      const file = this.auditPath(job.id, stage.name);
      if (existsSync(file)) {
        for (const line of readFileSync(file, "utf8").split("\n")) {
          if (!line) continue;
          try {
            const r = JSON.parse(line) as { a: number; s: number; ids: number[] };
            audit.record(r.a, r.s, r.ids);
          } catch {
            // a line torn by a crash mid-write
          }
        }
      }
      stages.push({ stage: stage.name, ...audit.finalize(trajectoryOf(stage.attempts)) });
    }
    if (stages.length === 0) throw new FailedPreconditionError(`job ${job.id} has no stage with data.audit: true (or task recaption)`);
    return { jobId: job.id, stages };
  }
}

/** task recaption's audit: each input shard's commit (input, output, digest, attempt, rank); `duplicates` counts shards committed twice (never, by construction). */
export interface RecaptionAudit {
  readonly stage: string;
  readonly recaption: {
    /** Input shards; null before the stage ran (its data not read yet). */
    readonly inputs: number | null;
    readonly committed: number;
    readonly duplicates: number;
    readonly missing: number | null;
    readonly shards: readonly RecaptionShardRecord[];
  };
}

/** The parameters a synthetic dataset's synth.json records (the generator writes it last, so it also marks a complete dataset). */
const SYNTH_MARKER_FIELDS = ["train", "val", "shards", "val_shards", "size", "seed"] as const;

/**
 * What ensureSynth does with data.synth.out: `generate` into a folder that is
 * absent or empty, `reuse` one whose synth.json records these parameters.
 * Anything else is refused (exit 2, naming data.synth.out) rather than
 * overwritten: a folder without synth.json may be a user's own data, and one
 * made with other parameters may be another spec's dataset.
 */
export function synthOutState(synth: SynthSpec): "generate" | "reuse" {
  const out = synth.out;
  if (!existsSync(out)) return "generate";
  if (!statSync(out).isDirectory()) throw new InvalidArgumentError(`data.synth.out: ${out} exists and is not a directory`);
  let marker: unknown = null;
  try {
    marker = JSON.parse(readFileSync(join(out, "synth.json"), "utf8"));
  } catch {
    // absent or unreadable: not a complete generated dataset
  }
  if (marker === null || typeof marker !== "object" || Array.isArray(marker)) {
    if (readdirSync(out).length === 0) return "generate";
    throw new InvalidArgumentError(
      `data.synth.out: ${out} holds files but no readable synth.json (not a dataset clipfleet generated, or a generation that was interrupted); clipfleet does not write into it: remove it or choose another folder`,
    );
  }
  const recorded = marker as Record<string, unknown>;
  const wanted: Record<(typeof SYNTH_MARKER_FIELDS)[number], number> = { ...synth, val_shards: synthValShards(synth.shards) };
  // synth.json from before val_shards was recorded: the manifest still checks that the val shards exist.
  const differ = SYNTH_MARKER_FIELDS.filter((k) => !(k === "val_shards" && recorded[k] === undefined) && recorded[k] !== wanted[k]);
  if (differ.length > 0) {
    const had = differ.map((k) => `${k} ${JSON.stringify(recorded[k] ?? null)}`).join(", ");
    const want = differ.map((k) => `${k} ${wanted[k]}`).join(", ");
    throw new InvalidArgumentError(
      `data.synth.out: ${out} holds a synthetic dataset made with ${had}, but this stage asks for ${want}; clipfleet does not overwrite it: remove the folder or choose another data.synth.out`,
    );
  }
  return "reuse";
}
