/**
 * Signed checkpoint manifests with real workers (issue 13): a manifest
 * edited after its commit, or stripped of its signature, is refused by
 * `clipfleet resume`, naming the directory, and nothing starts; an admin
 * adopts the untouched files with `clipfleet manifests sign` and the resume
 * is bit-exact. A checkpoint another orchestrator signed is refused as an
 * init checkpoint unless imported (its files hashed at submit), and a file
 * swapped after the submit is refused.
 */
import assert from "node:assert/strict";
import { cpSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli, tempDir, tinyModelAndData, writeTinySpec } from "../helpers/cli.js";
import { startRun, status, waitForStatus, type JobView } from "../helpers/jobs.js";

interface Summary {
  jobId: string;
  state: string;
  finalParamsSha256: string;
  checkpoints: { stage: string; step: number; dir: string }[];
}

const BASE = { steps: 30, everySteps: 10, batch: 32 };

function newest(v: JobView): { step: number; dir: string } {
  const c = v.job.stages[0]?.checkpoints.filter((x) => x.status === "committed").sort((a, b) => b.step - a.step)[0];
  assert.ok(c, "a committed checkpoint");
  return c;
}

/** A spec of one eval stage (or a short pretrain first, when `warmFirst`) starting from `init`. */
/** An eval stage from `init`, after an 8-step warm-up stage when `warmFirst` (held before its step 4 until `gate` exists, when given). */
function evalSpec(dir: string, name: string, init: string, warmFirst: boolean, gate?: string): string {
  const evalStage = `task: eval\n    init: ${init}\n    eval: {captions: [vecap], zero_shot: false}\n    cluster: {workers: 1}`;
  const stages = warmFirst
    ? `stages:\n  - name: warm\n    task: pretrain\n    train: {steps: 8, batch_size: 16, lr: 1.0e-3, warmup_steps: 2}\n  - name: ev\n    needs: [warm]\n    ${evalStage}\n`
    : `stages:\n  - name: ev\n    ${evalStage}\n`;
  const text = `name: ${name}
${tinyModelAndData("{vecap: 1}")}cluster: {workers: 1}
${gate ? `worker: {env: {CLIPFLEET_FAULT: "gate@4:file=${gate}"}}
` : ""}${stages}`;
  const path = join(dir, `${name}.yaml`);
  writeFileSync(path, text);
  return path;
}

void describe("signed checkpoint manifests", () => {
  const tmp = tempDir();
  let reference: Summary;
  const refState = (): string => join(tmp.dir, "reference");

  before(async () => {
    const spec = writeTinySpec(tmp.dir, { ...BASE, name: "reference" });
    const r = await runCli(["run", spec, "--json", "--state-dir", refState()]);
    assert.equal(r.code, 0, r.stderr);
    reference = JSON.parse(r.stdout) as Summary;
    assert.equal(reference.state, "SUCCEEDED");
  });
  after(() => tmp.cleanup());

  void it("a tampered or unsigned manifest: resume refuses naming the directory and starts nothing; adopted, the resume is bit-exact", async () => {
    const state = join(tmp.dir, "tampered");
    // The first attempt fails at step 25 (committed: 10 and 20) and is not restarted.
    const spec = writeTinySpec(tmp.dir, { ...BASE, name: "tampered", env: { CLIPFLEET_FAULT: "raise@25:attempt=1" }, failure: { max_restarts: 0 } });
    const r = await runCli(["run", spec, "--json", "--state-dir", state]);
    assert.equal(r.code, 1, r.stderr);
    const failed = JSON.parse(r.stdout) as Summary;
    assert.equal(failed.state, "FAILED");
    const before = await status(failed.jobId, state);
    const ckpt = newest(before);
    assert.equal(ckpt.step, 20);
    const manifestFile = join(ckpt.dir, "manifest.json");
    const original = readFileSync(manifestFile);

    // A digest edited (as one would to slip in another model.pt).
    const m = JSON.parse(original.toString("utf8")) as { files: { path: string; sha256: string }[] };
    const model = m.files.find((f) => f.path === "model.pt");
    assert.ok(model);
    writeFileSync(manifestFile, original.toString("utf8").replace(model.sha256, "0".repeat(64)));
    let resumed = await runCli(["resume", failed.jobId, "--json", "--state-dir", state]);
    assert.equal(resumed.code, 2, resumed.stderr);
    assert.match(resumed.stderr, new RegExp(`${ckpt.dir}: manifest\\.sig does not verify with this orchestrator's key \\(SHA256:`));
    let after = await status(failed.jobId, state);
    assert.equal(after.state, "FAILED", "nothing changed");
    assert.equal(after.job.stages[0]?.attempts.length, 1, "no attempt started");
    const listed = await runCli(["checkpoints", failed.jobId, "--json", "--state-dir", state]);
    assert.equal(listed.code, 0, listed.stderr);
    const rows = JSON.parse(listed.stdout) as { step: number; status: string; reason: string }[];
    assert.equal(rows.find((c) => c.step === 20)?.status, "untrusted", listed.stdout);
    assert.equal(rows.find((c) => c.step === 10)?.status, "committed", listed.stdout);

    // The original bytes without their signature: what a checkpoint of an earlier version looks like.
    writeFileSync(manifestFile, original);
    rmSync(join(ckpt.dir, "manifest.sig"));
    resumed = await runCli(["resume", failed.jobId, "--json", "--state-dir", state]);
    assert.equal(resumed.code, 2, resumed.stderr);
    assert.match(resumed.stderr, new RegExp(`${ckpt.dir}: manifest\\.json has no manifest\\.sig .*clipfleet manifests sign ${ckpt.dir}`));
    after = await status(failed.jobId, state);
    assert.equal(after.job.stages[0]?.attempts.length, 1, "no attempt started");

    // The admin adopts it (its files hashed again, they match), and the resume is bit-exact.
    const signed = await runCli(["manifests", "sign", ckpt.dir, "--state-dir", state]);
    assert.equal(signed.code, 0, signed.stderr);
    assert.match(signed.stdout, /signed with SHA256:.*all match the manifest/);
    const verified = await runCli(["manifests", "verify", ckpt.dir, "--public-key", join(state, "keys", "manifest-signing.pub"), "--state-dir", state]);
    assert.equal(verified.code, 0, verified.stderr);
    resumed = await runCli(["resume", failed.jobId, "--json", "--state-dir", state]);
    assert.equal(resumed.code, 0, resumed.stderr);
    const s = JSON.parse(resumed.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256);
    after = await status(failed.jobId, state);
    assert.equal(after.job.stages[0]?.attempts.at(-1)?.resumedFromStep, 20);
  });

  void it("another orchestrator's checkpoint: refused as is, imported explicitly; a file swapped after the submit is refused", async () => {
    const state = join(tmp.dir, "importer");
    const final = reference.checkpoints.sort((a, b) => b.step - a.step)[0];
    assert.ok(final);
    const copied = join(tmp.dir, "copied");
    cpSync(final.dir, copied, { recursive: true });

    let r = await runCli(["run", evalSpec(tmp.dir, "as-is", `{checkpoint: ${copied}}`, false), "--state-dir", state]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`init\\.checkpoint: ${copied}: manifest\\.sig does not verify with this orchestrator's key .*import: true`));

    r = await runCli(["run", evalSpec(tmp.dir, "imported", `{checkpoint: ${copied}, import: true}`, false), "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as Summary).state, "SUCCEEDED");

    // Submitted (the digests taken), then model.pt swapped for another of the same size while the first stage runs.
    // The warm-up waits before its step 4 until the swap is done, so the swap surely lands before the eval stage starts.
    const gate = join(tmp.dir, "swapped-go");
    const run = await startRun(evalSpec(tmp.dir, "swapped", `{checkpoint: ${copied}, import: true}`, true, gate), state, ["--json"]);
    await waitForStatus(run.jobId, state, "the first stage training", (v) => (v.job.stages[0]?.progress?.step ?? 0) >= 1);
    const older = reference.checkpoints.sort((a, b) => a.step - b.step)[0];
    assert.ok(older && older.dir !== final.dir);
    cpSync(join(older.dir, "model.pt"), join(copied, "model.pt"));
    writeFileSync(gate, "");
    const done = await run.done;
    assert.equal(done.code, 1, done.stderr);
    const v = await status(run.jobId, state);
    const ev = v.job.stages.find((x) => x.name === "ev");
    assert.equal(ev?.attempts.length, 0, "no rank of the eval stage started");
    assert.match(ev?.reason ?? "", new RegExp(`init\\.checkpoint: ${copied} is corrupt: model\\.pt (sha256 [0-9a-f]{12} does not match manifest|has \\d+ bytes)`));
  });
});
