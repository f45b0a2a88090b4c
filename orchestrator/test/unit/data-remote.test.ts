import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { InvalidArgumentError } from "../../src/domain/index.js";
import { fetchJson, parseIndex, parseSizes, parseStats, peekCaptionSources, resolveManifest } from "../../src/data/index.js";
import { tarBytes, tempDir } from "./data-helpers.js";

/** A real HTTP server on 127.0.0.1:0 serving `files` (path -> body), logging every request path. */
async function serve(files: Record<string, string | Buffer>): Promise<{ url: string; log: string[]; server: Server }> {
  const log: string[] = [];
  const server = createServer((req, res) => {
    log.push(req.url ?? "");
    const body = files[req.url ?? ""];
    if (body === undefined) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-length": Buffer.byteLength(body) }).end(body);
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const addr = server.address();
  assert.ok(addr !== null && typeof addr === "object");
  return { url: `http://127.0.0.1:${addr.port}`, log, server };
}

async function rejectsWith(p: Promise<unknown>, message: string | RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
    if (typeof message === "string") assert.equal(err.message, message);
    else assert.match(err.message, message);
    return true;
  });
}

void test("http shards: counts from sizes.json (one request per directory), else _stats.json; never the shards", async () => {
  const { url, log, server } = await serve({
    "/a/sizes.json": JSON.stringify({ "s-0.tar": 3, "s-1.tar": 4 }),
    "/b/00000_stats.json": JSON.stringify({ successes: 7, failed: 2 }),
    "/b/00001_stats.json": JSON.stringify({ successes: 1 }),
  });
  try {
    const m = await resolveManifest([`${url}/a/s-{0..1}.tar`, `${url}/b/{00000..00001}.tar`]);
    assert.deepEqual(
      m.shards.map((s) => s.samples),
      [3, 4, 7, 1],
    );
    assert.deepEqual(log.filter((p) => p === "/a/sizes.json").length, 1);
    assert.ok(!log.some((p) => p.endsWith(".tar")), `no shard is downloaded: ${log.join(" ")}`);
    // Submit never downloads a remote shard to peek at captions: unknown (null).
    assert.equal(await peekCaptionSources(m), null);
  } finally {
    server.close();
  }
});

void test("signed http shard URLs: sidecars are looked up without the query, under the file's name", async () => {
  const { url, log, server } = await serve({
    "/a/sizes.json": JSON.stringify({ "s-0.tar": 3 }),
    "/b/00000_stats.json": JSON.stringify({ successes: 7 }),
  });
  try {
    const m = await resolveManifest([`${url}/a/s-0.tar?X-Amz-Signature=ab%2Fcd&X-Amz-Expires=60`, `${url}/b/00000.tar?sig=1/2`]);
    assert.deepEqual(
      m.shards.map((s) => s.samples),
      [3, 7],
    );
    assert.deepEqual(log.sort(), ["/a/sizes.json", "/b/00000_stats.json", "/b/sizes.json"]);
  } finally {
    server.close();
  }
});

void test("remote shards without counts: one-line error naming the field and the data index command", async () => {
  const { url, server } = await serve({});
  try {
    await rejectsWith(
      resolveManifest([`${url}/x/{0..1}.tar`], { field: "data.val" }),
      `data.val: "${url}/x/0.tar": sample count unknown (no sizes.json or _stats.json beside it); run clipfleet data index "${url}/x/{0..1}.tar" --out DIR and set data.index: DIR`,
    );
    await rejectsWith(
      resolveManifest(["pipe:cat /d/{0..1}.tar"]),
      'data.train: "pipe:cat /d/0.tar": sample count unknown (a pipe: shard has no sizes.json beside it); run clipfleet data index "pipe:cat /d/{0..1}.tar" --out DIR and set data.index: DIR',
    );
  } finally {
    server.close();
  }
});

void test("data.index gives counts for pipe:, http and local shards; a shard it lacks is named", async () => {
  const { dir, cleanup } = tempDir();
  try {
  const idx = join(dir, "idx");
  mkdirSync(idx);
  writeFileSync(join(dir, "l.tar"), tarBytes([{ name: "k.jpg", data: "x" }]));
  const sha = "ab".repeat(32);
  writeFileSync(
    join(idx, "index.json"),
    JSON.stringify({
      version: 1,
      shards: {
        "pipe:cat /d/0.tar": { samples: 5, bytes: 10, sha256: sha, index: "a.idx.json" },
        "pipe:cat /d/1.tar": { samples: 6, bytes: 10, sha256: sha, index: "b.idx.json" },
        [join(dir, "l.tar")]: { samples: 9, bytes: 1024, sha256: sha, index: "c.idx.json" },
      },
    }),
  );
  const m = await resolveManifest(["pipe:cat /d/{0..1}.tar", `file://${dir}/l.tar`], { index: idx });
  assert.deepEqual(
    m.shards.map((s) => s.samples),
    [5, 6, 9],
  );
  await rejectsWith(resolveManifest(["pipe:cat /d/{0..2}.tar"], { index: idx }), /^data\.train: "pipe:cat \/d\/2\.tar": sample count unknown \(a pipe: shard has no sizes\.json beside it; data\.index does not list it\); run clipfleet data index/);
  await rejectsWith(resolveManifest(["pipe:x"], { index: join(dir, "nope") }), `data.index: ${join(dir, "nope", "index.json")} does not exist (write it with clipfleet data index)`);
  writeFileSync(join(idx, "index.json"), JSON.stringify({ version: 1, shards: { x: { samples: -1, bytes: 1 } } }));
  await rejectsWith(resolveManifest(["pipe:x"], { index: idx }), `data.index: ${join(idx, "index.json")}: shard "x": expected integer samples and bytes >= 0 and a sha256 hex digest`);
  } finally {
    cleanup();
  }
});

void test("local .tar.gz: counted through zlib, captions peeked", async () => {
  const { dir, cleanup } = tempDir();
  try {
  writeFileSync(
    join(dir, "s.tar.gz"),
    gzipSync(
      tarBytes([
        { name: "a.jpg", data: "1" },
        { name: "a.txt", data: "cap" },
        { name: "b.jpg", data: "2" },
      ]),
    ),
  );
  const m = await resolveManifest([`${dir}/s.tar.gz`]);
  assert.equal(m.totalSamples, 2);
  assert.deepEqual([...((await peekCaptionSources(m)) ?? [])], ["alt"]);
  writeFileSync(join(dir, "bad.tar.gz"), gzipSync(tarBytes([{ name: "a.jpg", data: "1" }])).subarray(0, 20));
  await rejectsWith(resolveManifest([`${dir}/bad.tar.gz`]), /^.*bad\.tar\.gz: not a gzip-compressed tar \(/);
  } finally {
    cleanup();
  }
});

void test("sidecars are hostile: capped size, HTTP errors and bad JSON are one-line errors", async () => {
  const { url, server } = await serve({ "/big.json": "[" + "1,".repeat(200) + "1]", "/bad.json": "{", "/sizes/sizes.json": JSON.stringify({ "0.tar": "many" }) });
  try {
    await rejectsWith(fetchJson(`${url}/big.json`, 100), `${url}/big.json: larger than 100 bytes`);
    await rejectsWith(fetchJson(`${url}/bad.json`), /^http:\/\/127\.0\.0\.1:\d+\/bad\.json: invalid JSON \(/);
    assert.equal(await fetchJson(`${url}/none.json`), undefined);
    await rejectsWith(resolveManifest([`${url}/sizes/0.tar`]), `${url}/sizes/sizes.json: "0.tar": expected an integer >= 0, got "many"`);
  } finally {
    server.close();
  }
});

void test("fuzz: the sidecar and index parsers accept what is valid and refuse the rest with InvalidArgumentError only", () => {
  const count = fc.nat({ max: 2 ** 40 });
  const anyJson = fc.jsonValue({ maxDepth: 3 });
  fc.assert(
    fc.property(fc.dictionary(fc.string(), count), (d) => {
      assert.deepEqual([...parseSizes(d, "w")], Object.entries(d));
    }),
  );
  fc.assert(
    fc.property(fc.dictionary(fc.string(), fc.record({ samples: count, bytes: count, sha256: fc.option(fc.stringMatching(/^[0-9a-f]{64}$/)), index: fc.string() })), (shards) => {
      const m = parseIndex({ version: 1, shards }, "w");
      assert.equal(m.size, Object.keys(shards).length);
    }),
  );
  for (const parse of [parseSizes, parseIndex, parseStats] as ((d: unknown, w: string) => unknown)[]) {
    fc.assert(
      fc.property(anyJson, (d) => {
        try {
          parse(d, "w");
        } catch (err) {
          assert.ok(err instanceof InvalidArgumentError, String(err));
          assert.ok(!err.message.includes("\n") && err.message.length < 600, err.message);
        }
      }),
    );
  }
});
