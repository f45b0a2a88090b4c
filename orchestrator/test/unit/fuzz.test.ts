/**
 * Property-based fuzzing (fast-check) of what arrives from outside: shard
 * patterns (counted before expanding; a count equals the expansion), the
 * spec loader (only the typed INVALID_ARGUMENT error ever escapes, quickly,
 * whatever the input), every ControlService handler (random, malformed and
 * oversized requests get a gRPC status, never a throw), and a bound worker
 * session fed random reports (the service keeps serving, metrics still
 * scrape, stored failures stay within their limits).
 */
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { Metadata, type sendUnaryData } from "@grpc/grpc-js";
import fc from "fast-check";
import { AccessLog, localIdentity } from "../../src/auth/index.js";
import {
  ClipfleetError,
  countShardPattern,
  expandShardPattern,
  InvalidArgumentError,
  MAX_FAILURE_MESSAGE_BYTES,
  MAX_SHARDS,
  MAX_TRACEBACK_BYTES,
} from "../../src/domain/index.js";
import type { WorkerMessage } from "../../src/gen/clipfleet/v1/worker.js";
import { controlService } from "../../src/rpc/control.js";
import { workerGateway } from "../../src/rpc/worker.js";
import { loadPresets, parseSpec } from "../../src/spec/index.js";
import { jobsHarness, PRESETS, type Harness } from "../helpers/jobs-harness.js";

const presets = loadPresets(PRESETS);

/** A typed refusal of bad input. */
function isInvalid(err: unknown): boolean {
  return err instanceof ClipfleetError && err.code === "INVALID_ARGUMENT";
}

void describe("fuzz: shard patterns", () => {
  const pattern = fc.array(fc.constantFrom(..."{}.,:0123ab/-"), { maxLength: 24 }).map((a) => a.join(""));

  void it("the count equals the expansion, and a pattern past the limit is refused before expanding", () => {
    fc.assert(
      fc.property(pattern, (p) => {
        let n: number;
        try {
          n = countShardPattern(p);
        } catch (err) {
          assert.ok(isInvalid(err), String(err));
          assert.throws(() => expandShardPattern(p), InvalidArgumentError);
          return;
        }
        if (n <= 5000) assert.equal(expandShardPattern(p).length, n, p);
        else if (n > MAX_SHARDS) assert.throws(() => expandShardPattern(p), /more than the limit/);
      }),
      { numRuns: 3000 },
    );
  });

  void it("brace bombs cost nothing: 10^9 and 10^400 names are refused at once", () => {
    const t0 = performance.now();
    for (const bomb of ["/x/" + "{0..9}".repeat(9) + ".tar", "{0..9}".repeat(400), "{a,b}".repeat(30) + "{0..99999999}"]) {
      assert.throws(() => expandShardPattern(bomb), /stands for .* shards, more than the limit of 1,000,000/);
    }
    assert.ok(performance.now() - t0 < 1000);
  });
});

void describe("fuzz: the spec loader", () => {
  const base = {
    task: "pretrain",
    model: { image: "vit-tiny", text: { preset: "text-tiny" }, embed_dim: 64, tokenizer: "byte" },
    data: { train: "shards/{00000..00003}.tar" },
    train: { steps: 10, batch_size: 8 },
    cluster: { workers: 2 },
  };
  const ctx = { specPath: "/specs/f.yaml", baseDir: "/specs", presets };
  const path = fc.array(fc.constantFrom("task", "model", "image", "text", "data", "train", "val", "captions", "cluster", "workers", "steps", "batch_size", "stages", "name", "failure", "checkpoint", "labels", "0", "x"), { minLength: 1, maxLength: 4 });

  /** `obj` with `value` at `keys` (creating or replacing objects on the way). */
  function setAt(obj: unknown, keys: string[], value: unknown): unknown {
    const [k, ...rest] = keys;
    if (k === undefined) return value;
    const o = typeof obj === "object" && obj !== null && !Array.isArray(obj) ? { ...(obj as Record<string, unknown>) } : {};
    o[k] = setAt(o[k], rest, value);
    return o;
  }

  void it("any input: a frozen spec, or INVALID_ARGUMENT naming a field; never another error", () => {
    const input = fc.oneof(
      fc.anything({ maxDepth: 4 }),
      fc.tuple(path, fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.string({ maxLength: 300 }), fc.double(), fc.constant("{0..9}".repeat(9)))).map(([p, v]) => setAt(base, p, v)),
    );
    fc.assert(
      fc.property(input, (raw) => {
        try {
          const spec = parseSpec(raw, ctx);
          assert.ok(Object.isFrozen(spec));
        } catch (err) {
          assert.ok(isInvalid(err), `${String(err)} for ${JSON.stringify(raw)?.slice(0, 200)}`);
        }
      }),
      { numRuns: 1500 },
    );
  });
});

void describe("fuzz: handlers", () => {
  let h: Harness;
  beforeEach(async () => {
    h = await jobsHarness();
  });
  afterEach(async () => {
    await h.close();
  });

  const text = fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom("", "j-20260101-000000-abcdef", "n0", "main", "../../etc", "\u0000"), fc.string({ minLength: 5000, maxLength: 20000 }));
  const request = fc.record(
    {
      jobId: text,
      specJson: fc.oneof(text, fc.json({ maxDepth: 3 })),
      specPath: text,
      baseDir: text,
      states: fc.array(fc.integer({ min: -3, max: 20 }), { maxLength: 4 }),
      limit: fc.integer(),
      checkpoint: fc.boolean(),
      graceSeconds: fc.oneof(fc.double(), fc.integer()),
      name: text,
      schedulable: fc.boolean(),
      stage: text,
      maxPoints: fc.integer(),
      rank: fc.integer({ min: -5, max: 5 }),
      tail: fc.nat(),
      follow: fc.constant(false),
      fromSeq: fc.nat(),
    },
    // Every field present, as the protobuf decoder gives them (absent ones read as defaults).
  );

  void it("every ControlService method answers random requests with a response or a gRPC status", async () => {
    const security = { tls: false, plainIdentity: localIdentity(), accessLog: new AccessLog(null), now: () => h.clock.now() };
    const manifestKey = { publicKeyPem: "", fingerprint: "SHA256:test" };
    const service = controlService(h.service, { version: "0.1.0", stateDir: h.dir, metricsAddress: () => "", store: "memory", events: "in-process", manifestKey }, security);
    const methods = Object.keys(service) as (keyof typeof service)[];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...methods), request, async (method, req) => {
        const outcome = await new Promise<{ err: { code?: number; details?: string } | null }>((resolve) => {
          const stream = {
            request: req,
            getAuthContext: () => null,
            write: () => true,
            end: () => resolve({ err: null }),
            on: () => stream,
            emit: (event: string, err: { code?: number; details?: string }) => {
              if (event === "error") resolve({ err });
              return true;
            },
          };
          const handler = service[method] as unknown as (call: unknown, cb?: sendUnaryData<unknown>) => void;
          if (method === "streamLogs" || method === "watch") handler(stream);
          else handler(stream, (err) => resolve({ err: err }));
        });
        if (outcome.err) {
          assert.ok(typeof outcome.err.code === "number" && outcome.err.code > 0 && outcome.err.code <= 16, `${method}: ${JSON.stringify(outcome.err)}`);
          assert.notEqual(outcome.err.code, 13, `${method} answered INTERNAL: ${outcome.err.details ?? ""}`);
        }
      }),
      { numRuns: 400 },
    );
    assert.ok(h.service.nodes().length === 2, "the service still serves");
  });

  void it("a bound rank sending random reports: typed errors only, the attempt fails or goes on, metrics still scrape, stored failures stay bounded", async () => {
    const job = await h.submit({ failure: { max_restarts: 1000, backoff_seconds: 0, heartbeat_timeout: 10, hang_min_seconds: 30, startup_timeout: 60, grace_seconds: 5 } });
    const ranks = await h.launched(1);
    for (const r of ranks) r.connect();
    await h.stageIn(job.id, "RUNNING");
    const num = fc.oneof(fc.double(), fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, -1, 0, 1e308));
    const count = fc.oneof(fc.nat(), fc.constantFrom(0, 1, 2 ** 40));
    const body: fc.Arbitrary<NonNullable<WorkerMessage["body"]>> = fc.oneof(
      fc.record({
        $case: fc.constant("step" as const),
        value: fc.record({
          step: count,
          epoch: fc.nat(),
          sampleInEpoch: count,
          loss: num,
          lr: num,
          temperature: num,
          gradNorm: num,
          samplesPerSecond: num,
          stepSeconds: num,
          dataWaitSeconds: num,
          computeSeconds: num,
          skippedSamples: count,
          nanSkipped: fc.boolean(),
          samples: fc.array(fc.nat(), { maxLength: 4 }),
          extra: fc.dictionary(fc.string(), num, { maxKeys: 3 }),
          outOfRangeLabels: count,
          shardBytesFetched: count,
          shardCacheHits: count,
          shardCacheMisses: count,
          shardFetchSeconds: num,
          skippedByReason: fc.dictionary(fc.string(), count, { maxKeys: 3 }),
        }),
      }),
      fc.record({
        $case: fc.constant("eval" as const),
        value: fc.record({
          step: count,
          split: fc.string(),
          metrics: fc.dictionary(fc.string({ maxLength: 300 }), num, { maxKeys: 40 }),
          skippedByReason: fc.dictionary(fc.string(), count, { maxKeys: 3 }),
          warnings: fc.array(fc.string({ maxLength: 2000 }), { maxLength: 12 }),
        }),
      }),
      fc.record({
        $case: fc.constant("failure" as const),
        value: fc.record({ kind: fc.constantFrom("exception", "collective", "data", "x".repeat(500)), message: fc.string({ maxLength: 30_000 }), traceback: fc.string({ maxLength: 60_000 }), step: count, fingerprint: fc.string({ maxLength: 500 }) }),
      }),
      fc.record({
        $case: fc.constant("checkpoint" as const),
        value: fc.record({
          step: count,
          dir: fc.string(),
          files: fc.array(fc.record({ path: fc.constantFrom("../../etc/passwd", "/etc/hostname", "a.pt", ""), sha256: fc.string(), size: fc.nat() }), { maxLength: 3 }),
          saveSeconds: num,
          writeSeconds: num,
          cursor: fc.constant(undefined),
        }),
      }),
      fc.record({ $case: fc.constant("heartbeat" as const), value: fc.record({ phase: fc.integer({ min: -1, max: 20 }), gpuUtilization: num, gpuMemoryBytes: count }) }),
      fc.record({ $case: fc.constant("hello" as const), value: fc.record({ sessionId: fc.string() }) }),
    );
    fc.assert(
      fc.property(fc.array(body, { minLength: 1, maxLength: 20 }), (bodies) => {
        for (const b of bodies) {
          const r = ranks[0];
          if (!r) return;
          try {
            r.send(b);
          } catch (err) {
            assert.ok(err instanceof ClipfleetError, String(err));
          }
        }
      }),
      { numRuns: 60 },
    );
    await h.clock.advance(2000);
    await h.metrics.registry.metrics();
    const stage = h.job(job.id).stages[0];
    for (const f of stage?.failures ?? []) {
      assert.ok(Buffer.byteLength(f.message) <= MAX_FAILURE_MESSAGE_BYTES, "failure message bounded");
      assert.ok(Buffer.byteLength(f.traceback) <= MAX_TRACEBACK_BYTES, "traceback bounded");
    }
    assert.ok(Object.keys(stage?.metrics ?? {}).every((k) => k.length <= 128));
  });
});

void describe("fuzz: the worker gateway", () => {
  let h: Harness;
  beforeEach(async () => {
    h = await jobsHarness();
  });
  afterEach(async () => {
    await h.close();
  });

  const text = fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom("", "main", "j-20260101-000000-abcdef", "\u0000", "../x"), fc.string({ minLength: 5000, maxLength: 20000 }));
  const count = fc.oneof(fc.nat(), fc.integer(), fc.constantFrom(0, 2 ** 31, Number.MAX_SAFE_INTEGER));
  // What an HTTP/2 header value can hold (grpc-js refuses to send anything else).
  const header = text.map((t) => t.replace(/[^\x20-\x7e]/g, "?"));
  const authorization = fc.oneof(fc.constant(null), header, header.map((t) => `Bearer ${t}`), fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => `Bearer ${Buffer.from(b).toString("hex")}`));

  /** The status a unary handler answered with (0: a response). */
  function unary(handler: (call: unknown, cb: sendUnaryData<unknown>) => void, request: unknown, auth: string | null): Promise<number> {
    const metadata = new Metadata();
    if (auth !== null) metadata.set("authorization", auth);
    return new Promise((resolve) => handler({ request, metadata }, (err) => resolve(err ? ((err as { code?: number }).code ?? -1) : 0)));
  }

  void it("Register and GetPlan answer random requests and tokens with a typed refusal, never INTERNAL; a live job trains on", async () => {
    const job = await h.submit({ failure: { heartbeat_timeout: 1000, hang_min_seconds: 1000, startup_timeout: 1000 } });
    const ranks = await h.launched(1);
    for (const r of ranks) r.connect();
    await h.stageIn(job.id, "RUNNING");
    const gateway = workerGateway(h.service);
    const jobId = fc.oneof(text, fc.constant(job.id));
    await fc.assert(
      fc.asyncProperty(
        fc.record({ jobId, stage: fc.oneof(text, fc.constant("main")), attempt: count, rank: count, hostname: text, pid: count, runtimeVersion: text, pythonVersion: text, torchVersion: text, cudaDevices: count }),
        fc.record({ sessionId: text, fromStep: count, count, split: fc.oneof(text, fc.constant("train")) }),
        authorization,
        async (register, plan, auth) => {
          for (const code of [
            await unary(gateway.register as never, register, auth),
            await unary(gateway.getPlan as never, plan, auth),
          ]) {
            assert.ok(code >= 0 && code <= 16, `status ${code}`);
            assert.notEqual(code, 0, "nothing was granted to a forged caller");
            assert.notEqual(code, 13, "INTERNAL");
          }
        },
      ),
      { numRuns: 300 },
    );
    assert.equal(h.job(job.id).stages[0]?.state, "RUNNING", "the live job was not disturbed");
  });
});
