/** `clipfleet submit SPEC`: hand a job to a running server. */
import type { Command } from "../command.js";
import { connect, out, printJson } from "../context.js";
import { followJob } from "../follow.js";
import { jobSummary, stateName } from "../render.js";
import { readSpecInput } from "../spec-input.js";
import { JobState } from "../../gen/clipfleet/v1/control.js";

interface SubmitArgs {
  spec: string;
  follow: boolean;
}

export const submitCommand: Command<SubmitArgs> = (deps, state) => ({
  command: "submit <spec>",
  describe: "Submit a job spec to a server (--server) and print its id",
  builder: (y) =>
    y
      .positional("spec", { type: "string", demandOption: true, describe: "job spec (YAML or JSON)" })
      .option("follow", { alias: "f", type: "boolean", default: false, describe: "follow the job until it ends" })
      .example("$0 submit spec.yaml --server 10.0.0.5:7070", "queue a job")
      .example("CLIPFLEET_SERVER=10.0.0.5:7070 $0 submit spec.yaml -f", "queue and follow"),
  handler: async (args) => {
    const input = readSpecInput(args.spec, deps.presetsPath);
    const client = await connect(args);
    try {
      const job = await client.submit(input.specJson, input.specPath, input.baseDir);
      if (!args.follow) {
        if (args.json) printJson({ jobId: job.id, name: job.name, state: stateName(job.state) });
        else out(job.id);
        return;
      }
      const final = await followJob(client, job.id, { showEvents: !args.json });
      if (args.json) printJson(jobSummary(final));
      else out(`${final.id}: ${stateName(final.state)}${final.reason ? ` - ${final.reason}` : ""}`);
      state.exitCode = final.state === JobState.JOB_STATE_SUCCEEDED ? 0 : 1;
    } finally {
      client.close();
    }
  },
});
