/**
 * Finding the worker interpreter. The python3 first on PATH may not be the
 * one with torch (Debian's torch lives under /usr/bin/python3), so the
 * default tries candidates in order and keeps the first that imports torch.
 */
import { execFile } from "node:child_process";
import { EnvironmentError } from "../domain/index.js";

/** Candidates tried when neither the spec, the CLI nor CLIPFLEET_PYTHON names one. */
export const DEFAULT_PYTHON_CANDIDATES = ["python3", "/usr/bin/python3"];

const cache = new Map<string, Promise<string>>();

/**
 * The interpreter to run workers with: `explicit` when given (it must import
 * torch), else the first of `candidates` that can import torch. Throws an
 * EnvironmentError naming everything it tried.
 */
export function resolvePython(explicit: string | null, candidates: readonly string[] = DEFAULT_PYTHON_CANDIDATES): Promise<string> {
  const list = explicit ? [explicit] : [...candidates];
  const key = list.join("\0");
  let found = cache.get(key);
  if (!found) {
    found = firstWithTorch(list);
    cache.set(key, found);
    found.catch(() => cache.delete(key));
  }
  return found;
}

async function firstWithTorch(list: readonly string[]): Promise<string> {
  const tried: string[] = [];
  for (const py of list) {
    const result = await importsTorch(py);
    if (result === true) return py;
    tried.push(`${py} (${result})`);
  }
  throw new EnvironmentError(
    `no Python interpreter with torch found; tried ${tried.join(", ")}. ` +
      "Install Debian's python3-torch (make deps) or name one with --python, CLIPFLEET_PYTHON or worker.python",
  );
}

function importsTorch(python: string): Promise<true | string> {
  return new Promise((resolve) => {
    execFile(python, ["-c", "import torch"], { timeout: 60_000 }, (err, _stdout, stderr) => {
      if (!err) resolve(true);
      else if ((err as NodeJS.ErrnoException).code === "ENOENT") resolve("not found");
      else resolve(stderr.includes("No module named") ? "no torch" : `fails: ${stderr.trim().split("\n").pop() ?? err.message}`);
    });
  });
}
