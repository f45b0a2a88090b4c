/**
 * Model presets (worker-runtime/clipfleet_worker/models/presets.json): read
 * by the worker to build towers and by the orchestrator to check preset
 * names and shapes before any process starts.
 */
import { InvalidArgumentError } from "../domain/index.js";
import { type Issue, type ObjectNode, deepFreeze, derived, formatPath, integer, isMapping, mapOf, object, required, string, validate } from "./nodes.js";
import { SpecValidationError } from "./issues.js";
import { readTextFile } from "./files.js";
import { IMAGE_NODE, TEXT_NODE } from "./schema.js";
import { resolveImageTower, resolveTextTower } from "./towers.js";

/** A ViT image preset. */
export interface VitPreset {
  readonly family: "vit";
  readonly image_size: number;
  readonly width: number;
  readonly depth: number;
  readonly heads: number;
  readonly patch: number;
  readonly mlp_ratio: number;
}

/** An MCi (mobile hybrid) image preset. */
export interface MciPreset {
  readonly family: "mci";
  readonly image_size: number;
  readonly layers: readonly number[];
  readonly widths: readonly number[];
  readonly heads: number;
  readonly mlp_ratio: number;
}

/** An image preset: the family decides which fields it has. */
export type ImagePreset = VitPreset | MciPreset;

/** A text tower preset. */
export interface TextPreset {
  readonly width: number;
  readonly depth: number;
  readonly heads: number;
  readonly mlp_ratio: number;
  readonly context_length: number;
  readonly causal: boolean;
}

/** The whole presets file, validated and frozen. */
export interface Presets {
  readonly image: Readonly<Record<string, ImagePreset>>;
  readonly text: Readonly<Record<string, TextPreset>>;
  /** What a spec gets when it does not name a tower or an embedding width. */
  readonly defaults: { readonly image: string; readonly text: string; readonly embed_dim: number };
}

const PRESET_NAME = /^[A-Za-z0-9._-]+$/;

function withoutPreset(node: ObjectNode): ObjectNode {
  const { preset: _preset, ...fields } = node.fields;
  return object(fields);
}

const PRESETS_NODE = object({
  _comment: derived(string(), "none", "Free text."),
  image: required(mapOf(withoutPreset(IMAGE_NODE), { keyPattern: PRESET_NAME, keyDoc: "preset name", minEntries: 1 }), "Image presets."),
  text: required(mapOf(withoutPreset(TEXT_NODE), { keyPattern: PRESET_NAME, keyDoc: "preset name", minEntries: 1 }), "Text presets."),
  defaults: required(
    object({
      image: required(string(), "Default image preset."),
      text: required(string(), "Default text preset."),
      embed_dim: required(integer({ min: 1 }), "Default embedding width."),
    }),
    "Defaults.",
  ),
});

/**
 * Read and check a presets file: every preset is a complete, well-shaped
 * tower (the same rules as a spec's towers) and the defaults name presets.
 * Throws InvalidArgumentError naming the file and the field.
 */
export function loadPresets(file: string): Presets {
  const text = readTextFile(file);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`${file}: invalid JSON (${err instanceof Error ? err.message : String(err)})`, null, { cause: err });
  }
  const issues: Issue[] = [];
  if (!isMapping(raw)) {
    issues.push({ path: [], message: "expected a mapping with image, text and defaults" });
  } else {
    const v = validate(PRESETS_NODE, raw, [], issues) as Record<string, unknown>;
    if (issues.length === 0) {
      const image = v.image as Record<string, Record<string, unknown>>;
      const textPresets = v.text as Record<string, Record<string, unknown>>;
      for (const [name, preset] of Object.entries(image)) resolveImageTower(preset, null, ["image", name], issues);
      for (const [name, preset] of Object.entries(textPresets)) resolveTextTower(preset, null, ["text", name], issues);
      const defaults = v.defaults as { image: string; text: string };
      if (!Object.hasOwn(image, defaults.image)) issues.push({ path: ["defaults", "image"], message: `no image preset ${JSON.stringify(defaults.image)}` });
      if (!Object.hasOwn(textPresets, defaults.text)) issues.push({ path: ["defaults", "text"], message: `no text preset ${JSON.stringify(defaults.text)}` });
    }
    if (issues.length === 0) {
      const { _comment: _c, ...presets } = v;
      return deepFreeze(presets) as unknown as Presets;
    }
  }
  throw new SpecValidationError(
    file,
    issues.map((i) => ({ path: formatPath(i.path), message: i.message, line: null, column: null })),
  );
}
