/** `clipfleet logs JOB [-f]`: what the ranks printed, and the orchestrator's lines about the job. */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { connectOrOpen } from "../offline.js";

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
      .positional("job", { type: "string", demandOption: true })
      .option("follow", { alias: "f", type: "boolean", default: false, describe: "keep printing new lines until the job ends" })
      .option("stage", { type: "string", describe: "only this stage" })
      .option("rank", { type: "number", describe: "only this rank (-1: the orchestrator's lines)" })
      .option("tail", { type: "number", default: 0, describe: "only the last N stored lines" })
      .example("$0 logs j-20261123-101500-a1b2c3 -f --rank 0", "follow rank 0") as never,
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const ac = new AbortController();
      const onSig = (): void => ac.abort();
      process.once("SIGINT", onSig);
      try {
        await client.logs(
          { jobId: args.job, follow: args.follow, stage: args.stage ?? "", rank: args.rank ?? -2, tail: args.tail },
          (l) => {
            if (args.json) printJson(l);
            else {
              const who = l.rank < 0 ? "orchestrator" : `rank ${l.rank}`;
              const t = new Date(Number(l.tsMs)).toISOString().slice(11, 23);
              out(`${t} [${l.stage || "-"}/a${l.attempt} ${who}] ${l.line}`);
            }
          },
          ac.signal,
        );
      } finally {
        process.off("SIGINT", onSig);
      }
    });
  },
});
