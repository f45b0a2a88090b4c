/**
 * Test helper: a real `nats-server` child process on 127.0.0.1.
 *
 *   import { natsSkipReason, startNatsServer } from "../helpers/nats.js";
 *   describe("x", { skip: natsSkipReason() }, () => {
 *     let nats: NatsServer;
 *     before(async () => { nats = await startNatsServer({ jetstream: true }); });
 *     after(() => nats.stop());
 *     ...connect to nats.url...
 *   });
 *
 * The server listens on a port the kernel picks (`-p -1`, read back from its
 * log), so parallel test files never race for a port. A server left running
 * does not keep the test process alive and is SIGKILLed when that process
 * exits or is terminated (SIGTERM/SIGINT/SIGHUP, e.g. a runner timeout).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

/** How to start the server. */
export interface NatsServerOptions {
  /** Enable JetStream (`-js`), storing under `storeDir`. */
  jetstream?: boolean;
  /** Client port; default: one the kernel picks. Pass a stopped server's port to restart it in place. */
  port?: number;
  /** JetStream store directory; default: a fresh temp dir that stop() removes. */
  storeDir?: string;
  /** Extra command-line arguments (e.g. `["-c", file]`); they come after the helper's own. */
  args?: string[];
  /** How long to wait for "Server is ready". Default 10000 ms. */
  readyTimeoutMs?: number;
}

/** A running nats-server. */
export interface NatsServer {
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  /** The JetStream store directory when started with `jetstream: true`, else null. */
  readonly storeDir: string | null;
  readonly pid: number;
  /** Graceful shutdown (SIGTERM; SIGKILL after 5 s), then removes the temp store dir it created. Idempotent. */
  stop(): Promise<void>;
  /** Simulates a crash: SIGKILL and wait for the exit. Keeps the store dir (restart on it, then stop()). */
  kill9(): Promise<void>;
  /** Resolves with the first log line (stderr) matching `re`, including lines already printed. */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  /** The log lines so far (the last 500), for failure messages. */
  log(): string[];
}

const CANDIDATES = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"];

/** Path of the nats-server binary ($NATS_SERVER_BIN, the usual places, then $PATH), or null. */
export function natsServerBinary(): string | null {
  const fromEnv = process.env["NATS_SERVER_BIN"];
  if (fromEnv !== undefined && fromEnv !== "") return existsSync(fromEnv) ? fromEnv : null;
  for (const c of CANDIDATES) if (existsSync(c)) return c;
  for (const dir of (process.env["PATH"] ?? "").split(path.delimiter)) {
    const c = path.join(dir, "nats-server");
    if (dir !== "" && existsSync(c)) return c;
  }
  return null;
}

/** For `{ skip: natsSkipReason() }`: a reason when nats-server is missing (the test shows as skipped), else false. */
export function natsSkipReason(): string | false {
  return natsServerBinary() === null
    ? "nats-server not found (install Debian's nats-server or set NATS_SERVER_BIN)"
    : false;
}

const live = new Set<ChildProcess>();
const ownedDirs = new Set<string>();
let exitHookInstalled = false;

function killAll(): void {
  for (const child of live) child.kill("SIGKILL");
  for (const dir of ownedDirs) rmSync(dir, { recursive: true, force: true });
}

/** No server outlives the test process: on exit, and when the runner terminates a timed-out file. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", killAll);
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    process.once(signal, () => {
      killAll();
      process.kill(process.pid, signal); // the listener is gone: default action (terminate)
    });
  }
}

/** Starts nats-server and resolves once it accepts clients; rejects with its log if it exits or stalls. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const bin = natsServerBinary();
  if (bin === null) throw new Error(`cannot start nats-server: ${String(natsSkipReason())}`);
  installExitHook();

  let storeDir: string | null = null;
  let ownedDir: string | null = null;
  const args = ["-a", "127.0.0.1", "-p", String(options.port ?? -1)];
  if (options.jetstream === true) {
    storeDir = options.storeDir ?? null;
    if (storeDir === null) {
      storeDir = ownedDir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-nats-"));
      ownedDirs.add(ownedDir);
    }
    args.push("-js", "-sd", storeDir);
  }
  args.push(...(options.args ?? []));

  const child = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
  live.add(child);
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  let partial = "";
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      live.delete(child);
      resolve();
    });
  });
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    const parts = (partial + chunk).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      lines.push(line);
      if (lines.length > 500) lines.shift();
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i];
        if (w !== undefined && w.re.test(line)) {
          waiters.splice(i, 1);
          w.resolve(line);
        }
      }
    }
  });

  const waitForLog = (re: RegExp, timeoutMs = 10_000): Promise<string> => {
    const seen = lines.find((l) => re.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(new Error(`nats-server: no log line matching ${String(re)} within ${timeoutMs} ms:\n${lines.join("\n")}`));
      }, timeoutMs);
      const waiter = {
        re,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      waiters.push(waiter);
      void exited.then(() => {
        if (!waiters.includes(waiter)) return;
        waiters.splice(waiters.indexOf(waiter), 1);
        clearTimeout(timer);
        reject(new Error(`nats-server exited (code ${child.exitCode}) before logging ${String(re)}:\n${lines.join("\n")}`));
      });
    });
  };

  let port: number;
  try {
    const listening = await waitForLog(/Listening for client connections on /, options.readyTimeoutMs ?? 10_000);
    port = Number(/:(\d+)\s*$/.exec(listening)?.[1]);
    await waitForLog(/Server is ready/, options.readyTimeoutMs ?? 10_000);
  } catch (err) {
    child.kill("SIGKILL");
    await exited;
    if (ownedDir !== null) {
      rmSync(ownedDir, { recursive: true, force: true });
      ownedDirs.delete(ownedDir);
    }
    throw err;
  }
  // From here on a forgotten server must not keep the test process alive.
  child.unref();
  (child.stderr as { unref?: () => void } | null)?.unref?.();

  const signalAndWait = async (signal: NodeJS.Signals, graceMs: number): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.ref(); // keep the event loop alive until the exit is seen
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
  };

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    pid: child.pid ?? -1,
    async stop() {
      await signalAndWait("SIGTERM", 5000);
      if (ownedDir !== null) {
        rmSync(ownedDir, { recursive: true, force: true });
        ownedDirs.delete(ownedDir);
      }
    },
    kill9: () => signalAndWait("SIGKILL", 5000),
    waitForLog,
    log: () => [...lines],
  };
}
