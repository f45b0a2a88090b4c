/** Reading a spec file for submission: validated locally first, so bad input fails before any server work. */
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import type { JobSpec } from "../domain/index.js";
import { loadPresets, loadSpecFile } from "../spec/index.js";

export interface SpecInput {
  /** The validated spec (for local checks and messages). */
  spec: JobSpec;
  /** The spec as the user wrote it, as JSON, for the server to validate again. */
  specJson: string;
  specPath: string;
  baseDir: string;
}

/** Loads and validates `path`; throws InvalidArgumentError naming the file and field. */
export function readSpecInput(path: string, presetsPath: string): SpecInput {
  const spec = loadSpecFile(path, { presets: loadPresets(presetsPath) });
  // loadSpecFile has already checked that the file parses; read it again as the raw document.
  const text = readFileSync(path, "utf8");
  const raw: unknown = path.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
  return { spec, specJson: JSON.stringify(raw), specPath: resolve(path), baseDir: dirname(resolve(path)) };
}
