/**
 * One stage of a spec, from its merged fields (shared fields plus the
 * stage's overrides, see resolve.ts) to a StageSpec: schema validation, then
 * the rules that span fields (presets, divisibility, derived defaults, paths,
 * init references). Problems are collected, never thrown.
 */
import * as nodePath from "node:path";
import { accessSync, constants as fsConstants, existsSync, statSync } from "node:fs";
import {
  type AugmentSpec,
  type CaptionerSpec,
  type CheckpointSpec,
  type ClusterSpec,
  type DataSpec,
  type DecoderSpec,
  type DenseSpec,
  type EvalSpec,
  type FailureSpec,
  type FusionSpec,
  type InitSpec,
  type ModelSpec,
  type RecaptionSpec,
  type StageSpec,
  type SynthSpec,
  type Task,
  type TokenizerSpec,
  type TrainSpec,
  type WorkerSpec,
  COMMAND_PYTHON_NAMES,
  countShardPattern,
  isValidJobId,
  MAX_SHARDS,
  synthValShards,
} from "../domain/index.js";
import { type Issue, type Path, expectation, fieldAt, isMapping, objectShapes, show, validate } from "./nodes.js";
import { type Presets } from "./presets.js";
import { AUGMENT_NODE, EVAL_NODE, STAGE_NAME, STAGE_NODE } from "./schema.js";
import { isOpenClipRef } from "./files.js";
import { didYouMean } from "./suggest.js";
import { type TowerInput, resolveImageTower, resolveTextTower } from "./towers.js";

const TRAINING_TASKS: ReadonlySet<Task> = new Set(["pretrain", "finetune-seg", "finetune-depth", "train-captioner"]);

/** One entry of `stages` (or the implicit "main"), before its fields are resolved. */
export interface StageItem {
  /** Index in `stages`; null for the implicit stage of a spec without `stages`. */
  readonly index: number | null;
  readonly name: string | undefined;
  readonly needs: readonly string[];
  readonly overrides: Readonly<Record<string, unknown>>;
}

function overlaps(a: Path, b: Path): boolean {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Resolve a spec relative to `base_dir`: brace patterns keep their braces, only the directory before them is resolved. */
export function resolvePattern(pattern: string, baseDir: string): string {
  return pattern
    .split("::")
    .map((part) => {
      // file://rel and file:rel resolve like plain paths; file:///abs is /abs.
      if (/^file:/i.test(part)) part = part.replace(/^file:(\/\/)?/i, "");
      if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(part) || nodePath.isAbsolute(part)) return part; // a URL (pipe:, http:, s3:) or absolute
      const brace = part.indexOf("{");
      if (brace < 0) return nodePath.resolve(baseDir, part);
      const slash = part.lastIndexOf("/", brace);
      return slash < 0 ? `${baseDir}/${part}` : `${nodePath.resolve(baseDir, part.slice(0, slash))}${part.slice(slash)}`;
    })
    .join("::");
}

/**
 * A mapping section as validated, or an empty one when the schema already
 * refused it (a string where a mapping belongs): the checks below then add
 * nothing about it, and no field access throws.
 */
function section(value: unknown): unknown {
  return isMapping(value) ? value : {};
}

/** How many names a pattern stands for; 0 when it is malformed (the manifest reports that, naming the pattern). */
function safeCount(pattern: string): number {
  try {
    return countShardPattern(pattern);
  } catch {
    return 0;
  }
}

/** The shard patterns `synth` writes: `{split}-{i:05d}.tar`, `shards` train shards and ceil(shards / 4) val shards. */
export function synthShards(out: string, split: "train" | "val", shards: number): string {
  const n = split === "train" ? shards : synthValShards(shards);
  return `${out}/${split}-{00000..${String(n - 1).padStart(5, "0")}}.tar`;
}

/** What resolving one stage needs besides its fields: the spec directory, presets and the other stages. */
export interface StageContext {
  readonly baseDir: string;
  readonly presets: Presets;
  readonly byName: ReadonlyMap<string, StageItem>;
  /** The (unvalidated) task of another stage, for init references. */
  readonly taskOf: (name: string) => unknown;
  /** The (unvalidated) merged fields of another stage: a recaption stage's output as data.train. */
  readonly fieldsOf: (name: string) => Readonly<Record<string, unknown>>;
}

/** Section shapes after schema validation, before the cross-field rules fill in what is derived. */
interface ModelRaw {
  image?: TowerInput;
  text?: TowerInput;
  embed_dim?: number;
  tokenizer: "byte" | "bpe" | { type: "byte" | "bpe"; vocab: string | null };
}
type SynthRaw = Omit<SynthSpec, "size" | "seed"> & { size?: number; seed?: number };
type DataRaw = Omit<DataSpec, "train" | "val" | "synth" | "augment"> & {
  train?: string | string[] | { stage: string };
  val?: string | string[];
  synth: SynthRaw | null;
  augment: boolean | AugmentSpec;
};
type TrainRaw = Omit<TrainSpec, "batch_size"> & { batch_size?: number };
type ClusterRaw = Omit<ClusterSpec, "min_workers"> & { min_workers?: number };

/** Resolve one stage's merged fields: the stage, or (with no stage) the issues, paths relative to the stage. */
export function resolveStage(merged: Record<string, unknown>, item: StageItem, ctx: StageContext): { stage?: StageSpec; issues: Issue[] } {
  const issues: Issue[] = [];
  const v = validate(STAGE_NODE, merged, [], issues) as Record<string, unknown>;
  const schemaIssues = [...issues];
  /** True when none of the dotted paths has a schema issue at, above or below it. */
  const clean = (...paths: string[]): boolean => !schemaIssues.some((i) => paths.some((p) => overlaps(i.path, p.split("."))));
  const add = (path: Path, message: string): void => {
    issues.push({ path, message });
  };

  const task = v.task as Task | undefined;
  const training = task !== undefined && TRAINING_TASKS.has(task);
  const d0 = section(v.data) as { num_samples?: number | null };
  // A command stage with data.num_samples gets a data plan: its train section is checked as a training task's.
  const planned = training || (task === "command" && clean("data.num_samples") && d0.num_samples != null);
  const seed = v.seed as number | undefined;

  // model
  const m = section(v.model) as ModelRaw;
  const image = clean("model.image") ? resolveImageTower(m.image ?? ctx.presets.defaults.image, ctx.presets, ["model", "image"], issues) : undefined;
  const text = clean("model.text") ? resolveTextTower(m.text ?? ctx.presets.defaults.text, ctx.presets, ["model", "text"], issues) : undefined;
  const embedDim = m.embed_dim ?? ctx.presets.defaults.embed_dim;
  const tokenizer = clean("model.tokenizer") ? resolveTokenizer(m.tokenizer, ctx.baseDir, add) : undefined;

  // eval: an eval stage always evaluates, so it gets the defaults when the section is absent
  let evalSpec: EvalSpec | null | undefined;
  if (clean("eval")) {
    const e = v.eval as boolean | EvalSpec | null;
    const defaults = (): EvalSpec => validate(EVAL_NODE, {}, ["eval"], issues) as EvalSpec;
    if (e === true || ((e === null || e === false) && task === "eval")) evalSpec = defaults();
    else evalSpec = e === false ? null : e;
  }

  // data
  const d = section(v.data) as DataRaw;
  let synth: SynthSpec | null | undefined = null;
  if (!clean("data.synth")) synth = undefined;
  else if (d.synth !== null) {
    const s = d.synth;
    const size = s.size ?? image?.image_size;
    const synthSeed = s.seed ?? seed;
    synth = size === undefined || synthSeed === undefined ? undefined : { ...s, out: nodePath.resolve(ctx.baseDir, s.out), size, seed: synthSeed };
    // The generator draws shapes that need 16 px; an image_size under that must not reach it as a derived size.
    if (s.size === undefined && size !== undefined && size < 16) add(["data", "synth", "size"], `the generator needs images of at least 16 px; model.image.image_size is ${size}: set data.synth.size >= 16`);
    if (s.shards > s.train) add(["data", "synth", "shards"], `${s.shards} shards need at least ${s.shards} train samples, got data.synth.train ${s.train}`);
    const valShards = synthValShards(s.shards);
    if (s.val < valShards) add(["data", "synth", "val"], `${s.val} samples cannot fill the ${valShards} val shards (ceil(shards / 4)); set val >= ${valShards}`);
  }
  const shardList = (given: string | string[] | { stage: string } | undefined, split: "train" | "val"): string[] | undefined => {
    if (given !== undefined && typeof given === "object" && !Array.isArray(given)) return recaptionOutputOf(given.stage, item, ctx, add);
    if (given !== undefined) {
      const patterns = typeof given === "string" ? [given] : given;
      // Object stores are read through pipe: commands; say so here, not later as "directory .../s3:/bucket does not exist".
      for (const part of patterns.flatMap((p) => p.split("::"))) {
        const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(part)?.[1]?.toLowerCase();
        if (scheme === undefined || ["http", "https", "pipe", "file"].includes(scheme)) continue;
        const hint =
          scheme === "s3" ? `"pipe:aws s3 cp ${part} -"` : scheme === "gs" ? `"pipe:gsutil cat ${part}"` : `"pipe:COMMAND" (a command writing the shard to stdout)`;
        add(["data", split], `${show(part.slice(0, 80))}: ${scheme}:// is not read directly; use ${hint.length > 120 ? `${hint.slice(0, 117)}..."` : hint} (see docs/data.md)`);
      }
      // Counted, never expanded, here: the count alone tells a brace bomb from a dataset.
      const total = patterns.reduce((acc, p) => acc + safeCount(p), 0);
      if (total > MAX_SHARDS) add(["data", split], `the patterns stand for ${Number.isFinite(total) && total < 1e15 ? total.toLocaleString("en-US") : total.toExponential(2)} shards, more than the limit of ${MAX_SHARDS.toLocaleString("en-US")}`);
      return patterns.map((p) => resolvePattern(p, ctx.baseDir));
    }
    if (synth === undefined) return undefined;
    return synth === null ? [] : [synthShards(synth.out, split, synth.shards)];
  };
  const train = clean("data.train") ? shardList(d.train, "train") : undefined;
  const val = clean("data.val") ? shardList(d.val, "val") : undefined;
  if (training && train !== undefined && train.length === 0) add(["data", "train"], `missing (task ${task} trains on it; or set data.synth)`);
  if (task === "recaption" && train !== undefined && train.length === 0) add(["data", "train"], "missing (task recaption captions its shards; or set data.synth)");
  if (task === "eval" && val !== undefined && val.length === 0) add(["data", "val"], "missing (task eval evaluates on it; or set data.synth)");
  if (training && evalSpec && val !== undefined && val.length === 0) add(["eval"], "needs validation data: set data.val or data.synth");
  if (clean("data.captions")) {
    const sum = Object.values(d.captions).reduce((a, b) => a + b, 0);
    if (Math.abs(sum - 1) > 1e-6) add(["data", "captions"], `probabilities must sum to 1, got ${Number(sum.toPrecision(6))}`);
    const sources = Object.keys(d.captions);
    if (clean("data.caption_mode") && d.caption_mode === "both" && sources.length !== 2) {
      add(["data", "caption_mode"], `"both" needs exactly 2 caption sources, got ${sources.length} (${sources.join(", ")})`);
    }
  }
  let augment: AugmentSpec | undefined;
  if (clean("data.augment")) {
    const defaults = validate(AUGMENT_NODE, {}, ["data", "augment"], issues) as AugmentSpec;
    augment = d.augment === true ? defaults : d.augment === false ? { crop_scale: null, crop_ratio: defaults.crop_ratio, hflip: 0 } : d.augment;
  }

  // cluster
  const c = section(v.cluster) as ClusterRaw;
  const minWorkers = c.min_workers ?? c.workers;
  const worldSizes = clean("cluster.workers", "cluster.min_workers") && minWorkers <= c.workers;
  if (clean("cluster.workers", "cluster.min_workers") && minWorkers > c.workers) add(["cluster", "min_workers"], `${minWorkers} is more than cluster.workers ${c.workers}`);
  if (clean("cluster.backend", "cluster.gpus_per_worker") && c.backend === "nccl" && c.gpus_per_worker === 0) add(["cluster", "backend"], "nccl needs cluster.gpus_per_worker >= 1");

  // train
  const t = section(v.train) as TrainRaw;
  let batchSize = t.batch_size;
  if (planned && clean("train.steps", "train.epochs")) {
    if (t.steps === null && t.epochs === null) add(["train"], task === "command" ? "set steps or epochs (data.num_samples asks for a data plan)" : "set steps or epochs");
    if (t.steps !== null && t.epochs !== null) add(["train"], "set steps or epochs, not both");
  }
  if (clean("train.batch_size") && batchSize === undefined) {
    if (planned) add(["train", "batch_size"], `missing (expected ${expectation(fieldAt(STAGE_NODE, "train.batch_size").node)})`);
    else if (evalSpec) batchSize = evalSpec.batch_size;
  }
  if (planned && batchSize !== undefined && worldSizes && clean("train.batch_size")) {
    const global = batchSize;
    const sizes = Array.from({ length: c.workers - minWorkers + 1 }, (_, k) => minWorkers + k);
    const bad = sizes.filter((w) => global % w !== 0);
    if (bad.length > 0) {
      add(
        ["train", "batch_size"],
        minWorkers === c.workers
          ? `${global} is not divisible by cluster.workers ${c.workers}`
          : `${global} is not divisible by the world size${bad.length > 1 ? "s" : ""} ${bad.join(", ")} (the job runs on cluster.min_workers ${minWorkers} to cluster.workers ${c.workers} ranks)`,
      );
    } else if (t.micro_batch !== null && clean("train.micro_batch")) {
      const micro = t.micro_batch;
      const w = sizes.find((n) => (global / n) % micro !== 0);
      if (w !== undefined) add(["train", "micro_batch"], `${micro} does not divide the per-rank batch ${global / w} at world size ${w}`);
    }
  }
  if (clean("train.lr", "train.min_lr") && t.min_lr > t.lr) add(["train", "min_lr"], `${t.min_lr} is more than train.lr ${t.lr}`);
  if (training && clean("train.warmup_steps", "train.steps") && t.steps !== null && t.warmup_steps > t.steps) add(["train", "warmup_steps"], `${t.warmup_steps} is more than train.steps ${t.steps}`);

  // checkpoint, failure, worker
  const k = section(v.checkpoint) as CheckpointSpec;
  if (clean("checkpoint.every_steps", "checkpoint.keep_every_steps") && k.every_steps !== null && k.keep_every_steps !== null && k.keep_every_steps % k.every_steps !== 0) {
    add(["checkpoint", "keep_every_steps"], `${k.keep_every_steps} is not a multiple of checkpoint.every_steps ${k.every_steps}, so it would keep no checkpoint`);
  }
  const f = section(v.failure) as FailureSpec;
  if (clean("failure.backoff_seconds", "failure.backoff_max_seconds") && f.backoff_max_seconds < f.backoff_seconds) {
    add(["failure", "backoff_max_seconds"], `${f.backoff_max_seconds} is less than failure.backoff_seconds ${f.backoff_seconds}`);
  }
  const w = section(v.worker) as WorkerSpec;

  // init, freeze_backbone, dense
  const init = clean("init", "task") && task !== undefined ? resolveInit(v.init as "random" | { checkpoint: string; import: boolean }, task, item, ctx, add) : undefined;
  if (clean("freeze_backbone", "task") && v.freeze_backbone === true && task !== undefined && !task.startsWith("finetune-")) {
    add(["freeze_backbone"], `only fine-tune tasks freeze the backbone (task is ${task})`);
  }
  const dense = section(v.dense) as DenseSpec;
  const recap = clean("captioner", "fusion", "recaption", "task") ? resolveRecaption(v, task, item, ctx, add) : undefined;
  if (task === "recaption" && train !== undefined && recap?.recaption) checkRecaptionInputs(train, add);
  if (clean("dense") && dense.num_classes !== null && dense.ignore_index >= 0 && dense.ignore_index < dense.num_classes) {
    add(["dense", "ignore_index"], `${dense.ignore_index} is a class id (dense.num_classes is ${dense.num_classes}); use a value outside 0..${dense.num_classes - 1}`);
  }

  // decoder, eval.clip (task train-captioner)
  const decoder = section(v.decoder) as DecoderSpec;
  if (clean("decoder") && decoder.width % decoder.heads !== 0) add(["decoder", "heads"], `decoder.width ${decoder.width} is not divisible by ${decoder.heads} heads`);
  let evalClip: string | null | undefined = evalSpec?.clip ?? null;
  if (evalClip !== null && clean("task", "eval")) {
    if (task !== "train-captioner") {
      add(["eval", "clip"], `only task train-captioner checks captions with a CLIP (task is ${task ?? "not set"})`);
      evalClip = undefined;
    } else evalClip = resolveCheckpointRef(evalClip, ["eval", "clip"], item, ctx, add, true);
  }
  if (task === "train-captioner" && clean("data.caption_mode") && d.caption_mode === "both") {
    add(["data", "caption_mode"], `task train-captioner trains on one caption per sample ("sample"), got "both"`);
  }

  // The data a stage sets itself (a pipeline's top-level data.train is for its built-in stages, not a command's).
  const ownData = section((item.index === null ? merged : item.overrides).data) as Record<string, unknown>;
  const command = clean("command", "workdir") ? resolveCommand(v, task, d0.num_samples ?? null, ownData, ctx.baseDir, add) : undefined;

  if (issues.length > 0) return { issues };
  const model: ModelSpec = { image: image!, text: text!, embed_dim: embedDim, tokenizer: tokenizer! };
  const index = d.index === null ? null : nodePath.resolve(ctx.baseDir, d.index);
  const data = inOrder<DataSpec>(
    "data",
    task === "command" ? { ...d, index, train: [], val: [], synth: null, augment: augment! } : { ...d, index, train: train!, val: val!, synth: synth!, augment: augment! },
  );
  const trainSpec = inOrder<TrainSpec>(
    "train",
    planned
      ? { ...t, batch_size: batchSize! }
      : task === "command"
        ? { ...t, batch_size: batchSize ?? 0 }
        : { ...t, steps: null, epochs: null, batch_size: task === "recaption" ? recap!.captioner!.batch_size : batchSize! },
  );
  const cluster = inOrder<ClusterSpec>("cluster", { ...c, min_workers: minWorkers });
  const worker: WorkerSpec = { ...w, python: w.python !== null && w.python.includes("/") ? nodePath.resolve(ctx.baseDir, w.python) : w.python };
  const checkpoint: CheckpointSpec = { ...k, dir: k.dir === null ? null : nodePath.resolve(ctx.baseDir, k.dir) };
  const stage: StageSpec = {
    name: item.name!,
    needs: [...item.needs],
    task: task!,
    command: command?.argv ?? null,
    workdir: command?.workdir ?? null,
    seed: seed!,
    model,
    data,
    train: trainSpec,
    cluster,
    worker,
    checkpoint,
    failure: f,
    eval: evalSpec ? { ...evalSpec, clip: evalClip! } : evalSpec!,
    init: init!,
    freeze_backbone: v.freeze_backbone as boolean,
    dense,
    captioner: recap!.captioner,
    fusion: recap!.fusion,
    recaption: recap!.recaption,
    decoder,
    labels: v.labels as Record<string, string>,
  };
  return { stage, issues };
}

/**
 * `command` and `workdir`: only task command has them (and needs a command);
 * the workdir must exist, a script given to python must be in it, and a
 * program must be a file or on PATH here (as for data paths, the nodes are
 * assumed to see the same files), so a typo fails at validate, not on a node.
 */
function resolveCommand(
  v: Record<string, unknown>,
  task: Task | undefined,
  numSamples: number | null,
  data: Record<string, unknown>,
  baseDir: string,
  add: (p: Path, m: string) => void,
): { argv: string[]; workdir: string } | undefined {
  const given = v.command as string[] | null;
  const wd = v.workdir as string | null;
  if (task !== "command") {
    if (given !== null) add(["command"], `only task command runs a command (task is ${task ?? "not set"})`);
    if (wd !== null) add(["workdir"], `only task command has a workdir (task is ${task ?? "not set"})`);
    if (numSamples !== null) add(["data", "num_samples"], `only task command takes it (task ${task ?? "?"} reads data.train)`);
    return undefined;
  }
  for (const field of ["train", "val", "synth"]) {
    const value = data[field];
    if (value !== undefined && value !== null) add(["data", field], "task command reads its own data (set data.num_samples for a data plan)");
  }
  if (given === null) {
    add(["command"], "missing (task command runs it: command: [python, train.py])");
    return undefined;
  }
  const workdir = nodePath.resolve(baseDir, wd ?? ".");
  if (!existsSync(workdir) || !statSync(workdir).isDirectory()) {
    add(["workdir"], `no such directory: ${workdir}`);
    return undefined;
  }
  const [program, first] = given as [string, ...string[]];
  if (COMMAND_PYTHON_NAMES.has(program)) {
    if (first !== undefined && first.endsWith(".py") && !first.startsWith("-")) {
      const script = nodePath.resolve(workdir, first);
      if (!existsSync(script)) add(["command", 1], `no such file: ${script}`);
    }
  } else if (program.includes("/")) {
    const path = nodePath.resolve(workdir, program);
    if (!existsSync(path)) add(["command", 0], `no such file: ${path}`);
    else if (!isExecutable(path)) add(["command", 0], `not executable: ${path}`);
  } else if (!onPath(program)) {
    add(["command", 0], `${program}: not found on PATH`);
  }
  return { argv: [...given], workdir };
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, fsConstants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function onPath(program: string): boolean {
  return (process.env.PATH ?? "").split(nodePath.delimiter).some((dir) => dir !== "" && isExecutable(nodePath.join(dir, program)));
}

/** A section with its keys in schema order (derived fields were added last), so the worker's JSON reads like the docs. */
function inOrder<T>(section: string, value: T): T {
  const shape = objectShapes(fieldAt(STAGE_NODE, section).node)[0]!;
  const source = value as Record<string, unknown>;
  return Object.fromEntries(Object.keys(shape.fields).map((key) => [key, source[key]])) as T;
}

function resolveTokenizer(value: ModelRaw["tokenizer"], baseDir: string, add: (p: Path, m: string) => void): TokenizerSpec | undefined {
  const t = typeof value === "string" ? { type: value, vocab: null } : value;
  const at = ["model", "tokenizer", "vocab"];
  if (t.type === "byte") {
    if (t.vocab !== null) add(at, "only the bpe tokenizer takes a vocab file");
    return { type: "byte", vocab: null };
  }
  if (t.vocab === null) {
    add(at, "missing (the bpe tokenizer needs a vocab file: model.tokenizer: {type: bpe, vocab: PATH})");
    return undefined;
  }
  const vocab = nodePath.resolve(baseDir, t.vocab);
  if (!existsSync(vocab) || !statSync(vocab).isFile()) {
    add(at, `no such file: ${vocab}`);
    return undefined;
  }
  return { type: "bpe", vocab };
}

function ancestorsOf(name: string, byName: ReadonlyMap<string, StageItem>): Set<string> {
  const out = new Set<string>();
  const stack = [...(byName.get(name)?.needs ?? [])];
  while (stack.length > 0) {
    const n = stack.pop()!;
    if (out.has(n) || !byName.has(n)) continue;
    out.add(n);
    stack.push(...byName.get(n)!.needs);
  }
  return out;
}

/**
 * `random`, or a checkpoint reference, checked in this order: a stage of
 * this spec (it must be among the stage's transitive needs, and train), a
 * path (has a `/` or starts with `.`; resolved), `JOB:STAGE`, a job id. A
 * bare word close to a stage name is taken for a typo, not a job id.
 */
function resolveInit(value: "random" | { checkpoint: string; import: boolean }, task: Task, item: StageItem, ctx: StageContext, add: (p: Path, m: string) => void): InitSpec | undefined {
  if (value === "random") {
    if (task === "eval") add(["init"], "task eval needs a checkpoint to evaluate (init: {checkpoint: REF})");
    return { kind: "random" };
  }
  const ref = value.checkpoint;
  const isPath = ref.includes("/") || ref.startsWith(".");
  // Only a directory can come from outside: a stage or job is this orchestrator's own, and signed.
  if (value.import && !isPath) {
    add(["init", "import"], `only a checkpoint directory can be imported (a path with a \`/\`), got ${show(ref)}`);
    return undefined;
  }
  const resolved = resolveCheckpointRef(ref, ["init", "checkpoint"], item, ctx, add, false);
  if (resolved === undefined) return undefined;
  // open_clip weights carry no clipfleet manifest: they are imported (hashed at submit) without being asked.
  return { kind: "checkpoint", ref: resolved, import: isPath && (value.import || isOpenClipRef(resolved)) };
}

/**
 * A checkpoint reference (`init.checkpoint`, `eval.clip`), checked in this order: a stage of this
 * spec (it must be among the stage's transitive needs, and train), a path (has a `/` or starts
 * with `.`; resolved; `mustExist`: a directory here), `JOB:STAGE`, a job id. A bare word close
 * to a stage name is taken for a typo, not a job id. Returns the resolved reference.
 */
function resolveCheckpointRef(ref: string, at: Path, item: StageItem, ctx: StageContext, add: (p: Path, m: string) => void, mustExist: boolean): string | undefined {
  if (ctx.byName.has(ref)) {
    if (item.name === undefined) return undefined;
    if (!ancestorsOf(item.name, ctx.byName).has(ref)) {
      add(at, `stage ${JSON.stringify(ref)} is not among the needs of stage ${JSON.stringify(item.name)} (add it to needs)`);
      return undefined;
    }
    if (ctx.taskOf(ref) === "eval") {
      add(at, `stage ${JSON.stringify(ref)} is an eval stage and writes no checkpoint`);
      return undefined;
    }
    return ref;
  }
  if (ref.includes("/") || ref.startsWith(".")) {
    const path = nodePath.resolve(ctx.baseDir, ref);
    if (mustExist && !(existsSync(path) && statSync(path).isDirectory())) {
      add(at, `no such checkpoint directory: ${path}`);
      return undefined;
    }
    return path;
  }
  const colon = ref.lastIndexOf(":");
  if (colon >= 0) {
    if (isValidJobId(ref.slice(0, colon)) && STAGE_NAME.test(ref.slice(colon + 1))) return ref;
    add(at, `expected JOB:STAGE (a job id and a stage name), got ${show(ref)}`);
    return undefined;
  }
  const guess = didYouMean(ref, [...ctx.byName.keys()]);
  if (guess !== null) {
    add(at, `no stage ${JSON.stringify(ref)} in this spec (did you mean ${JSON.stringify(guess)}?)`);
    return undefined;
  }
  if (isValidJobId(ref)) return ref;
  add(at, `expected a stage name, a job id, JOB:STAGE or a path, got ${show(ref)}`);
  return undefined;
}

/**
 * task recaption's sections: `captioner` (exactly one of checkpoint and
 * entry_point; a checkpoint stage must be among the needs), `fusion` (default
 * none) and `recaption` (its `out` resolved). Other tasks must not set them.
 */
function resolveRecaption(
  v: Record<string, unknown>,
  task: Task | undefined,
  item: StageItem,
  ctx: StageContext,
  add: (p: Path, m: string) => void,
): { captioner: CaptionerSpec | null; fusion: FusionSpec | null; recaption: RecaptionSpec | null } | undefined {
  const captioner = v.captioner as CaptionerSpec | null;
  const fusion = v.fusion as FusionSpec | null;
  const recaption = v.recaption as RecaptionSpec | null;
  if (task !== "recaption") {
    for (const [field, value] of [["captioner", captioner], ["fusion", fusion], ["recaption", recaption]] as const) {
      if (value !== null) add([field], `only task recaption takes it (task is ${task ?? "not set"})`);
    }
    return { captioner: null, fusion: null, recaption: null };
  }
  let ok = true;
  if (captioner === null) {
    add(["captioner"], "missing (task recaption needs {checkpoint: STAGE_OR_PATH} or {entry_point: \"module:factory\"})");
    ok = false;
  } else if ((captioner.checkpoint === null) === (captioner.entry_point === null)) {
    add(["captioner"], "set exactly one of checkpoint (the built-in captioner) and entry_point (your own)");
    ok = false;
  }
  if (recaption === null) {
    add(["recaption"], "missing (task recaption needs recaption: {out: DIR})");
    ok = false;
  }
  if (!ok || captioner === null || recaption === null) return undefined;
  let checkpoint = captioner.checkpoint;
  if (checkpoint !== null) {
    if (ctx.byName.has(checkpoint)) {
      if (item.name !== undefined && !ancestorsOf(item.name, ctx.byName).has(checkpoint)) {
        add(["captioner", "checkpoint"], `stage ${JSON.stringify(checkpoint)} is not among the needs of stage ${JSON.stringify(item.name)} (add it to needs)`);
        return undefined;
      }
    } else if (checkpoint.includes("/") || checkpoint.startsWith(".")) {
      checkpoint = nodePath.resolve(ctx.baseDir, checkpoint);
      if (!existsSync(checkpoint)) {
        add(["captioner", "checkpoint"], `no such file or directory: ${checkpoint}`);
        return undefined;
      }
    } else {
      const guess = didYouMean(checkpoint, [...ctx.byName.keys()]);
      add(["captioner", "checkpoint"], `no stage ${JSON.stringify(checkpoint)} in this spec${guess === null ? " (a path needs a `/`)" : ` (did you mean ${JSON.stringify(guess)}?)`}`);
      return undefined;
    }
  }
  return {
    captioner: { ...captioner, checkpoint },
    fusion: fusion ?? "none",
    recaption: { ...recaption, out: nodePath.resolve(ctx.baseDir, recaption.out) },
  };
}

/** The output name of an input shard (or pattern): its file name, a `.tar.gz`/`.tgz` written as `.tar`. */
export function recaptionOutputName(input: string): string {
  const base = input.slice(input.lastIndexOf("/") + 1);
  return base.replace(/\.(tar\.gz|tgz)$/i, ".tar");
}

/** Recaption inputs must name each shard by its file name (braces in the name only), so outputs cannot collide. */
function checkRecaptionInputs(train: readonly string[], add: (p: Path, m: string) => void): void {
  const names = new Set<string>();
  for (const part of train.flatMap((p) => p.split("::"))) {
    if (/^pipe:/i.test(part)) {
      add(["data", "train"], `${show(part.slice(0, 80))}: task recaption reads local or http(s) shards, not pipe: commands`);
      return;
    }
    const slash = part.lastIndexOf("/");
    if (part.indexOf("{") >= 0 && part.indexOf("{") < slash) {
      add(["data", "train"], `${show(part.slice(0, 80))}: task recaption names outputs by the input's file name; keep brace ranges in the file name`);
      return;
    }
    const name = recaptionOutputName(part);
    if (names.has(name)) {
      add(["data", "train"], `two inputs would both be written as ${show(name)} in recaption.out`);
      return;
    }
    names.add(name);
  }
}

/**
 * `data.train: {stage: NAME}`: the shards recaption stage NAME writes
 * (`recaption.out` joined with each input's file name), known before it runs;
 * they are counted when this stage starts, not at submit.
 */
function recaptionOutputOf(name: string, item: StageItem, ctx: StageContext, add: (p: Path, m: string) => void): string[] | undefined {
  const at = ["data", "train", "stage"];
  if (!ctx.byName.has(name)) {
    const guess = didYouMean(name, [...ctx.byName.keys()]);
    add(at, `no stage ${JSON.stringify(name)} in this spec${guess === null ? "" : ` (did you mean ${JSON.stringify(guess)}?)`}`);
    return undefined;
  }
  if (item.name === undefined) return undefined;
  if (!ancestorsOf(item.name, ctx.byName).has(name)) {
    add(at, `stage ${JSON.stringify(name)} is not among the needs of stage ${JSON.stringify(item.name)} (add it to needs)`);
    return undefined;
  }
  if (ctx.taskOf(name) !== "recaption") {
    add(at, `stage ${JSON.stringify(name)} is not a recaption stage (task ${String(ctx.taskOf(name))}); only a recaption stage's output is named this way`);
    return undefined;
  }
  const fields = ctx.fieldsOf(name);
  const out = (section(fields.recaption) as { out?: unknown }).out;
  const data = section(fields.data) as { train?: unknown; synth?: unknown };
  if (typeof out !== "string") return undefined; // that stage reports its own missing recaption.out
  let inputs: string[];
  if (typeof data.train === "string") inputs = [data.train];
  else if (Array.isArray(data.train) && data.train.every((x) => typeof x === "string")) inputs = data.train;
  else if (data.train === undefined && isMapping(data.synth) && typeof data.synth.shards === "number" && typeof data.synth.out === "string") {
    inputs = [synthShards(data.synth.out, "train", data.synth.shards)];
  } else return undefined; // that stage reports its own data.train
  const dir = nodePath.resolve(ctx.baseDir, out);
  return inputs.flatMap((p) => p.split("::")).map((part) => `${dir}/${recaptionOutputName(part)}`);
}
