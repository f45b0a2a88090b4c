/**
 * The orchestrator's part of the GPU path (docs/gpu.md): `train.compile` on a
 * rank whose torch has no torch.compile is a job event at registration (the
 * worker runs eager and logs the same), driven through the real JobService by
 * fake ranks (test/helpers/jobs-harness.ts; a fake rank registers with torch 1.13).
 */
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { compileWarning } from "../../src/jobs/gateway.js";
import { loadPresets, parseSpec } from "../../src/spec/index.js";
import { jobsHarness, PRESETS, until, type Harness } from "../helpers/jobs-harness.js";

void describe("train.compile on torch 1.x", () => {
  let h: Harness;
  beforeEach(async () => {
    h = await jobsHarness();
  });
  afterEach(async () => {
    await h.close();
  });

  async function registered(train: Record<string, unknown>): Promise<string> {
    const job = await h.submit({ train: { steps: 20, batch_size: 8, ...train } });
    const ranks = await h.launched(1);
    for (const r of ranks) r.connect();
    await h.stageIn(job.id, "RUNNING");
    return job.id;
  }

  void it("is one warning event, from rank 0's registration, saying the stage runs eager", async () => {
    const id = await registered({ compile: true });
    await until(() => h.job(id).recentEvents.some((e) => e.type === "warning"), "warning event");
    const warnings = h.job(id).recentEvents.filter((e) => e.type === "warning");
    assert.equal(warnings.length, 1, "rank 0 only");
    assert.equal(warnings[0]?.reason, "train.compile ignored: torch 1.13 has no torch.compile (needs 2.0 or later); running eager");
  });

  void it("says nothing when train.compile is off", async () => {
    const id = await registered({});
    assert.deepEqual(h.job(id).recentEvents.filter((e) => e.type === "warning"), []);
  });
});

void describe("compileWarning", () => {
  const stage = (compile: boolean) =>
    parseSpec(
      { name: "x", task: "pretrain", data: { train: "s/{0..1}.tar" }, train: { steps: 5, batch_size: 4, compile }, cluster: { workers: 1 } },
      { specPath: "spec.yaml", baseDir: "/tmp", presets: loadPresets(PRESETS) },
    ).stages[0]!;

  void it("warns for torch 1.x only, whatever the local version suffix", () => {
    assert.match(compileWarning(stage(true), "1.13.1+cpu") ?? "", /^train\.compile ignored: torch 1\.13\.1\+cpu has no torch\.compile/);
    assert.equal(compileWarning(stage(true), "2.0.0"), null);
    assert.equal(compileWarning(stage(true), "2.11.0+cu130"), null);
    assert.equal(compileWarning(stage(false), "1.13.1"), null);
    assert.equal(compileWarning(stage(true), ""), null, "an unknown version: the worker decides and logs");
  });
});
