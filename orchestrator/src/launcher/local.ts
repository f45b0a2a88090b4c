/**
 * Local launcher: worker ranks as child processes of the orchestrator.
 * Each rank is the leader of its own process group (detached), so teardown
 * reaches every process it started (data loader threads, subprocesses).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { COMMAND_PYTHON_NAMES, type NodeSpec } from "../domain/index.js";
import { forEachLine } from "./lines.js";
import { SparePool, type SpareProcess, type SpareRequest } from "./spares.js";
import { trackLive, type ExitInfo, type LaunchedProcess, type LaunchRequest, type Launcher } from "./types.js";

export class LocalLauncher implements Launcher {
  readonly kind = "local" as const;
  private readonly live = new Set<LaunchedProcess>();
  /** Warm spares: `python -m clipfleet_worker spare` children, handed a rank over their stdin. */
  readonly spares: SparePool;

  constructor() {
    this.spares = new SparePool(Date.now, (req) => this.spawnSpare(req));
  }

  launch(req: LaunchRequest): Promise<LaunchedProcess> {
    const warm = this.spares.adopt(req);
    if (warm) {
      trackLive(this.live, warm, req.onExit);
      return Promise.resolve(warm);
    }
    const [program, ...args] = req.command ? commandArgv(req.command.argv, req.python) : [req.python, "-m", "clipfleet_worker", "run"];
    const child = spawn(program!, args, {
      cwd: req.command?.cwd ?? req.workdir,
      env: { ...process.env, ...req.env, ...req.secrets, PYTHONPATH: prependPath(req.workdir, process.env.PYTHONPATH) },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return started(child, req.python).then(({ pid, exited }) => {
      forEachLine(child.stdout, (line) => req.onOutput("stdout", line));
      forEachLine(child.stderr, (line) => req.onOutput("stderr", line));
      return trackLive(this.live, { pid, exited, signal: groupSignaller(pid) }, req.onExit);
    });
  }

  /** One spare: the worker runtime's `spare` command, in its own process group, its stdin a pipe for the hand-over. */
  private spawnSpare(req: SpareRequest): Promise<SpareProcess> {
    const child = spawn(req.python, ["-m", "clipfleet_worker", "spare"], {
      cwd: req.workdir,
      env: { ...process.env, ...req.env, PYTHONPATH: prependPath(req.workdir, process.env.PYTHONPATH) },
      detached: true,
      stdio: ["pipe", "pipe", "pipe"],
    });
    return started(child, req.python).then(({ pid, exited }) => {
      // A write to a spare that has just died is an EPIPE on the pipe, not a crash of the orchestrator.
      child.stdin.on("error", () => undefined);
      const spare: SpareProcess = {
        pid,
        exited,
        signal: groupSignaller(pid),
        onLine: () => undefined,
        become: (env) => {
          if (child.exitCode !== null || child.signalCode !== null || child.stdin.destroyed) return false;
          child.stdin.end(JSON.stringify({ env }) + "\n");
          return true;
        },
      };
      forEachLine(child.stdout, (line) => spare.onLine("stdout", line));
      forEachLine(child.stderr, (line) => spare.onLine("stderr", line));
      return spare;
    });
  }

  freePort(_node: NodeSpec): Promise<number> {
    return freeLocalPort();
  }

  /** Kills every process group still running (the orchestrator is going away). */
  async close(): Promise<void> {
    await this.spares.close();
    const all = [...this.live];
    for (const p of all) signalGroup(p.pid, "SIGKILL");
    await Promise.all(all.map((p) => p.exited));
  }
}

/** Resolves once `child` runs, with its pid and a promise of its end ('close': after its pipes drained, so its last lines come first). */
function started(child: ChildProcess, python: string): Promise<{ pid: number; exited: Promise<ExitInfo> }> {
  return new Promise((resolve, reject) => {
    child.once("error", (err) => reject(err));
    child.once("spawn", () => {
      const pid = child.pid;
      if (pid === undefined) {
        reject(new Error(`could not start ${python}`));
        return;
      }
      resolve({ pid, exited: new Promise<ExitInfo>((res) => child.once("close", (code, signal) => res({ code, signal }))) });
    });
  });
}

/** A command's argv with `python`/`python3` replaced by the worker interpreter. */
export function commandArgv(argv: readonly string[], python: string): string[] {
  const [first, ...rest] = argv;
  return [first !== undefined && COMMAND_PYTHON_NAMES.has(first) ? python : (first ?? python), ...rest];
}

/** `signal` of a process whose group `pid` leads. */
function groupSignaller(pid: number): (sig: NodeJS.Signals) => Promise<void> {
  return (sig) => {
    signalGroup(pid, sig);
    return Promise.resolve();
  };
}

/** Signal a process group, ignoring one that is already gone. */
export function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
export function freeLocalPort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function prependPath(dir: string, existing: string | undefined): string {
  return existing ? `${dir}:${existing}` : dir;
}
