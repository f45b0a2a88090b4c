/** `clipfleet checkpoint JOB` (save now) and `clipfleet checkpoints JOB` (list). */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { resolveJob } from "../job-ref.js";
import { connectLive, connectOrOpen } from "../offline.js";
import { fmtBytes, table } from "../render.js";

export const checkpointCommand: Command<{ job: string }> = () => ({
  command: "checkpoint <job>",
  describe: "Ask a running job to save a checkpoint now (all ranks save after the same step)",
  builder: (y) => y.positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" }).example("$0 checkpoint j-20261123-101500-a1b2c3 --server 127.0.0.1:7070", "save soon"),
  handler: async (args) => {
    const client = await connectLive(args);
    try {
      const r = await client.requestCheckpoint((await resolveJob(client, args.job, args)).id);
      if (args.json) printJson(r);
      else out(`${r.jobId}: stage ${r.stage} will save after step ${r.step}`);
    } finally {
      client.close();
    }
  },
});

export const checkpointsCommand: Command<{ job: string; all: boolean }> = (deps) => ({
  command: "checkpoints <job>",
  describe: "List a job's checkpoints (committed ones can be resumed from; untrusted ones, whose manifest this orchestrator did not sign, cannot)",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .option("all", { type: "boolean", default: false, describe: "include corrupt and deleted ones (untrusted ones are always shown)" })
      .example("$0 checkpoints j-20261123-101500-a1b2c3 --json", "as JSON"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const list = (await client.checkpoints((await resolveJob(client, args.job, args)).id)).checkpoints.filter((c) => args.all || c.status === "committed" || c.status === "untrusted");
      if (args.json) {
        printJson(list);
        return;
      }
      out(
        table(
          ["STAGE", "STEP", "STATUS", "SIZE", "COMMITTED", "DIR"],
          list.map((c) => [c.stage, String(c.step), c.status + (c.reason ? ` (${c.reason})` : ""), fmtBytes(Number(c.sizeBytes)), new Date(Number(c.committedAtMs)).toISOString().slice(0, 19), c.dir]),
        ),
      );
    });
  },
});

