/** Options shared by the commands that start an orchestrator (run, resume without --server, server). */
import type { Argv } from "yargs";
import type { EmbedOptions, GlobalArgs } from "./context.js";

export interface OrchestratorArgs {
  listen: string;
  "metrics-listen"?: string;
  "metrics-retention"?: number;
  store?: string;
  nats?: string;
  inventory?: string;
  "known-hosts"?: string;
  advertise?: string;
}

export function orchestratorOptions<T extends GlobalArgs>(y: Argv<T>, defaultListen: string): Argv<T & OrchestratorArgs> {
  return y
    .option("listen", { type: "string", default: defaultListen, describe: "gRPC address to serve the control API and the worker gateway on (HOST:PORT, port 0: any)" })
    .option("metrics-listen", { type: "string", describe: "serve Prometheus metrics on HOST:PORT (/metrics)" })
    .option("metrics-retention", { type: "number", describe: "seconds a finished job's metric series stay exported (default 3600)" })
    .option("store", { type: "string", describe: "job store: file (default, under --state-dir) or nats://HOST:PORT (JetStream key-value)" })
    .option("nats", { type: "string", describe: "publish job events on NATS at this URL (subjects clipfleet.jobs.<id>.events)" })
    .option("inventory", { type: "string", describe: "nodes.yaml describing the fleet (default: this machine)" })
    .option("known-hosts", { type: "string", describe: "known_hosts file for SSH nodes (default ~/.ssh/known_hosts)" })
    .option("advertise", { type: "string", describe: "host workers use to reach this orchestrator (default: the listen host)" });
}

export function embedOptions(args: GlobalArgs & OrchestratorArgs, embedded: boolean, scope: string[] = []): EmbedOptions {
  return {
    stateDir: args["state-dir"],
    listen: args.listen,
    advertise: args.advertise ?? null,
    metricsListen: args["metrics-listen"] ?? null,
    metricsRetentionSeconds: args["metrics-retention"],
    store: args.store ?? null,
    nats: args.nats ?? null,
    inventory: args.inventory ?? null,
    knownHosts: args["known-hosts"] ?? null,
    python: args.python ?? null,
    embedded,
    scope,
  };
}
