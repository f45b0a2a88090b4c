/** `clipfleet cancel JOB [--checkpoint]`: stop a job; returns once none of its processes is alive. */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";
import { jobSummary, stateName } from "../render.js";
import { JobState } from "../../gen/clipfleet/v1/control.js";

export const cancelCommand: Command<{ job: string; checkpoint: boolean; grace: number }> = (deps) => ({
  command: "cancel <job>",
  describe: "Cancel a job (optionally saving a checkpoint first); returns when none of its processes is alive",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .option("checkpoint", { type: "boolean", default: false, describe: "save a checkpoint before stopping (resume continues from it)" })
      .option("grace", { type: "number", default: 0, describe: "seconds ranks get to stop before SIGTERM (default: the spec's failure.grace_seconds)" })
      .example("$0 cancel j-20261123-101500-a1b2c3 --checkpoint --server 127.0.0.1:7070", "save, then stop"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client, live) => {
      const found = await resolveJob(client, args.job, args);
      // No orchestrator runs the state dir: its jobs are over or interrupted (nothing of them is alive); say what was found.
      const ended = !live || [JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED].includes(found.state);
      const job = ended ? found : await client.cancel(found.id, args.checkpoint, args.grace);
      if (args.json) printJson(jobSummary(job));
      else out(`${job.id}: ${ended ? "already " : ""}${stateName(job.state)}${job.reason ? ` - ${job.reason}` : ""}${ended ? " (nothing to cancel)" : ""}`);
    });
  },
});
