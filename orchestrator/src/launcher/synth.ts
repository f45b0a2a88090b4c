/** Running worker-runtime tools (synthetic data, conversion) as one-off local processes. */
import { spawn } from "node:child_process";
import { EnvironmentError, InvalidArgumentError, synthValShards, type SynthSpec } from "../domain/index.js";
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

/**
 * `python -m clipfleet_worker openclip check`: loads open_clip weights (an
 * export directory or a weights file) with weights_only and checks every key
 * and shape against a CLIP of `modelJson`'s towers. Resolves to the weights
 * file it read; a refusal is an InvalidArgumentError on `init.checkpoint`
 * naming the file and the first bad key (the worker's one line).
 */
export function checkOpenClipWeights(python: string, workerRuntimeDir: string, ref: string, modelJson: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(python, ["-m", "clipfleet_worker", "openclip", "check", "--ref", ref, "--model-json", modelJson], {
      env: { ...process.env, PYTHONPATH: workerRuntimeDir, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: string[] = [];
    const err: string[] = [];
    forEachLine(child.stdout, (line) => out.push(line));
    forEachLine(child.stderr, (line) => {
      err.push(line);
      if (err.length > 20) err.shift();
    });
    child.once("error", (e) => reject(new EnvironmentError(`could not run ${python}: ${e.message}`)));
    child.once("close", (code, signal) => {
      if (code === 0) {
        try {
          const weights = (JSON.parse(out.at(-1) ?? "") as { weights?: unknown }).weights;
          if (typeof weights === "string") return resolve(weights);
        } catch {
          // reported below
        }
      }
      if (code === 2) {
        const line = err.find((l) => l.startsWith("clipfleet openclip: ")) ?? err.at(-1) ?? "refused";
        return reject(new InvalidArgumentError(`init.checkpoint: ${line.replace(/^clipfleet openclip: /, "")}`, "init.checkpoint"));
      }
      reject(new EnvironmentError(`checking open_clip weights ${ref} failed (${signal ?? `exit ${code}`}): ${err.slice(-5).join(" | ")}`));
    });
  });
}

/**
 * task recaption: whether a plugin entry point (`module:factory`) imports in
 * the worker interpreter and names a callable (`python -m clipfleet_worker
 * plugins check`), with the ranks' PYTHONPATH (the worker runtime, then this
 * process's). A refusal is an InvalidArgumentError on `field`, one line.
 */
export function checkPluginEntryPoint(python: string, workerRuntimeDir: string, entryPoint: string, field: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const pythonPath = process.env.PYTHONPATH ? `${workerRuntimeDir}:${process.env.PYTHONPATH}` : workerRuntimeDir;
    const child = spawn(python, ["-m", "clipfleet_worker", "plugins", "check", entryPoint], {
      env: { ...process.env, PYTHONPATH: pythonPath, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    const err: string[] = [];
    forEachLine(child.stderr, (line) => {
      err.push(line);
      if (err.length > 20) err.shift();
    });
    child.once("error", (e) => reject(new EnvironmentError(`could not run ${python}: ${e.message}`)));
    child.once("close", (code, signal) => {
      if (code === 0) return resolve();
      if (code === 2) {
        const line = err.find((l) => l.startsWith("clipfleet plugins: ")) ?? err.at(-1) ?? "refused";
        return reject(new InvalidArgumentError(`${field}: ${line.replace(/^clipfleet plugins: /, "").slice(0, 400)}`, field));
      }
      reject(new EnvironmentError(`checking ${field} ${entryPoint} failed (${signal ?? `exit ${code}`}): ${err.slice(-5).join(" | ")}`));
    });
  });
}
