/** `clipfleet cancel JOB [--checkpoint]`: stop a job; returns once none of its processes is alive. */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { connectLive } from "../offline.js";
import { jobSummary, stateName } from "../render.js";

export const cancelCommand: Command<{ job: string; checkpoint: boolean; grace: number }> = () => ({
  command: "cancel <job>",
  describe: "Cancel a job (optionally saving a checkpoint first); returns when none of its processes is alive",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true })
      .option("checkpoint", { type: "boolean", default: false, describe: "save a checkpoint before stopping (resume continues from it)" })
      .option("grace", { type: "number", default: 0, describe: "seconds ranks get to stop before SIGTERM (default: the spec's failure.grace_seconds)" })
      .example("$0 cancel j-20261123-101500-a1b2c3 --checkpoint --server 127.0.0.1:7070", "save, then stop"),
  handler: async (args) => {
    const client = await connectLive(args);
    try {
      const job = await client.cancel(args.job, args.checkpoint, args.grace);
      if (args.json) printJson(jobSummary(job));
      else out(`${job.id}: ${stateName(job.state)}${job.reason ? ` - ${job.reason}` : ""}`);
    } finally {
      client.close();
    }
  },
});
