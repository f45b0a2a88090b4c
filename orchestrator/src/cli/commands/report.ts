/**
 * `clipfleet report JOB --out DIR`: PNG plots of a job's training curves
 * (loss, learning rate, throughput, step time; restarts marked) and its
 * evaluation results, tied together by index.md and index.html.
 *
 * The CLI gathers the job and its per-step history (StepHistory) into
 * DIR/report.json; the worker runtime renders it with matplotlib
 * (`python -m clipfleet_worker report`), which is where a plotting library
 * is installed. report.json stays next to the plots, so a report can be
 * re-rendered or read by other tools without the orchestrator.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { InvalidArgumentError } from "../../domain/index.js";
import type { Job, StepHistoryResponse } from "../../gen/clipfleet/v1/control.js";
import type { Command } from "../command.js";
import { connectOrOpen } from "../offline.js";
import { jobSummary, stateName } from "../render.js";

/** Schema tag of report.json; worker-runtime/clipfleet_worker/report.py documents the shape and checks the tag. */
export const REPORT_SCHEMA = "clipfleet.report/v1";

interface ReportArgs {
  job: string;
  out: string;
  "max-points": number;
}

export const reportCommand: Command<ReportArgs> = (deps, state) => ({
  command: "report <job>",
  describe: "Write PNG plots of a job's loss, learning rate, throughput and step time (restarts marked) and of its evaluation results, with index.md and index.html",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true, describe: "job id" })
      .option("out", { type: "string", demandOption: true, describe: "directory for report.json, the PNGs, index.md and index.html (created if missing)" })
      .option("max-points", { type: "number", default: 5000, describe: "thin each stage's curves to about this many steps (0: every step)" })
      .example("$0 report j-20261123-101500-a1b2c3 --out report/", "from the state dir of `clipfleet run` (.clipfleet)")
      .example("$0 report j-20261123-101500-a1b2c3 --out report/ --server 127.0.0.1:7070 --json", "from a server; print the files written as JSON"),
  handler: async (args) => {
    const maxPoints = args["max-points"];
    if (!Number.isInteger(maxPoints) || maxPoints < 0) throw new InvalidArgumentError(`--max-points: expected a non-negative integer, got ${maxPoints}`, "max-points");
    let data: Record<string, unknown> | null = null;
    await connectOrOpen(deps, args, async (client) => {
      const job = await client.getJob(args.job);
      data = reportData(job, await client.stepHistory(args.job, "", maxPoints), Date.now());
    });
    const out = resolve(args.out);
    mkdirSync(out, { recursive: true });
    const file = join(out, "report.json");
    writeFileSync(file, JSON.stringify(data) + "\n");
    state.exitCode = await deps.runWorkerCli(args.python ?? null, ["report", "--data", file, "--out", out, ...(args.json ? ["--json"] : [])]);
  },
});

/** The content of report.json for a job and its step history. */
export function reportData(job: Job, history: StepHistoryResponse, nowMs: number): Record<string, unknown> {
  const { stages: _stages, ...summary } = jobSummary(job);
  return {
    schema: REPORT_SCHEMA,
    generatedAtMs: nowMs,
    job: { id: job.id, name: job.name, state: stateName(job.state), reason: job.reason, createdAtMs: job.createdAtMs, updatedAtMs: job.updatedAtMs },
    summary,
    stages: job.stages.map((s) => ({
      name: s.name,
      task: s.task,
      state: stateName(s.state),
      reason: s.reason,
      restarts: s.restarts,
      metrics: s.metrics,
      attempts: history.attempts.filter((a) => a.stage === s.name),
      checkpoints: s.checkpoints.filter((c) => c.status === "committed").map((c) => ({ step: c.step, committedAtMs: c.committedAtMs, sizeBytes: c.sizeBytes })),
      points: history.points.filter((p) => p.stage === s.name),
    })),
  };
}
