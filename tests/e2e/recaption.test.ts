/**
 * task recaption (issue 19), with real worker processes and real faults:
 * kill -9 of a rank mid-shard and of the orchestrator, a committed output
 * truncated before its commit, a plugin that raises, an entry point that does
 * not import, and a pretrain stage training on a recaption stage's output.
 * The reference is the same spec run without a fault: every output shard
 * must be byte-identical, and the audit must show each input shard committed
 * exactly once. The captioner is a real deterministic plugin
 * (tests/fixtures/plugins/recap_fixture.py) until the built-in one is merged.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { alive, ROOT, runCli, tempDir, tinyDataset, waitFor } from "../helpers/cli.js";
import { currentAttempt, startRun, status, waitForStatus, type JobView, type Summary } from "../helpers/jobs.js";

const ENV = { PYTHONPATH: join(ROOT, "tests", "fixtures", "plugins") };

interface RecapAudit {
  stages: { stage: string; recaption?: { inputs: number; committed: number; duplicates: number; missing: number; shards: { shard: number; output: string; sha256: string; bytes: number; attempt: number; rank: number }[] } }[];
}

/** A 2-rank recaption spec over the tiny dataset (4 shards of 256 samples, 8 batches of 32 each). */
function recapSpec(dir: string, name: string, o: { fault?: string; captioner?: string; fusion?: string; grace?: number; extra?: string } = {}): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(
    path,
    `name: ${name}
task: recaption
data:
  train: ${tinyDataset()}/train-{00000..00003}.tar
captioner:
  entry_point: "${o.captioner ?? "recap_fixture:make"}"
  args: {prefix: "a picture"}
  batch_size: 32
fusion: ${o.fusion ?? '{entry_point: "recap_fixture:make_fuser", args: {keep: 3}}'}
recaption: {out: ${name}-out}
cluster: {workers: 2}
failure: {backoff_seconds: 0.2, heartbeat_timeout: 5${o.grace ? `, grace_seconds: ${o.grace}` : ""}}
${o.fault ? `worker:\n  env:\n    CLIPFLEET_FAULT: "${o.fault}"\n` : ""}${o.extra ?? ""}`,
  );
  return path;
}

function digests(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir).sort()) out[f] = f.endsWith(".tar") || f === "sizes.json" ? createHash("sha256").update(readFileSync(join(dir, f))).digest("hex") : "(other)";
  return out;
}

async function recapAudit(jobId: string, state: string): Promise<NonNullable<RecapAudit["stages"][number]["recaption"]>> {
  const r = await runCli(["audit", jobId, "--json", "--state-dir", state]);
  assert.equal(r.code, 0, r.stderr);
  const a = (JSON.parse(r.stdout) as RecapAudit).stages.find((s) => s.recaption)?.recaption;
  assert.ok(a, r.stdout);
  return a;
}

/** Each of the 4 input shards committed once, its output's bytes those committed. */
function assertWrittenOnce(a: Awaited<ReturnType<typeof recapAudit>>): void {
  assert.equal(a.inputs, 4);
  assert.equal(a.committed, 4);
  assert.equal(a.duplicates, 0);
  assert.equal(a.missing, 0);
  assert.deepEqual(
    a.shards.map((s) => s.shard),
    [0, 1, 2, 3],
  );
  for (const s of a.shards) assert.equal(createHash("sha256").update(readFileSync(s.output)).digest("hex"), s.sha256, s.output);
}

/** Polls the job's log until `re` matches; returns the match. */
async function logMatch(jobId: string, state: string, re: RegExp): Promise<RegExpExecArray> {
  return waitFor(
    `log line ${re}`,
    async () => {
      const r = await runCli(["logs", jobId, "--state-dir", state]);
      return re.exec(r.stdout);
    },
    120_000,
    300,
  );
}

void describe("recaption", () => {
  const tmp = tempDir();
  let reference: Record<string, string>;
  let referenceJob: string;

  before(async () => {
    const spec = recapSpec(tmp.dir, "reference");
    const r = await runCli(["run", spec, "--json", "--state-dir", join(tmp.dir, "reference-state")], { env: ENV });
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout) as Summary & { samplesSeen: number };
    assert.equal(summary.state, "SUCCEEDED");
    assert.equal(summary.samplesSeen, 1024, "the samples are the shards' (4 x 256), not steps x batch");
    referenceJob = summary.jobId;
    reference = digests(join(tmp.dir, "reference-out"));
  });
  after(() => tmp.cleanup());

  void it("an uninterrupted run: every sample kept with its caption, sizes.json, each shard written once", async () => {
    assert.deepEqual(Object.keys(reference), ["sizes.json", "train-00000.tar", "train-00001.tar", "train-00002.tar", "train-00003.tar"]);
    assert.deepEqual(JSON.parse(readFileSync(join(tmp.dir, "reference-out", "sizes.json"), "utf8")), { "train-00000.tar": 256, "train-00001.tar": 256, "train-00002.tar": 256, "train-00003.tar": 256 });
    assertWrittenOnce(await recapAudit(referenceJob, join(tmp.dir, "reference-state")));
    // The output is a dataset: the input's members, in order, plus the caption.
    const out = readFileSync(join(tmp.dir, "reference-out", "train-00000.tar")).toString("latin1");
    assert.match(out, /train00000000\.jpg[\s\S]*train00000000\.txt[\s\S]*train00000000\.json[\s\S]*train00000000\.vecap\.txt/);
    assert.match(out, /a picture of (bright|dark|muted) \w+ tones with more detail on the (left|right)/);
  });

  void it("kill -9 of a rank mid-shard: one restart, every shard committed once, bytes identical to the uninterrupted run", async () => {
    const state = join(tmp.dir, "kill-rank-state");
    const gate = join(tmp.dir, "kill-rank.gate");
    const spec = recapSpec(tmp.dir, "kill-rank", { fault: `gate@3:rank=1:attempt=1:file=${gate}` });
    const run = await startRun(spec, state, ["--json"], ENV);
    await logMatch(run.jobId, state, /rank 1\].*gate at step 3/);
    const v = await status(run.jobId, state);
    const victim = currentAttempt(v).ranks.find((r) => r.rank === 1);
    assert.ok(victim && victim.pid > 0);
    process.kill(victim.pid, "SIGKILL");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    const after = await status(run.jobId, state);
    assert.match(after.job.stages[0]?.attempts[0]?.reason ?? "", /rank 1 was killed by SIGKILL/);
    const a = await recapAudit(run.jobId, state);
    assertWrittenOnce(a);
    assert.ok(a.shards.some((x) => x.attempt === after.job.stages[0]?.attempts[1]?.number), "the killed rank's shard was written by the next attempt");
    assert.deepEqual(digests(join(tmp.dir, "kill-rank-out")), reference);
  });

  void it("a torn output shard (truncated after the rename, before the commit) is never committed; the next attempt rewrites it", async () => {
    const state = join(tmp.dir, "torn-state");
    const gate = join(tmp.dir, "torn.gate");
    const spec = recapSpec(tmp.dir, "torn", { fault: `commitgate@1:rank=1:attempt=1:file=${gate}` });
    const run = await startRun(spec, state, ["--json"], ENV);
    const m = await logMatch(run.jobId, state, /rank 1\] clipfleet worker: wrote shard (\d+) -> (\S+) /);
    await logMatch(run.jobId, state, /rank 1\].*commit gate at shard 1/);
    const [, shard, output] = m;
    truncateSync(output!, 10_000);
    writeFileSync(gate, "");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as Summary).restarts, 1);
    const v = await status(run.jobId, state);
    assert.match(v.job.stages[0]?.attempts[0]?.reason ?? "", /changed on disk after it was written/);
    const a = await recapAudit(run.jobId, state);
    assertWrittenOnce(a);
    const torn = a.shards.find((x) => x.shard === Number(shard));
    assert.notEqual(torn?.attempt, v.job.stages[0]?.attempts[0]?.number, "the truncated shard was committed by the next attempt only");
    assert.deepEqual(digests(join(tmp.dir, "torn-out")), reference);
  });

  void it("kill -9 of the orchestrator, then resume: committed shards are kept, the rest written once, bytes identical", async () => {
    const state = join(tmp.dir, "orchestrator-state");
    const gate = join(tmp.dir, "orchestrator.gate");
    // Each rank waits in its second shard, after committing its first.
    const spec = recapSpec(tmp.dir, "orch", { fault: `gate@10:attempt=1:file=${gate}` });
    const run = await startRun(spec, state, [], ENV);
    const v: JobView = await waitForStatus(run.jobId, state, "2 shards committed", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 2);
    await logMatch(run.jobId, state, /rank 0\].*gate at step 10/);
    await logMatch(run.jobId, state, /rank 1\].*gate at step 10/);
    const pids = currentAttempt(v).ranks.map((x) => x.pid);
    process.kill(run.child.pid ?? 0, "SIGKILL");
    await run.done;
    await waitFor("the orphaned workers to stop", () => pids.every((p) => !alive(p)), 60_000);
    const r = await runCli(["resume", run.jobId, "--json", "--state-dir", state], { env: ENV });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as Summary).state, "SUCCEEDED");
    const a = await recapAudit(run.jobId, state);
    assertWrittenOnce(a);
    const first = v.job.stages[0]?.attempts[0]?.number;
    assert.equal(a.shards.filter((x) => x.attempt === first).length, 2, "the shards committed before the kill were not written again");
    assert.deepEqual(digests(join(tmp.dir, "orch-out")), reference);
    assert.ok(!existsSync(gate));
  });

  void it("cancel while ranks are mid-shard: each finishes and commits its shard, then exits 0; resume writes the rest, bytes identical", async () => {
    const state = join(tmp.dir, "cancel-state");
    const gate = join(tmp.dir, "cancel.gate");
    const spec = recapSpec(tmp.dir, "cancel", { fault: `gate@3:attempt=1:file=${gate}`, grace: 300 });
    const run = await startRun(spec, state, [], ENV);
    await logMatch(run.jobId, state, /rank 0\].*gate at step 3/);
    await logMatch(run.jobId, state, /rank 1\].*gate at step 3/);
    const cancel = runCli(["cancel", run.jobId, "--state-dir", state]);
    await waitForStatus(run.jobId, state, "the stop", (x) => x.state === "STOPPING" || x.state === "CANCELLED");
    writeFileSync(gate, "");
    const c = await cancel;
    assert.equal(c.code, 0, c.stderr);
    await run.done;
    const logs = (await runCli(["logs", run.jobId, "--state-dir", state])).stdout;
    assert.match(logs, /rank 0 \(pid \d+\) exited with code 0/, "rank 0 left on its own (grace_seconds is 300)");
    assert.match(logs, /rank 1 \(pid \d+\) exited with code 0/);
    const cancelled = await recapAudit(run.jobId, state);
    assert.equal(cancelled.committed, 2, "each rank committed the shard it was writing");
    const r = await runCli(["resume", run.jobId, "--json", "--state-dir", state], { env: ENV });
    assert.equal(r.code, 0, r.stderr);
    assertWrittenOnce(await recapAudit(run.jobId, state));
    assert.deepEqual(digests(join(tmp.dir, "cancel-out")), reference);
  });

  void it("a preemption signal restarts the stage at once, not spending the restart budget; bytes identical", async () => {
    const state = join(tmp.dir, "preempt-state");
    const gate = join(tmp.dir, "preempt.gate");
    const spec = recapSpec(tmp.dir, "preempt", { fault: `gate@3:attempt=1:file=${gate}` });
    const run = await startRun(spec, state, ["--json"], ENV);
    await logMatch(run.jobId, state, /rank 1\].*gate at step 3/);
    const victim = currentAttempt(await status(run.jobId, state)).ranks.find((x) => x.rank === 1);
    assert.ok(victim && victim.pid > 0);
    process.kill(victim.pid, "SIGUSR1");
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 0);
    const v = await status(run.jobId, state);
    assert.equal((v.job.stages[0] as unknown as { preemptions: number }).preemptions, 1);
    assertWrittenOnce(await recapAudit(run.jobId, state));
    assert.deepEqual(digests(join(tmp.dir, "preempt-out")), reference);
  });

  void it("a plugin that raises fails the stage with its traceback (a repeated user error, not retried forever)", async () => {
    const spec = recapSpec(tmp.dir, "broken", { captioner: "recap_fixture:make_broken" });
    const state = join(tmp.dir, "broken-state");
    const r = await runCli(["run", spec, "--json", "--state-dir", state], { env: ENV });
    assert.equal(r.code, 1, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "FAILED");
    const v = await status(s.jobId, state);
    const stage = v.job.stages[0];
    assert.ok((stage?.attempts.length ?? 0) <= 2, `at most one retry, got ${stage?.attempts.length}`);
    assert.match(stage?.error ?? "", /Traceback[\s\S]*recap_fixture\.py[\s\S]*ValueError: recap_fixture: this captioner is broken on purpose/);
  });

  void it("an entry point that does not import is refused at submit: exit 2, one line naming the field", async () => {
    const spec = recapSpec(tmp.dir, "missing", { captioner: "no_such_module:make" });
    const r = await runCli(["run", spec, "--state-dir", join(tmp.dir, "missing-state")], { env: ENV });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /captioner\.entry_point: no_such_module:make: no module named 'no_such_module'/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
    const fusion = recapSpec(tmp.dir, "missing-fusion", { fusion: '{entry_point: "recap_fixture:no_such_factory"}' });
    const f = await runCli(["run", fusion, "--state-dir", join(tmp.dir, "missing-state")], { env: ENV });
    assert.equal(f.code, 2, f.stderr);
    assert.match(f.stderr, /fusion\.entry_point: recap_fixture:no_such_factory: module recap_fixture has no attribute 'no_such_factory'/);
  });

  void it("a pipeline: a pretrain stage trains on the recaption stage's output (data.train: {stage: recap}), mixing its captions", async () => {
    const data = tinyDataset();
    const path = join(tmp.dir, "pipe.yaml");
    writeFileSync(
      path,
      `name: pipe
model:
  image: vit-tiny
  text: {preset: text-tiny, context_length: 48}
  embed_dim: 64
  tokenizer: byte
cluster: {workers: 2}
stages:
  - name: recap
    task: recaption
    data: {train: "${data}/train-{00000..00001}.tar"}
    captioner: {entry_point: "recap_fixture:make", batch_size: 64}
    fusion: {entry_point: "recap_fixture:make_fuser"}
    recaption: {out: pipe-out}
  - name: pretrain
    needs: [recap]
    task: pretrain
    data:
      train: {stage: recap}
      val: "${data}/val-{00000..00000}.tar"
      captions: {alt: 0.5, vecap: 0.5}
    train: {steps: 6, batch_size: 32, lr: 1.0e-3}
    eval: false
`,
    );
    const r = await runCli(["run", path, "--json", "--state-dir", join(tmp.dir, "pipe-state")], { env: ENV });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    const v = await status(s.jobId, join(tmp.dir, "pipe-state"));
    assert.equal(v.job.stages.find((x) => x.name === "pretrain")?.progress?.step, 6);
    assert.deepEqual(JSON.parse(readFileSync(join(tmp.dir, "pipe-out", "sizes.json"), "utf8")), { "train-00000.tar": 256, "train-00001.tar": 256 });
  });
});
