/**
 * The control plane's economies (issue 17): the shard list by reference
 * (manifest id, paged GetShards with bounded pages and strictly parsed page
 * tokens, fuzzed with hostile tokens and sizes), step reports as liveness
 * (no heartbeat needed while they flow), coalesced step reports, and the
 * data plan keeping two epochs' permutations. Pure modules and the job
 * machinery over fakes with a fake clock.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { Metadata, status, type sendUnaryData } from "@grpc/grpc-js";
import fc from "fast-check";
import { DataPlan, DEFAULT_SHARDS_PAGE, manifestIdOf, manifestOf, MAX_SHARDS_PAGE, MAX_SHARDS_PAGE_BYTES, shardsPage, type ShardInfo } from "../../src/data/index.js";
import { FailedPreconditionError, InvalidArgumentError, UnauthenticatedError } from "../../src/domain/index.js";
import { Assignment, type ShardsRequest, type ShardsResponse, type StepReport } from "../../src/gen/clipfleet/v1/worker.js";
import { MAX_STEP_BATCH } from "../../src/jobs/attempt.js";
import { workerGateway } from "../../src/rpc/worker.js";
import { jobsHarness, runningJob, until, type FakeRank, type Harness } from "../helpers/jobs-harness.js";

const list = (n: number, url = (i: number): string => `/data/train-${String(i).padStart(5, "0")}.tar`): ShardInfo[] =>
  Array.from({ length: n }, (_, i) => ({ url: url(i), samples: 100 + i }));

/** Every page of `shards` asked with `size`, following the tokens. */
function allPages(shards: readonly ShardInfo[], size: number): { pages: number; out: ShardInfo[] } {
  const out: ShardInfo[] = [];
  let token = "";
  let pages = 0;
  for (;;) {
    const p = shardsPage(shards, token, size);
    pages += 1;
    assert.equal(p.total, shards.length);
    out.push(...p.shards);
    if (p.nextPageToken === "") return { pages, out };
    assert.ok(p.shards.length > 0, "a page before the last is never empty");
    token = p.nextPageToken;
  }
}

void describe("shard pages (GetShards)", () => {
  void it("pages cover the list exactly once, in order, at any page size; 0 is the default size and sizes are capped", () => {
    const shards = list(10_000);
    for (const size of [1, 7, 1000, 4096]) {
      const { pages, out } = allPages(shards, size);
      assert.deepEqual(out, shards);
      assert.equal(pages, Math.ceil(10_000 / size));
    }
    assert.equal(shardsPage(shards, "", 0).shards.length, DEFAULT_SHARDS_PAGE);
    assert.equal(shardsPage(shards, "", 1_000_000).shards.length, MAX_SHARDS_PAGE);
    assert.equal(shardsPage(shards, "9999", 50).shards.length, 1);
    assert.equal(shardsPage(shards, "9999", 50).nextPageToken, "");
    assert.deepEqual(shardsPage([], "", 10), { shards: [], nextPageToken: "", total: 0 });
  });

  void it("a page stops at MAX_SHARDS_PAGE_BYTES of URLs, but always holds one shard", () => {
    const long = list(64, (i) => `/d/${String(i)}-${"x".repeat(100_000)}`);
    const first = shardsPage(long, "", 64);
    assert.ok(first.shards.length >= 1 && first.shards.length < 64);
    assert.ok(first.shards.reduce((a, s) => a + s.url.length, 0) <= MAX_SHARDS_PAGE_BYTES);
    assert.deepEqual(allPages(long, 64).out, long);
    const huge = list(2, () => "y".repeat(MAX_SHARDS_PAGE_BYTES + 10));
    assert.equal(shardsPage(huge, "", 2).shards.length, 1);
  });

  void it("hostile page tokens and sizes: a page or INVALID_ARGUMENT naming the field, nothing else, quickly (fast-check)", () => {
    const shards = list(300);
    fc.assert(
      fc.property(
        fc.oneof(fc.string(), fc.string({ unit: "binary" }), fc.nat().map(String), fc.integer().map(String), fc.constantFrom("", "0", "299", "300", "1e2", "0x10", " 1", "01", "-0", "9".repeat(400))),
        fc.oneof(fc.nat(), fc.integer(), fc.constantFrom(0, 1, 2 ** 32 - 1, Number.MAX_SAFE_INTEGER, -1, NaN, Infinity, 1.5)),
        (token, size) => {
          try {
            const p = shardsPage(shards, token, size);
            assert.ok(/^(0|[1-9][0-9]*)$/.test(token) || token === "", `accepted token ${JSON.stringify(token)}`);
            assert.ok(p.shards.length <= MAX_SHARDS_PAGE);
            assert.ok(p.nextPageToken === "" || Number(p.nextPageToken) > Number(token || "0"));
          } catch (err) {
            assert.ok(err instanceof InvalidArgumentError, `unexpected ${String(err)}`);
            assert.match(err.message, /^(page_token|page_size): /);
            assert.ok(err.message.length < 200, "the message does not echo a long token");
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  void it("the manifest id is sha256 of one canonical line per shard, train then val (the worker computes the same)", () => {
    const train = [{ url: "/d/a.tar", samples: 3 }, { url: "/d/é.tar", samples: 5 }];
    const val = [{ url: "/d/v.tar", samples: 2 }];
    const want = createHash("sha256").update("train 3 8:/d/a.tar\ntrain 5 9:/d/é.tar\nval 2 8:/d/v.tar\n").digest("hex");
    assert.equal(manifestIdOf(train, val), want);
    assert.notEqual(manifestIdOf(val, train), want);
    assert.notEqual(manifestIdOf([{ url: "/d/a.tar", samples: 4 }, train[1] as ShardInfo], val), want);
  });
});

void describe("the data plan keeps two epochs' permutations", () => {
  void it("slices alternating across an epoch boundary build each epoch's permutation once", () => {
    const plan = new DataPlan({ manifest: manifestOf(list(4)), seed: 3, batchSize: 8, shuffle: true, fraction: 1 });
    const spe = plan.stepsPerEpoch;
    const fresh = new DataPlan({ manifest: manifestOf(list(4)), seed: 3, batchSize: 8, shuffle: true, fraction: 1 });
    // Rank 0 prefetches the next epoch while rank 1 still reads the last steps of this one.
    for (let i = 0; i < 20; i++) {
      assert.deepEqual(plan.slice(spe - 1, 0, 2), fresh.slice(spe - 1, 0, 2));
      assert.deepEqual(plan.slice(spe, 1, 2), fresh.slice(spe, 1, 2));
    }
    assert.equal(plan.permutationsBuilt, 2);
    plan.slice(2 * spe, 0, 2);
    assert.equal(plan.permutationsBuilt, 3);
  });
});

void describe("the job machinery: shards by reference, reports as liveness, coalesced reports", () => {
  let h: Harness;
  beforeEach(async () => (h = await jobsHarness()));
  afterEach(() => h.close());

  const tokenOf = (r: FakeRank): string => r.proc.req.secrets.CLIPFLEET_TOKEN ?? "";

  void it("Register carries the manifest id and counts, never the list; GetShards pages it for the rank's own token only", async () => {
    const { ranks } = await runningJob(h);
    const r0 = ranks[0] as FakeRank;
    const a = r0.assignment;
    assert.ok(a);
    assert.equal(a.trainShardCount, 1);
    assert.equal(a.valShardCount, 0);
    assert.match(a.manifestId, /^[0-9a-f]{64}$/);
    assert.ok(!("trainShards" in a), "no shard list in the assignment");
    const page = h.service.shards(tokenOf(r0), { sessionId: a.sessionId, manifestId: a.manifestId, split: "train", pageToken: "", pageSize: 0 });
    assert.equal(page.total, 1);
    assert.match(page.shards[0]?.url ?? "", /shards\/00000\.tar$/);
    assert.equal(page.shards[0]?.samples, 64);
    assert.equal(page.nextPageToken, "");
    assert.deepEqual(h.service.shards(tokenOf(r0), { sessionId: a.sessionId, manifestId: a.manifestId, split: "val", pageToken: "", pageSize: 0 }).shards, []);
    assert.equal(manifestIdOf(page.shards, []), a.manifestId);
    // Another rank's token, no token, another manifest, a bad split.
    const req = { sessionId: a.sessionId, manifestId: a.manifestId, split: "train", pageToken: "", pageSize: 0 };
    assert.throws(() => h.service.shards(tokenOf(ranks[1] as FakeRank), req), UnauthenticatedError);
    assert.throws(() => h.service.shards(null, req), UnauthenticatedError);
    assert.throws(() => h.service.shards(tokenOf(r0), { ...req, manifestId: "0".repeat(64) }), FailedPreconditionError);
    assert.throws(() => h.service.shards(tokenOf(r0), { ...req, split: "test" }), InvalidArgumentError);
  });

  void it("GetShards over the transport: hostile requests get a gRPC status, never a throw (fast-check)", async () => {
    const { ranks } = await runningJob(h);
    const r0 = ranks[0] as FakeRank;
    const a = r0.assignment;
    assert.ok(a);
    const gw = workerGateway(h.service);
    const md = new Metadata();
    md.set("authorization", `Bearer ${tokenOf(r0)}`);
    const call = (request: ShardsRequest): { err: { code?: number } | null; value?: ShardsResponse | null } => {
      let got: { err: { code?: number } | null; value?: ShardsResponse | null } | null = null;
      const cb: sendUnaryData<ShardsResponse> = (err, value) => (got = { err: err, value });
      gw.getShards({ request, metadata: md } as unknown as Parameters<typeof gw.getShards>[0], cb);
      assert.ok(got, "answered synchronously");
      return got;
    };
    fc.assert(
      fc.property(
        fc.record({
          sessionId: fc.oneof(fc.constant(a.sessionId), fc.string()),
          manifestId: fc.oneof(fc.constant(a.manifestId), fc.string()),
          split: fc.constantFrom("", "train", "val", "x"),
          pageToken: fc.oneof(fc.constant(""), fc.string(), fc.nat().map(String)),
          pageSize: fc.nat({ max: 2 ** 32 - 1 }),
        }),
        (req) => {
          const { err, value } = call(req);
          if (err === null) assert.ok(value && value.shards.length <= MAX_SHARDS_PAGE);
          else assert.ok([status.INVALID_ARGUMENT, status.FAILED_PRECONDITION, status.UNAUTHENTICATED].includes(err.code ?? -1), `code ${String(err.code)}`);
        },
      ),
      { numRuns: 500 },
    );
  });

  void it("step reports alone keep a rank alive past heartbeat_timeout; silence still fails it", async () => {
    const { id, ranks } = await runningJob(h, { failure: { max_restarts: 3, backoff_seconds: 1, heartbeat_timeout: 3, hang_min_seconds: 30, startup_timeout: 60, grace_seconds: 5 } });
    for (let s = 1; s <= 12; s++) {
      for (const r of ranks) r.step(s);
      await h.clock.advance(1000);
    }
    assert.equal(h.job(id).stages[0]?.state, "RUNNING", "12 s with no heartbeat but a report every second");
    for (let t = 0; t < 5; t++) {
      ranks[0]?.step(13 + t);
      await h.clock.advance(1000);
    }
    await h.clock.advance(2000);
    await until(() => h.job(id).stages[0]?.attempts[0]?.outcome === "failed", "attempt 1 failed");
    assert.match(h.job(id).stages[0]?.attempts[0]?.reason ?? "", /rank 1 sent no heartbeat/);
  });

  void it("a coalesced message of step reports is handled as the reports one by one; an oversized one is refused", async () => {
    const { id, ranks } = await runningJob(h);
    const [r0, r1] = ranks as [FakeRank, FakeRank];
    const rep = (step: number): StepReport => ({
      step,
      epoch: 0,
      sampleInEpoch: step * 8,
      loss: 4 - step / 100,
      lr: 1e-3,
      temperature: 14,
      gradNorm: 1,
      samplesPerSecond: 100,
      stepSeconds: 0.1,
      dataWaitSeconds: 0.01,
      computeSeconds: 0.09,
      skippedSamples: step === 2 ? 1 : 0,
      nanSkipped: false,
      samples: [],
      extra: {},
      outOfRangeLabels: 0,
      skippedByReason: step === 2 ? { "no caption": 1 } : {},
      shardBytesFetched: 0,
      shardCacheHits: 0,
      shardCacheMisses: 0,
      shardFetchSeconds: 0,
    });
    r0.send({ $case: "steps", value: { reports: [rep(1), rep(2), rep(3)] } });
    r1.send({ $case: "steps", value: { reports: [rep(1), rep(2), rep(3)] } });
    const points = h.service.stepHistory(id, "main", 0).points;
    assert.deepEqual(points.map((p) => p.step), [1, 2, 3]);
    const live = h.service.get(id).stages[0];
    assert.equal(live?.progress.step, 3);
    assert.equal(live?.progress.skippedSamples, 2);
    assert.deepEqual(live?.progress.skippedByReason, { "no caption": 2 });
    assert.throws(() => r0.send({ $case: "steps", value: { reports: Array.from({ length: MAX_STEP_BATCH + 1 }, (_, i) => rep(4 + i)) } }), InvalidArgumentError);
  });
});

void describe("a gang of 16,384 ranks", () => {
  let h: Harness;
  beforeEach(async () => (h = await jobsHarness({ nodes: 128, slotsPerNode: 128 })));
  afterEach(() => h.close());

  void it("is accepted by the spec, registers and forms; every rank's assignment is small and names the same manifest", async () => {
    const workers = 16_384;
    // 256 shards of 64 samples: one sample per rank and step.
    for (let i = 1; i < 256; i++) copyFileSync(join(h.dir, "shards", "00000.tar"), join(h.dir, "shards", `${String(i).padStart(5, "0")}.tar`));
    const job = await h.submit({ cluster: { workers }, train: { steps: 3, batch_size: workers }, data: { train: "shards/{00000..00255}.tar" } });
    const ranks = await h.launched(1, workers);
    const ids = new Set<string>();
    let largest = 0;
    for (const r of ranks) {
      const a = r.connect();
      ids.add(a.manifestId);
      largest = Math.max(largest, Assignment.encode(a).finish().length);
    }
    await h.stageIn(job.id, "RUNNING");
    assert.equal(ids.size, 1);
    assert.ok(largest < 8192, `assignment of ${largest} bytes`);
    // Every rank's slice of one step: the plan serves the whole gang.
    const r = ranks[workers - 1] as FakeRank;
    const plan = h.service.plan(tokenOf(r), { sessionId: r.assignment?.sessionId ?? "", fromStep: 0, count: 1, split: "train" });
    assert.equal(plan.steps[0]?.sampleIds.length, 1);
  });

  const tokenOf = (r: FakeRank): string => r.proc.req.secrets.CLIPFLEET_TOKEN ?? "";
});
