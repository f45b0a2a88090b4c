import { test } from "node:test";
import assert from "node:assert/strict";
import { InvalidArgumentError } from "../../src/domain/index.js";
import { allowedWorldSizes, DataPlan, locateSample, manifestOf, type Manifest } from "../../src/data/index.js";

/** Uneven shards, one empty: 7 + 0 + 30 + 12 + 1 + 50 = 100 samples. */
function smallManifest(): Manifest {
  return manifestOf([7, 0, 30, 12, 1, 50].map((samples, i) => ({ url: `/d/${i}.tar`, samples })));
}

function plan(over: Partial<ConstructorParameters<typeof DataPlan>[0]> = {}): DataPlan {
  return new DataPlan({ manifest: smallManifest(), seed: 17, batchSize: 16, shuffle: true, fraction: 1, ...over });
}

void test("any world size dividing the batch reads the same global batch: slices are disjoint and their union is it", () => {
  const p = plan();
  assert.equal(p.stepsPerEpoch, 6); // floor(100 / 16)
  for (let step = 0; step < 3 * p.stepsPerEpoch; step++) {
    const whole = p.slice(step, 0, 1);
    assert.deepEqual(whole.sampleIds, p.sampleIdsOfStep(step));
    for (const w of [1, 2, 4, 8, 16]) {
      const parts = Array.from({ length: w }, (_, r) => p.slice(step, r, w));
      const ids = parts.flatMap((s) => s.sampleIds);
      assert.deepEqual(ids, whole.sampleIds, `step ${step}, W=${w}`);
      assert.equal(new Set(ids).size, ids.length, `step ${step}, W=${w}: slices overlap`);
      for (const s of parts) {
        assert.equal(s.sampleIds.length, 16 / w);
        assert.deepEqual([s.step, s.epoch, s.sampleInEpoch], [whole.step, whole.epoch, whole.sampleInEpoch]);
        s.sampleIds.forEach((id, j) => {
          assert.deepEqual({ shard: s.shards[j], index: s.indices[j] }, locateSample(p.manifest, id));
          assert.equal((p.manifest.prefix[s.shards[j] as number] as number) + (s.indices[j] as number), id);
          assert.notEqual(s.shards[j], 1, "the empty shard is never addressed");
        });
      }
    }
  }
  assert.throws(() => p.slice(0, 0, 3), {
    message: "cluster.workers: world size 3 does not divide train.batch_size 16",
  });
  assert.deepEqual(allowedWorldSizes(16, 2, 6), [4, 2]);
});

void test("each epoch visits M distinct samples, drops the same M mod B of them whatever the world size, and reorders per epoch", () => {
  const p = plan();
  assert.equal(p.droppedPerEpoch, 4);
  const orders: number[][] = [];
  for (let e = 0; e < 3; e++) {
    const order = Array.from({ length: 100 }, (_, i) => p.sampleIdAt(e, i));
    assert.deepEqual([...order].sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => i));
    const consumed: number[] = [];
    for (let s = e * 6; s < (e + 1) * 6; s++) consumed.push(...p.sampleIdsOfStep(s));
    assert.deepEqual(consumed, order.slice(0, 96));
    orders.push(order);
    for (let i = 0; i < 100; i++) assert.equal(p.positionOf(e, order[i] as number), i);
  }
  assert.notDeepEqual(orders[0], orders[1]);
  assert.notDeepEqual(orders[1], orders[2]);
  // Same inputs, same plan; another seed, another plan.
  assert.deepEqual(plan().sampleIdsOfStep(7), p.sampleIdsOfStep(7));
  assert.notDeepEqual(plan({ seed: 18 }).sampleIdsOfStep(7), p.sampleIdsOfStep(7));
});

void test("cursor <-> step round trip, end-of-epoch cursors, and cursors off a step boundary", () => {
  const p = plan();
  for (let step = 0; step < 40; step++) {
    const c = p.cursorAt(step);
    assert.equal(p.stepOfCursor(c), step);
    assert.deepEqual(c, { epoch: Math.floor(step / 6), sampleInEpoch: (step % 6) * 16 });
  }
  // A worker may report the cursor after an epoch's last step as {e, spe*B}.
  assert.equal(p.stepOfCursor({ epoch: 1, sampleInEpoch: 96 }), 12);
  assert.equal(p.stepOfCursor({ epoch: 2, sampleInEpoch: 0 }), 12);
  assert.throws(
    () => p.stepOfCursor({ epoch: 1, sampleInEpoch: 40 }),
    (err: unknown) =>
      err instanceof InvalidArgumentError &&
      err.message ===
        "data cursor {epoch: 1, sample_in_epoch: 40} is not a step boundary of this plan (batch 16, 96 samples per epoch); " +
          "was it made with another train.batch_size or dataset?",
  );
});

void test("fraction selects a fixed subset, independent of the epoch, permuted per epoch", () => {
  const p = plan({ fraction: 0.5 });
  assert.equal(p.samplesPerEpoch, 50);
  assert.equal(p.stepsPerEpoch, 3);
  assert.equal(p.droppedPerEpoch, 2);
  const subsetOf = (q: DataPlan, e: number): number[] =>
    Array.from({ length: q.samplesPerEpoch }, (_, i) => q.sampleIdAt(e, i)).sort((a, b) => a - b);
  const subset = subsetOf(p, 0);
  assert.equal(new Set(subset).size, 50);
  for (let e = 1; e < 5; e++) assert.deepEqual(subsetOf(p, e), subset, `epoch ${e}`);
  assert.notDeepEqual(
    Array.from({ length: 50 }, (_, i) => p.sampleIdAt(0, i)),
    Array.from({ length: 50 }, (_, i) => p.sampleIdAt(1, i)),
  );
  assert.notDeepEqual(subsetOf(plan({ fraction: 0.5, seed: 99 }), 0), subset);
  // Ids outside the subset have no position.
  const outside = Array.from({ length: 100 }, (_, i) => i).filter((i) => !subset.includes(i));
  for (const id of outside) assert.equal(p.positionOf(0, id), null);
  assert.equal(plan({ fraction: 0.29 }).samplesPerEpoch, 29); // not 28 (0.29 * 100 = 28.999...)
});

void test("shuffle: false reads in id order; with a fraction, evenly spaced ids", () => {
  const p = plan({ shuffle: false });
  assert.deepEqual(p.sampleIdsOfStep(0), Array.from({ length: 16 }, (_, i) => i));
  assert.deepEqual(p.sampleIdsOfStep(6), Array.from({ length: 16 }, (_, i) => i)); // epoch 1 starts over
  const f = plan({ shuffle: false, fraction: 0.4 });
  assert.deepEqual(
    Array.from({ length: 40 }, (_, i) => f.sampleIdAt(3, i)),
    Array.from({ length: 40 }, (_, i) => Math.floor((i * 100) / 40)),
  );
  assert.equal(f.positionOf(0, 5), 2);
  assert.equal(f.positionOf(0, 6), null);
});

void test("a batch larger than the selected data is a user error", () => {
  assert.throws(() => plan({ batchSize: 128 }), {
    message: "train.batch_size: 128 is larger than the 100 samples of the dataset",
  });
  assert.throws(() => plan({ batchSize: 64, fraction: 0.5 }), {
    message: "train.batch_size: 64 is larger than the 50 samples of the dataset (data.fraction 0.5 of 100)",
  });
});

void test("a 1e10-sample manifest (1e6 shards x 1e4) plans in O(shards) memory and O(1) per position", (t) => {
  const heap0 = process.memoryUsage().heapUsed;
  const t0 = performance.now();
  const shards = new Array<{ url: string; samples: number }>(1_000_000);
  for (let i = 0; i < shards.length; i++) shards[i] = { url: `/data/train-${String(i).padStart(7, "0")}.tar`, samples: 10_000 };
  const manifest = manifestOf(shards);
  const t1 = performance.now();
  const p = new DataPlan({ manifest, seed: 3, batchSize: 65_536, shuffle: true, fraction: 1 });
  const lastOfEpoch = p.stepsPerEpoch - 1;
  const far = 1234 * p.stepsPerEpoch + 98_765;
  const t2 = performance.now();
  const slices = [lastOfEpoch, far].map((step) => p.slice(step, 255, 256));
  const t3 = performance.now();
  const heapMb = (process.memoryUsage().heapUsed - heap0) / 2 ** 20;
  t.diagnostic(
    `manifest ${(t1 - t0).toFixed(0)} ms, plan ${(t2 - t1).toFixed(1)} ms, 2 slices of 256 samples ${(t3 - t2).toFixed(1)} ms, ` +
      `heap +${heapMb.toFixed(0)} MB`,
  );

  assert.equal(manifest.totalSamples, 1e10);
  assert.equal(p.stepsPerEpoch, Math.floor(1e10 / 65_536));
  for (const s of slices) {
    assert.equal(s.sampleIds.length, 256);
    assert.equal(new Set(s.sampleIds).size, 256);
    s.sampleIds.forEach((id, j) => {
      assert.ok(id >= 0 && id < 1e10);
      assert.equal(s.shards[j], Math.floor(id / 10_000));
      assert.equal(s.indices[j], id % 10_000);
      assert.equal(p.positionOf(s.epoch, id), s.sampleInEpoch + 255 * 256 + j);
    });
  }
  assert.equal(slices[1]?.epoch, 1234);
  assert.deepEqual(p.cursorAt(far), { epoch: 1234, sampleInEpoch: 98_765 * 65_536 });
  assert.equal(p.stepOfCursor(p.cursorAt(far)), far);
});
