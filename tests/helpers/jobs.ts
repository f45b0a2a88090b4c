/**
 * Driving a `clipfleet run` in the background and looking at its job from
 * outside, the way a user in another terminal would (`status --json`).
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { finished, runCli, startCli, waitFor, type CliResult } from "./cli.js";

/** The parts of `run --json`'s summary the tests read. */
export interface Summary {
  jobId: string;
  state: string;
  steps: number;
  restarts: number;
  finalParamsSha256: string;
}

/** `clipfleet audit --json`. */
export interface AuditJson {
  stages: { stage: string; exactlyOnce: boolean; epochs: { epoch: number; expected: number; unique: number; duplicates: number; missing: number; dropped: number; exactlyOnce: boolean }[] }[];
}

export async function audit(jobId: string, stateDir: string): Promise<AuditJson> {
  const r = await runCli(["audit", jobId, "--json", "--state-dir", stateDir]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as AuditJson;
}

/** The first audited stage consumed every sample of each of its `epochs` epochs exactly once. */
export function assertExactlyOnce(a: AuditJson, epochs: number): void {
  const s = a.stages[0];
  assert.ok(s, "an audited stage");
  assert.equal(s.epochs.length, epochs);
  for (const e of s.epochs) {
    assert.equal(e.duplicates, 0, `epoch ${e.epoch}: ${JSON.stringify(e)}`);
    assert.equal(e.missing, 0, `epoch ${e.epoch}: ${JSON.stringify(e)}`);
    assert.equal(e.unique, e.expected, `epoch ${e.epoch}: ${JSON.stringify(e)}`);
  }
  assert.ok(s.exactlyOnce);
}

/** The parts of `status --json` the tests read. */
export interface JobView {
  jobId: string;
  state: string;
  steps: number;
  restarts: number;
  finalParamsSha256: string;
  metrics: Record<string, number>;
  checkpoints: { stage: string; step: number; dir: string }[];
  job: {
    /** Why the job waits (scheduler, or a cluster manager's queue). */
    pendingReason?: string;
    recentEvents: { seq: number; type: string; stage: string; reason: string; state: number; dataJson: string }[];
    stages: {
      name: string;
      state: number;
      reason: string;
      error: string;
      restarts: number;
      progress?: { step: number; totalSteps: number; worldSize: number };
      attempts: { number: number; outcome: string; reason: string; worldSize: number; resumedFromStep: number; lastStep: number; ranks: { rank: number; pid: number; node: string; state: string; step: number }[] }[];
      checkpoints: { step: number; status: string; reason: string; dir: string; files: { path: string }[] }[];
    }[];
  };
}

export type RunHandle = ChildProcess & { output: { stdout: string; stderr: string } };

/** Starts `clipfleet run SPEC --state-dir D [args]` and resolves once its job id is known. */
export async function startRun(spec: string, stateDir: string, args: string[] = [], env: Record<string, string> = {}): Promise<{ child: RunHandle; jobId: string; done: Promise<CliResult> }> {
  const child = startCli(["run", spec, "--state-dir", stateDir, ...args], { env });
  const done = finished(child, 10 * 60_000);
  const jobId = await waitFor("the job id on stderr", () => /clipfleet: job (j-[0-9a-f-]+)/.exec(child.output.stderr)?.[1], 120_000);
  return { child, jobId, done };
}

/** `clipfleet status JOB --json` against the state dir (the running orchestrator, or the store). */
export async function status(jobId: string, stateDir: string): Promise<JobView> {
  const r = await runCli(["status", jobId, "--json", "--state-dir", stateDir]);
  if (r.code !== 0) throw new Error(`status failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as JobView;
}

/** Polls status until `pred` holds. */
export function waitForStatus(jobId: string, stateDir: string, what: string, pred: (v: JobView) => boolean, timeoutMs = 180_000): Promise<JobView> {
  return waitFor(
    what,
    async () => {
      const v = await status(jobId, stateDir).catch(() => null);
      return v && pred(v) ? v : null;
    },
    timeoutMs,
    250,
  );
}

/** The live attempt of the first stage and its ranks. */
export function currentAttempt(v: JobView): JobView["job"]["stages"][number]["attempts"][number] {
  const a = v.job.stages[0]?.attempts.at(-1);
  if (!a) throw new Error("no attempt yet");
  return a;
}

/** Every worker pid the job's attempts recorded. */
export function allPids(v: JobView): number[] {
  return v.job.stages.flatMap((s) => s.attempts.flatMap((a) => a.ranks.map((r) => r.pid))).filter((p) => p > 0);
}
