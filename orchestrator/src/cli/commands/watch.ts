/** `clipfleet watch JOB`: follow a job's events and progress until it ends. */
import type { Command } from "../command.js";
import { out } from "../context.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";
import { followJob } from "../follow.js";
import { renderEvent, stateName } from "../render.js";
import { JobState } from "../../gen/clipfleet/v1/control.js";

export const watchCommand: Command<{ job: string; from: number }> = (deps, state) => ({
  command: "watch <job>",
  describe: "Follow a job's events (state changes, checkpoints, evaluations) and progress until it ends",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .option("from", { type: "number", default: 0, describe: "replay stored events from this sequence number" })
      .example("$0 watch j-20261123-101500-a1b2c3 --server 127.0.0.1:7070", "follow a job of a server")
      .example("$0 watch j-20261123-101500-a1b2c3 --json", "one JSON event per line"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const jobId = (await resolveJob(client, args.job, args)).id;
      const ac = new AbortController();
      const onSig = (): void => ac.abort();
      process.once("SIGINT", onSig);
      try {
        if (args.json) {
          // JSON Lines: one event per line, so a consumer can act on each as it arrives.
          await client.watch(jobId, (e) => out(JSON.stringify({ ...e, data: JSON.parse(e.dataJson) as unknown, dataJson: undefined, state: stateName(e.state) })), args.from, ac.signal);
          return;
        }
        const final = await followJob(client, jobId, { showEvents: true, signal: ac.signal, fromSeq: args.from });
        out(`${final.id}: ${stateName(final.state)}${final.reason ? ` - ${final.reason}` : ""}`);
        state.exitCode = final.state === JobState.JOB_STATE_SUCCEEDED || ac.signal.aborted ? 0 : 1;
      } finally {
        process.off("SIGINT", onSig);
      }
    });
  },
});

export { renderEvent };
