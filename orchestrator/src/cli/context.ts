/**
 * What every command shares: the injected dependencies, global options, the
 * one mapping from errors to exit codes, and output helpers.
 */
import { ClipfleetError, type ErrorCode, type NodeCheck } from "../domain/index.js";
import { loadClientTls } from "../auth/index.js";
import { ControlClient, type ClientTls } from "../client/index.js";
import type { JobService } from "../jobs/index.js";
import type { SpecPolicy } from "../spec/index.js";

/** Exit codes users' scripts rely on. */
export const EXIT = { OK: 0, JOB_FAILED: 1, INVALID: 2, UNREACHABLE: 3, NOT_ALLOWED: 4 } as const;

/** Options of an orchestrator embedded in the CLI process (run, resume) or started by `server`. */
export interface EmbedOptions {
  stateDir: string;
  /** Where the worker gateway listens (HOST:PORT, port 0: any): the address ranks dial. */
  listen: string;
  /**
   * Where the control API listens (HOST:PORT) for a server; null or absent:
   * a Unix socket in the state dir that only this user can open (embedded).
   */
  controlListen?: string | null;
  advertise?: string | null;
  metricsListen?: string | null;
  store?: string | null;
  nats?: string | null;
  /** File paths of --nats-ca, --nats-cert, --nats-key, --nats-creds, --nats-password-file, --nats-token-file and the --nats-user name: how both NATS connections authenticate (main.ts reads them). */
  natsAccess?: NatsAccessArgs | null;
  inventory?: string | null;
  knownHosts?: string | null;
  python?: string | null;
  /** ca.crt, server.crt, server.key: mutual TLS on the control port, TLS on the worker port. */
  tlsDir?: string | null;
  /** What specs submitted to a server may reach (null or absent: no policy, as for `clipfleet run`). */
  policy?: SpecPolicy | null;
  /** A server without TLS on purpose: every caller is an anonymous admin (a warning, and clipfleet_server_insecure 1). */
  insecure?: boolean;
  /** true for run/resume: only jobs of this invocation are scheduled. */
  embedded: boolean;
  scope?: string[];
  metricsRetentionSeconds?: number;
  /** Serve what the state dir holds without reconciling or scheduling anything (read commands); its lock was stale, so unfinished jobs show as interrupted. */
  readOnly?: boolean;
  /** Serve the read-only web dashboard on HOST:PORT (docs/ui.md): HTTPS with client certificates when tlsDir is set and this is a server, else a token URL. */
  uiListen?: string | null;
}

/** The --nats-* flags as given; CLIPFLEET_NATS_USER, CLIPFLEET_NATS_PASSWORD and CLIPFLEET_NATS_TOKEN are read where they are used. */
export interface NatsAccessArgs {
  ca: string | null;
  cert: string | null;
  key: string | null;
  creds: string | null;
  user: string | null;
  passwordFile: string | null;
  tokenFile: string | null;
}

export interface EmbeddedOrchestrator {
  readonly service: JobService;
  /** What the control API's clients dial: host:port (a server) or unix:PATH (embedded). */
  readonly address: string;
  /** host:port ranks dial for the worker gateway. */
  readonly workerAddress: string;
  readonly metricsAddress: string | null;
  /** The dashboard's URL (with its one-time token when it has one), or null without --ui / --ui-listen. */
  readonly dashboardUrl: string | null;
  /** The key the orchestrator signs checkpoint manifests with: its fingerprint and its public key's file, for admins. */
  readonly manifestKey: { readonly fingerprint: string; readonly publicKeyFile: string };
  close(): Promise<void>;
}

/** Provided by the composition root (main.ts). */
export interface CliDeps {
  embed(opts: EmbedOptions): Promise<EmbeddedOrchestrator>;
  readonly presetsPath: string;
  readonly workerRuntimeDir: string;
  readonly version: string;
  /** Probes every node of the inventory (default: this machine) for `clipfleet nodes check`. */
  checkNodes(opts: { inventory: string | null; knownHosts: string | null; python: string | null }): Promise<NodeCheck[]>;
  /** Runs `python -m clipfleet_worker ARGS` with the CLI's stdio; resolves to its exit code. */
  runWorkerCli(python: string | null, args: readonly string[]): Promise<number>;
}

/** Global options every command accepts. */
export interface GlobalArgs {
  server?: string;
  "state-dir": string;
  json: boolean;
  verbose: boolean;
  python?: string;
  "tls-dir"?: string;
}

const CODE_TO_EXIT: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: EXIT.INVALID,
  FAILED_PRECONDITION: EXIT.INVALID,
  ENVIRONMENT: EXIT.INVALID,
  NOT_FOUND: EXIT.UNREACHABLE,
  UNAVAILABLE: EXIT.UNREACHABLE,
  UNAUTHENTICATED: EXIT.INVALID,
  PERMISSION_DENIED: EXIT.NOT_ALLOWED,
  FENCED: EXIT.JOB_FAILED,
  JOB_FAILED: EXIT.JOB_FAILED,
  INTERNAL: EXIT.JOB_FAILED,
};

/** The one mapping from errors to exit codes. */
export function exitCodeOf(err: unknown): number {
  return err instanceof ClipfleetError ? CODE_TO_EXIT[err.code] : EXIT.JOB_FAILED;
}

/** A client for --server / CLIPFLEET_SERVER; exit 3 when it is not given or not reachable. */
export async function connect(args: GlobalArgs): Promise<ControlClient> {
  const address = args.server ?? process.env.CLIPFLEET_SERVER;
  if (!address) {
    throw new ClipfleetError("UNAVAILABLE", "no orchestrator to talk to: pass --server HOST:PORT or set CLIPFLEET_SERVER (or use `clipfleet run` to run a spec without a server)");
  }
  const client = new ControlClient(address, undefined, clientTls(args));
  await client.ping();
  return client;
}

/** The client identity of --tls-dir or CLIPFLEET_TLS_DIR (ca.crt, client.crt, client.key), or null for a plain connection. */
export function clientTls(args: GlobalArgs): ClientTls | null {
  const dir = args["tls-dir"] ?? process.env.CLIPFLEET_TLS_DIR;
  return dir ? loadClientTls(dir) : null;
}

/** Writes one line to stdout. */
export function out(line = ""): void {
  process.stdout.write(line + "\n");
}

/** Writes one line to stderr (progress, notes). */
export function note(line: string): void {
  process.stderr.write(line + "\n");
}

/** Pretty JSON for --json. */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + "\n");
}
