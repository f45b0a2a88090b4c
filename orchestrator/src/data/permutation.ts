/**
 * A keyed pseudo-random permutation of [0, n) evaluated one position at a
 * time, in O(1) time and memory: a Feistel network over the smallest power of
 * two >= n, with cycle walking to stay inside [0, n). Nothing is
 * materialised, so resuming a plan at any position of a 1e10-sample epoch is
 * as cheap as starting it.
 */
import { createHash } from "node:crypto";

/** 8 rounds: Luby-Rackoff needs 4 with random round functions; the margin covers tiny domains. */
const ROUNDS = 8;
/** Below 2^53 the halves stay within 27 bits, so the round arithmetic is exact in 32-bit integer ops. */
const MAX_SIZE = Number.MAX_SAFE_INTEGER;

/**
 * Round keys for a permutation named by `parts` (e.g. ["epoch", seed, 3]):
 * sha512 of a versioned, unambiguous encoding, so any change of seed, epoch
 * or purpose gives unrelated keys. Changing this function changes every plan.
 */
export function permutationKey(...parts: readonly (string | number)[]): Uint32Array {
  const digest = createHash("sha512")
    .update(JSON.stringify(["clipfleet.permutation.v1", ...parts]))
    .digest();
  const key = new Uint32Array(2 * ROUNDS);
  for (let i = 0; i < key.length; i++) key[i] = digest.readUInt32LE(4 * i);
  return key;
}

/** Wellons' lowbias32 finaliser: a strong 32-bit mixer (bias ~0.17), used as the round function core. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** A bijection of [0, size) keyed by `key` (from permutationKey). */
export class Permutation {
  readonly size: number;
  /** Per round r: widths of the input's high (a) and low (b) halves; they swap every round. */
  private readonly a = new Uint8Array(ROUNDS);
  private readonly b = new Uint8Array(ROUNDS);
  /** 2^a and 2^b per round, for the float path. */
  private readonly pa = new Float64Array(ROUNDS);
  private readonly pb = new Float64Array(ROUNDS);
  /** Domains below 2^31 run on int32 shifts and masks; larger ones on exact float arithmetic. */
  private readonly small: boolean;

  constructor(
    size: number,
    private readonly key: Uint32Array,
  ) {
    if (!Number.isSafeInteger(size) || size < 0 || size > MAX_SIZE) {
      throw new RangeError(`permutation size must be an integer in [0, 2^53), got ${size}`);
    }
    this.size = size;
    let bits = 0;
    while (2 ** bits < size) bits++;
    const lo = Math.ceil(bits / 2);
    for (let r = 0; r < ROUNDS; r++) {
      this.a[r] = r % 2 === 0 ? bits - lo : lo;
      this.b[r] = r % 2 === 0 ? lo : bits - lo;
      this.pa[r] = 2 ** (this.a[r] as number);
      this.pb[r] = 2 ** (this.b[r] as number);
    }
    this.small = bits <= 31;
  }

  /** The element at position `i`. */
  at(i: number): number {
    this.check(i);
    let x = i;
    do x = this.small ? this.forwardSmall(x) : this.forward(x);
    while (x >= this.size);
    return x;
  }

  /** The position of element `x`: at(indexOf(x)) === x. */
  indexOf(x: number): number {
    this.check(x);
    let i = x;
    do i = this.small ? this.backwardSmall(i) : this.backward(i);
    while (i >= this.size);
    return i;
  }

  private check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) {
      throw new RangeError(`permutation index ${i} is outside [0, ${this.size})`);
    }
  }

  /** F_r(half) truncated to `bits` (<= 27) bits. */
  private round(r: number, half: number, bits: number): number {
    const k = this.key;
    const f = mix32((mix32((half ^ (k[2 * r] as number)) >>> 0) + (k[2 * r + 1] as number)) >>> 0);
    return f & ((1 << bits) - 1);
  }

  // Round r maps x = (L: a bits, R: b bits) to (R: b bits, L ^ F_r(R): a bits);
  // the widths swap each round, so odd bit counts need no padding of the domain.
  private forwardSmall(x: number): number {
    for (let r = 0; r < ROUNDS; r++) {
      const a = this.a[r] as number;
      const b = this.b[r] as number;
      const right = x & ((1 << b) - 1);
      x = ((right << a) | ((x >>> b) ^ this.round(r, right, a))) >>> 0;
    }
    return x;
  }

  private backwardSmall(y: number): number {
    for (let r = ROUNDS - 1; r >= 0; r--) {
      const a = this.a[r] as number;
      const b = this.b[r] as number;
      const right = y >>> a;
      const left = (y & ((1 << a) - 1)) ^ this.round(r, right, a);
      y = ((left << b) | right) >>> 0;
    }
    return y;
  }

  private forward(x: number): number {
    for (let r = 0; r < ROUNDS; r++) {
      const pb = this.pb[r] as number;
      const right = x % pb;
      const left = (x - right) / pb;
      x = right * (this.pa[r] as number) + ((left ^ this.round(r, right, this.a[r] as number)) >>> 0);
    }
    return x;
  }

  private backward(y: number): number {
    for (let r = ROUNDS - 1; r >= 0; r--) {
      const pa = this.pa[r] as number;
      const t = y % pa;
      const right = (y - t) / pa;
      const left = (t ^ this.round(r, right, this.a[r] as number)) >>> 0;
      y = left * (this.pb[r] as number) + right;
    }
    return y;
  }
}
