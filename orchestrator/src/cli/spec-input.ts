/** Reading a spec file for submission: validated locally first, so bad input fails before any server work. */
import { dirname, resolve } from "node:path";
import type { JobSpec } from "../domain/index.js";
import { loadPresets, loadSpecDocument } from "../spec/index.js";

export interface SpecInput {
  /** The validated spec (for local checks and messages; an embedded orchestrator takes it as is). */
  spec: JobSpec;
  /** The spec as the user wrote it, as JSON, for a server (another process) to validate itself. */
  specJson: string;
  specPath: string;
  baseDir: string;
}

/** Loads and validates `path`; throws InvalidArgumentError naming the file and field. */
export function readSpecInput(path: string, presetsPath: string): SpecInput {
  const { spec, raw } = loadSpecDocument(path, { presets: loadPresets(presetsPath) });
  return { spec, specJson: JSON.stringify(raw), specPath: resolve(path), baseDir: dirname(resolve(path)) };
}
