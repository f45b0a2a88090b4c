/** `clipfleet server`: a long-running orchestrator serving the control API, the worker gateway and metrics. */
import type { Command } from "../command.js";
import { note } from "../context.js";
import { embedOptions, orchestratorOptions, type OrchestratorArgs } from "../embedded.js";

export const serverCommand: Command<OrchestratorArgs> = (deps) => ({
  command: "server",
  describe: "Run the orchestrator as a server (jobs survive restarts: running ones resume from their last checkpoint)",
  builder: (y) =>
    orchestratorOptions(y, "127.0.0.1:7070")
      .example("$0 server --state-dir /var/lib/clipfleet --listen 0.0.0.0:7070 --metrics-listen 0.0.0.0:9400", "serve on all interfaces")
      .example("$0 server --store nats://10.0.0.5:4222 --nats nats://10.0.0.5:4222 --inventory nodes.yaml", "jobs in JetStream, events on NATS, a fleet over SSH"),
  handler: async (args) => {
    const orch = await deps.embed(embedOptions(args, false));
    note(`clipfleet server ${deps.version}: listening on ${orch.address}${orch.metricsAddress ? `, metrics on http://${orch.metricsAddress}/metrics` : ""}, state in ${args["state-dir"]}`);
    await new Promise<void>((resolve) => {
      const stop = (sig: NodeJS.Signals): void => {
        note(`clipfleet server: ${sig}, shutting down (running jobs continue when the server starts again)`);
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
        resolve();
      };
      process.on("SIGINT", stop);
      process.on("SIGTERM", stop);
    });
    await orch.close();
  },
});
