/**
 * Launchers start one worker process per rank on a node and tear it down.
 * The jobs module decides what to start and when; a launcher only knows how.
 */
import type { NodeSpec } from "../domain/index.js";
import type { SparePool } from "./spares.js";

/** How a process ended. */
export interface ExitInfo {
  /** Exit code, or null when killed by a signal. */
  readonly code: number | null;
  readonly signal: string | null;
  /**
   * Set when the launcher lost track of the process (the SSH connection to
   * its node dropped): why. The jobs module counts it as a node failure.
   */
  readonly lost?: string;
  /**
   * With `lost`: the node that failed when it is not this rank's own (Slurm
   * ends a whole allocation when one of its nodes goes down, and every
   * rank's step ends with it): the node to blame and count towards quarantine.
   */
  readonly lostNode?: string;
}

/** Everything needed to start one rank. */
export interface LaunchRequest {
  readonly jobId: string;
  readonly stage: string;
  readonly attempt: number;
  readonly rank: number;
  readonly node: NodeSpec;
  /** Interpreter with torch on that node. */
  readonly python: string;
  /** Directory containing the clipfleet_worker package on that node. */
  readonly workdir: string;
  /**
   * task command: the user's program (no shell) and the directory it runs
   * in, instead of the worker; a first item `python`/`python3` means `python`
   * above. The worker runtime stays on PYTHONPATH, for its Python API.
   */
  readonly command?: { readonly argv: readonly string[]; readonly cwd: string } | null;
  /** Environment for the worker (rank variables, orchestrator address). */
  readonly env: Readonly<Record<string, string>>;
  /**
   * Secrets (the job token). Never placed on a command line, where `ps` would
   * show them: the local launcher passes them in the environment of the
   * child, the SSH launcher over the channel's stdin.
   */
  readonly secrets: Readonly<Record<string, string>>;
  /** Hand the rank to a warm spare of this owner (`${jobId}/${stage}`) on the node if one is alive (spares.ts). */
  readonly spareOwner?: string;
  /** Slurm: the attempt's allocation (job id) the rank runs in as a step; absent for local and SSH. */
  readonly allocation?: string;
  /** Each line the process writes, as it comes. */
  readonly onOutput: (stream: "stdout" | "stderr", line: string) => void;
  /** Called once when the process is gone (or the connection to its node is lost). */
  readonly onExit: (exit: ExitInfo) => void;
}

/** A started rank. */
export interface LaunchedProcess {
  /** Process id on its node (also its process group id). */
  readonly pid: number;
  /** Send a signal to the rank's whole process group. */
  signal(sig: NodeJS.Signals): Promise<void>;
  /** Resolves when the process is gone. */
  readonly exited: Promise<ExitInfo>;
  /** True when the rank runs in a warm spare (spares.ts) rather than a process started for it. */
  readonly warm?: boolean;
}

/**
 * Starts ranks on nodes. Lifecycle of one attempt: (Slurm only: `allocate`
 * the gang's nodes, see slurm.ts) -> `freePort` on rank 0's node -> one
 * `launch` per rank -> teardown through each process's `signal` -> (Slurm:
 * the allocation's `release`). `close` when the orchestrator goes away.
 */
export interface Launcher {
  readonly kind: "local" | "ssh" | "slurm";
  launch(req: LaunchRequest): Promise<LaunchedProcess>;
  /** A TCP port free on the node, for the rendezvous of a gang whose rank 0 runs there. */
  freePort(node: NodeSpec): Promise<number>;
  close(): Promise<void>;
  /** Warm spares of the stages running on this launcher's nodes (local and SSH; spares.ts). */
  readonly spares?: SparePool;
}

/**
 * Stop a process group: `first` (SIGTERM) then SIGKILL after `graceMs` if it
 * is still there. Resolves once the process is gone.
 */
export async function terminate(proc: LaunchedProcess, graceMs: number, first: NodeJS.Signals = "SIGTERM"): Promise<ExitInfo> {
  let done = false;
  const exited = proc.exited.then((e) => {
    done = true;
    return e;
  });
  if (graceMs <= 0 || first === "SIGKILL") {
    await proc.signal("SIGKILL");
    return exited;
  }
  await proc.signal(first);
  let timer: NodeJS.Timeout | undefined;
  const killer = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      if (!done) void proc.signal("SIGKILL").finally(resolve);
      else resolve();
    }, graceMs);
  });
  const result = await Promise.race([exited, killer.then(() => exited)]);
  clearTimeout(timer);
  return result;
}

/** Counts `proc` among a launcher's `live` processes until it exits, then tells `onExit`. */
export function trackLive(live: Set<LaunchedProcess>, proc: LaunchedProcess, onExit: (e: ExitInfo) => void): LaunchedProcess {
  live.add(proc);
  void proc.exited.then((e) => {
    live.delete(proc);
    onExit(e);
  });
  return proc;
}
