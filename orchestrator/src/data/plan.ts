/**
 * The data plan: which samples every step consumes, as a pure function of
 * (manifest, seed, batch size, shuffle, fraction). Nothing depends on the
 * world size except how a step's batch is cut into rank slices, so any
 * world size dividing the batch sees the same global batches (elastic
 * determinism, as MosaicML Streaming with a fixed canonical order).
 *
 * - The plan covers M samples: all N, or with `fraction` f < 1 a fixed
 *   subset of floor(f*N), chosen once per seed (independent of the epoch):
 *   shuffled, the first M positions of a permutation keyed by (seed,
 *   "fraction"); unshuffled, M evenly spaced ids in increasing order.
 * - Epoch e visits those M in the order of a permutation keyed by (seed, e)
 *   (identity when unshuffled).
 * - steps_per_epoch = floor(M / B); the last M mod B positions of each epoch
 *   are dropped, so which samples drop depends only on (seed, epoch).
 * - Step t (0-based, global) is positions [(t mod spe)*B, +B) of epoch
 *   floor(t / spe); rank r of W reads positions [r*B/W, (r+1)*B/W) of it.
 */
import assert from "node:assert/strict";
import { InvalidArgumentError } from "../domain/index.js";
import { checkFraction, locateSample, type Manifest } from "./manifest.js";
import { Permutation, permutationKey } from "./permutation.js";

/** Position in the plan: the next sample of the epoch to consume (the wire's DataCursor). */
export interface DataCursor {
  readonly epoch: number;
  readonly sampleInEpoch: number;
}

/** What one rank consumes in one step (the wire's StepPlan). */
export interface StepSlice {
  readonly step: number;
  readonly epoch: number;
  /** Position in the epoch of the step's first sample (the whole batch's, not the rank's). */
  readonly sampleInEpoch: number;
  readonly shards: number[];
  readonly indices: number[];
  readonly sampleIds: number[];
}

/** Inputs of a plan; field names follow the spec (train.batch_size, data.shuffle, data.fraction). */
export interface DataPlanOptions {
  readonly manifest: Manifest;
  readonly seed: number;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly fraction: number;
}

/** The samples of every step of every epoch; O(shards) memory, O(1) per sample, O(log shards) to locate. */
export class DataPlan {
  readonly manifest: Manifest;
  readonly seed: number;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly fraction: number;
  /** M: samples each epoch draws from (the subset when fraction < 1). */
  readonly samplesPerEpoch: number;
  readonly stepsPerEpoch: number;
  /** M mod B: samples each epoch leaves out so every step has a full batch. */
  readonly droppedPerEpoch: number;
  private readonly subset: Permutation | null;
  /**
   * The permutations of the two epochs used last, newest first: ranks prefetching across an epoch
   * boundary ask for both in turn, and building one costs a sha512 (it thrashed with one kept).
   */
  private epochPerms: { epoch: number; perm: Permutation }[] = [];
  /** Epoch permutations built so far (a test's and a benchmark's probe). */
  permutationsBuilt = 0;

  constructor(opts: DataPlanOptions) {
    this.manifest = opts.manifest;
    this.seed = opts.seed;
    this.batchSize = opts.batchSize;
    this.shuffle = opts.shuffle;
    this.fraction = opts.fraction;
    const n = opts.manifest.totalSamples;
    assert.ok(Number.isSafeInteger(opts.batchSize) && opts.batchSize >= 1, "batch size must be a positive integer");
    this.samplesPerEpoch = checkFraction(n, opts.fraction);
    const m = this.samplesPerEpoch;
    if (opts.batchSize > m) {
      const of = m === n ? "" : ` (data.fraction ${opts.fraction} of ${n})`;
      throw new InvalidArgumentError(
        `train.batch_size: ${opts.batchSize} is larger than the ${m} samples of the dataset${of}`,
        "train.batch_size",
      );
    }
    this.stepsPerEpoch = Math.floor(m / opts.batchSize);
    this.droppedPerEpoch = m - this.stepsPerEpoch * opts.batchSize;
    this.subset = m < n && opts.shuffle ? new Permutation(n, permutationKey("fraction", opts.seed)) : null;
  }

  /** The cursor before step `step` runs (equivalently, after step-1 completed). */
  cursorAt(step: number): DataCursor {
    assert.ok(Number.isSafeInteger(step) && step >= 0, `step must be a non-negative integer, got ${step}`);
    return {
      epoch: Math.floor(step / this.stepsPerEpoch),
      sampleInEpoch: (step % this.stepsPerEpoch) * this.batchSize,
    };
  }

  /**
   * The step a cursor stands before. Accepts the end-of-epoch form
   * {e, spe*B} as well as {e+1, 0}; a cursor off a batch boundary means the
   * checkpoint was made with another batch size or dataset.
   */
  stepOfCursor(cursor: DataCursor): number {
    const { epoch, sampleInEpoch } = cursor;
    const end = this.stepsPerEpoch * this.batchSize;
    if (
      !Number.isSafeInteger(epoch) ||
      epoch < 0 ||
      !Number.isSafeInteger(sampleInEpoch) ||
      sampleInEpoch < 0 ||
      sampleInEpoch > end ||
      sampleInEpoch % this.batchSize !== 0
    ) {
      throw new InvalidArgumentError(
        `data cursor {epoch: ${epoch}, sample_in_epoch: ${sampleInEpoch}} is not a step boundary of this plan ` +
          `(batch ${this.batchSize}, ${end} samples per epoch); was it made with another train.batch_size or dataset?`,
      );
    }
    return epoch * this.stepsPerEpoch + sampleInEpoch / this.batchSize;
  }

  /** The global sample id at `position` of `epoch` (position < M). */
  sampleIdAt(epoch: number, position: number): number {
    const m = this.samplesPerEpoch;
    assert.ok(position >= 0 && position < m, `position ${position} is outside [0, ${m})`);
    const p = this.shuffle ? this.permutationOf(epoch).at(position) : position;
    return this.subsetId(p);
  }

  /** Inverse of sampleIdAt: the position of `id` in `epoch`, or null when `id` is outside the plan's subset. */
  positionOf(epoch: number, id: number): number | null {
    const n = this.manifest.totalSamples;
    const m = this.samplesPerEpoch;
    if (!Number.isSafeInteger(id) || id < 0 || id >= n) return null;
    let p: number;
    if (m === n) p = id;
    else if (this.subset !== null) p = this.subset.indexOf(id);
    else {
      // Unshuffled subset: id = floor(p*N/M), so p is the smallest with p*N >= id*M.
      p = Number((BigInt(id) * BigInt(m) + BigInt(n) - 1n) / BigInt(n));
      if (p >= m || this.subsetId(p) !== id) return null;
    }
    if (p >= m) return null;
    return this.shuffle ? this.permutationOf(epoch).indexOf(p) : p;
  }

  /** Global sample ids of the whole batch of `step`. */
  sampleIdsOfStep(step: number): number[] {
    const { epoch, sampleInEpoch } = this.cursorAt(step);
    const ids = new Array<number>(this.batchSize);
    for (let j = 0; j < this.batchSize; j++) ids[j] = this.sampleIdAt(epoch, sampleInEpoch + j);
    return ids;
  }

  /** What rank `rank` of `worldSize` reads in `step`; worldSize must divide the batch. */
  slice(step: number, rank: number, worldSize: number): StepSlice {
    checkWorldSize(worldSize, this.batchSize);
    assert.ok(Number.isInteger(rank) && rank >= 0 && rank < worldSize, `rank ${rank} is outside [0, ${worldSize})`);
    const { epoch, sampleInEpoch } = this.cursorAt(step);
    const per = this.batchSize / worldSize;
    const first = sampleInEpoch + rank * per;
    const shards = new Array<number>(per);
    const indices = new Array<number>(per);
    const sampleIds = new Array<number>(per);
    for (let j = 0; j < per; j++) {
      const id = this.sampleIdAt(epoch, first + j);
      const at = locateSample(this.manifest, id);
      shards[j] = at.shard;
      indices[j] = at.index;
      sampleIds[j] = id;
    }
    return { step, epoch, sampleInEpoch, shards, indices, sampleIds };
  }

  private subsetId(p: number): number {
    const n = this.manifest.totalSamples;
    const m = this.samplesPerEpoch;
    if (m === n) return p;
    if (this.subset !== null) return this.subset.at(p);
    const exact = p * n;
    return Number.isSafeInteger(exact) ? Math.floor(exact / m) : Number((BigInt(p) * BigInt(n)) / BigInt(m));
  }

  private permutationOf(epoch: number): Permutation {
    const [a, b] = this.epochPerms;
    if (a?.epoch === epoch) return a.perm;
    if (b?.epoch === epoch) {
      this.epochPerms = [b, a as { epoch: number; perm: Permutation }];
      return b.perm;
    }
    const fresh = { epoch, perm: new Permutation(this.samplesPerEpoch, permutationKey("epoch", this.seed, epoch)) };
    this.permutationsBuilt += 1;
    this.epochPerms = a ? [fresh, a] : [fresh];
    return fresh.perm;
  }
}

/** World sizes must divide the global batch (equal per-rank batches; the same global batch at any size). */
export function checkWorldSize(worldSize: number, batchSize: number): void {
  if (!Number.isInteger(worldSize) || worldSize < 1 || batchSize % worldSize !== 0) {
    throw new InvalidArgumentError(
      `cluster.workers: world size ${worldSize} does not divide train.batch_size ${batchSize}`,
      "cluster.workers",
    );
  }
}

/** The world sizes in [min, max] that divide `batchSize`, largest first (the scheduler's allowedWorldSizes). */
export function allowedWorldSizes(batchSize: number, min: number, max: number): number[] {
  const out: number[] = [];
  for (let w = max; w >= Math.max(1, min); w--) if (batchSize % w === 0) out.push(w);
  return out;
}
