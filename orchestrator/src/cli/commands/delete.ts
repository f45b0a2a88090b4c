/**
 * `clipfleet delete JOB [--keep-checkpoints] [--force]`: remove an ended job
 * (record, logs, step history, metric series and, unless kept, its checkpoint
 * directories), through --server, a `clipfleet run` on the state dir, or the
 * state dir itself.
 */
import type { Command } from "../command.js";
import { note, out, printJson } from "../context.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";
import { fmtBytes, stateName } from "../render.js";

interface DeleteArgs {
  job: string;
  "keep-checkpoints": boolean;
  force: boolean;
}

export const deleteCommand: Command<DeleteArgs> = (deps) => ({
  command: "delete <job>",
  describe: "Delete an ended job: its record, logs and checkpoints (refuses a live job unless --force)",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true })
      .option("keep-checkpoints", { type: "boolean", default: false, describe: "leave the job's checkpoint directories on disk (the rest goes)" })
      .option("force", { type: "boolean", default: false, describe: "cancel a live job first (waits until none of its processes is alive), then delete it" })
      .example("$0 delete j-20261123-101500-a1b2c3", "remove a finished job and its checkpoints")
      .example("$0 delete j-20261123-101500-a1b2c3 --keep-checkpoints", "keep the checkpoints, e.g. to init another job from them")
      .example("$0 delete j-20261123-101500-a1b2c3 --force --server 127.0.0.1:7070", "cancel a running job, then delete it"),
  handler: async (args) => {
    await connectOrOpen(
      deps,
      args,
      async (client) => {
        // Resolved once (a prefix or a name), so the cancel and the delete reach the same job; a job whose
        // deletion was interrupted is hidden from references, and its exact id (as the error says) finishes it.
        let id: string;
        try {
          id = (await resolveJob(client, args.job, args)).id;
        } catch (err) {
          if (!isInterruptedDelete(err)) throw err;
          id = args.job;
        }
        if (args.force) {
          const job = await client.cancel(id, false, 0);
          if (!args.json && job.state !== undefined) note(`${job.id}: ${stateName(job.state)}`);
        }
        const r = await client.delete(id, args["keep-checkpoints"]);
        if (args.json) printJson({ deleted: r.jobId, freedBytes: r.freedBytes, checkpointsKept: r.checkpointsKept });
        else out(`deleted ${r.jobId}: freed ${fmtBytes(r.freedBytes)}${r.checkpointsKept ? " (checkpoints kept)" : ""}`);
      },
      { reconcile: args.force, writes: true },
    );
  },
});

/** The NOT_FOUND of a job whose deletion began and did not finish (the ledger's message). */
function isInterruptedDelete(err: unknown): boolean {
  return err instanceof Error && /its deletion was interrupted/.test(err.message);
}
