/**
 * Data formats, end to end (issue 15): a hand-made shard set with empty,
 * multi-line and gzipped captions, a broken gzip member, a bad image and a
 * webdataset metadata directory trains, and the skipped samples show by
 * reason in the human summary, `status` and `--json`; a CLIP_benchmark-style
 * val set (`<dataset>/test/0.tar` with `.webp` + `.cls`, `classnames.txt`
 * and `{c}` templates in `<dataset>/`) gives zero-shot metrics, and without
 * `classnames.txt` the summary says why zero-shot was skipped.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PYTHON, ROOT, runCli, tempDir } from "../helpers/cli.js";

/** Writes DIR/train/train-00000.tar and DIR/cb/test/0.tar (+ classnames, templates) with the worker's shard writer. */
function makeData(dir: string): void {
  const script = `
import gzip, io, os, sys
import numpy as np
from PIL import Image
from clipfleet_worker.data.writer import write_shard

out = sys.argv[1]
rng = np.random.default_rng(0)

def image(fmt, colour):
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[...] = colour
    arr[8:24, 8:24] = 255 - np.array(colour, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()

COLOURS = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}
names = list(COLOURS)
train = []
for i in range(32):
    name = names[i % 3]
    members = [("jpg", image("JPEG", COLOURS[name]))]
    if i < 3:
        members.append(("txt", b""))                    # img2dataset's empty AltText
    elif i == 3:
        members.append(("txt", b"  \\n "))
    elif i < 12:
        members.append(("txt", f"a {name} square\\na photo of {name}\\n\\n{name}".encode()))
    elif i == 12:
        members.append(("txt.gz", gzip.compress(f"a gzipped {name} square".encode())))
    elif i == 13:
        members[0] = ("jpg", b"\\xff\\xd8\\xff not a jpeg")
        members.append(("txt", b"a broken image"))
    elif i == 14:
        members.append(("txt.gz", gzip.compress(b"cut short")[:-6]))
    else:
        members.append(("txt", f"a {name} square".encode()))
    train.append((f"k{i:03d}", members))
    if i == 20:
        train.append(("__meta__/notes", [("txt", b"webdataset metadata, not a sample")]))
os.makedirs(f"{out}/train")
write_shard(f"{out}/train/train-00000.tar", train)

os.makedirs(f"{out}/cb/test")
val = []
for i in range(12):
    name = names[i % 3]
    val.append((f"s{i:07d}", [("webp", image("WEBP", COLOURS[name])), ("cls", str(i % 3).encode()),
                              ("txt", f"a {name} square\\n{name}".encode())]))
write_shard(f"{out}/cb/test/0.tar", val)
with open(f"{out}/cb/classnames.txt", "w") as f:
    f.write("\\n".join(names) + "\\n")
with open(f"{out}/cb/zeroshot_classification_templates.txt", "w") as f:
    f.write("a photo of a {c}.\\na {c} square.\\n")
`;
  const r = spawnSync(PYTHON, ["-c", script, dir], {
    cwd: join(ROOT, "worker-runtime"),
    env: { ...process.env, PYTHONPATH: join(ROOT, "worker-runtime") },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
}

/** A 4-step, 1-worker pretraining spec (JSON is YAML) over DIR's shards, evaluating on the CLIP_benchmark-style set at the end. */
function spec(dir: string, name: string, data: string, emptyCaptions: "skip" | "keep"): string {
  const path = join(dir, `${name}.yaml`);
  const body = {
    name,
    task: "pretrain",
    model: { image: "vit-tiny", text: { preset: "text-tiny", context_length: 32 }, embed_dim: 32, tokenizer: "byte" },
    data: { train: `${data}/train/train-{00000..00000}.tar`, val: `${data}/cb/test/{0..0}.tar`, captions: { alt: 1 }, empty_captions: emptyCaptions },
    train: { steps: 4, batch_size: 8, lr: 1e-3, warmup_steps: 1 },
    cluster: { workers: 1 },
    checkpoint: { every_steps: null },
    eval: { at_end: true },
  };
  writeFileSync(path, JSON.stringify(body, null, 2));
  return path;
}

interface Summary {
  state: string;
  skippedSamples: number;
  skippedByReason: Record<string, number>;
  evalSkippedByReason: Record<string, number>;
  warnings: string[];
  metrics: Record<string, number>;
  jobId: string;
}

void describe("data formats", () => {
  const tmp = tempDir();
  let data: string;
  before(() => {
    data = join(tmp.dir, "data");
    makeData(data);
  });
  after(() => tmp.cleanup());

  void it("empty captions skipped by default, by reason in --json and status; CLIP_benchmark zero-shot with {c} templates", async () => {
    const state = join(tmp.dir, "s1");
    const r = await runCli(["run", spec(tmp.dir, "skip", data, "skip"), "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    // 4 steps x 8 = the 32 samples once (the __meta__/ member is not a sample, or the counts would not match).
    assert.deepEqual(s.skippedByReason, { "no caption": 4, "undecodable image": 1, "undecodable gzip member": 1 });
    assert.equal(s.skippedSamples, 6);
    assert.deepEqual(s.warnings, []);
    assert.deepEqual(s.evalSkippedByReason, {});
    assert.ok(typeof s.metrics["zeroshot/top1"] === "number", JSON.stringify(s.metrics));
    assert.ok(typeof s.metrics["retrieval/t2i_R@1"] === "number", JSON.stringify(s.metrics));
    const status = await runCli(["status", s.jobId, "--state-dir", state]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /^skipped 6 samples: no caption 4, undecodable gzip member 1, undecodable image 1$/m);
  });

  void it("empty_captions: keep trains on them; without classnames.txt the summary says why zero-shot was skipped", async () => {
    const keep = join(tmp.dir, "nonames");
    cpSync(data, keep, { recursive: true });
    rmSync(join(keep, "cb", "classnames.txt"));
    const state = join(tmp.dir, "s2");
    const r = await runCli(["run", spec(tmp.dir, "keep", keep, "keep"), "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^skipped 2 samples: undecodable gzip member 1, undecodable image 1$/m);
    assert.match(r.stdout, /^warning: zero-shot skipped: no classnames.txt or classes.json \(zero_shot\) next to .*cb\/test\/0\.tar or in its parent directory$/m);
    assert.match(r.stdout, /retrieval\/t2i_R@1=/);
    assert.doesNotMatch(r.stdout, /zeroshot\//);
    const job = /job (j-\S+)/.exec(r.stderr + r.stdout)?.[1];
    assert.ok(job, r.stderr);
    const status = await runCli(["status", job, "--json", "--state-dir", state]);
    const s = JSON.parse(status.stdout) as Summary;
    assert.deepEqual(s.skippedByReason, { "undecodable image": 1, "undecodable gzip member": 1 });
    assert.equal(s.warnings.length, 1);
    assert.match(s.warnings[0] ?? "", /^zero-shot skipped: no classnames\.txt/);
  });
});
