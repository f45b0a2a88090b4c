/** `clipfleet status JOB`: stages, ranks, recent events. */
import type { Command } from "../command.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";
import { out, printJson } from "../context.js";
import { jobSummary, renderStatus } from "../render.js";

export const statusCommand: Command<{ job: string }> = (deps) => ({
  command: "status <job>",
  describe: "Show a job: its stages, the ranks of the current attempt, recent events",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .example("$0 status j-20261123-101500-a1b2c3 --server 127.0.0.1:7070", "ask a server")
      .example("$0 status j-20261123-101500-a1b2c3 --state-dir .clipfleet --json", "read the state dir of `clipfleet run`"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const job = await resolveJob(client, args.job, args);
      if (args.json) printJson({ ...jobSummary(job), job: { ...job, specJson: undefined, spec: JSON.parse(job.specJson) as unknown } });
      else out(renderStatus(job, Date.now()));
    });
  },
});
