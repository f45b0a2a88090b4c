/**
 * The frozen, validated job spec: what spec/ produces from a user's YAML or
 * JSON and every later stage reads. Field names are the spec's own
 * (snake_case), so the object serialises to exactly the JSON the worker
 * runtime receives (Assignment.config_json). docs/spec.md documents each field.
 */

/** What a stage does. */
export type Task = "pretrain" | "finetune-seg" | "finetune-depth" | "eval" | "command" | "train-captioner" | "recaption";
export const TASKS: readonly Task[] = [
  "pretrain",
  "finetune-seg",
  "finetune-depth",
  "eval",
  "command",
  "train-captioner",
  "recaption",
];

/** What a first item of a command stage's `command` may say to run the worker interpreter. */
export const COMMAND_PYTHON_NAMES: ReadonlySet<string> = new Set(["python", "python3"]);

/** An image tower, resolved from a preset plus overrides. */
export interface ImageTowerSpec {
  readonly preset: string | null;
  readonly family: "vit" | "mci";
  readonly image_size: number;
  // ViT
  readonly width: number;
  readonly depth: number;
  readonly heads: number;
  readonly patch: number;
  readonly mlp_ratio: number;
  // MCi (mobile hybrid): per-stage block counts and widths
  readonly layers: readonly number[];
  readonly widths: readonly number[];
}

/** A text tower, resolved from a preset plus overrides. */
export interface TextTowerSpec {
  readonly preset: string | null;
  readonly width: number;
  readonly depth: number;
  readonly heads: number;
  readonly mlp_ratio: number;
  readonly context_length: number;
  readonly causal: boolean;
}

export interface TokenizerSpec {
  readonly type: "byte" | "bpe";
  /** bpe only: a bpe_simple_vocab_16e6.txt.gz-format file (absolute after resolution). */
  readonly vocab: string | null;
}

export interface ModelSpec {
  readonly image: ImageTowerSpec;
  readonly text: TextTowerSpec;
  readonly embed_dim: number;
  readonly tokenizer: TokenizerSpec;
}

/** Generate a synthetic dataset into `out` when it is absent. */
export interface SynthSpec {
  readonly out: string;
  readonly train: number;
  readonly val: number;
  readonly shards: number;
  readonly size: number;
  readonly seed: number;
}

/**
 * How many val shards a synthetic dataset has: ceil(shards / 4). The spec's
 * default data.val names this many and the generator is told to write this
 * many (`--val-shards`), so the two cannot disagree.
 */
export function synthValShards(shards: number): number {
  return Math.ceil(shards / 4);
}

export interface AugmentSpec {
  /** random resized crop scale range; null disables the crop (resize only). */
  readonly crop_scale: readonly [number, number] | null;
  readonly crop_ratio: readonly [number, number];
  /** probability of a horizontal flip. */
  readonly hflip: number;
}

export interface DataSpec {
  /** Shard URL patterns (brace ranges, `::`-joined lists), resolved to absolute paths. */
  readonly train: readonly string[];
  readonly val: readonly string[];
  readonly synth: SynthSpec | null;
  /** caption source -> probability, summing to 1 (`alt` is the .txt AltText). */
  readonly captions: Readonly<Record<string, number>>;
  readonly caption_mode: "sample" | "both";
  /** skip: an empty caption is missing; keep: it is the caption "". */
  readonly empty_captions: "skip" | "keep";
  readonly augment: AugmentSpec;
  readonly fraction: number;
  readonly shuffle: boolean;
  readonly audit: boolean;
  readonly loader_threads: number;
  readonly prefetch_steps: number;
  /** task command: the size of the dataset the user's script indexes (the plan hands out its indices); null: no plan. */
  readonly num_samples: number | null;
  /** A `clipfleet data index` output directory (absolute): counts, sizes, digests and tar indices of the shards; null: none. */
  readonly index: string | null;
  /** The node-local shard cache of remote and compressed shards. */
  readonly cache: ShardCacheSpec;
}

/** data.cache: where each node keeps fetched shards, how much, and how hard it tries. */
export interface ShardCacheSpec {
  /** Directory on each node; null: CLIPFLEET_SHARD_CACHE, else ~/.cache/clipfleet/shards. */
  readonly dir: string | null;
  /** Cap in bytes: an integer, or a string such as "50GB" / "64GiB". */
  readonly max_bytes: number | string;
  /** Attempts per shard fetch before the job fails naming the URL. */
  readonly fetch_retries: number;
}

export interface TrainSpec {
  /** Total optimizer steps; exactly one of steps/epochs is given, the other is derived. */
  readonly steps: number | null;
  readonly epochs: number | null;
  /** Global batch: constant across world-size changes. */
  readonly batch_size: number;
  /** Largest batch one rank forwards at once; null: the whole per-rank batch. */
  readonly micro_batch: number | null;
  readonly lr: number;
  readonly min_lr: number;
  readonly warmup_steps: number;
  readonly schedule: "cosine" | "constant" | "linear";
  readonly weight_decay: number;
  readonly betas: readonly [number, number];
  readonly eps: number;
  readonly grad_clip: number | null;
  readonly precision: "auto" | "fp32" | "bf16" | "fp16";
  readonly on_nan: "skip" | "fail";
  readonly log_every: number;
  /** torch intra-op threads per rank; null: one per CPU slot the rank holds (4 on GPU nodes). */
  readonly threads: number | null;
  readonly deterministic: boolean;
  /** torch.compile the model's forward (torch >= 2.0; eager with a warning in the rank's log on older torch). */
  readonly compile: boolean;
}

export interface ClusterSpec {
  readonly workers: number;
  readonly min_workers: number;
  readonly backend: "auto" | "gloo" | "nccl";
  readonly gpus_per_worker: number;
  readonly node_selector: Readonly<Record<string, string>>;
  /** Warm spare processes per node (docs/recovery.md); 0: none. */
  readonly spares: number;
}

export interface WorkerSpec {
  /** Interpreter with torch; null: CLIPFLEET_PYTHON, --python, or auto-detection. */
  readonly python: string | null;
  readonly env: Readonly<Record<string, string>>;
}

export interface CheckpointSpec {
  readonly every_steps: number | null;
  readonly every_minutes: number | null;
  /** "auto": the timer's interval from the save cost and the failure rate (checkpoints/interval.ts); null: every_minutes. */
  readonly every: "auto" | null;
  /** every: auto — the MTBF assumed before any failure is seen. */
  readonly mtbf_prior_hours: number;
  readonly keep_last: number;
  readonly keep_every_steps: number | null;
  readonly async: boolean;
  /** Root directory; null: <state-dir>/checkpoints. */
  readonly dir: string | null;
  /** Save a checkpoint after the last step. */
  readonly final: boolean;
}

export interface FailureSpec {
  readonly max_restarts: number;
  /** Preemptions of a stage before it fails; null: no bound. They never spend max_restarts. */
  readonly max_preemptions: number | null;
  readonly backoff_seconds: number;
  readonly backoff_max_seconds: number;
  readonly heartbeat_timeout: number;
  readonly hang_min_seconds: number;
  readonly hang_factor: number;
  readonly fence_seconds: number;
  readonly quarantine_after: number;
  readonly quarantine_seconds: number;
  readonly grace_seconds: number;
  readonly startup_timeout: number;
}

export interface EvalSpec {
  readonly every_steps: number | null;
  readonly at_end: boolean;
  readonly zero_shot: boolean;
  readonly retrieval: boolean;
  readonly batch_size: number;
  /** null: the dataset's zeroshot_classification_templates.txt, else the worker's CLIP templates. */
  readonly templates: readonly string[] | null;
  /** Retrieval R@k values reported. */
  readonly recall_at: readonly number[];
  /** Caption sources used as retrieval queries; null: each image's captions other than its AltText when it has any, else the AltText. */
  readonly captions: readonly string[] | null;
  /**
   * task train-captioner: the CLIP that checks generated captions against their images, resolved as
   * `init.checkpoint` is (a stage name of this pipeline, a job id, `JOB:STAGE`, or an absolute directory); null: no check.
   */
  readonly clip: string | null;
}

/** Where a fine-tune or eval stage takes its image tower from. */
export type InitSpec =
  | { readonly kind: "random" }
  /**
   * `ref` is a stage name of this pipeline, a job id (optionally job:stage), or a checkpoint path;
   * `import`: a path whose files are hashed at submit into a manifest this orchestrator signs.
   */
  | { readonly kind: "checkpoint"; readonly ref: string; readonly import: boolean };

export interface DenseSpec {
  /** Segmentation classes (ids 0..num_classes-1); null: read from the dataset's classes.json. */
  readonly num_classes: number | null;
  readonly ignore_index: number;
  readonly depth_loss: "silog" | "l1";
  readonly max_depth: number;
  readonly head_width: number;
}

/** A plugin's arguments: a flat map of scalars, handed to its factory as a dict. */
export type PluginArgs = Readonly<Record<string, string | number | boolean>>;

/**
 * task recaption: the captioner. Exactly one of `checkpoint` (the built-in
 * captioner: a train-captioner stage of this pipeline, or a path, absolute
 * after resolution) and `entry_point` (`module:factory`, a user's own).
 */
export interface CaptionerSpec {
  readonly checkpoint: string | null;
  readonly entry_point: string | null;
  readonly args: PluginArgs;
  readonly max_tokens: number;
  readonly batch_size: number;
}

/** task recaption: fusion of the caption with the AltText (`none`, the built-in `template`, or a plugin). */
export type FusionSpec = "none" | "template" | { readonly entry_point: string; readonly args: PluginArgs };

/** task recaption: where the output shards go and which member holds the caption. */
export interface RecaptionSpec {
  /** Directory of the output shards (absolute after resolution): one per input shard, same file name. */
  readonly out: string;
  /** Member extension the caption is written as, e.g. `vecap.txt` (caption source `vecap`). */
  readonly field: string;
}

/** `module:factory`: a Python module path and a callable in it. */
export const ENTRY_POINT = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$/;

/** task train-captioner: the causal transformer decoder that writes captions from the image tower's tokens. */
export interface DecoderSpec {
  readonly width: number;
  readonly depth: number;
  readonly heads: number;
  readonly mlp_ratio: number;
  /** Tokens per caption, SOT and EOT included: longer target captions are cut, generated ones stop there. */
  readonly context_length: number;
}

/** One stage: everything needed to run one task. A spec without `stages` has one, named "main". */
export interface StageSpec {
  readonly name: string;
  readonly needs: readonly string[];
  readonly task: Task;
  /** task command: the program every rank runs (no shell); a first item `python`/`python3` is the worker interpreter. Null for built-in tasks. */
  readonly command: readonly string[] | null;
  /** task command: the directory it runs in (absolute, resolved from the spec's folder). Null for built-in tasks. */
  readonly workdir: string | null;
  readonly seed: number;
  readonly model: ModelSpec;
  readonly data: DataSpec;
  readonly train: TrainSpec;
  readonly cluster: ClusterSpec;
  readonly worker: WorkerSpec;
  readonly checkpoint: CheckpointSpec;
  readonly failure: FailureSpec;
  readonly eval: EvalSpec | null;
  readonly init: InitSpec;
  readonly freeze_backbone: boolean;
  readonly dense: DenseSpec;
  /** task recaption only (null otherwise): the captioner, the fusion, the output. */
  readonly captioner: CaptionerSpec | null;
  readonly fusion: FusionSpec | null;
  readonly recaption: RecaptionSpec | null;
  readonly decoder: DecoderSpec;
  /** Free-form labels (e.g. {variant: vecap, data: "10%"}); reports group and compare stages by them. */
  readonly labels: Readonly<Record<string, string>>;
}

/** A whole job: a name, a priority and its stages in a valid topological order. */
export interface JobSpec {
  readonly name: string;
  readonly priority: number;
  readonly stages: readonly StageSpec[];
  /** Where relative paths were resolved from (the spec file's directory). */
  readonly base_dir: string;
  /** sha256 of the canonical JSON of the stages: identifies the config a checkpoint was made with. */
  readonly config_sha256: string;
}
