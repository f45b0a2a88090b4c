/**
 * `clipfleet validate` through the real CLI: every problem of a spec at once
 * (file:line:col, exit 2, and as a list with --json), and what `run` checks
 * before starting (data, init checkpoints, placement on the inventory), which
 * --offline skips.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { runCli, tempDir, tinyModelAndData } from "../helpers/cli.js";

void describe("clipfleet validate", () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());
  const state = join(tmp.dir, "state");
  const good = `name: checked
task: pretrain
${tinyModelAndData("{alt: 0.5, vecap: 0.5}")}train:
  steps: 20
  batch_size: 32
  lr: 1.0e-3
cluster:
  workers: 2
`;
  const write = (name: string, text: string): string => {
    const path = join(tmp.dir, name);
    writeFileSync(path, text);
    return path;
  };
  const edit = (from: string | RegExp, to: string): string => {
    assert.match(good, typeof from === "string" ? new RegExp(from.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")) : from);
    return good.replace(from, to);
  };
  // A CPU-only fleet, whatever this machine has.
  const cpuOnly = write("cpu-only.yaml", "nodes:\n  - {name: cpu1, slots: 4, gpus: 0}\n");

  void it("reports all 7 problems of a spec at once, each with file:line:col, exit 2; --json lists them", async () => {
    const text = edit("  embed_dim: 64\n", "  embed_dim: -3\n")
      .replace("  lr: 1.0e-3\n", '  lr: "fast"\n  step: 20\n')
      .replace("  workers: 2\n", "  workers: 2\n  min_workers: 3\n  backend: nccl\n")
      .replace("data:\n", "data:\n  shufle: true\n")
      .concat("checkpoint:\n  every_steps: 0\n");
    const spec = write("seven.yaml", text);
    const r = await runCli(["validate", "seven.yaml", "--state-dir", state], { cwd: tmp.dir });
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, "");
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
    const lines = r.stderr.trim().split("\n");
    const expected = [
      /^clipfleet: seven\.yaml:\d+:3: model\.embed_dim: expected an integer >= 1, got -3$/,
      /^clipfleet: seven\.yaml:\d+:3: data\.shufle: unknown field \(did you mean "shuffle"\?\)$/,
      /^clipfleet: seven\.yaml:\d+:3: train\.step: unknown field \(did you mean "steps"\?\)$/,
      /^clipfleet: seven\.yaml:\d+:3: train\.lr: expected a positive number, got "fast"$/,
      /^clipfleet: seven\.yaml:\d+:3: checkpoint\.every_steps: expected an integer >= 1, got 0$/,
      /^clipfleet: seven\.yaml:\d+:3: cluster\.min_workers: 3 is more than cluster\.workers 2$/,
      /^clipfleet: seven\.yaml:\d+:3: cluster\.backend: nccl needs cluster\.gpus_per_worker >= 1$/,
    ];
    assert.equal(lines.length, 7, r.stderr);
    for (const pattern of expected) assert.ok(lines.some((l) => pattern.test(l)), `${String(pattern)} not in:\n${r.stderr}`);
    // The line numbers are those of the keys in the file.
    const textLines = text.split("\n");
    for (const line of lines) {
      const [, n, field] = /seven\.yaml:(\d+):\d+: ([\w.]+):/.exec(line) ?? [];
      const key = field!.split(".").pop()!;
      assert.match(textLines[Number(n) - 1] ?? "", new RegExp(`^\\s*${key}:`), line);
    }

    const j = await runCli(["validate", spec, "--json", "--state-dir", state], { cwd: tmp.dir });
    assert.equal(j.code, 2, j.stderr);
    assert.equal(j.stderr, "");
    const parsed = JSON.parse(j.stdout) as { valid: boolean; errors: { file: string; line: number; col: number; path: string; message: string }[] };
    assert.equal(parsed.valid, false);
    assert.equal(parsed.errors.length, 7);
    assert.deepEqual(parsed.errors.map((e) => e.path).sort(), ["checkpoint.every_steps", "cluster.backend", "cluster.min_workers", "data.shufle", "model.embed_dim", "train.lr", "train.step"]);
    for (const e of parsed.errors) {
      assert.equal(e.file, spec);
      assert.ok(e.line > 0 && e.col === 3, JSON.stringify(e));
      assert.ok(e.message.length > 0 && !e.message.startsWith(e.path));
    }
  });

  void it("a missing shard folder, a bad init.checkpoint and a GPU job on a CPU-only inventory: each named, exit 2; --offline passes", async () => {
    const notCheckpoint = join(tmp.dir, "not-a-checkpoint");
    mkdirSync(notCheckpoint, { recursive: true });
    writeFileSync(join(notCheckpoint, "model.pt"), "not a checkpoint");
    const text = edit(/\S+\/train-/, `${join(tmp.dir, "nowhere")}/train-`).replace("  workers: 2\n", `  workers: 2\n  gpus_per_worker: 1\ninit: {checkpoint: ${notCheckpoint}}\n`);
    write("runnable-not.yaml", text);
    const r = await runCli(["validate", "runnable-not.yaml", "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 3, r.stderr);
    assert.match(r.stderr, /^clipfleet: runnable-not\.yaml:\d+:\d+: cluster\.workers: needs 2 slots on nodes with gpus>=1, the inventory's 0 such node\(s\) have 0$/m);
    assert.match(r.stderr, /^clipfleet: runnable-not\.yaml:\d+:\d+: init\.checkpoint: .*not-a-checkpoint/m);
    assert.match(r.stderr, /^clipfleet: runnable-not\.yaml:\d+:3: data\.train: no shard matches ".*nowhere\/train-\{00000\.\.00003\}\.tar" \(directory .*nowhere does not exist\)$/m);

    // `run` refuses the same spec for the first of them, and starts nothing.
    const run = await runCli(["run", "runnable-not.yaml", "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /cluster\.workers: needs 2 slots on nodes with gpus>=1/);

    const j = await runCli(["validate", "runnable-not.yaml", "--json", "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(j.code, 2, j.stderr);
    const parsed = JSON.parse(j.stdout) as { valid: boolean; errors: { path: string; line: number | null }[] };
    assert.deepEqual(parsed.errors.map((e) => e.path).sort(), ["cluster.workers", "data.train", "init.checkpoint"]);
    assert.ok(parsed.errors.every((e) => typeof e.line === "number"), j.stdout);

    const offline = await runCli(["validate", "runnable-not.yaml", "--offline", "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(offline.code, 0, offline.stderr);
    assert.match(offline.stdout, /runnable-not\.yaml: valid; job "checked" with 1 stage\(s\) \(--offline: data, checkpoints and nodes not checked\)/);

    // For a server (never contacted), this machine's data and nodes are not the job's: the server checks them at submit.
    const forServer = await runCli(["validate", "runnable-not.yaml", "--state-dir", state], { cwd: tmp.dir, env: { CLIPFLEET_SERVER: "127.0.0.1:1" } });
    assert.equal(forServer.code, 0, forServer.stderr);
    assert.match(forServer.stdout, /valid; .*the server checks them at submit; --inventory checks them here/);
  });

  void it("a pipeline's problems name the stage's field; a valid pipeline shows each stage's length and data truthfully", async () => {
    const pipeline = (trainOfFt: string): string =>
      good.replace("task: pretrain\n", "").replace("  workers: 2\n", "  workers: 1\n") +
      `stages:
  - name: pre
    task: pretrain
  - name: ft
    task: pretrain
    needs: [pre]
    init: {checkpoint: pre}
    data: {train: "${trainOfFt}"}
  - name: zs
    task: eval
    needs: [ft]
    init: {checkpoint: ft}
`;
    const shards = /train: (\S+)\/train-/.exec(good)![1]!;
    const bad = write("pipe-bad.yaml", pipeline(`${join(tmp.dir, "gone")}/x-{0..1}.tar`));
    const r = await runCli(["validate", bad, "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(r.code, 2, r.stderr);
    // The position of `train` in the stage's own `data: {train: ...}`.
    const at = pipeline("X").split("\n").findIndex((l) => l.startsWith("    data: {train:")) + 1;
    assert.match(r.stderr.trim(), new RegExp(`^clipfleet: .*pipe-bad\\.yaml:${at}:12: stages\\[1\\]\\.data\\.train: no shard matches ".*gone/x-\\{0\\.\\.1\\}\\.tar"`));
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);

    const ok = write("pipe-ok.yaml", pipeline(`${shards}/train-{00000..00001}.tar`));
    const v = await runCli(["validate", ok, "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^ {2}pre: pretrain, 1 worker\(s\), batch 32, 20 steps, train 1024 samples in 4 shard\(s\), val 128 samples in 1 shard\(s\)$/m);
    assert.match(v.stdout, /^ {2}ft: pretrain, 1 worker\(s\), batch 32, 20 steps, train 512 samples in 2 shard\(s\), val 128 samples in 1 shard\(s\), needs pre$/m);
    assert.match(v.stdout, /^ {2}zs: eval, 1 worker\(s\), batch 32, evaluation only, val 128 samples in 1 shard\(s\), needs ft$/m);
    assert.doesNotMatch(v.stdout, /null/);

    // An epochs length with the steps it resolves to (data.fraction included); a batch larger than the data refused as run would.
    const ftData = `    data: {train: "${shards}/train-{00000..00001}.tar"}`;
    const epochs = write("pipe-epochs.yaml", pipeline(`${shards}/train-{00000..00001}.tar`).replace(ftData, `${ftData.slice(0, -1)}, fraction: 0.5}\n    train: {steps: null, epochs: 2}`));
    const e = await runCli(["validate", epochs, "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(e.code, 0, e.stderr);
    // 512 samples, half of them an epoch, in batches of 32: 8 steps an epoch, 16 in all.
    assert.match(e.stdout, /^ {2}ft: pretrain, 1 worker\(s\), batch 32, 2 epochs \(16 steps\), train 512 samples in 2 shard\(s\)/m);
    const big = write("pipe-big.yaml", pipeline(`${shards}/train-{00000..00001}.tar`).replace("    task: pretrain\n    needs: [pre]", "    task: pretrain\n    train: {batch_size: 1024}\n    needs: [pre]"));
    const b = await runCli(["validate", big, "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(b.code, 2, b.stderr);
    assert.match(b.stderr, /pipe-big\.yaml:\d+:\d+: stages\[1\]\.train\.batch_size: 1024 is larger than the 512 samples of the dataset/);
  });

  void it("a valid spec still validates, with its data counted, creating nothing in a new state dir; --json prints the frozen config", async () => {
    const spec = write("good.yaml", good);
    const fresh = join(tmp.dir, "fresh-state");
    const r = await runCli(["validate", spec, "--inventory", cpuOnly, "--state-dir", fresh], { cwd: tmp.dir });
    assert.equal(existsSync(fresh), false, "validate created the state dir");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /good\.yaml: valid; job "checked" with 1 stage\(s\)\n {2}main: pretrain, 2 worker\(s\), batch 32, 20 steps, train 1024 samples in 4 shard\(s\), val 128 samples in 1 shard\(s\)\n$/);
    const j = await runCli(["validate", spec, "--json", "--inventory", cpuOnly, "--state-dir", state], { cwd: tmp.dir });
    assert.equal(j.code, 0, j.stderr);
    const frozen = JSON.parse(j.stdout) as { name: string; stages: { name: string }[] };
    assert.equal(frozen.name, "checked");
    assert.deepEqual(frozen.stages.map((s) => s.name), ["main"]);
  });
});
