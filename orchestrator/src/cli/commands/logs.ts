/** `clipfleet logs JOB [-f]`: what the ranks printed, and the orchestrator's lines about the job; -f adds the live progress. */
import type { Command } from "../command.js";
import { out } from "../context.js";
import { stepSample } from "../follow.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";
import { ProgressView } from "../progress.js";

interface LogsArgs {
  job: string;
  follow: boolean;
  stage?: string;
  rank?: number;
  tail: number;
}

export const logsCommand: Command<LogsArgs> = (deps) => ({
  command: "logs <job>",
  describe: "Print a job's logs (all ranks, all attempts); -f follows until the job ends",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .option("follow", { alias: "f", type: "boolean", default: false, describe: "keep printing new lines until the job ends" })
      .option("stage", { type: "string", describe: "only this stage" })
      .option("rank", { type: "number", describe: "only the lines of this rank (the orchestrator's own lines show as rank -1 and are kept only without --rank)" })
      .option("tail", { type: "number", default: 0, describe: "only the last N stored lines" })
      .example("$0 logs j-20261123-101500-a1b2c3 -f --rank 0", "follow rank 0"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const jobId = (await resolveJob(client, args.job, args)).id;
      const ac = new AbortController();
      const onSig = (): void => ac.abort();
      process.once("SIGINT", onSig);
      // Following: the job's progress too, as a bar under the lines on a terminal (periodic lines on stderr otherwise).
      const view = args.follow && !args.json ? new ProgressView({ stream: process.stderr, plain: process.env.CI === "true" }) : null;
      const progressAc = new AbortController();
      const progress = view
        ? client
            .watch(jobId, (e) => {
              const sample = stepSample(e);
              if (sample) view.update(sample);
            }, 0, progressAc.signal)
            .catch(() => undefined) // the progress is an extra: the log stream reports any error itself
        : null;
      try {
        await client.logs(
          { jobId, follow: args.follow, stage: args.stage ?? "", rank: args.rank ?? -1, tail: args.tail },
          (l) => {
            if (args.json) out(JSON.stringify(l)); // JSON Lines: one log line per line
            else {
              const who = l.rank < 0 ? "orchestrator" : `rank ${l.rank}`;
              const t = new Date(Number(l.tsMs)).toISOString().slice(11, 23);
              const line = `${t} [${l.stage || "-"}/a${l.attempt} ${who}] ${l.line}`;
              if (view) view.around(() => out(line));
              else out(line);
            }
          },
          ac.signal,
        );
      } finally {
        progressAc.abort();
        await progress;
        view?.finish();
        process.off("SIGINT", onSig);
      }
    });
  },
});
