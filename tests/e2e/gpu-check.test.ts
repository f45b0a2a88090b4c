/**
 * The GPU path where no GPU is (issue 16, item 4): `make gpu-check` says it
 * needs CUDA and exits 0; its driver runs its whole flow on CPU with the tiny
 * presets (`--cpu-smoke`: real `clipfleet run`s, a real kill -9 of rank 0,
 * the same final parameters after the resume), so the script a GPU machine
 * runs once cannot rot; and `train.compile: true` on this torch either
 * compiles (torch 2) or runs eager with its warning in the rank's log (1.x).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { PYTHON, ROOT, runCli, tempDir, tinyModelAndData } from "../helpers/cli.js";
import { status, type Summary } from "../helpers/jobs.js";

/** Runs a command to completion with the repository as its working directory. */
function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => resolvePromise({ code, stdout, stderr }));
  });
}

interface GpuCheckResult {
  checks: Record<string, { ok: boolean | null; final_params_sha256?: string; restarts?: number; resumed_from_step?: number; first_loss?: number; final_loss?: number; same_as_uninterrupted?: boolean }>;
  failed: string[];
}

void describe("make gpu-check without a GPU", () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  void it("says it needs CUDA and exits 0", async () => {
    const r = await run("make", ["--no-print-directory", "gpu-check"], { PYTHON });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /gpu-check: needs CUDA: torch \S+ sees no CUDA device on this machine; nothing was run/);
  });

  void it("--cpu-smoke: the same flow on CPU, kill -9 of rank 0 resumes to the uninterrupted run's parameters", async () => {
    const out = join(tmp.dir, "smoke");
    const r = await run("bash", ["bench/gpu-check.sh", "--cpu-smoke", "--out", out, "--work", join(tmp.dir, "work")], { PYTHON });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const result = JSON.parse(readFileSync(join(out, "gpu-check.json"), "utf8")) as GpuCheckResult;
    assert.deepEqual(result.failed, []);
    const first = result.checks["pretrain-1rank"];
    const killed = result.checks["kill9-resume"];
    assert.ok(first?.ok && killed?.ok, JSON.stringify(result.checks));
    assert.ok((first.final_loss ?? Infinity) < (first.first_loss ?? -Infinity));
    assert.equal(killed.restarts, 1);
    assert.ok((killed.resumed_from_step ?? 0) >= 10, "resumed from a committed checkpoint, not from scratch");
    assert.equal(killed.final_params_sha256, first.final_params_sha256);
    const table = readFileSync(join(out, "gpu-check.md"), "utf8");
    assert.match(table, /\| kill9-resume \| pass \|/);
  });

  void it("train.compile: true on this torch: compiled on torch 2, eager with a warning in the rank's log on 1.x", async () => {
    const spec = join(tmp.dir, "compile.yaml");
    writeFileSync(
      spec,
      `name: compile
task: pretrain
${tinyModelAndData("{alt: 0.5, vecap: 0.5}")}train:
  steps: 4
  batch_size: 8
  compile: true
cluster:
  workers: 1
`,
    );
    const state = join(tmp.dir, "compile-state");
    const r = await runCli(["run", spec, "--json", "--state-dir", state]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    const logs = await runCli(["logs", s.jobId, "--state-dir", state]);
    const torch = await run(PYTHON, ["-c", "import torch; print(torch.__version__)"]);
    if (/^1\./.test(torch.stdout.trim())) {
      assert.match(logs.stdout, /clipfleet worker: warning: train\.compile ignored: torch 1\.\S+ has no torch\.compile \(needs 2\.0 or later\); running eager/);
      const events = (await status(s.jobId, state)).job.recentEvents.filter((e) => e.type === "warning").map((e) => e.reason);
      assert.deepEqual(events, [`train.compile ignored: torch ${torch.stdout.trim()} has no torch.compile (needs 2.0 or later); running eager`]);
    } else {
      assert.match(logs.stdout, /train\.compile: compiling the model's forward with torch\.compile/);
    }
  });
});
