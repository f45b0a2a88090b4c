/** Options shared by the commands that start an orchestrator (run, resume without --server, server). */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Argv } from "yargs";
import { InvalidArgumentError } from "../domain/index.js";
import { DEFAULT_ALLOWED_ENV, DEFAULT_SPEC_POLICY, type SpecPolicy } from "../spec/index.js";
import type { EmbedOptions, GlobalArgs } from "./context.js";

export interface OrchestratorArgs {
  listen: string;
  "worker-listen"?: string;
  "metrics-listen"?: string;
  "metrics-retention"?: number;
  store?: string;
  nats?: string;
  "nats-ca"?: string;
  "nats-cert"?: string;
  "nats-key"?: string;
  "nats-creds"?: string;
  "nats-user"?: string;
  "nats-password-file"?: string;
  "nats-token-file"?: string;
  inventory?: string;
  "known-hosts"?: string;
  advertise?: string;
  insecure?: boolean;
  "allow-env"?: string[];
  "allow-python"?: string[];
  "max-quarantine-seconds"?: number;
  "min-quarantine-after"?: number;
  "ui-listen"?: string;
  ui?: boolean;
}

/**
 * The options of an orchestrator. A server's --listen is its control API
 * (users) and --worker-listen its worker gateway (ranks); an embedded
 * orchestrator's control API is a socket in the state dir for its own user,
 * so its --listen is where ranks dial.
 */
export function orchestratorOptions<T extends GlobalArgs>(y: Argv<T>, defaultListen: string, kind: "server" | "embedded"): Argv<T & OrchestratorArgs> {
  const base =
    kind === "server"
      ? y
          .option("listen", { type: "string", default: defaultListen, describe: "address of the control API, for users and the CLI (HOST:PORT)" })
          .option("worker-listen", { type: "string", describe: "address of the worker gateway, for ranks (HOST:PORT; default: the --listen host, any free port)" })
          .option("insecure", { type: "boolean", default: false, describe: "serve a non-loopback address without TLS: no authentication, every caller is an admin (not for a shared network)" })
          .option("allow-env", { type: "string", array: true, describe: `policy: a worker.env name specs may set besides the defaults (${DEFAULT_ALLOWED_ENV.slice(0, 4).join(", ")}, ...); NAME or PREFIX_*` })
          .option("allow-python", { type: "string", array: true, describe: "policy: an interpreter worker.python may name (default: none; ranks use the node's)" })
          .option("max-quarantine-seconds", { type: "number", default: DEFAULT_SPEC_POLICY.maxQuarantineSeconds, describe: "policy: the longest node quarantine a spec may ask for" })
          .option("min-quarantine-after", { type: "number", default: DEFAULT_SPEC_POLICY.minQuarantineAfter, describe: "policy: the fewest failures before quarantine a spec may ask for (0, never, is always allowed)" })
          .option("ui-listen", { type: "string", describe: "serve the read-only web dashboard on HOST:PORT (HTTPS with a viewer's client certificate under --tls-dir, else a token URL; docs/ui.md)" })
          .option("ui", { type: "boolean", default: false, hidden: true })
      : y
          .option("listen", {
            type: "string",
            default: defaultListen,
            describe: "address of the worker gateway ranks dial (HOST:PORT, port 0: any); the control API is a socket in the state dir, for this user only",
          })
          .option("ui-listen", { type: "string", describe: "with --ui: the dashboard's address (a loopback HOST:PORT; default 127.0.0.1, any free port)" })
          .option("ui", { type: "boolean", default: false, describe: "serve the read-only web dashboard on 127.0.0.1 and print its URL (with a one-time token; docs/ui.md)" });
  return base
    .option("metrics-listen", { type: "string", describe: "serve Prometheus metrics on HOST:PORT (/metrics)" })
    .option("metrics-retention", { type: "number", describe: "seconds a finished job's metric series stay exported (default 3600)" })
    .option("store", { type: "string", describe: "job store: file (default, under --state-dir) or nats://HOST:PORT, tls://HOST:PORT (JetStream key-value; ?bucket=&replicas=&history=)" })
    .option("nats", { type: "string", describe: "publish job events on NATS at this URL, nats://HOST:PORT or tls://HOST:PORT (subjects clipfleet.jobs.<id>.events)" })
    // One access for both NATS connections (--store and --nats), named as the nats CLI names them.
    .option("nats-ca", { type: "string", describe: "NATS: CA certificate (PEM) that signed the NATS server's certificate; TLS is then required" })
    .option("nats-cert", { type: "string", describe: "NATS: client certificate (PEM) for mutual TLS, with --nats-key" })
    .option("nats-key", { type: "string", describe: "NATS: the client certificate's private key (PEM, mode 0600)" })
    .option("nats-creds", { type: "string", describe: "NATS: a .creds file (user JWT and nkey seed, mode 0600)" })
    .option("nats-user", { type: "string", describe: "NATS: user name (or CLIPFLEET_NATS_USER); the password from --nats-password-file or CLIPFLEET_NATS_PASSWORD" })
    .option("nats-password-file", { type: "string", describe: "NATS: file (mode 0600) holding the user's password; never put it on a command line" })
    .option("nats-token-file", { type: "string", describe: "NATS: file (mode 0600) holding an authorization token (or CLIPFLEET_NATS_TOKEN)" })
    .option("inventory", { type: "string", describe: "nodes.yaml describing the fleet (default: this machine)" })
    .option("known-hosts", { type: "string", describe: "known_hosts file for SSH nodes (default ~/.ssh/known_hosts)" })
    .option("advertise", { type: "string", describe: "host workers use to reach this orchestrator (default: the worker gateway's listen host)" });
}

/** `run --ui`'s dashboard address: loopback only (its token travels in plain HTTP), default any free port. */
function embeddedUiListen(args: OrchestratorArgs): string | null {
  const listen = args["ui-listen"];
  if (listen && !args.ui) throw new InvalidArgumentError("--ui-listen: has no effect without --ui", "ui-listen");
  if (!args.ui) return null;
  if (listen && !isLoopback(hostOf(listen))) throw new InvalidArgumentError(`--ui-listen: ${listen} is reachable from other machines; run's dashboard serves loopback only (a server's --ui-listen with --tls-dir serves others)`, "ui-listen");
  return listen ?? "127.0.0.1:0";
}

/** The host of HOST:PORT (brackets of an IPv6 address removed). */
export function hostOf(address: string): string {
  return address.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
}

/** Whether a listen host is reachable only from this machine. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

export function embedOptions(args: GlobalArgs & OrchestratorArgs, embedded: boolean, scope: string[] = []): EmbedOptions {
  const common = {
    stateDir: args["state-dir"],
    advertise: args.advertise ?? null,
    metricsListen: args["metrics-listen"] ?? null,
    metricsRetentionSeconds: args["metrics-retention"],
    store: args.store ?? null,
    nats: args.nats ?? null,
    natsAccess: {
      ca: args["nats-ca"] ?? null,
      cert: args["nats-cert"] ?? null,
      key: args["nats-key"] ?? null,
      creds: args["nats-creds"] ?? null,
      user: args["nats-user"] ?? null,
      passwordFile: args["nats-password-file"] ?? null,
      tokenFile: args["nats-token-file"] ?? null,
    },
    inventory: args.inventory ?? null,
    knownHosts: args["known-hosts"] ?? null,
    python: args.python ?? null,
    embedded,
    scope,
  };
  // An empty CLIPFLEET_TLS_DIR means none, as an unset one.
  const tlsDir = (args["tls-dir"] ?? process.env.CLIPFLEET_TLS_DIR) || null;
  // `run`: the control API is a socket only this user opens; with --tls-dir the ranks (over SSH too) reach
  // the worker port over TLS. CLIPFLEET_TLS_DIR often names a client identity only (for a remote server):
  // `run` takes it as a server's certificates only when it holds them.
  if (embedded) {
    const own = args["tls-dir"] || (tlsDir && existsSync(join(tlsDir, "server.crt")) ? tlsDir : null);
    return { ...common, listen: args.listen, controlListen: null, tlsDir: own || null, uiListen: embeddedUiListen(args) };
  }
  const workerListen = args["worker-listen"] ?? `${args.listen.replace(/:\d+$/, "")}:0`;
  // Secure by default: a server others can reach authenticates them, unless told not to.
  if (args.ui) throw new InvalidArgumentError("--ui: a server's dashboard is --ui-listen HOST:PORT (--ui is for run, launch and resume)", "ui");
  const uiListen = args["ui-listen"] ?? null;
  const exposed = [args.listen, workerListen, ...(uiListen ? [uiListen] : [])].find((a) => !isLoopback(hostOf(a)));
  if (exposed && !tlsDir && !args.insecure) {
    throw new InvalidArgumentError(
      `--listen: ${exposed} is reachable from other machines, and no --tls-dir was given: make certificates with \`clipfleet certs init --dir DIR --host HOST\` and pass --tls-dir DIR (or --insecure to serve without authentication)`,
      "listen",
    );
  }
  const policy: SpecPolicy = {
    allowEnv: args["allow-env"] ?? [],
    allowPython: args["allow-python"] ?? [],
    maxQuarantineSeconds: args["max-quarantine-seconds"] ?? DEFAULT_SPEC_POLICY.maxQuarantineSeconds,
    minQuarantineAfter: args["min-quarantine-after"] ?? DEFAULT_SPEC_POLICY.minQuarantineAfter,
  };
  for (const [flag, v] of [["max-quarantine-seconds", policy.maxQuarantineSeconds], ["min-quarantine-after", policy.minQuarantineAfter]] as const) {
    if (!Number.isFinite(v) || v < 0 || v > 31_536_000) throw new InvalidArgumentError(`--${flag}: expected a number from 0 to 31536000, got ${v}`, flag);
  }
  return { ...common, listen: workerListen, controlListen: args.listen, tlsDir, insecure: args.insecure === true, policy, uiListen };
}
