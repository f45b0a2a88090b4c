/** `clipfleet list`: every job, newest last. */
import type { Command } from "../command.js";
import { connectOrOpen } from "../offline.js";
import { MAX_REPLY_BYTES } from "../../domain/index.js";
import { note, out, printJson } from "../context.js";
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
      const { jobs, omitted } = await client.listJobs([], args.limit);
      // To stderr, so `list --json | jq` still gets a plain array.
      if (omitted > 0) note(`${omitted} older job${omitted === 1 ? "" : "s"} not shown: the reply holds what fits in ${MAX_REPLY_BYTES / 1024 / 1024} MiB (use --limit)`);
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
