/**
 * `clipfleet report JOB --out DIR`: PNG plots of a job's training curves
 * (loss, learning rate, throughput, step time; restarts, user stops and
 * preemptions marked apart) and its evaluation results, tied together by
 * index.md and index.html. `clipfleet report JOB1 JOB2 ... --out DIR`
 * compares jobs: each one's report in a subfolder, their curves side by side
 * and their final metrics in the experiment's comparison table and chart.
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

/** Schema tag of report.json; worker-runtime/clipfleet_worker/report/__init__.py documents the shape and checks the tag. */
export const REPORT_SCHEMA = "clipfleet.report/v1";

interface ReportArgs extends ReportOptions {
  jobs: string[];
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
    .option("compare", { type: "string", describe: "compare stages by this label of theirs (spec `labels`): a table and a chart, a row per value (several jobs: by job unless given)" })
    .option("metrics", { type: "string", describe: "the metrics to compare, comma-separated (default: all)" });
}

/**
 * Writes DIR/report.json for a job and renders it (plots, index.md, index.html,
 * and comparison.* with --compare). Resolves to the renderer's exit code.
 */
export async function writeJobReport(deps: CliDeps, client: ControlClient, jobId: string, out: string, opts: ReportOptions & { python?: string; json: boolean; quiet?: boolean }): Promise<number> {
  const maxPoints = checkedMaxPoints(opts);
  const job = await client.getJob(jobId);
  const data = reportData(job, await client.stepHistory(job.id, "", maxPoints), Date.now());
  if (opts.compare) data.compare = compareOption(opts.compare, opts.metrics);
  return renderReport(deps, data, out, opts);
}

/**
 * Writes DIR/report.json for several jobs (`jobs`, each as a one-job report's
 * job, summary and stages) and renders their comparison: by job, or by a label
 * of their stages with --compare.
 */
export async function writeJobsReport(deps: CliDeps, client: ControlClient, jobIds: readonly string[], out: string, opts: ReportOptions & { python?: string; json: boolean }): Promise<number> {
  const maxPoints = checkedMaxPoints(opts);
  const now = Date.now();
  const jobs: Record<string, unknown>[] = [];
  for (const id of jobIds) {
    const job = await client.getJob(id);
    const { job: head, summary, stages } = reportData(job, await client.stepHistory(job.id, "", maxPoints), now);
    jobs.push({ job: head, summary, stages });
  }
  const data: Record<string, unknown> = { schema: REPORT_SCHEMA, generatedAtMs: now, jobs };
  if (opts.compare || opts.metrics) data.compare = compareOption(opts.compare ?? "job", opts.metrics);
  return renderReport(deps, data, out, opts);
}

function checkedMaxPoints(opts: ReportOptions): number {
  const maxPoints = opts["max-points"];
  if (!Number.isInteger(maxPoints) || maxPoints < 0) throw new InvalidArgumentError(`--max-points: expected a non-negative integer, got ${maxPoints}`, "max-points");
  return maxPoints;
}

function compareOption(by: string, metrics: string | undefined): { by: string; metrics: string[] } {
  return { by, metrics: (metrics ?? "").split(",").map((m) => m.trim()).filter(Boolean) };
}

/** Writes DIR/report.json and runs the worker runtime's renderer on it; resolves to its exit code. */
function renderReport(deps: CliDeps, data: Record<string, unknown>, out: string, opts: { python?: string; json: boolean; quiet?: boolean }): Promise<number> {
  const dir = resolve(out);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "report.json");
  writeFileSync(file, JSON.stringify(data) + "\n");
  return deps.runWorkerCli(opts.python ?? null, ["report", "--data", file, "--out", dir, ...(opts.json ? ["--json"] : []), ...(opts.quiet ? ["--quiet"] : [])]);
}

export const reportCommand: Command<ReportArgs> = (deps, state) => ({
  command: "report <jobs..>",
  describe: "Write PNG plots of a job's loss, learning rate, throughput and step time (restarts, user stops and preemptions marked) and of its evaluation results, with index.md and index.html; of several jobs, their comparison",
  builder: (y) =>
    reportOptions(y)
      .positional("jobs", { type: "string", array: true, demandOption: true, describe: "job ids, unique id prefixes, or job names (the newest job of that name); two or more are compared" })
      .option("out", { type: "string", demandOption: true, describe: "directory for report.json, the PNGs, index.md and index.html (created if missing)" })
      .example("$0 report j-20261123-101500-a1b2c3 --out report/", "from the state dir of `clipfleet run` (.clipfleet)")
      .example("$0 report j-20261123-101500-a1b2c3 --out report/ --server 127.0.0.1:7070 --json", "from a server; print the files written as JSON")
      .example("$0 report j-20261123-101500-a1b2c3 --out results/ --compare variant --metrics seg/mIoU,depth/rmse", "compare the stages of an experiment by their `variant` label")
      .example("$0 report alt-run vecap-run --out cmp/", "compare two jobs: curves side by side, final metrics in one table (cmp/comparison.md)"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const opts = { ...args, python: typeof args.python === "string" ? args.python : undefined };
      const ids: string[] = [];
      for (const ref of args.jobs) {
        const id = (await resolveJob(client, ref, args)).id;
        if (ids.includes(id)) throw new InvalidArgumentError(`job ${ref}: named twice (${id}); compare different jobs`, "jobs");
        ids.push(id);
      }
      state.exitCode = ids.length === 1 ? await writeJobReport(deps, client, ids[0] ?? "", args.out, opts) : await writeJobsReport(deps, client, ids, args.out, opts);
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
      // Counted over every attempt by the orchestrator (the attempts below may be the latest only).
      restarts: s.failureRestarts,
      userStops: s.userStops,
      preemptions: s.preemptedAttempts,
      metrics: s.metrics,
      attempts: history.attempts.filter((a) => a.stage === s.name),
      checkpoints: s.checkpoints.filter((c) => c.status === "committed").map((c) => ({ step: c.step, committedAtMs: c.committedAtMs, sizeBytes: c.sizeBytes })),
      points: history.points.filter((p) => p.stage === s.name),
    })),
  };
}
