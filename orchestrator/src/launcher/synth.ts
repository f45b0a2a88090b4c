/** Running worker-runtime tools (synthetic data, conversion) as one-off local processes. */
import { spawn } from "node:child_process";
import { EnvironmentError, synthValShards, type SynthSpec } from "../domain/index.js";
import { forEachLine } from "./lines.js";

/**
 * `python -m clipfleet_worker synth` into `synth.out`; lines of its output go
 * to `log`. Rejects with the last lines of stderr when it fails.
 */
export function runSynth(python: string, workerRuntimeDir: string, synth: SynthSpec, log: (line: string) => void): Promise<void> {
  const args = [
    "-m",
    "clipfleet_worker",
    "synth",
    "--out",
    synth.out,
    "--train",
    String(synth.train),
    "--val",
    String(synth.val),
    "--shards",
    String(synth.shards),
    "--val-shards",
    String(synthValShards(synth.shards)),
    "--seed",
    String(synth.seed),
    "--size",
    String(synth.size),
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(python, args, {
      cwd: workerRuntimeDir,
      env: { ...process.env, PYTHONPATH: workerRuntimeDir, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const tail: string[] = [];
    forEachLine(child.stdout, log);
    forEachLine(child.stderr, (line) => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
      log(line);
    });
    child.once("error", (err) => reject(new EnvironmentError(`could not run ${python}: ${err.message}`)));
    child.once("close", (code, signal) => {
      if (code === 0) resolve();
      else reject(new EnvironmentError(`synthetic data generation into ${synth.out} failed (${signal ?? `exit ${code}`}): ${tail.slice(-5).join(" | ")}`));
    });
  });
}

/**
 * `python -m clipfleet_worker ARGS...` with this process's stdio (for
 * `clipfleet data ...`); resolves to its exit code.
 */
export function runWorkerCli(python: string, workerRuntimeDir: string, args: readonly string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(python, ["-m", "clipfleet_worker", ...args], {
      env: { ...process.env, PYTHONPATH: workerRuntimeDir, PYTHONUNBUFFERED: "1" },
      stdio: "inherit",
    });
    child.once("error", (err) => reject(new EnvironmentError(`could not run ${python}: ${err.message}`)));
    child.once("close", (code, signal) => resolve(code ?? (signal ? 128 + 15 : 1)));
  });
}
