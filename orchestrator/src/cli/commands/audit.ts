/** `clipfleet audit JOB`: which samples each epoch consumed, counting only the final trajectory. */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";
import { table } from "../render.js";

interface EpochAudit {
  epoch: number;
  expected: number;
  unique: number;
  duplicates: number;
  missing: number;
  dropped: number;
}

/** task recaption's audit of a stage (jobs/datasets.ts RecaptionAudit). */
interface RecaptionAudit {
  stage: string;
  recaption: {
    inputs: number | null;
    committed: number;
    duplicates: number;
    missing: number | null;
    shards: { input: string; output: string; sha256: string; bytes: number; samples: number; attempt: number; rank: number }[];
  };
}

export const auditCommand: Command<{ job: string }> = (deps) => ({
  command: "audit <job>",
  describe: "Report per epoch how many samples were consumed once, twice or never (needs data.audit: true); for task recaption, each input shard's committed output (digest, attempt, rank)",
  builder: (y) => y.positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" }).example("$0 audit j-20261123-101500-a1b2c3 --json", "as JSON"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const report = JSON.parse((await client.audit((await resolveJob(client, args.job, args)).id)).json) as { stages: ({ stage: string; epochs: EpochAudit[] } | RecaptionAudit)[] };
      if (args.json) {
        printJson(report);
        return;
      }
      for (const s of report.stages) {
        out(`stage ${s.stage}:`);
        if ("recaption" in s) {
          const r = s.recaption;
          out(`  input shards ${r.inputs ?? "?"}, committed ${r.committed}, committed twice ${r.duplicates}, not yet ${r.missing ?? "?"}`);
          out(table(["INPUT", "OUTPUT", "SHA256", "BYTES", "SAMPLES", "ATTEMPT", "RANK"], r.shards.map((x) => [x.input, x.output, x.sha256.slice(0, 16), x.bytes, x.samples, x.attempt, x.rank].map(String))));
          continue;
        }
        out(
          table(
            ["EPOCH", "EXPECTED", "UNIQUE", "DUPLICATES", "MISSING", "DROPPED"],
            s.epochs.map((e) => [e.epoch, e.expected, e.unique, e.duplicates, e.missing, e.dropped].map(String)),
          ),
        );
      }
    });
  },
});
