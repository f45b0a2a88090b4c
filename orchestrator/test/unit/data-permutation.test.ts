import { test } from "node:test";
import assert from "node:assert/strict";
import { Permutation, permutationKey } from "../../src/data/index.js";

void test("the keyed permutation is a bijection for every n in 1..2000, and indexOf inverts it", () => {
  const key = permutationKey("test", 7);
  for (let n = 1; n <= 2000; n++) {
    const p = new Permutation(n, key);
    const hit = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const x = p.at(i);
      assert.ok(x >= 0 && x < n && Number.isInteger(x), `n=${n}: at(${i}) = ${x}`);
      assert.equal(hit[x], 0, `n=${n}: ${x} hit twice`);
      hit[x] = 1;
      assert.equal(p.indexOf(x), i);
    }
  }
});

void test("large domains up to 2^53: sampled positions round-trip and never collide", () => {
  const sizes = [65_537, 1_000_003, 2 ** 31 + 11, 2 ** 33 - 1, 1e10, 1e10 + 7, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER];
  let state = 12345;
  const rand = (n: number): number => {
    // xorshift32 scaled to [0, n): enough spread for sampling positions.
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return Math.floor(((state >>> 0) / 2 ** 32) * n);
  };
  for (const n of sizes) {
    const p = new Permutation(n, permutationKey("big", n));
    const seen = new Map<number, number>();
    const probes = [0, 1, n - 1, n - 2, ...Array.from({ length: 5000 }, () => rand(n))];
    for (const i of probes) {
      const x = p.at(i);
      assert.ok(Number.isSafeInteger(x) && x >= 0 && x < n, `n=${n}: at(${i}) = ${x}`);
      const prev = seen.get(x);
      assert.ok(prev === undefined || prev === i, `n=${n}: ${prev} and ${i} both map to ${x}`);
      seen.set(x, i);
      assert.equal(p.indexOf(x), i);
    }
  }
});

void test("same key, same order; another seed or epoch, another order", () => {
  const n = 10_000;
  const order = (...parts: (string | number)[]): number[] => {
    const p = new Permutation(n, permutationKey(...parts));
    return Array.from({ length: n }, (_, i) => p.at(i));
  };
  const base = order("epoch", 1, 0);
  assert.deepEqual(order("epoch", 1, 0), base);
  for (const other of [order("epoch", 2, 0), order("epoch", 1, 1), order("fraction", 1)]) {
    const same = other.filter((x, i) => x === base[i]).length;
    // Unrelated permutations agree on ~1 position; allow a little slack.
    assert.ok(same < 10, `${same} positions agree`);
  }
  // Not the identity, and positions are spread out (mean |p(i) - i| near n/3 for a random permutation).
  const meanShift = base.reduce((s, x, i) => s + Math.abs(x - i), 0) / n;
  assert.ok(meanShift > n / 4 && meanShift < n / 2.5, `mean displacement ${meanShift}`);
});
