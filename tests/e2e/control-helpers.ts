/**
 * Shared by the control-plane e2e tests (control-*.test.ts): looking at a
 * server's jobs through the typed ControlService client (cheap polling, no
 * process per poll) and through the real CLI (`status --json`).
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { ControlClient } from "../../orchestrator/src/client/index.js";
import { JobState, type Job } from "../../orchestrator/src/gen/clipfleet/v1/control.js";
import { alive, runCli, waitFor } from "../helpers/cli.js";

export { ControlClient, JobState, type Job };

/** "RUNNING" for JobState.JOB_STATE_RUNNING (the number `status --json` prints in `job`). */
export function stateName(s: JobState | number): string {
  return (JobState[s] ?? `UNKNOWN(${s})`).replace(/^JOB_STATE_/, "");
}

/** Polls GetJob until `pred` holds; returns that view. */
export function waitJob(client: ControlClient, jobId: string, what: string, pred: (j: Job) => boolean, timeoutMs = 120_000): Promise<Job> {
  return waitFor(
    `job ${jobId}: ${what}`,
    async () => {
      const j = await client.getJob(jobId).catch(() => null);
      return j && pred(j) ? j : null;
    },
    timeoutMs,
    100,
  );
}

/** Waits for a terminal state and asserts it is `want`, with the job's reason in the message. */
export async function waitEnd(client: ControlClient, jobId: string, want: string, timeoutMs = 120_000): Promise<Job> {
  const j = await waitJob(client, jobId, "a terminal state", (x) => ["SUCCEEDED", "FAILED", "CANCELLED"].includes(stateName(x.state)), timeoutMs);
  assert.equal(stateName(j.state), want, `job ${jobId} ended ${stateName(j.state)}: ${j.reason}\n${j.stages.map((s) => s.error).join("\n")}`);
  return j;
}

/** Every worker pid recorded in the job's attempts. */
export function attemptPids(j: Job): number[] {
  return j.stages.flatMap((s) => s.attempts.flatMap((a) => a.ranks.map((r) => r.pid))).filter((p) => p > 0);
}

/** The parts of `clipfleet status --json` these tests read. */
export interface StatusJson {
  jobId: string;
  state: string;
  reason: string;
  steps: number;
  restarts: number;
  checkpoints: { stage: string; step: number; dir: string }[];
  job: {
    state: number;
    pendingReason: string;
    recentEvents: { seq: number; stage: string; type: string; state: number; reason: string; tsMs: number; schemaVersion: number }[];
    stages: {
      name: string;
      state: number;
      reason: string;
      startedAtMs: number;
      endedAtMs: number;
      attempts: { number: number; outcome: string; reason: string; resumedFromStep: number; lastStep: number; startedAtMs: number; endedAtMs: number; ranks: { rank: number; pid: number }[] }[];
      checkpoints: { step: number; status: string; attempt: number; dir: string }[];
    }[];
  };
}

/** `clipfleet status JOB --json` with the given server flags or environment. */
export async function statusJson(jobId: string, how: { args?: string[]; env?: Record<string, string> }): Promise<StatusJson> {
  const r = await runCli(["status", jobId, "--json", ...(how.args ?? [])], { env: how.env, timeoutMs: 60_000 });
  assert.equal(r.code, 0, `status ${jobId}: ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusJson;
}

/**
 * Pids of every live process of this user whose environment names `jobId`
 * (CLIPFLEET_JOB_ID): the job's ranks and their children, including any the
 * job record never got to list (Linux /proc).
 */
export function rankPidsOf(jobId: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/environ`, "latin1").split("\0").includes(`CLIPFLEET_JOB_ID=${jobId}`)) pids.push(Number(name));
    } catch {
      // gone meanwhile, or another user's
    }
  }
  return pids.filter((p) => alive(p));
}
