/** `clipfleet resume JOB`: continue a failed, cancelled or interrupted job from its last committed checkpoints. */
import type { Command } from "../command.js";
import { connect, note, out, printJson } from "../context.js";
import { embedOptions, orchestratorOptions, type OrchestratorArgs } from "../embedded.js";
import { jobSummary, stateName } from "../render.js";
import { resolveJob } from "../job-ref.js";
import { runJob } from "./run.js";

interface ResumeArgs extends OrchestratorArgs {
  job: string;
  grace?: number;
}

export const resumeCommand: Command<ResumeArgs> = (deps, state) => ({
  command: "resume <job>",
  describe: "Resume a job from its last committed checkpoints (finished stages are kept); without --server, runs it here like `run`",
  builder: (y) =>
    orchestratorOptions(y, "127.0.0.1:0", "embedded")
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .option("grace", { type: "number", describe: "seconds to wait for ranks to checkpoint and exit on Ctrl-C/SIGTERM" })
      .example("$0 resume j-20261123-101500-a1b2c3 --state-dir .clipfleet", "continue a job whose `clipfleet run` died")
      .example("$0 resume j-20261123-101500-a1b2c3 --server 127.0.0.1:7070", "ask a server to resume a failed job"),
  handler: async (args) => {
    if (args.server ?? process.env.CLIPFLEET_SERVER) {
      if (args.ui) note("clipfleet: warning: --ui has no effect with --server (open the server's own dashboard, --ui-listen)");
      const client = await connect(args);
      try {
        const job = await client.resume((await resolveJob(client, args.job, args)).id);
        if (args.json) printJson(jobSummary(job));
        else out(`${job.id}: ${stateName(job.state)}${job.reason ? ` - ${job.reason}` : ""}`);
      } finally {
        client.close();
      }
      return;
    }
    const orch = await deps.embed(embedOptions(args, true, [args.job]));
    try {
      state.exitCode = await runJob(deps, args, orch, async (client) => client.resume((await resolveJob(client, args.job, args)).id), true);
    } finally {
      await orch.close();
    }
  },
});
