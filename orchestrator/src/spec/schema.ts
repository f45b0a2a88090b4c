/**
 * Every spec field, described once: type, constraints, presence and doc text.
 * Validation (nodes.ts), the JSON Schema (json-schema.ts), the field list the
 * docs test checks (`SPEC_FIELDS`) and the docs tables (docs.ts) all derive
 * from these objects; rules that span fields live in resolve.ts. The
 * `satisfies Record<keyof X, Field>` clauses keep each section in step with
 * its domain type at compile time.
 */
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
  type ImageTowerSpec,
  type JobSpec,
  type ModelSpec,
  type RecaptionSpec,
  type StageSpec,
  type ShardCacheSpec,
  type SynthSpec,
  type TextTowerSpec,
  type TokenizerSpec,
  type TrainSpec,
  type WorkerSpec,
  ENTRY_POINT,
  MAX_COMMAND_ARG_CHARS,
  MAX_COMMAND_ARGS,
  MAX_LABEL_CHARS,
  MAX_LABEL_KEY_CHARS,
  MAX_LABELS,
  MAX_SPARES_PER_NODE,
  TASKS,
} from "../domain/index.js";
import {
  type Field,
  type Node,
  type ObjectNode,
  boolean,
  derived,
  fieldPaths,
  integer,
  list,
  mapOf,
  nullable,
  number,
  object,
  oneOf,
  positive,
  range,
  required,
  string,
  union,
  withDefault,
} from "./nodes.js";
import { type Presets } from "./presets.js";

/**
 * Labels (a stage's, a node selector's): bounded like Kubernetes' labels,
 * since each may become a report column or a metric label and a spec arrives
 * from the network.
 */
function labelMap(keyChars: RegExp): Node {
  const keyPattern = new RegExp(`^(?=.{1,${MAX_LABEL_KEY_CHARS}}$)${keyChars.source.slice(1)}`);
  return mapOf(string({ maxLength: MAX_LABEL_CHARS }), {
    keyPattern,
    keyDoc: `label of at most ${MAX_LABEL_KEY_CHARS} characters`,
    maxEntries: MAX_LABELS,
    typeDoc: `map label -> string (at most ${MAX_LABELS} entries; keys up to ${MAX_LABEL_KEY_CHARS} chars, values up to ${MAX_LABEL_CHARS})`,
  });
}

/** Job names end up in paths, NATS subjects and metric labels. */
export const JOB_NAME = /^[A-Za-z0-9._-]{1,64}$/;
/** Stage names are also path components and `JOB:STAGE` references. */
export const STAGE_NAME = /^[a-z0-9-]{1,64}$/;
/** Seeds must fit numpy's and torch's 32-bit seeding everywhere. */
export const MAX_SEED = 2 ** 32 - 1;
/** The largest gang clipfleet places. */
export const MAX_WORKERS = 16384;
/** MCi towers downsample by 32 overall (stem 4, then 2 per stage transition). */
export const MCI_STRIDE = 32;


const count = (min = 0): Node => integer({ min });
const seconds = (doc: string, value: number): Field => withDefault(number({ min: 0 }), value, doc);
const path = (o: { nullable?: boolean } = {}): Node => string({ typeDoc: "path", ...o });
const shards = union([string(), list(string(), { minItems: 1 })], {
  expect: "a shard pattern or a list of them",
  typeDoc: "string or list of string",
});
const pairOf = (items: Node): Node => range(items);
const fourInts = list(integer({ min: 1 }), { minItems: 4, maxItems: 4, expect: "a list of 4 integers >= 1", typeDoc: "list of 4 integers >= 1" });

/** The preset-name part of model.image / model.text: an enum in the JSON Schema when presets are known. */
function presetName(names: readonly string[] | null): Node {
  return names === null ? string({ typeDoc: "preset name" }) : oneOf(names, { typeDoc: "preset name" });
}

const fromPreset = "from the preset";

function imageFields(names: readonly string[] | null) {
  return {
    preset: derived(presetName(names), "none", "Preset (a key of presets.json `image`) the other fields override."),
    family: derived(oneOf(["vit", "mci"]), fromPreset, "`vit`: plain ViT; `mci`: MobileCLIP's hybrid conv/attention encoder."),
    image_size: derived(integer({ min: 1 }), fromPreset, "Input resolution in pixels (square). ViT: divisible by `patch`; MCi: divisible by 32."),
    width: derived(integer({ min: 1 }), fromPreset, "ViT only: token width, divisible by `heads`. For MCi it is set to the last stage width."),
    depth: derived(integer({ min: 1 }), fromPreset, "ViT only: transformer blocks. For MCi it is set to the total block count."),
    heads: derived(integer({ min: 1 }), fromPreset, "Attention heads (MCi: in the last stage, which must divide its width)."),
    patch: derived(integer({ min: 1 }), fromPreset, "ViT only: patch size in pixels. For MCi it is set to the output stride, 32."),
    mlp_ratio: derived(positive(), fromPreset, "MLP hidden width as a multiple of the block width."),
    layers: derived(fourInts, fromPreset, "MCi only: blocks per stage. Empty for ViT."),
    widths: derived(fourInts, fromPreset, "MCi only: channels per stage. Empty for ViT."),
  } satisfies Record<keyof ImageTowerSpec, Field>;
}

function textFields(names: readonly string[] | null) {
  return {
    preset: derived(presetName(names), "none", "Preset (a key of presets.json `text`) the other fields override."),
    width: derived(integer({ min: 1 }), fromPreset, "Token width, divisible by `heads`."),
    depth: derived(integer({ min: 1 }), fromPreset, "Transformer blocks."),
    heads: derived(integer({ min: 1 }), fromPreset, "Attention heads."),
    mlp_ratio: derived(positive(), fromPreset, "MLP hidden width as a multiple of `width`."),
    context_length: derived(integer({ min: 2 }), fromPreset, "Tokens per caption, start and end tokens included; longer captions are truncated."),
    causal: derived(boolean(), fromPreset, "Causal attention mask (OpenAI CLIP) or bidirectional (MobileCLIP S1/S2)."),
  } satisfies Record<keyof TextTowerSpec, Field>;
}

const TOKENIZER_FIELDS = {
  type: required(oneOf(["byte", "bpe"]), "`byte`: UTF-8 bytes, no vocabulary file; `bpe`: CLIP's byte-pair encoding."),
  vocab: withDefault(nullable(path()), null, "bpe only: a `bpe_simple_vocab_16e6.txt.gz`-format file (relative to the spec file)."),
} satisfies Record<keyof TokenizerSpec, Field>;

function modelFields(presets: Presets | null) {
  const imageNames = presets === null ? null : Object.keys(presets.image);
  const textNames = presets === null ? null : Object.keys(presets.text);
  return {
    image: derived(
      union([presetName(imageNames), object(imageFields(imageNames))], { expect: "a preset name or a mapping", typeDoc: "preset name or mapping" }),
      "presets.json `defaults.image`",
      "Image tower: a preset name (`vit-tiny`), or a mapping of a `preset` plus overrides, or a full tower without a preset.",
      { examples: ["vit-b16", { preset: "vit-tiny", image_size: 64 }] },
    ),
    text: derived(
      union([presetName(textNames), object(textFields(textNames))], { expect: "a preset name or a mapping", typeDoc: "preset name or mapping" }),
      "presets.json `defaults.text`",
      "Text tower: a preset name or a mapping, like `image`.",
      { examples: ["text-base", { preset: "text-tiny", context_length: 32 }] },
    ),
    embed_dim: derived(integer({ min: 1 }), "presets.json `defaults.embed_dim`", "Width of the shared image-text embedding space."),
    tokenizer: withDefault(
      union([oneOf(["byte", "bpe"]), object(TOKENIZER_FIELDS)], { expect: '"byte", "bpe" or a mapping {type, vocab}', typeDoc: '"byte" | "bpe" | mapping' }),
      "byte",
      "Caption tokenizer: `byte`, or `{type: bpe, vocab: PATH}`.",
    ),
  } satisfies Record<keyof ModelSpec, Field>;
}

const SYNTH_FIELDS = {
  out: required(path(), "Directory the dataset is generated into (relative to the spec file) when absent or empty; reused when its `synth.json` records the same parameters; any other folder is refused (never overwritten)."),
  train: required(integer({ min: 1 }), "Training samples."),
  val: withDefault(integer({ min: 1 }), 256, "Validation samples."),
  shards: withDefault(integer({ min: 1 }), 4, "Training shards; the validation split gets ceil(shards / 4), and `val` must fill them."),
  size: derived(integer({ min: 16 }), "`model.image.image_size`", "Image side in pixels."),
  seed: derived(integer({ min: 0, max: MAX_SEED }), "the stage `seed`", "Generator seed: the same seed gives the same dataset."),
} satisfies Record<keyof SynthSpec, Field>;

const AUGMENT_FIELDS = {
  crop_scale: withDefault(nullable(pairOf(number({ min: 0, max: 1, minExclusive: true }))), [0.9, 1.0], "Random resized crop: range of the crop's area as a fraction of the image; null: resize only."),
  crop_ratio: withDefault(pairOf(positive()), [0.75, 1.3333333], "Random resized crop: range of the crop's aspect ratio (width / height)."),
  hflip: withDefault(number({ min: 0, max: 1 }), 0, "Probability of a horizontal flip (0 for CLIP: captions say left and right)."),
} satisfies Record<keyof AugmentSpec, Field>;

const BYTES_PATTERN = /^\s*\d+(\.\d+)?\s*([KMGT]i?B?|B)?\s*$/i;

const CACHE_FIELDS = {
  dir: withDefault(nullable(path()), null, "Shard cache directory on each node (absolute, or `~/...`); null: `${XDG_CACHE_HOME:-~/.cache}/clipfleet/shards`. `CLIPFLEET_SHARD_CACHE` in the ranks' environment overrides both. The ranks of a node share it."),
  max_bytes: withDefault(
    union([integer({ min: 1 }), string({ pattern: BYTES_PATTERN, expect: 'bytes like "50GB", "64GiB" or "500M"' })], { expect: 'an integer or a string like "50GB"', typeDoc: 'integer or string ("50GB")' }),
    "64GiB",
    "Size cap of the shard cache; least recently used shards are evicted beyond it. An http(s) shard larger than a quarter of it, with a tar index from `data.index`, is read sample by sample with range requests instead.",
  ),
  fetch_retries: withDefault(integer({ min: 1, max: 100 }), 6, "Attempts per shard fetch (exponential backoff with jitter, at most 10 s apart) before the job fails naming the URL."),
} satisfies Record<keyof ShardCacheSpec, Field>;

/** data.train also takes `{stage: NAME}`: the output of a recaption stage among the stage's needs. */
const trainShards = union([string(), list(string(), { minItems: 1 }), object({ stage: required(string(), "A recaption stage among this stage's needs.") })], {
  expect: "a shard pattern, a list of them, or {stage: NAME}",
  typeDoc: "string, list of string, or {stage: NAME}",
});

const DATA_FIELDS = {
  train: derived(trainShards, "from `data.synth`", "Training shards: WebDataset tar patterns with brace ranges (`shards/{00000..00099}.tar`) or `::`-joined lists, relative to the spec file; `.tar.gz` too, and remote sources: `https://host/{00000..00099}.tar`, `pipe:aws s3 cp s3://b/{0..9}.tar -` (see docs/data.md). Required by training tasks unless `data.synth` is set. `{stage: NAME}`: the shards a `recaption` stage NAME (among `needs`) writes (docs/recaption.md)."),
  val: derived(shards, "from `data.synth`, else none", "Validation shards, as `train`; required by `eval` stages and by `eval` sections."),
  synth: withDefault(nullable(object(SYNTH_FIELDS)), null, "Generate a synthetic dataset; fills in `train` and `val` when they are not given."),
  captions: withDefault(
    mapOf(number({ min: 0, max: 1 }), { keyPattern: /^[A-Za-z0-9_.-]+$/, keyDoc: "source", minEntries: 1 }),
    { alt: 1 },
    "Caption source -> probability of being picked for a sample (per sample, reproducibly); must sum to 1. `alt` is the `.txt` AltText; other sources are keys of the sample's `.json`.",
    { examples: [{ alt: 0.5, vecap: 0.5 }] },
  ),
  empty_captions: withDefault(
    oneOf(["skip", "keep"]),
    "skip",
    "A caption that is empty or only whitespace (img2dataset writes an empty `.txt` for an image without alt text): `skip` counts it as missing (a sample with no other caption is skipped, reason `no caption`); `keep` trains on it as the caption \"\". Evaluation never uses an empty caption as a retrieval query.",
  ),
  caption_mode: withDefault(oneOf(["sample", "both"]), "sample", "`sample`: one caption per sample, drawn by `captions`; `both`: each image with both of exactly two sources, losses summed."),
  augment: withDefault(
    union([boolean(), object(AUGMENT_FIELDS)], { expect: "true, false or a mapping", typeDoc: "boolean or mapping" }),
    {},
    "Image augmentation: a mapping, `true` (the defaults) or `false` (resize only, no flip).",
  ),
  fraction: withDefault(number({ min: 0, max: 1, minExclusive: true }), 1, "Use this fraction of the training samples (a deterministic subset)."),
  shuffle: withDefault(boolean(), true, "Shuffle samples each epoch (seeded by `seed` and the epoch)."),
  audit: withDefault(boolean(), false, "Record which samples each step consumed, to audit exactly-once delivery."),
  num_samples: withDefault(
    nullable(integer({ min: 1, max: Number.MAX_SAFE_INTEGER })),
    null,
    "task command: the number of samples of the dataset the script indexes; with `train.batch_size` and `train.steps` or `train.epochs`, the orchestrator plans each step's sample indices per rank (`ctx.plan(step)`), for exact resume at any world size and `clipfleet audit`.",
  ),
  index: withDefault(
    nullable(path()),
    null,
    "A directory written by `clipfleet data index` (relative to the spec file): sample counts, sizes, sha256 digests and tar indices of the shards. Needed for `pipe:` shards and for http(s) shards without a `sizes.json` or `_stats.json` beside them.",
  ),
  cache: withDefault(object(CACHE_FIELDS), {}, "The node-local cache that remote (`http(s)://`, `pipe:`) and compressed (`.tar.gz`) shards are fetched into; see docs/data.md."),
  loader_threads: withDefault(count(), 2, "Decoding threads per rank (a pool beside the training thread); 0: the default, 2."),
  prefetch_steps: withDefault(count(), 4, "Steps of batches each rank decodes ahead; 0: the default, 4."),
} satisfies Record<keyof DataSpec, Field>;

const TRAIN_FIELDS = {
  steps: withDefault(nullable(integer({ min: 1 })), null, "Optimizer steps. Training tasks set exactly one of `steps` and `epochs`."),
  epochs: withDefault(nullable(positive()), null, "Passes over the training data (fractions allowed); the step count is derived from the dataset size."),
  batch_size: derived(
    integer({ min: 1 }),
    "required by training tasks; `eval.batch_size` for eval",
    "Global batch size, constant whatever the world size: it must be divisible by every world size from `cluster.min_workers` to `cluster.workers`.",
  ),
  micro_batch: withDefault(nullable(integer({ min: 1 })), null, "Largest batch a rank forwards at once (gradient accumulation against cached negatives); must divide the per-rank batch at every world size. null: the whole per-rank batch."),
  lr: withDefault(positive(), 5e-4, "Peak learning rate (AdamW)."),
  min_lr: withDefault(number({ min: 0 }), 0, "Learning rate at the end of the schedule; at most `lr`."),
  warmup_steps: withDefault(count(), 0, "Linear warmup steps from 0 to `lr`; at most `steps`."),
  schedule: withDefault(oneOf(["cosine", "constant", "linear"]), "cosine", "Learning rate decay after warmup, from `lr` to `min_lr`."),
  weight_decay: withDefault(number({ min: 0 }), 0.2, "AdamW weight decay (not applied to norms, biases and the temperature)."),
  betas: withDefault(list(number({ min: 0, max: 1, maxExclusive: true }), { minItems: 2, maxItems: 2, expect: "a list of 2 numbers in [0, 1)", typeDoc: "list of 2 numbers in [0, 1)" }), [0.9, 0.98], "AdamW betas."),
  eps: withDefault(positive(), 1e-6, "AdamW epsilon."),
  grad_clip: withDefault(nullable(positive()), null, "Clip the global gradient norm to this; null: no clipping."),
  precision: withDefault(oneOf(["auto", "fp32", "bf16", "fp16"]), "auto", "Autocast precision of GPU ranks (CPU ranks train in fp32); `auto` and `bf16`: bf16 where the GPU supports it, else fp32; `fp16` adds loss scaling. See docs/gpu.md."),
  on_nan: withDefault(oneOf(["skip", "fail"]), "fail", "A non-finite loss: `skip` the step, or `fail` the attempt."),
  log_every: withDefault(integer({ min: 1 }), 1, "Report metrics every this many steps."),
  threads: withDefault(nullable(integer({ min: 1 })), null, "torch intra-op threads per rank; null: one per slot the rank holds on a CPU node (a CPU slot is a core, so jobs sharing a node do not oversubscribe it), 4 on a GPU node."),
  deterministic: withDefault(boolean(), true, "Ask torch for deterministic kernels, so a restarted run ends with the same parameters. Slower on GPU: `CUBLAS_WORKSPACE_CONFIG=:4096:8` (unless set) and attention without the fused SDPA kernels (docs/gpu.md)."),
  compile: withDefault(boolean(), false, "Run the model's forward through `torch.compile` (torch >= 2.0). On torch 1.x the stage runs eager, with a `warning` event (`train.compile ignored: ...`) and the same line in each rank's log (docs/gpu.md). Checkpoints are the same either way."),
} satisfies Record<keyof TrainSpec, Field>;

const CLUSTER_FIELDS = {
  workers: required(integer({ min: 1, max: MAX_WORKERS }), "Ranks (worker processes) the job starts with."),
  min_workers: derived(integer({ min: 1, max: MAX_WORKERS }), "`cluster.workers`", "Fewest ranks the job may shrink to after failures instead of waiting for capacity."),
  backend: withDefault(oneOf(["auto", "gloo", "nccl"]), "auto", "torch.distributed backend; `auto`: nccl with GPUs, gloo without; nccl needs `gpus_per_worker` >= 1."),
  gpus_per_worker: withDefault(count(), 0, "GPUs each rank needs on its node."),
  node_selector: withDefault(
    labelMap(/^[A-Za-z0-9_./-]+$/),
    {},
    "Only place ranks on nodes whose inventory labels match all of these.",
    { examples: [{ zone: "rack-1" }] },
  ),
  spares: withDefault(integer({ min: 0, max: MAX_SPARES_PER_NODE }), 1, "Warm spare processes per node of the stage (torch imported, waiting): after a failure, ranks of the next attempt start in them instead of new processes (local and SSH nodes; docs/recovery.md). As many as ranks per node make a whole restart warm; 0: none."),
} satisfies Record<keyof ClusterSpec, Field>;

const WORKER_FIELDS = {
  python: withDefault(nullable(string()), null, "Interpreter with torch (a command, or a path relative to the spec file); null: `CLIPFLEET_PYTHON`, `--python`, or auto-detection."),
  env: withDefault(mapOf(string(), { keyPattern: /^[A-Za-z_][A-Za-z0-9_]*$/, keyDoc: "variable" }), {}, "Extra environment variables of every rank (values are strings: quote numbers).", {
    examples: [{ OMP_NUM_THREADS: "1" }],
  }),
} satisfies Record<keyof WorkerSpec, Field>;

const CHECKPOINT_FIELDS = {
  every_steps: withDefault(nullable(integer({ min: 1 })), null, "Checkpoint every this many steps; null: no step cadence."),
  every_minutes: withDefault(nullable(positive()), 30, "Checkpoint when this many minutes passed since the last one (whichever of the two cadences comes first); null: no timer."),
  every: withDefault(
    nullable(oneOf(["auto"])),
    null,
    "`auto`: the orchestrator picks the timer's interval instead of `every_minutes`: sqrt(2 x save cost x MTBF) (Young-Daly), from the slowest rank's measured save stall and the stage's failures so far (MTBF estimate (prior + seconds observed) / (1 + restarts)), never shorter than save cost / 3.5 % so checkpointing costs at most 3.5 % of run time (CheckFreq). Each attempt saves at its first safe step to measure the cost. `every_steps` still applies. null: `every_minutes`.",
  ),
  mtbf_prior_hours: withDefault(positive(), 24, "`every: auto`: the mean time between failures assumed before any failure is seen, in hours."),
  keep_last: withDefault(integer({ min: 1 }), 3, "Committed checkpoints kept, newest first; older ones are deleted."),
  keep_every_steps: withDefault(nullable(integer({ min: 1 })), null, "Also keep checkpoints whose step is a multiple of this; a multiple of `every_steps` when both are set."),
  async: withDefault(boolean(), false, "Write checkpoint files in the background while training continues."),
  dir: withDefault(nullable(path()), null, "Checkpoint root (relative to the spec file); null: `<state-dir>/checkpoints`."),
  final: withDefault(boolean(), true, "Save a checkpoint after the last step."),
} satisfies Record<keyof CheckpointSpec, Field>;

const FAILURE_FIELDS = {
  max_restarts: withDefault(count(), 3, "Restarts after failures before the job fails."),
  max_preemptions: withDefault(
    nullable(count()),
    100,
    "Preemptions (the preemption signal, e.g. Slurm's `--signal`: checkpoint at one step, restart from it; docs/preemption.md) before the job fails; they never spend `max_restarts`. null: no bound.",
  ),
  backoff_seconds: seconds("Wait before the first restart; doubles on each further restart. None after an attempt that completed a step: backoff is for crash loops.", 1),
  backoff_max_seconds: seconds("Longest wait between restarts; at least `backoff_seconds`.", 60),
  heartbeat_timeout: withDefault(positive(), 10, "Seconds without a heartbeat before a rank counts as lost."),
  hang_min_seconds: seconds("A rank hangs when its last step is older than max(this, `hang_factor` x the p99 step time).", 60),
  hang_factor: withDefault(positive(), 10, "See `hang_min_seconds`."),
  fence_seconds: seconds("How long a worker keeps running without its session before stopping itself.", 30),
  quarantine_after: withDefault(count(), 3, "Failures on one node before it is quarantined; 0: never."),
  quarantine_seconds: seconds("How long a quarantined node gets no ranks.", 600),
  grace_seconds: seconds("Time ranks get to exit after SIGTERM before SIGKILL.", 30),
  startup_timeout: withDefault(positive(), 300, "Seconds a started rank has to register."),
} satisfies Record<keyof FailureSpec, Field>;

const EVAL_FIELDS = {
  every_steps: withDefault(nullable(integer({ min: 1 })), null, "Evaluate every this many steps; null: not during training."),
  at_end: withDefault(boolean(), true, "Evaluate after the last step."),
  zero_shot: withDefault(boolean(), true, "Zero-shot classification on the validation set's class names."),
  retrieval: withDefault(boolean(), true, "Image-text retrieval (R@k in both directions) on the validation set."),
  batch_size: withDefault(integer({ min: 1 }), 256, "Evaluation batch size."),
  templates: withDefault(
    nullable(list(string({ pattern: /\{c?\}/, expect: 'a template containing "{}" or "{c}"' }), { minItems: 1 })),
    null,
    'Zero-shot prompt templates; `{}` (or CLIP_benchmark\'s `{c}`) is replaced by the class name and the class embedding is their mean. null: the dataset\'s `zeroshot_classification_templates.txt` (one a line, next to the val shards or in their parent directory), else 8 CLIP templates ("a photo of a {}.", ...).',
  ),
  recall_at: withDefault(list(integer({ min: 1 }), { minItems: 1 }), [1, 5, 10], "Retrieval R@k values reported."),
  captions: withDefault(
    nullable(list(string({ pattern: /^[A-Za-z0-9_.-]+$/, expect: "a caption source name" }), { minItems: 1 })),
    null,
    "Caption sources used as retrieval queries (`alt`, a `.json` field such as `vecap`, or `syn`); null: each image's captions other than its AltText when it has any, else the AltText. The same queries whatever the model was trained on, so variants stay comparable.",
    { examples: [["vecap"]] },
  ),
  clip: withDefault(
    nullable(string()),
    null,
    "task train-captioner: a CLIP with this stage's `model` (image and text towers, `embed_dim`, tokenizer) that checks the generated captions: image -> generated caption R@1 among the val images, reported with chance (1/N) and the R@1 of the reference captions. A stage of this pipeline (among the stage's needs), a job id, `JOB:STAGE`, or a committed checkpoint directory (a path with a `/`), as `init.checkpoint`; null: no retrieval check.",
    { examples: ["pretrain"] },
  ),
} satisfies Record<keyof EvalSpec, Field>;

const INIT_FIELDS = {
  checkpoint: required(string(), "A stage of this pipeline (among the stage's needs), a job id, `JOB:STAGE`, a checkpoint directory (a path with a `/`), or open_clip weights: an export folder (`open_clip_config.json`) or a weights file (docs/open_clip.md)."),
  import: withDefault(
    boolean(),
    false,
    "Directories only: take a checkpoint this orchestrator did not sign (another orchestrator's, or one older than signed manifests). Its files are hashed at submit and the digests kept, signed, with the job; a file changed afterwards is refused. open_clip weights are always imported (and checked key by key at submit).",
  ),
};

const DENSE_FIELDS = {
  num_classes: withDefault(nullable(integer({ min: 2 })), null, "Segmentation classes (ids 0..num_classes-1); null: read the dataset's `classes.json`."),
  ignore_index: withDefault(integer(), 255, "Label id ignored by the segmentation loss and metrics; not a class id."),
  depth_loss: withDefault(oneOf(["silog", "l1"]), "silog", "Depth loss: scale-invariant log, or L1."),
  max_depth: withDefault(positive(), 10, "Depth cap in metres (NYUv2: 10)."),
  head_width: withDefault(integer({ min: 1 }), 64, "Channels of the dense prediction head."),
} satisfies Record<keyof DenseSpec, Field>;

/** A plugin's arguments: bounded, since they travel in every assignment. */
const pluginArgs = mapOf(union([string({ maxLength: 4096 }), number(), boolean()], { expect: "a string, number or boolean", typeDoc: "string, number or boolean" }), {
  keyPattern: /^[A-Za-z_][A-Za-z0-9_]{0,63}$/,
  keyDoc: "argument name",
  maxEntries: 64,
  typeDoc: "map name -> string, number or boolean (at most 64)",
});
const entryPoint = string({ pattern: ENTRY_POINT, maxLength: 256, expect: 'an entry point "module:factory"' });

const CAPTIONER_FIELDS = {
  checkpoint: withDefault(nullable(string()), null, "The built-in captioner: a `train-captioner` stage among `needs` (its newest committed checkpoint's `model.pt`), or a path to a `model.pt` or a checkpoint directory (relative to the spec file). Exactly one of `checkpoint` and `entry_point`."),
  entry_point: withDefault(nullable(entryPoint), null, "Your own captioner: `module:factory`, importable by the worker interpreter (checked at submit); `factory(args, ctx)` returns an object with `caption(images, alttexts) -> captions` (docs/recaption.md)."),
  args: withDefault(pluginArgs, {}, "Arguments handed to the factory (with `checkpoint`, `max_tokens` and `batch_size` added for the built-in one)."),
  max_tokens: withDefault(integer({ min: 1, max: 1024 }), 32, "Longest caption, in tokens (the built-in captioner)."),
  batch_size: withDefault(integer({ min: 1, max: 4096 }), 16, "Images per `caption` call; batches follow the shard's sample order."),
} satisfies Record<keyof CaptionerSpec, Field>;

const FUSION_FIELDS = {
  entry_point: required(entryPoint, "`module:factory`; `factory(args, ctx)` returns an object with `fuse(captions, alttexts) -> captions`."),
  args: withDefault(pluginArgs, {}, "Arguments handed to the factory."),
};

const RECAPTION_FIELDS = {
  out: required(path(), "Directory of the output shards (relative to the spec file): one per input shard, with the input's file name (`.tar.gz` becomes `.tar`), plus `sizes.json` once every shard is written."),
  field: withDefault(
    string({ pattern: /^[a-z0-9_]{1,32}\.txt$/, expect: "a member name like vecap.txt" }),
    "vecap.txt",
    "Member the caption is written as; its name without `.txt` is the caption source later stages mix (`data.captions: {alt: 0.5, vecap: 0.5}`), preferred over a `.json` field of the same name.",
  ),
} satisfies Record<keyof RecaptionSpec, Field>;
const DECODER_FIELDS = {
  width: withDefault(integer({ min: 1 }), 256, "Token width of the caption decoder, divisible by `heads`."),
  depth: withDefault(integer({ min: 1 }), 4, "Decoder blocks."),
  heads: withDefault(integer({ min: 1 }), 4, "Decoder attention heads."),
  mlp_ratio: withDefault(positive(), 4, "MLP hidden width as a multiple of `width`."),
  context_length: withDefault(integer({ min: 2, max: 1024 }), 77, "Tokens per caption, start and end tokens included: longer target captions are cut, generated captions stop there."),
} satisfies Record<keyof DecoderSpec, Field>;

/** The fields of a stage; with presets, preset names are enums (for the JSON Schema). */
export function stageFields(presets: Presets | null) {
  return {
    task: required(oneOf(TASKS), "What the stage does: contrastive `pretrain`, `finetune-seg` / `finetune-depth` of the image tower, `eval` of a checkpoint, `command`: your own program on every rank (see docs/byo.md), `train-captioner`: an image-to-text model trained on the `data.captions` source (docs/veclip.md), or `recaption`: caption every sample of `data.train` into new shards (docs/recaption.md)."),
    command: withDefault(
      nullable(list(string({ maxLength: MAX_COMMAND_ARG_CHARS }), { minItems: 1, maxItems: MAX_COMMAND_ARGS, typeDoc: "list of string" })),
      null,
      "task command: the program every rank runs, as a list (no shell). A first item `python` or `python3` is the worker interpreter (`worker.python`, or the node's); each rank gets torchrun's environment.",
      { examples: [["python", "train.py", "--epochs", "3"]] },
    ),
    workdir: withDefault(nullable(string()), null, "task command: the directory the command runs in, relative to the spec file (the same path on every node); null: the spec's folder."),
    seed: withDefault(integer({ min: 0, max: MAX_SEED }), 0, "Seed of initialisation, data order, caption choice and augmentation."),
    model: withDefault(object(modelFields(presets)), {}, "The image and text towers, the embedding and the tokenizer."),
    data: withDefault(object(DATA_FIELDS), {}, "Training and validation data, captions and augmentation."),
    train: withDefault(object(TRAIN_FIELDS), {}, "Optimisation."),
    cluster: withDefault(object(CLUSTER_FIELDS), {}, "How many ranks and where."),
    worker: withDefault(object(WORKER_FIELDS), {}, "The worker processes' interpreter and environment."),
    checkpoint: withDefault(object(CHECKPOINT_FIELDS), {}, "When checkpoints are written and how many are kept."),
    failure: withDefault(object(FAILURE_FIELDS), {}, "Failure detection, restarts and node quarantine."),
    eval: withDefault(
      nullable(union([boolean(), object(EVAL_FIELDS)], { expect: "true, false or a mapping", typeDoc: "mapping or boolean" })),
      null,
      "Evaluation; absent, `false` or null: none (eval stages: the defaults); `true` or `{}`: the defaults.",
    ),
    init: withDefault(
      union([oneOf(["random"]), object(INIT_FIELDS)], { expect: '"random" or a mapping {checkpoint: REF}', typeDoc: '"random" | mapping' }),
      "random",
      "Initial weights: `random`, or `{checkpoint: REF}` to start the image and text towers from a checkpoint. Eval stages need a checkpoint.",
      { examples: ["random", { checkpoint: "pretrain" }] },
    ),
    freeze_backbone: withDefault(boolean(), false, "Fine-tune tasks only: train the dense head with the image tower frozen."),
    dense: withDefault(object(DENSE_FIELDS), {}, "Dense heads and losses of the fine-tune tasks."),
    captioner: withDefault(nullable(object(CAPTIONER_FIELDS)), null, "task recaption: the captioner, built-in (`checkpoint`) or your own (`entry_point`)."),
    fusion: withDefault(
      nullable(union([oneOf(["none", "template"]), object(FUSION_FIELDS)], { expect: '"none", "template" or a mapping {entry_point, args}', typeDoc: '"none" | "template" | mapping' })),
      null,
      "task recaption: how the caption is fused with the AltText: `none` (the caption as written; the default), `template` (the built-in rule), or `{entry_point, args}`.",
    ),
    recaption: withDefault(nullable(object(RECAPTION_FIELDS)), null, "task recaption: where the output shards go and which member holds the caption."),
    decoder: withDefault(object(DECODER_FIELDS), {}, "task train-captioner: the causal transformer decoder that writes a caption from the image tower's tokens (docs/veclip.md)."),
    labels: withDefault(
      labelMap(/^[A-Za-z0-9_.-]+$/),
      {},
      "Free-form labels of the stage; `clipfleet report` groups and compares stages by them.",
      { examples: [{ variant: "vecap", data: "10%" }] },
    ),
  } satisfies Record<Exclude<keyof StageSpec, "name" | "needs">, Field>;
}

/** The fields only the job has; `stages` holds stage items. */
export function jobFields(presets: Presets | null) {
  return {
    name: derived(string({ pattern: JOB_NAME, expect: "a name of 1 to 64 characters from A-Z a-z 0-9 . _ -" }), "the spec file name without its extension", "Job name, shown by the CLI and used in metric labels."),
    priority: withDefault(integer({ min: 0, max: 1000 }), 0, "Queue priority: when nodes are scarce, higher priority jobs are placed first."),
    stages: derived(list(object(stageItemFields(presets)), { minItems: 1, typeDoc: "non-empty list of stages" }), 'one stage, "main", made of the top-level fields', "A pipeline: stages with their own overrides and dependencies (see Pipelines)."),
  } satisfies Record<Exclude<keyof JobSpec, "base_dir" | "config_sha256">, Field>;
}

/** The fields of an entry of `stages`: its name and needs, and every stage field as an override. */
export function stageItemFields(presets: Presets | null): Record<string, Field> {
  const overrides: Record<string, Field> = {};
  for (const [key, field] of Object.entries(stageFields(presets))) {
    overrides[key] = { ...field, presence: { kind: "derived", how: "the top-level value" } };
  }
  return {
    name: required(string({ pattern: STAGE_NAME, expect: "a name of 1 to 64 characters from a-z 0-9 -" }), "Stage name, unique in the spec."),
    needs: withDefault(list(string()), [], "Stages that must succeed before this one starts."),
    ...overrides,
  };
}

/** The fields a stage is made of, shared top-level or overridden per stage (validation view). */
export const STAGE_NODE: ObjectNode = object(stageFields(null));
/** The fields only the job has. */
export const JOB_FIELDS: Readonly<Record<string, Field>> = jobFields(null);
/** Fields a stage item has besides the stage fields. */
export const STAGE_ITEM_NODE: ObjectNode = object(stageItemFields(null));
/** Schema sections reused by resolve.ts when a shorthand (`eval: true`, `augment: true`) expands to defaults. */
export const EVAL_NODE: ObjectNode = object(EVAL_FIELDS);
export const AUGMENT_NODE: ObjectNode = object(AUGMENT_FIELDS);
/** Field sets of tower mappings, for the family rules of resolve.ts. */
export const IMAGE_NODE: ObjectNode = object(imageFields(null));
export const TEXT_NODE: ObjectNode = object(textFields(null));

/** Keys allowed at the top level of a spec: the job's own and the shared stage fields. */
export const TOP_LEVEL_KEYS: readonly string[] = [...Object.keys(JOB_FIELDS), ...Object.keys(STAGE_NODE.fields)];

/**
 * Every documented field path (`train.lr`, `model.image.patch`,
 * `stages[].needs`): the docs test checks each appears in docs/spec.md.
 */
export const SPEC_FIELDS: readonly string[] = [
  ...Object.keys(JOB_FIELDS),
  "stages[].name",
  "stages[].needs",
  ...fieldPaths(STAGE_NODE).map((f) => f.path),
];
