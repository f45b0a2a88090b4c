import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, truncateSync, utimesSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { InvalidArgumentError } from "../../src/domain/index.js";
import {
  countTarSamples,
  expandShardPattern,
  locateSample,
  manifestOf,
  peekCaptionSources,
  resolveManifest,
  sampleKeyOf,
} from "../../src/data/index.js";
import { samples, tarBytes, tarHeader, tempDir } from "./data-helpers.js";

/** Asserts that `p` rejects with an InvalidArgumentError whose message is exactly `message`. */
async function rejectsWith(p: Promise<unknown>, message: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
    assert.equal(err.message, message);
    return true;
  });
}

void test("brace ranges keep zero padding; lists, nesting and :: expand in order", () => {
  assert.deepEqual(expandShardPattern("/d/train-{00000..00003}.tar"), [
    "/d/train-00000.tar",
    "/d/train-00001.tar",
    "/d/train-00002.tar",
    "/d/train-00003.tar",
  ]);
  assert.deepEqual(expandShardPattern("s{8..11}"), ["s8", "s9", "s10", "s11"]);
  assert.deepEqual(expandShardPattern("s{08..11}"), ["s08", "s09", "s10", "s11"]);
  assert.deepEqual(expandShardPattern("s{3..1}"), ["s3", "s2", "s1"]);
  assert.deepEqual(expandShardPattern("s{0..10..5}"), ["s0", "s5", "s10"]);
  assert.deepEqual(expandShardPattern("{a,b}/{0..1}.tar"), ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]);
  assert.deepEqual(expandShardPattern("x{a,b{1..2}}"), ["xa", "xb1", "xb2"]);
  assert.deepEqual(expandShardPattern("/a/{0..1}.tar::/b/c.tar"), ["/a/0.tar", "/a/1.tar", "/b/c.tar"]);
  // A group with neither a comma nor a range is literal, as in bash.
  assert.deepEqual(expandShardPattern("lit{x}.tar"), ["lit{x}.tar"]);
  assert.equal(expandShardPattern("/d/{000000..999999}.tar").length, 1_000_000);
  assert.throws(() => expandShardPattern("/d/x{0..3.tar", "data.val"), {
    message: 'data.val: unbalanced "{" in "/d/x{0..3.tar"',
  });
  assert.throws(() => expandShardPattern("/a.tar::"), { message: 'data.train: empty shard pattern in "/a.tar::"' });
});

void test("sample keys follow webdataset's base_plus_ext and metadata rules", () => {
  assert.deepEqual(sampleKeyOf("0001.syn.json"), { key: "0001", ext: "syn.json" });
  assert.deepEqual(sampleKeyOf("a.b/0001.JPG"), { key: "a.b/0001", ext: "jpg" });
  assert.equal(sampleKeyOf("README"), null);
  assert.equal(sampleKeyOf("__key__"), null);
  assert.equal(sampleKeyOf("__meta__/x.json"), null);
});

void test("sampleKeyOf agrees with the worker's split_member_name on the shared cases", () => {
  const file = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..", "tests", "fixtures", "member-names.json");
  const { cases } = JSON.parse(readFileSync(file, "utf8")) as { cases: [string, string | null, string | null][] };
  for (const [name, key, ext] of cases) assert.deepEqual(sampleKeyOf(name), key === null ? null : { key, ext }, name);
});

void test("counts from sizes.json next to the shards", async () => {
  const { dir, cleanup } = tempDir();
  try {
    // The shards are not valid tars: sizes.json must be enough.
    for (let i = 0; i < 3; i++) writeFileSync(join(dir, `train-0000${i}.tar`), "not read");
    writeFileSync(join(dir, "sizes.json"), JSON.stringify({ "train-00000.tar": 5, "train-00001.tar": 0, "train-00002.tar": 7 }));
    const m = await resolveManifest([join(dir, "train-{00000..00002}.tar")]);
    assert.deepEqual(
      m.shards.map((s) => s.samples),
      [5, 0, 7],
    );
    assert.equal(m.totalSamples, 12);
    assert.deepEqual([...m.prefix], [0, 5, 5, 12]);
    assert.deepEqual(locateSample(m, 4), { shard: 0, index: 4 });
    assert.deepEqual(locateSample(m, 5), { shard: 2, index: 0 }); // the empty shard is skipped
    assert.deepEqual(locateSample(m, 11), { shard: 2, index: 6 });

    writeFileSync(join(dir, "sizes.json"), JSON.stringify({ "train-00000.tar": -1 }));
    await rejectsWith(
      resolveManifest([join(dir, "train-00000.tar")]),
      `${join(dir, "sizes.json")}: "train-00000.tar": expected an integer >= 0, got -1`,
    );
  } finally {
    cleanup();
  }
});

void test("counts from img2dataset _stats.json (successes), else by indexing the tar", async () => {
  const { dir, cleanup } = tempDir();
  try {
    writeFileSync(join(dir, "00000.tar"), "not read");
    writeFileSync(join(dir, "00000_stats.json"), JSON.stringify({ count: 10, successes: 8, failed_to_download: 2 }));
    writeFileSync(join(dir, "00001.tar"), tarBytes(samples(3)));
    // A sizes.json that does not list a shard falls through to the next source.
    writeFileSync(join(dir, "sizes.json"), JSON.stringify({ "other.tar": 1 }));
    const m = await resolveManifest([`${dir}/{00000..00001}.tar`]);
    assert.deepEqual(
      m.shards.map((s) => [s.url, s.samples]),
      [
        [`${dir}/00000.tar`, 8],
        [`${dir}/00001.tar`, 3],
      ],
    );
    writeFileSync(join(dir, "00000_stats.json"), JSON.stringify({ count: 10 }));
    await rejectsWith(
      resolveManifest([`${dir}/00000.tar`]),
      `${join(dir, "00000_stats.json")}: successes: expected an integer >= 0, got nothing`,
    );
  } finally {
    cleanup();
  }
});

void test("indexing groups consecutive regular members by key, across long names, pax, dirs and metadata", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const longKey = `deep/${"k".repeat(120)}`;
    const paxKey = `pax/${"p".repeat(200)}`;
    const entries = [
      { name: "__index__", data: "meta" }, // webdataset metadata: skipped
      { name: "images", type: "5" as const }, // directory: not a member
      ...samples(4, "", (i) => (i === 1 ? [{ name: `${String(i).padStart(9, "0")}.syn.json`, data: "{}" }] : [])),
      { name: "big.jpg", data: Buffer.alloc(50_000, 7) }, // larger than the read window: seeked over
      { name: "big.TXT", data: "x" },
      { name: `${longKey}.jpg`, data: "a", longName: "gnu" as const },
      { name: `${longKey}.txt`, data: "b", longName: "gnu" as const },
      { name: `${paxKey}.jpg`, data: "c", longName: "pax" as const },
      { name: `${paxKey}.json`, data: "{}", longName: "pax" as const },
      { name: "noext", data: "skipped: no dot" },
      { name: "link.jpg", type: "2" as const }, // symlink: not a member
      // Keys are not re-merged: a,b,a is three samples, as webdataset reads them.
      { name: "a.jpg", data: "1" },
      { name: "b.jpg", data: "2" },
      { name: "a.txt", data: "3" },
    ];
    const path = join(dir, "shard.tar");
    writeFileSync(path, tarBytes(entries));
    // 4 samples + big + long + pax + a + b + a
    assert.equal(await countTarSamples(path), 10);

    const m = await resolveManifest([path]);
    assert.equal(m.totalSamples, 10);
  } finally {
    cleanup();
  }
});

void test("a pax size record overrides the header's size field (members over 8 GiB)", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const pax = Buffer.from("12 size=600\n", "latin1");
    const archive = Buffer.concat([
      tarHeader("PaxHeaders/big.bin", pax.length, "x"),
      pax,
      Buffer.alloc(512 - pax.length),
      tarHeader("big.bin", 0, "0"), // the real size lives only in the pax record
      Buffer.alloc(1024, 0x55), // 600 bytes of data, padded
      tarBytes([{ name: "next.txt", data: "x" }]),
    ]);
    const path = join(dir, "pax.tar");
    writeFileSync(path, archive);
    assert.equal(await countTarSamples(path), 2);
  } finally {
    cleanup();
  }
});

void test("the tar count is cached by path, size and mtime", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const path = join(dir, "c.tar");
    const three = tarBytes([
      { name: "a.x", data: "1" },
      { name: "b.x", data: "1" },
      { name: "c.x", data: "1" },
    ]);
    const two = tarBytes([
      { name: "a.x", data: "1" },
      { name: "a.y", data: "1" },
      { name: "c.x", data: "1" },
    ]);
    assert.equal(three.length, two.length);
    writeFileSync(path, three);
    utimesSync(path, 1000, 1000);
    assert.equal((await resolveManifest([path])).totalSamples, 3);
    // Same size and mtime: the cached count is used without reading the file.
    writeFileSync(path, two);
    utimesSync(path, 1000, 1000);
    assert.equal((await resolveManifest([path])).totalSamples, 3);
    utimesSync(path, 2000, 2000);
    assert.equal((await resolveManifest([path])).totalSamples, 2);
  } finally {
    cleanup();
  }
});

void test("truncated, corrupt and non-tar shards are named with what is wrong", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const full = tarBytes(samples(8));
    // Member 7's jpg header is at 7 samples * (jpg 512+ data + txt 1024) ...; find it by cutting in its data.
    const path = join(dir, "train-00003.tar");
    writeFileSync(path, full);
    // Offsets: sample i = jpg header (512) + jpg data (700+i, padded to 1024) + txt header + txt block.
    const sample = 512 + 1024 + 512 + 512;
    const jpg7Data = 7 * sample + 512;
    truncateSync(path, jpg7Data + 100);
    await rejectsWith(
      countTarSamples(path),
      `${path}: truncated tar (member 000000007.jpg ends at byte ${jpg7Data + 707}, file has ${jpg7Data + 100})`,
    );
    truncateSync(path, 7 * sample + 200);
    await rejectsWith(
      countTarSamples(path),
      `${path}: truncated tar (header at byte ${7 * sample} needs 512 bytes, file has ${7 * sample + 200})`,
    );

    const corrupt = Buffer.from(full);
    corrupt[sample + 10] = 0x41; // inside sample 1's jpg header name
    writeFileSync(path, corrupt);
    await rejectsWith(
      countTarSamples(path),
      `${path}: corrupt tar (header at byte ${sample} has a wrong checksum, after member 000000000.txt)`,
    );

    const text = join(dir, "notes.tar");
    writeFileSync(text, "hello, this is not a tar file\n".repeat(40));
    await rejectsWith(countTarSamples(text), `${text}: not a tar file (no valid tar header at byte 0)`);
    const gz = join(dir, "s.tar.gz");
    writeFileSync(gz, gzipSync(full));
    // countTarSamples reads tars; resolveManifest decompresses a .tar.gz first (data-remote.test.ts).
    await rejectsWith(countTarSamples(gz), `${gz}: not a tar file once decompressed (it holds gzip data again)`);
    assert.equal((await resolveManifest([gz])).totalSamples, 8);
    // gzip data under a plain .tar name: the message says what is wrong with the file.
    const gzTar = join(dir, "really-gzip.tar");
    writeFileSync(gzTar, gzipSync(full));
    await rejectsWith(countTarSamples(gzTar), `${gzTar}: gzip-compressed data, but the name does not end in .tar.gz or .tgz; decompress it (gzip -dc < FILE > NEW.tar)`);
    const empty = join(dir, "empty.tar");
    writeFileSync(empty, "");
    await rejectsWith(countTarSamples(empty), `${empty}: not a tar file (it is empty)`);
    // The error surfaces through resolveManifest unchanged.
    await rejectsWith(resolveManifest([text]), `${text}: not a tar file (no valid tar header at byte 0)`);

    // An archive without end blocks that stops on a member boundary is complete (as tarfile reads it).
    const noEnd = join(dir, "noend.tar");
    writeFileSync(noEnd, Buffer.concat([tarHeader("a.txt", 1, "0"), Buffer.alloc(512, 0x61)]));
    assert.equal(await countTarSamples(noEnd), 1);
  } finally {
    cleanup();
  }
});

void test("missing shards and empty datasets are user errors naming the file or pattern", async () => {
  const { dir, cleanup } = tempDir();
  try {
    writeFileSync(join(dir, "sizes.json"), JSON.stringify({ "s-0.tar": 4, "s-1.tar": 4, "s-2.tar": 0 }));
    writeFileSync(join(dir, "s-0.tar"), "");
    writeFileSync(join(dir, "s-2.tar"), "");
    await rejectsWith(
      resolveManifest([`${dir}/s-{0..2}.tar`]),
      `data.train: shard ${dir}/s-1.tar does not exist (1 of the 3 shards of "${dir}/s-{0..2}.tar" are missing)`,
    );
    await rejectsWith(
      resolveManifest([`${dir}/t-{0..2}.tar`], { field: "data.val" }),
      `data.val: no shard matches "${dir}/t-{0..2}.tar" (none of its 3 files exist in ${dir})`,
    );
    await rejectsWith(
      resolveManifest([`${dir}/t.tar`]),
      `data.train: no shard matches "${dir}/t.tar" (${dir}/t.tar does not exist)`,
    );
    await rejectsWith(
      resolveManifest([`${dir}/nope/{0..1}.tar`]),
      `data.train: no shard matches "${dir}/nope/{0..1}.tar" (directory ${dir}/nope does not exist)`,
    );
    await rejectsWith(resolveManifest([]), "data.train: no shard patterns given");
    await rejectsWith(resolveManifest([`${dir}/s-2.tar`]), "data.train: the 1 shard(s) hold no samples");
    await rejectsWith(
      resolveManifest([`${dir}/s-0.tar`], { fraction: 0.1 }),
      "data.fraction: 0.1 of 4 samples selects no sample",
    );
    await rejectsWith(resolveManifest([`${dir}/s-0.tar`], { fraction: 2 }), "data.fraction: expected a number in (0, 1], got 2");
    assert.equal((await resolveManifest([`${dir}/s-0.tar::${dir}/s-2.tar`], { fraction: 0.25 })).totalSamples, 4);
  } finally {
    cleanup();
  }
});

void test("peekCaptionSources reports a NAME.txt member (a recaption stage's output) as source NAME", async () => {
  const { dir, cleanup } = tempDir();
  try {
    writeFileSync(join(dir, "0.tar"), tarBytes(samples(2, "", (i) => [{ name: `${String(i).padStart(9, "0")}.vecap.txt`, data: "a red circle" }])));
    const m = await resolveManifest([`${dir}/0.tar`]);
    assert.deepEqual([...((await peekCaptionSources(m)) ?? [])].sort(), ["alt", "vecap"]);
  } finally {
    cleanup();
  }
});

void test("peekCaptionSources reports alt, string json keys and syn", async () => {
  const { dir, cleanup } = tempDir();
  try {
    writeFileSync(
      join(dir, "0.tar"),
      tarBytes(
        samples(3, "", (i) => {
          const key = String(i).padStart(9, "0");
          const meta = { url: "http://x", caption: "a cat", vecap: "a grey cat on a mat", width: 32, exif: null };
          return [
            { name: `${key}.json`, data: JSON.stringify(i === 0 ? meta : { caption: "c" }) },
            { name: `${key}.syn.json`, data: JSON.stringify({ syn_text: ["a", "b"] }) },
          ];
        }),
      ),
    );
    const m = await resolveManifest([`${dir}/0.tar`]);
    assert.deepEqual([...((await peekCaptionSources(m)) ?? [])].sort(), ["alt", "caption", "syn", "url", "vecap"]);

    mkdirSync(join(dir, "plain"));
    writeFileSync(join(dir, "plain", "0.tar"), tarBytes([{ name: "x.jpg", data: "" }]));
    writeFileSync(join(dir, "plain", "1.tar"), tarBytes([{ name: "0001.jpg", data: "" }, { name: "0001.txt", data: "t" }]));
    writeFileSync(join(dir, "plain", "sizes.json"), JSON.stringify({ "0.tar": 0, "1.tar": 1 }));
    const plain = await resolveManifest([`${dir}/plain/{0..1}.tar`]);
    // The first non-empty shard is read.
    assert.deepEqual([...((await peekCaptionSources(plain)) ?? [])], ["alt"]);
    assert.deepEqual([...((await peekCaptionSources(manifestOf([]))) ?? [])], []);
  } finally {
    cleanup();
  }
});

void test("peekCaptionSources reads gzipped members and list-valued json fields", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const bomb = gzipSync(Buffer.alloc(65 * 1024 * 1024));
    writeFileSync(
      join(dir, "0.tar"),
      tarBytes([
        { name: "a.jpg", data: "" },
        { name: "a.txt.gz", data: gzipSync("gzipped alt") },
        { name: "a.json.gz", data: gzipSync(JSON.stringify({ vecap: "v", coco: ["one", "two"], sizes: [1, 2], none: [] })) },
        { name: "a.syn.json.gz", data: gzipSync(JSON.stringify({ syn_text: ["s"] })) },
        { name: "b.jpg", data: "" },
        { name: "b.json.gz", data: "not gzip" },
        { name: "c.jpg", data: "" },
        { name: "c.json.gz", data: bomb },
        { name: "d.jpg", data: "" },
        { name: "d.json", data: JSON.stringify({ listed: ["x", 3] }) },
      ]),
    );
    const m = await resolveManifest([`${dir}/0.tar`]);
    // A list with a string is a source (the worker reads each string); a list of numbers is not.
    assert.deepEqual([...((await peekCaptionSources(m)) ?? [])].sort(), ["alt", "coco", "listed", "syn", "vecap"]);
  } finally {
    cleanup();
  }
});
