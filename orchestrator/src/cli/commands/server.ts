/** `clipfleet server`: a long-running orchestrator serving the control API, the worker gateway and metrics. */
import type { Command } from "../command.js";
import { note } from "../context.js";
import { embedOptions, orchestratorOptions, type OrchestratorArgs } from "../embedded.js";

export const serverCommand: Command<OrchestratorArgs> = (deps) => ({
  command: "server",
  describe: "Run the orchestrator as a server (jobs survive restarts: running ones resume from their last checkpoint)",
  builder: (y) =>
    orchestratorOptions(y, "127.0.0.1:7070", "server")
      .example("$0 certs init --dir /etc/clipfleet/tls --host head.example.org --host 10.0.0.5", "make a CA, the server's certificate and an admin identity")
      .example("$0 server --tls-dir /etc/clipfleet/tls --listen 0.0.0.0:7070 --worker-listen 0.0.0.0:7071 --metrics-listen 0.0.0.0:9400", "serve users and ranks on all interfaces over TLS")
      .example("$0 server --store nats://10.0.0.5:4222 --nats nats://10.0.0.5:4222 --inventory nodes.yaml --tls-dir DIR --listen 0.0.0.0:7070", "jobs in JetStream, events on NATS, a fleet over SSH")
      .example("$0 server --store tls://10.0.0.5:4222 --nats tls://10.0.0.5:4222 --nats-ca nats/ca.crt --nats-cert nats/client.crt --nats-key nats/client.key --nats-user clipfleet --nats-password-file /etc/clipfleet/nats-password --tls-dir DIR", "the same over TLS with a client certificate and a password (never on the command line; or CLIPFLEET_NATS_PASSWORD)"),
  handler: async (args) => {
    const opts = embedOptions(args, false);
    const orch = await deps.embed(opts);
    if (opts.insecure) note("clipfleet server: WARNING: --insecure: no TLS and no authentication; anyone who reaches the ports can run code on every node");
    note(
      `clipfleet server ${deps.version}: listening on ${orch.address} (control${opts.tlsDir ? ", mutual TLS" : ""}), workers on ${orch.workerAddress}${opts.tlsDir ? " (TLS)" : ""}` +
        `${orch.metricsAddress ? `, metrics on http://${orch.metricsAddress}/metrics` : ""}, state in ${args["state-dir"]}` +
        `; checkpoint manifests signed with ${orch.manifestKey.fingerprint} (public key: ${orch.manifestKey.publicKeyFile})`,
    );
    if (orch.dashboardUrl) note(`clipfleet server: dashboard ${orch.dashboardUrl}${opts.tlsDir ? " (a viewer's client certificate of the fleet CA)" : ""}`);
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
