/**
 * Read commands work three ways: against --server / CLIPFLEET_SERVER; against
 * the orchestrator of a `clipfleet run` in progress on the same state dir
 * (found through <state-dir>/orchestrator.json); or, when none is running,
 * against the state dir itself through a read-only embedded orchestrator.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ControlClient } from "../client/index.js";
import { ClipfleetError } from "../domain/index.js";
import { clientTls, connect, note, type CliDeps, type GlobalArgs } from "./context.js";

/** What a running orchestrator writes into its state dir so CLI commands can find it. */
export interface OrchestratorInfoFile {
  /** The control API: unix:PATH (embedded) or host:port (a server). */
  address: string;
  /** host:port of the worker gateway. */
  workerAddress?: string;
  /** Whether the control API wants a client certificate (--tls-dir). */
  tls?: boolean;
  pid: number;
  metricsAddress: string | null;
  startedAtMs: number;
}

export const INFO_FILE = "orchestrator.json";

/**
 * Runs `fn` with a client of the orchestrator that has the jobs: --server, the
 * live orchestrator of the state dir, or (`live` false) one opened on the state
 * dir here. That one only reads, and shows the unfinished jobs of its dead owner
 * as interrupted; with `reconcile` it first ends them (as `resume` would), for
 * commands that change jobs (`delete --force`). `writes`: the command changes
 * the state dir, so no "showing what it last recorded" note.
 */
export async function connectOrOpen(deps: CliDeps, args: GlobalArgs, fn: (client: ControlClient, live: boolean) => Promise<void>, opts: { reconcile?: boolean; writes?: boolean } = {}): Promise<void> {
  if (args.server ?? process.env.CLIPFLEET_SERVER) {
    const client = await connect(args);
    try {
      await fn(client, true);
    } finally {
      client.close();
    }
    return;
  }
  const info = readInfo(args["state-dir"]);
  if (info && pidAlive(info.pid)) {
    const client = clientFor(info, args);
    try {
      await client.ping(3000);
      await fn(client, true);
      return;
    } catch (err) {
      if ((err as { code?: string }).code !== "UNAVAILABLE") throw err;
    } finally {
      client.close();
    }
  }
  if (!existsSync(join(args["state-dir"], "jobs"))) {
    throw new ClipfleetError("UNAVAILABLE", `no orchestrator to ask: no --server, and ${args["state-dir"]} holds no jobs (pass --state-dir or --server)`);
  }
  const orch = await deps.embed({ stateDir: args["state-dir"], listen: "127.0.0.1:0", embedded: true, scope: [], readOnly: opts.reconcile !== true });
  if (!args.json && !opts.writes) note(`clipfleet: no orchestrator is running on ${args["state-dir"]}; showing what it last recorded`);
  const client = new ControlClient(orch.address);
  try {
    await fn(client, false);
  } finally {
    client.close();
    await orch.close();
  }
}

/**
 * For commands that change a running job (cancel, checkpoint): --server, or the
 * orchestrator of a `clipfleet run` on the same state dir. Exit 3 when neither answers.
 */
export async function connectLive(args: GlobalArgs): Promise<ControlClient> {
  if (args.server ?? process.env.CLIPFLEET_SERVER) return connect(args);
  const info = readInfo(args["state-dir"]);
  if (info && pidAlive(info.pid)) {
    const client = clientFor(info, args);
    try {
      await client.ping(3000);
      return client;
    } catch (err) {
      client.close();
      if ((err as { code?: string }).code !== "UNAVAILABLE") throw err;
    }
  }
  throw new ClipfleetError(
    "UNAVAILABLE",
    `no orchestrator is running on ${args["state-dir"]} and no --server was given (a stopped job can be continued with \`clipfleet resume\`)`,
  );
}

/** A client for the orchestrator an info file names: its local socket, or a server's port (with TLS when it wants it). */
function clientFor(info: OrchestratorInfoFile, args: GlobalArgs): ControlClient {
  return new ControlClient(info.address, undefined, info.tls ? clientTls(args) : null);
}

/** The info file of the orchestrator that last ran on a state dir, or null. */
export function readInfo(stateDir: string): OrchestratorInfoFile | null {
  try {
    return JSON.parse(readFileSync(join(stateDir, INFO_FILE), "utf8")) as OrchestratorInfoFile;
  } catch {
    return null;
  }
}

/** Whether a process exists (EPERM: it does, as another user's). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
