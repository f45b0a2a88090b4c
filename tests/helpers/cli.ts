/**
 * Factories for end-to-end tests: run the real `bin/clipfleet`, make temp
 * dirs, write tiny specs, generate (once) the tiny synthetic dataset.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadClientTls } from "../../orchestrator/src/auth/index.js";
import { ControlClient } from "../../orchestrator/src/client/index.js";

/** The repository root (tests compile to dist/tests/helpers). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const BIN = join(ROOT, "bin", "clipfleet");
export const PYTHON = process.env.CLIPFLEET_PYTHON ?? "/usr/bin/python3";

export interface CliResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/**
 * The suites run with TLS on, as a server on a network does: one fixture CA
 * per test process (`clipfleet certs init`), handed to every CLI through
 * CLIPFLEET_TLS_DIR and to every server with --tls-dir, so control calls
 * use mutual TLS and ranks reach the worker gateway over TLS, with
 * `clipfleet run` as with `clipfleet server`. CLIPFLEET_TEST_TLS=0 runs
 * them in the clear; a test that wants no identity passes CLIPFLEET_TLS_DIR="".
 */
export const TEST_TLS = process.env.CLIPFLEET_TEST_TLS !== "0";
let fixtureTls: string | null = null;

/** The fixture CA's folder (ca.crt, client.crt/key of an admin, server.crt/key for 127.0.0.1), made on first use. */
export function fixtureTlsDir(): string {
  if (fixtureTls === null) {
    const dir = mkdtempSync(join(tmpdir(), "clipfleet-fixture-tls-"));
    execFileSync(process.execPath, [BIN, "certs", "init", "--dir", join(dir, "tls"), "--host", "127.0.0.1", "--host", "localhost"], { stdio: ["ignore", "ignore", "pipe"] });
    process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
    fixtureTls = join(dir, "tls");
  }
  return fixtureTls;
}

/** Runs `clipfleet ARGS` to completion. */
export function runCli(args: string[], opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<CliResult> {
  const child = startCli(args, opts);
  return finished(child, opts.timeoutMs ?? 10 * 60_000);
}

/** Starts `clipfleet ARGS` in the background (own process group). */
export function startCli(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): ChildProcess & { output: { stdout: string; stderr: string } } {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, CLIPFLEET_PYTHON: PYTHON, ...(TEST_TLS ? { CLIPFLEET_TLS_DIR: fixtureTlsDir() } : {}), ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  }) as ChildProcess & { output: { stdout: string; stderr: string } };
  child.output = { stdout: "", stderr: "" };
  child.stdout?.on("data", (d: Buffer) => (child.output.stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (child.output.stderr += d.toString()));
  return child;
}

/** Resolves when the child exits (kills its group after `timeoutMs`). */
export function finished(child: ChildProcess & { output: { stdout: string; stderr: string } }, timeoutMs: number): Promise<CliResult> {
  return new Promise((resolvePromise) => {
    const timer = setTimeout(() => {
      try {
        process.kill(-(child.pid ?? 0), "SIGKILL");
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout: child.output.stdout, stderr: child.output.stderr });
    });
  });
}

/** A fresh temp dir, removed by the returned cleanup. */
export function tempDir(prefix = "clipfleet-test-"): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A tiny synthetic dataset shared by the e2e tests of one run (generated once, 32 px). */
export function tinyDataset(): string {
  const out = join(tmpdir(), "clipfleet-e2e-data-v1");
  if (!existsSync(join(out, "sizes.json"))) {
    mkdirSync(out, { recursive: true });
    const r = spawnSync(PYTHON, ["-m", "clipfleet_worker", "synth", "--out", out, "--train", "1024", "--val", "128", "--shards", "4", "--seed", "0", "--size", "32"], {
      cwd: join(ROOT, "worker-runtime"),
      env: { ...process.env, PYTHONPATH: join(ROOT, "worker-runtime") },
      encoding: "utf8",
    });
    if (r.status !== 0) throw new Error(`synth failed: ${r.stderr}`);
  }
  return out;
}

/** Options of a tiny pretraining spec (32 px ViT, byte tokens). */
export interface TinySpec {
  name?: string;
  steps?: number;
  workers?: number;
  minWorkers?: number;
  batch?: number;
  everySteps?: number | null;
  extra?: string;
  env?: Record<string, string>;
  failure?: Record<string, number>;
  audit?: boolean;
  /** checkpoint.async */
  asyncSave?: boolean;
  /** checkpoint.keep_last */
  keepLast?: number;
  /** checkpoint.every_minutes */
  everyMinutes?: number;
  /** checkpoint.every: auto with this checkpoint.mtbf_prior_hours */
  everyAutoMtbfHours?: number;
  /** cluster.spares (default: the spec's default) */
  spares?: number;
}

/** The `model` and `data` sections of the tiny specs (vit-tiny over the shared dataset), `data` last so a caller may add fields to it. */
export function tinyModelAndData(captions: string): string {
  const data = tinyDataset();
  return `model:
  image: vit-tiny
  text: {preset: text-tiny, context_length: 48}
  embed_dim: 64
  tokenizer: byte
data:
  train: ${data}/train-{00000..00003}.tar
  val: ${data}/val-{00000..00000}.tar
  captions: ${captions}
`;
}

/** Writes a tiny pretraining spec over the shared dataset into `dir`; returns its path. */
export function writeTinySpec(dir: string, o: TinySpec = {}): string {
  const env = Object.entries(o.env ?? {}).map(([k, v]) => `    ${k}: "${v}"`).join("\n");
  const failure = Object.entries(o.failure ?? {}).map(([k, v]) => `  ${k}: ${v}`).join("\n");
  const text = `name: ${o.name ?? "tiny"}
task: pretrain
${tinyModelAndData("{alt: 0.5, vecap: 0.5}")}  audit: ${o.audit ? "true" : "false"}
train:
  steps: ${o.steps ?? 20}
  batch_size: ${o.batch ?? 32}
  lr: 1.0e-3
  warmup_steps: 2
cluster:
  workers: ${o.workers ?? 2}
  min_workers: ${o.minWorkers ?? o.workers ?? 2}
${o.spares !== undefined ? `  spares: ${o.spares}\n` : ""}checkpoint:
  every_steps: ${o.everySteps === undefined ? 10 : (o.everySteps ?? "null")}
${o.everyMinutes ? `  every_minutes: ${o.everyMinutes}\n` : ""}${o.everyAutoMtbfHours ? `  every: auto\n  mtbf_prior_hours: ${o.everyAutoMtbfHours}\n` : ""}${o.asyncSave ? "  async: true\n" : ""}${o.keepLast ? `  keep_last: ${o.keepLast}\n` : ""}${env ? `worker:\n  env:\n${env}\n` : ""}${failure ? `failure:\n${failure}\n` : ""}${o.extra ?? ""}`;
  const path = join(dir, `${o.name ?? "tiny"}.yaml`);
  writeFileSync(path, text);
  return path;
}

/** Whether a process is alive (and not a zombie). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = spawnSync("ps", ["-o", "stat=", "-p", String(pid)], { encoding: "utf8" }).stdout.trim();
  return stat !== "" && !stat.startsWith("Z");
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 60_000, everyMs = 100): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago (for servers that must come back on the same port). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

/** A `clipfleet server` child process. */
export interface ServerHandle {
  readonly child: ChildProcess & { output: { stdout: string; stderr: string } };
  /** 127.0.0.1:PORT, for --server and CLIPFLEET_SERVER. */
  readonly address: string;
  readonly port: number;
  readonly stateDir: string;
  /** The folder of the server's certificates and of the admin identity its clients use; "" without TLS. */
  readonly tlsDir: string;
  /** A control client with the admin identity of tlsDir (close it when done). */
  client(): ControlClient;
  /** SIGTERM, then wait for the exit (the server stops its workers); SIGKILL after `timeoutMs`. */
  stop(timeoutMs?: number): Promise<CliResult>;
  /** SIGKILL of the server process alone (a crash: its workers are not signalled by anyone), then wait for the exit. */
  kill9(): Promise<CliResult>;
}

const liveServers = new Set<ChildProcess>();
let serverExitHook = false;

/**
 * Starts `clipfleet server --state-dir D --listen 127.0.0.1:PORT --metrics-listen 127.0.0.1:0 [args]`
 * and resolves once it listens. A server still running when the test process exits is SIGKILLed.
 */
export async function startServer(opts: { stateDir: string; port?: number; args?: string[]; env?: Record<string, string>; readyTimeoutMs?: number }): Promise<ServerHandle> {
  const port = opts.port ?? (await freePort());
  const args = opts.args ?? [];
  // CLIPFLEET_TLS_DIR (the fixture's, or the caller's) gives the server its certificates unless --tls-dir names others.
  const tlsDir = args.includes("--tls-dir") ? args[args.indexOf("--tls-dir") + 1]! : (opts.env?.CLIPFLEET_TLS_DIR ?? (TEST_TLS ? fixtureTlsDir() : ""));
  const child = startCli(["server", "--state-dir", opts.stateDir, "--listen", `127.0.0.1:${port}`, "--metrics-listen", "127.0.0.1:0", ...args], { env: opts.env });
  liveServers.add(child);
  if (!serverExitHook) {
    serverExitHook = true;
    process.on("exit", () => {
      for (const c of liveServers) c.kill("SIGKILL");
    });
  }
  const done = finished(child, 60 * 60_000).then((r) => {
    liveServers.delete(child);
    return r;
  });
  let exited: CliResult | null = null;
  void done.then((r) => (exited = r));
  await waitFor(
    `clipfleet server on port ${port} to listen`,
    () => {
      if (exited) throw new Error(`clipfleet server exited (${exited.code ?? exited.signal}) before listening:\n${exited.stderr}`);
      return child.output.stderr.includes(`listening on 127.0.0.1:${port}`);
    },
    opts.readyTimeoutMs ?? 30_000,
    50,
  );
  const signalAndWait = async (sig: NodeJS.Signals, timeoutMs: number): Promise<CliResult> => {
    if (!exited) child.kill(sig);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    const r = await done;
    clearTimeout(timer);
    return r;
  };
  return {
    child,
    address: `127.0.0.1:${port}`,
    port,
    stateDir: opts.stateDir,
    tlsDir,
    client: () => new ControlClient(`127.0.0.1:${port}`, undefined, tlsDir ? loadClientTls(tlsDir) : null),
    stop: (timeoutMs = 30_000) => signalAndWait("SIGTERM", timeoutMs),
    kill9: () => signalAndWait("SIGKILL", 10_000),
  };
}
