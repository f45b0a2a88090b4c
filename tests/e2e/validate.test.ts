/**
 * `clipfleet validate` through the real CLI: every problem of a spec at once
 * (file:line:col, exit 2, and as a list with --json), and what `run` checks
 * before starting (data, init checkpoints, placement on the inventory), which
 * --offline skips.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fixtureTlsDir, runCli, startServer, tempDir, TEST_TLS, tinyModelAndData, type ServerHandle } from "../helpers/cli.js";

/** A valid 2-rank tiny pretraining spec (its data generated once for the test run). */
function goodSpec(): string {
  return `name: checked
task: pretrain
${tinyModelAndData("{alt: 0.5, vecap: 0.5}")}train:
  steps: 20
  batch_size: 32
  lr: 1.0e-3
cluster:
  workers: 2
`;
}

/** Writes a file into dir and returns its path. */
function writer(dir: string): (name: string, text: string) => string {
  return (name, text) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };
}

void describe("clipfleet validate", () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());
  const state = join(tmp.dir, "state");
  const good = goodSpec();
  const write = writer(tmp.dir);
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

    // For a server, this machine's data and nodes are not the job's: the server must answer the dry run.
    const noServer = await runCli(["validate", "runnable-not.yaml", "--state-dir", state], { cwd: tmp.dir, env: { CLIPFLEET_SERVER: "127.0.0.1:1" } });
    assert.equal(noServer.code, 3, noServer.stderr);
    assert.match(noServer.stderr, /cannot reach the orchestrator at 127\.0\.0\.1:1/);
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

void describe("clipfleet validate --server: the server's dry run of submit (ValidateJob)", () => {
  const tmp = tempDir();
  let server: ServerHandle;
  const write = writer(tmp.dir);
  const good = goodSpec();
  before(async () => {
    // The server's fleet is CPU-only, whatever this machine has; the client passes no --inventory.
    const cpuOnly = write("server-cpu-only.yaml", "nodes:\n  - {name: cpu1, slots: 4, gpus: 0}\n");
    server = await startServer({ stateDir: join(tmp.dir, "state"), args: ["--inventory", cpuOnly] });
  });
  after(async () => {
    const r = await server.stop();
    tmp.cleanup();
    assert.equal(r.code, 0, `the server did not shut down cleanly:\n${r.stderr}`);
  });

  void it("reports what submit would refuse (data, init checkpoint, placement on the server's nodes) at file:line:col, exit 2, creating no job", async () => {
    const notCheckpoint = join(tmp.dir, "not-a-checkpoint");
    mkdirSync(notCheckpoint, { recursive: true });
    writeFileSync(join(notCheckpoint, "model.pt"), "not a checkpoint");
    const text = good.replace(/\S+\/train-/, `${join(tmp.dir, "nowhere")}/train-`).replace("  workers: 2\n", `  workers: 2\n  gpus_per_worker: 1\ninit: {checkpoint: ${notCheckpoint}}\n`);
    write("runnable-not.yaml", text);
    const r = await runCli(["validate", "runnable-not.yaml", "--server", server.address], { cwd: tmp.dir });
    assert.equal(r.code, 2, r.stderr);
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 3, r.stderr);
    assert.match(r.stderr, /^clipfleet: runnable-not\.yaml:\d+:\d+: cluster\.workers: needs 2 slots on nodes with gpus>=1, the inventory's 0 such node\(s\) have 0$/m);
    assert.match(r.stderr, /^clipfleet: runnable-not\.yaml:\d+:\d+: init\.checkpoint: .*not-a-checkpoint/m);
    assert.match(r.stderr, /^clipfleet: runnable-not\.yaml:\d+:3: data\.train: no shard matches ".*nowhere\/train-\{00000\.\.00003\}\.tar" \(directory .*nowhere does not exist\)$/m);
    // The same list, in the shape of a local `validate --json`.
    const j = await runCli(["validate", "runnable-not.yaml", "--json", "--server", server.address], { cwd: tmp.dir });
    assert.equal(j.code, 2, j.stderr);
    const parsed = JSON.parse(j.stdout) as { valid: boolean; errors: { file: string; path: string; line: number | null; col: number | null; message: string }[] };
    assert.equal(parsed.valid, false);
    assert.deepEqual(parsed.errors.map((e) => e.path).sort(), ["cluster.workers", "data.train", "init.checkpoint"]);
    assert.ok(parsed.errors.every((e) => typeof e.line === "number" && typeof e.col === "number" && e.file === "runnable-not.yaml"), j.stdout);
    // Submit refuses the same spec; neither created a job.
    const sub = await runCli(["submit", "runnable-not.yaml", "--server", server.address], { cwd: tmp.dir });
    assert.equal(sub.code, 2, sub.stderr);
    const client = server.client();
    try {
      assert.equal((await client.listJobs()).jobs.length, 0);
    } finally {
      client.close();
    }
  });

  void it("a valid spec: the server counts its data and creates nothing; a spec the server itself refuses is reported the same way", async () => {
    const spec = write("good.yaml", good);
    const r = await runCli(["validate", spec, "--server", server.address]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`good\\.yaml: valid; job "checked" with 1 stage\\(s\\) \\(data, checkpoints and nodes checked by the server ${server.address.replace(/\./g, "\\.")}\\)\n {2}main: pretrain, 2 worker\\(s\\), batch 32, 20 steps, train 1024 samples in 4 shard\\(s\\), val 128 samples in 1 shard\\(s\\)\n$`));
    // A data.synth folder the server would generate is only checked to be free: nothing is generated by a dry run.
    const synthOut = join(tmp.dir, "to-generate");
    const synth = write("synth.yaml", good.replace(/ {2}train: .*\n {2}val: .*\n/, `  synth: {out: ${synthOut}, train: 256, val: 64, shards: 2, size: 32, seed: 0}\n`));
    const s = await runCli(["validate", synth, "--server", server.address]);
    assert.equal(s.code, 0, s.stderr);
    assert.match(s.stdout, /data\.synth: run first generates 256 train samples/);
    assert.equal(existsSync(synthOut), false, "the dry run generated data");
    const client = server.client();
    try {
      assert.equal((await client.listJobs()).jobs.length, 0);
      // A client that skips local validation: the server validates the spec itself and lists every problem, with its path.
      const reply = await client.validateJob(JSON.stringify({ name: "raw", task: "pretrain", train: { lr: "fast", step: 3 } }), "raw.json", tmp.dir);
      const paths = reply.problems.map((p) => p.specPath);
      for (const path of ["train.lr", "train.step", "data.train"]) assert.ok(paths.includes(path), `${path} not in ${paths.join(", ")}`);
      assert.ok(reply.problems.every((p) => p.specPath !== "" && p.message.length > 0), JSON.stringify(reply.problems));
      await assert.rejects(client.validateJob("x".repeat(1024 * 1024 + 1), "big.json", tmp.dir), /more than the limit of 1 MiB/);
    } finally {
      client.close();
    }
  });

  void it("a viewer may not ask for the dry run (it tells what submit tells): exit 4 naming the role", { skip: !TEST_TLS && "CLIPFLEET_TEST_TLS=0: no identities" }, async () => {
    const issued = await runCli(["certs", "issue", "--dir", fixtureTlsDir(), "--name", "valerie", "--role", "viewer"]);
    assert.equal(issued.code, 0, issued.stderr);
    const r = await runCli(["validate", write("viewer.yaml", good), "--server", server.address, "--tls-dir", join(fixtureTlsDir(), "clients", "valerie")]);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /^clipfleet: permission denied: validateJob needs role operator; valerie is a viewer$/m);
  });
});
