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
import type { Argv } from "yargs";
import type { ControlClient } from "../../client/index.js";
import type { Command } from "../command.js";
import type { CliDeps } from "../context.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";
import { jobSummary, stateName } from "../render.js";

/** Schema tag of report.json; worker-runtime/clipfleet_worker/report.py documents the shape and checks the tag. */
export const REPORT_SCHEMA = "clipfleet.report/v1";

interface ReportArgs extends ReportOptions {
  job: string;
  out: string;
}

/** Options shared by `report` and `run --report`. */
export interface ReportOptions {
  "max-points": number;
  compare?: string;
  metrics?: string;
}

/** Adds --max-points, --compare and --metrics to a command. */
export function reportOptions<T>(y: Argv<T>): Argv<T & ReportOptions> {
  return y
    .option("max-points", { type: "number", default: 5000, describe: "thin each stage's curves to about this many steps (0: every step)" })
    .option("compare", { type: "string", describe: "compare stages by this label of theirs (spec `labels`): a table and a chart, a row per value" })
    .option("metrics", { type: "string", describe: "with --compare: the metrics to compare, comma-separated (default: all)" });
}

/**
 * Writes DIR/report.json for a job and renders it (plots, index.md, index.html,
 * and comparison.* with --compare). Resolves to the renderer's exit code.
 */
export async function writeJobReport(deps: CliDeps, client: ControlClient, jobId: string, out: string, opts: ReportOptions & { python?: string; json: boolean; quiet?: boolean }): Promise<number> {
  const maxPoints = opts["max-points"];
  if (!Number.isInteger(maxPoints) || maxPoints < 0) throw new InvalidArgumentError(`--max-points: expected a non-negative integer, got ${maxPoints}`, "max-points");
  const job = await client.getJob(jobId);
  const data = reportData(job, await client.stepHistory(job.id, "", maxPoints), Date.now());
  if (opts.compare) data.compare = { by: opts.compare, metrics: (opts.metrics ?? "").split(",").map((m) => m.trim()).filter(Boolean) };
  const dir = resolve(out);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "report.json");
  writeFileSync(file, JSON.stringify(data) + "\n");
  return deps.runWorkerCli(opts.python ?? null, ["report", "--data", file, "--out", dir, ...(opts.json ? ["--json"] : []), ...(opts.quiet ? ["--quiet"] : [])]);
}

export const reportCommand: Command<ReportArgs> = (deps, state) => ({
  command: "report <job>",
  describe: "Write PNG plots of a job's loss, learning rate, throughput and step time (restarts marked) and of its evaluation results, with index.md and index.html",
  builder: (y) =>
    reportOptions(y)
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .option("out", { type: "string", demandOption: true, describe: "directory for report.json, the PNGs, index.md and index.html (created if missing)" })
      .example("$0 report j-20261123-101500-a1b2c3 --out report/", "from the state dir of `clipfleet run` (.clipfleet)")
      .example("$0 report j-20261123-101500-a1b2c3 --out report/ --server 127.0.0.1:7070 --json", "from a server; print the files written as JSON")
      .example("$0 report j-20261123-101500-a1b2c3 --out results/ --compare variant --metrics seg/mIoU,depth/rmse", "compare the stages of an experiment by their `variant` label"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      state.exitCode = await writeJobReport(deps, client, (await resolveJob(client, args.job, args)).id, args.out, { ...args, python: typeof args.python === "string" ? args.python : undefined });
    });
  },
});

/** A stage's spec labels (the frozen spec travels as JSON in the Job message). */
function labelsOf(job: Job, stage: string): Record<string, string> {
  const spec = JSON.parse(job.specJson) as { stages?: { name: string; labels?: Record<string, string> }[] };
  return spec.stages?.find((s) => s.name === stage)?.labels ?? {};
}

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
      labels: labelsOf(job, s.name),
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
