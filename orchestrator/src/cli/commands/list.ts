/** `clipfleet list`: every job, newest last. */
import type { Command } from "../command.js";
import { connectOrOpen } from "../offline.js";
import { out, printJson } from "../context.js";
import { jobSummary, stateName, table } from "../render.js";

export const listCommand: Command<{ limit: number }> = (deps) => ({
  command: "list",
  describe: "List jobs",
  builder: (y) =>
    y
      .option("limit", { type: "number", default: 0, describe: "show only the newest N" })
      .example("$0 list --server 127.0.0.1:7070", "jobs of a server")
      .example("$0 list --json", "jobs of ./.clipfleet as JSON"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const jobs = await client.listJobs([], args.limit);
      if (args.json) {
        printJson(jobs.map((j) => jobSummary(j)));
        return;
      }
      out(
        table(
          ["JOB", "NAME", "STATE", "STAGES", "CREATED", "REASON"],
          jobs.map((j) => [j.id, j.name, stateName(j.state), String(j.stages.length), new Date(Number(j.createdAtMs)).toISOString().slice(0, 19), j.reason]),
        ),
      );
    });
  },
});
