/**
 * Local launcher: worker ranks as child processes of the orchestrator.
 * Each rank is the leader of its own process group (detached), so teardown
 * reaches every process it started (data loader threads, subprocesses).
 */
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { COMMAND_PYTHON_NAMES, type NodeSpec } from "../domain/index.js";
import { forEachLine } from "./lines.js";
import type { ExitInfo, LaunchedProcess, LaunchRequest, Launcher } from "./types.js";

export class LocalLauncher implements Launcher {
  readonly kind = "local" as const;
  private readonly live = new Set<LaunchedProcess>();

  launch(req: LaunchRequest): Promise<LaunchedProcess> {
    const [program, ...args] = req.command ? commandArgv(req.command.argv, req.python) : [req.python, "-m", "clipfleet_worker", "run"];
    const child = spawn(program!, args, {
      cwd: req.command?.cwd ?? req.workdir,
      env: { ...process.env, ...req.env, ...req.secrets, PYTHONPATH: prependPath(req.workdir, process.env.PYTHONPATH) },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return new Promise((resolve, reject) => {
      child.once("error", (err) => reject(err));
      child.once("spawn", () => {
        const pid = child.pid;
        if (pid === undefined) {
          reject(new Error(`could not start ${req.python}`));
          return;
        }
        forEachLine(child.stdout, (line) => req.onOutput("stdout", line));
        forEachLine(child.stderr, (line) => req.onOutput("stderr", line));
        const exited = new Promise<ExitInfo>((res) => {
          // 'close' waits for the pipes to drain, so the last lines are delivered first.
          child.once("close", (code, signal) => res({ code, signal }));
        });
        const proc: LaunchedProcess = {
          pid,
          exited,
          signal: (sig) => {
            signalGroup(pid, sig);
            return Promise.resolve();
          },
        };
        this.live.add(proc);
        void exited.then((e) => {
          this.live.delete(proc);
          req.onExit(e);
        });
        resolve(proc);
      });
    });
  }

  freePort(_node: NodeSpec): Promise<number> {
    return freeLocalPort();
  }

  /** Kills every process group still running (the orchestrator is going away). */
  async close(): Promise<void> {
    const all = [...this.live];
    for (const p of all) signalGroup(p.pid, "SIGKILL");
    await Promise.all(all.map((p) => p.exited));
  }
}

/** A command's argv with `python`/`python3` replaced by the worker interpreter. */
export function commandArgv(argv: readonly string[], python: string): string[] {
  const [first, ...rest] = argv;
  return [first !== undefined && COMMAND_PYTHON_NAMES.has(first) ? python : (first ?? python), ...rest];
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
