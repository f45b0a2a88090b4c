/**
 * Child processes of the benchmarks: the CLI, Python scripts in bench/, and
 * the benchmarks' own Node entry points (each measured in a process of its
 * own, so one benchmark's heap or threads never colour another's figures).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PYTHON, ROOT } from "../../tests/helpers/cli.js";

export { BIN, PYTHON, ROOT, tinyDataset, waitFor } from "../../tests/helpers/cli.js";

/** The worker runtime (PYTHONPATH of every Python script here). */
export const WORKER_RUNTIME = join(ROOT, "worker-runtime");
/** Python scripts live next to the TypeScript sources (bench/), not in dist. */
export const BENCH_SRC = join(ROOT, "bench");
/** Compiled benchmark entry points (dist/bench). */
export const BENCH_DIST = join(ROOT, "dist", "bench");

/** What a finished child left behind. */
export interface ProcResult {
  readonly code: number | null;
  readonly signal: string | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion, capturing its output; SIGKILLs it after `timeoutMs`. */
export function runProcess(cmd: string, args: readonly string[], opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<ProcResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 30 * 60_000);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The last non-empty stdout line of a successful child, parsed as JSON; throws with its stderr otherwise. */
export function lastJsonLine<T>(what: string, r: ProcResult): T {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code ?? r.signal}):\n${r.stderr.slice(-4000)}`);
  const line = r.stdout.trim().split("\n").at(-1) ?? "";
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`${what}: expected a JSON line at the end of its output, got: ${line.slice(0, 200)}\n${r.stderr.slice(-2000)}`);
  }
}

/** Runs bench/<script> with the worker runtime importable; returns its final JSON line. */
export async function runPythonJson<T>(script: string, args: readonly string[], env: Record<string, string> = {}, timeoutMs?: number): Promise<T> {
  const r = await runProcess(PYTHON, [join(BENCH_SRC, script), ...args], {
    cwd: WORKER_RUNTIME,
    env: { PYTHONPATH: WORKER_RUNTIME, PYTHONUNBUFFERED: "1", ...env },
    ...(timeoutMs ? { timeoutMs } : {}),
  });
  return lastJsonLine<T>(script, r);
}

/** Runs dist/bench/<entry> in a fresh Node process (with `nodeArgs`); returns its final JSON line. */
export async function runNodeJson<T>(entry: string, args: readonly string[], nodeArgs: readonly string[] = [], timeoutMs?: number): Promise<T> {
  const r = await runProcess(process.execPath, [...nodeArgs, join(BENCH_DIST, entry), ...args], timeoutMs ? { timeoutMs } : {});
  return lastJsonLine<T>(entry, r);
}

/** A fresh scratch directory under the system temp dir, and its removal. */
export function scratchDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `clipfleet-bench-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
