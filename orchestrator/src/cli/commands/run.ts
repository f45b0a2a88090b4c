/** `clipfleet run SPEC`: an embedded orchestrator runs one job and follows it to the end. */
import { ControlClient } from "../../client/index.js";
import type { Job } from "../../gen/clipfleet/v1/control.js";
import { JobState } from "../../gen/clipfleet/v1/control.js";
import { localIdentity } from "../../auth/index.js";
import { asClipfleetError } from "../../domain/index.js";
import type { Command } from "../command.js";
import { EXIT, note, out, printJson, type CliDeps, type EmbeddedOrchestrator, type GlobalArgs } from "../context.js";
import { embedOptions, orchestratorOptions, type OrchestratorArgs } from "../embedded.js";
import { followJob } from "../follow.js";
import { jobSummary, renderStatus, stageSummaryLine, stateName } from "../render.js";
import { readSpecInput } from "../spec-input.js";
import { reportOptions, writeJobReport, type ReportOptions } from "./report.js";

interface RunArgs extends OrchestratorArgs, ReportOptions {
  spec: string;
  grace?: number;
  report?: string;
}

export const runCommand: Command<RunArgs> = (deps, state) => ({
  command: "run <spec>",
  describe: "Run a job spec with an orchestrator embedded in this process; show progress; exit 0 when it succeeds",
  builder: (y) =>
    reportOptions(orchestratorOptions(y, "127.0.0.1:0", "embedded"))
      .positional("spec", { type: "string", demandOption: true, describe: "job spec (YAML or JSON)" })
      .option("grace", { type: "number", describe: "seconds to wait for ranks to checkpoint and exit on Ctrl-C/SIGTERM" })
      .option("report", { type: "string", describe: "when the job ends, write its report (plots, index.md, index.html; see `clipfleet report`) into this directory" })
      .example("$0 run examples/tiny-pretrain.yaml", "pretrain a tiny CLIP with 2 workers on synthetic data")
      .example("$0 run spec.yaml --json --metrics-listen 127.0.0.1:9400", "print a JSON summary; serve metrics while running")
      .example("$0 run spec.yaml --ui", "also serve the web dashboard on 127.0.0.1; open the URL it prints (docs/ui.md)"),
  handler: async (args) => {
    const input = readSpecInput(args.spec, deps.presetsPath);
    const orch = await deps.embed(embedOptions(args, true));
    try {
      // The embedded orchestrator takes the spec validated above instead of validating it again;
      // what follows (status, events) goes through the control API as for a server.
      const submit = (client: ControlClient): Promise<Job> =>
        orch.service.submit({ ...input, validated: input.spec, submittedBy: localIdentity().name }).then(
          (job) => client.getJob(job.id),
          (err: unknown) => Promise.reject(asClipfleetError(err)),
        );
      state.exitCode = await runJob(deps, args, orch, submit);
    } finally {
      await orch.close();
    }
  },
});

/**
 * Starts (or resumes) a job on an embedded orchestrator and follows it. Ctrl-C
 * or SIGTERM stops it gracefully (checkpoint, then exit); a second Ctrl-C
 * stops it at once.
 */
export async function runJob(
  deps: CliDeps,
  args: GlobalArgs & { grace?: number; report?: string } & Partial<ReportOptions>,
  orch: EmbeddedOrchestrator,
  start: (client: ControlClient) => Promise<Job>,
  onlyNewEvents = false,
): Promise<number> {
  const client = new ControlClient(orch.address);
  try {
    const job = await start(client);
    note(`clipfleet: job ${job.id} (${job.name}), state in ${args["state-dir"]}${orch.metricsAddress ? `, metrics on http://${orch.metricsAddress}/metrics` : ""}`);
    if (orch.dashboardUrl) note(`clipfleet: dashboard ${orch.dashboardUrl}`);
    let stops = 0;
    const onSignal = (sig: NodeJS.Signals): void => {
      stops += 1;
      if (stops === 1) {
        note(`clipfleet: ${sig}: checkpointing and stopping job ${job.id} (again to stop at once)`);
        void client.cancel(job.id, true, args.grace ?? 0).catch(() => undefined);
      } else {
        note(`clipfleet: ${sig}: stopping job ${job.id} now`);
        void client.cancel(job.id, false, 1).catch(() => undefined);
      }
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    let final: Job;
    try {
      // A resumed job's history ends in its earlier failure: follow what happens from now on.
      const fromSeq = onlyNewEvents ? Math.max(0, ...job.recentEvents.filter((e) => e.reason !== "resumed by user").map((e) => Number(e.seq) + 1)) : 0;
      final = await followJob(client, job.id, { showEvents: !args.json, fromSeq });
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
    if (args.json) printJson(jobSummary(final));
    else out(renderSummary(final));
    if (args.report) {
      const code = await writeJobReport(deps, client, final.id, args.report, {
        "max-points": args["max-points"] ?? 5000,
        compare: args.compare,
        metrics: args.metrics,
        python: typeof args.python === "string" ? args.python : undefined,
        json: false,
        quiet: true,
      });
      if (code !== 0) note(`clipfleet: the report could not be written (exit ${code})`);
      else if (!args.json) note(`clipfleet: report in ${args.report}`);
    }
    if (final.state === JobState.JOB_STATE_SUCCEEDED) return EXIT.OK;
    if (!args.json) note(`clipfleet: job ${final.id} ${stateName(final.state)}; \`clipfleet resume ${final.id} --state-dir ${args["state-dir"]}\` continues it from its last committed checkpoint`);
    return EXIT.JOB_FAILED;
  } finally {
    client.close();
  }
}

/** The text summary at the end of a run. */
export function renderSummary(job: Job): string {
  const s = jobSummary(job);
  const lines = [renderStatus(job, Date.now()).split("\n\nrecent events:")[0] ?? ""];
  const loss = (x: unknown): string => (typeof x === "number" && x !== 0 ? x.toFixed(4) : "-");
  const wall = typeof s.wallSeconds === "number" ? `, ${s.wallSeconds.toFixed(1)} s` : "";
  const userStops = Number(s.userStops);
  const preemptions = Number(s.preemptions);
  const stops = [userStops ? `${userStops} user stop(s)` : "", preemptions ? `${preemptions} preemption(s)` : ""].filter(Boolean).join(", ");
  lines.push("");
  if (job.stages.length > 1) {
    // A pipeline: the job's outcome, then each stage's own numbers (pretraining's loss is not the fine-tune's).
    lines.push(`${String(s.state)}: ${job.reason || "-"}; ${String(s.steps)} steps, ${String(s.samplesSeen)} samples, ${String(s.restarts)} restart(s) after failures${stops ? `, ${stops}` : ""}${wall}`);
    for (const st of job.stages) lines.push(`  ${stageSummaryLine(st)}`);
    // Each trained stage's own final parameters, named (the job's --json one is the last trained stage's).
    for (const st of job.stages) if (st.finalParamsSha256 && (st.progress?.step ?? 0) > 0) lines.push(`final params sha256 (${st.name}): ${st.finalParamsSha256}`);
  } else {
    lines.push(
      `${String(s.state)}: ${String(s.steps)} steps, ${String(s.samplesSeen)} samples, loss ${loss(s.firstLoss)} -> ${loss(s.finalLoss)}, ${String(s.restarts)} restart(s)${stops ? `, ${stops}` : ""}${wall}`,
    );
    if (typeof s.finalParamsSha256 === "string" && s.finalParamsSha256) lines.push(`final params sha256: ${s.finalParamsSha256}`);
  }
  return lines.join("\n");
}
