/**
 * Model towers: a preset plus overrides, resolved into the full tower the
 * worker builds, with the shape rules checked before any process starts.
 * Shared by spec resolution and by presets.json validation.
 */
import { type ImageTowerSpec, type TextTowerSpec } from "../domain/index.js";
import { type Issue, type Path, expectation, fieldAt } from "./nodes.js";
import { type ImagePreset, type Presets, type TextPreset } from "./presets.js";
import { IMAGE_NODE, MCI_STRIDE, TEXT_NODE } from "./schema.js";
import { didYouMean } from "./suggest.js";

/** The fields each image family takes; the others are derived (see resolveImageTower). */
export const IMAGE_FAMILY_FIELDS = {
  vit: ["image_size", "width", "depth", "heads", "patch", "mlp_ratio"],
  mci: ["image_size", "layers", "widths", "heads", "mlp_ratio"],
} as const;

/** Family names as messages show them, with their article. */
const A_FAMILY = { vit: "a ViT", mci: "an MCi" } as const;
const FAMILY = { vit: "ViT", mci: "MCi" } as const;

const TEXT_TOWER_FIELDS = ["width", "depth", "heads", "mlp_ratio", "context_length", "causal"] as const;

/** A tower as the spec gives it: a preset name, or a mapping of a preset and overrides. */
export type TowerInput = string | Readonly<Record<string, unknown>>;

/** `unknown image preset "vit-tinyy" (did you mean "vit-tiny"? known: ...)`. */
function unknownPreset(kind: string, name: string, known: readonly string[]): string {
  const guess = didYouMean(name, known);
  const mean = guess === null ? "" : `did you mean ${JSON.stringify(guess)}? `;
  return `unknown ${kind} preset ${JSON.stringify(name)} (${mean}known: ${known.join(", ")})`;
}

/** The preset `name` of a presets.json table (`kind` names it), or undefined after pushing an unknown-preset issue at `namePath`. */
function presetOf<T>(kind: string, table: Readonly<Record<string, T>> | undefined, name: string, namePath: Path, issues: Issue[]): T | undefined {
  const known = table === undefined ? [] : Object.keys(table);
  const base = table !== undefined && Object.hasOwn(table, name) ? table[name] : undefined;
  if (base === undefined) issues.push({ path: namePath, message: unknownPreset(kind, name, known) });
  return base;
}

/** Split a tower input into the preset it names (with the path to blame) and its overrides. */
function splitInput(input: TowerInput, path: Path): { name: string | null; namePath: Path; overrides: Readonly<Record<string, unknown>> } {
  if (typeof input === "string") return { name: input, namePath: path, overrides: {} };
  const name = input.preset;
  return typeof name === "string"
    ? { name, namePath: [...path, "preset"], overrides: input }
    : { name: null, namePath: path, overrides: input };
}

/**
 * The full image tower of `input` (a validated model.image value; presets
 * null: checking presets.json itself). ViT: image_size divisible by patch,
 * width by heads; MCi: 4 stages, image_size divisible by 32, the last width
 * by heads. Fields that do not apply to the family are filled so the worker
 * config is uniform: ViT gets layers = widths = []; MCi gets width = the last
 * stage width (the pooled feature width), depth = the total block count and
 * patch = 32 (its output stride). Returns undefined after pushing issues.
 */
export function resolveImageTower(input: TowerInput, presets: Presets | null, path: Path, issues: Issue[]): ImageTowerSpec | undefined {
  const { name, namePath, overrides } = splitInput(input, path);
  let base: ImagePreset | undefined;
  if (name !== null) {
    base = presetOf("image", presets?.image, name, namePath, issues);
    if (base === undefined) return undefined;
  }
  const given = overrides.family as "vit" | "mci" | undefined;
  if (base !== undefined && given !== undefined && given !== base.family) {
    issues.push({ path: [...path, "family"], message: `preset ${JSON.stringify(name)} is ${A_FAMILY[base.family]} tower, got ${JSON.stringify(given)}` });
    return undefined;
  }
  const family = given ?? base?.family;
  if (family === undefined) {
    issues.push({ path: [...path, "family"], message: `missing (expected ${expectation(fieldAt(IMAGE_NODE, "family").node)} when no preset is given)` });
    return undefined;
  }
  const own: readonly string[] = IMAGE_FAMILY_FIELDS[family];
  const merged: Record<string, unknown> = { ...(base ?? {}) };
  const before = issues.length;
  for (const [key, value] of Object.entries(overrides)) {
    if (key === "preset" || key === "family" || value === undefined) continue;
    if (!own.includes(key)) {
      issues.push({ path: [...path, key], message: `not a field of ${FAMILY[family]} towers (they take ${own.join(", ")})` });
      continue;
    }
    merged[key] = value;
  }
  for (const key of own) {
    if (merged[key] === undefined) {
      issues.push({ path: [...path, key], message: `missing (expected ${expectation(fieldAt(IMAGE_NODE, key).node)} for ${A_FAMILY[family]} tower without a preset)` });
    }
  }
  if (issues.length > before) return undefined;
  const heads = merged.heads as number;
  const imageSize = merged.image_size as number;
  const mlpRatio = merged.mlp_ratio as number;
  const preset = name;
  if (family === "vit") {
    const width = merged.width as number;
    const patch = merged.patch as number;
    if (imageSize % patch !== 0) issues.push({ path: [...path, "image_size"], message: `${imageSize} is not divisible by the patch size ${patch}` });
    if (width % heads !== 0) issues.push({ path: [...path, "heads"], message: `${heads} does not divide the width ${width}` });
    if (issues.length > before) return undefined;
    return { preset, family, image_size: imageSize, width, depth: merged.depth as number, heads, patch, mlp_ratio: mlpRatio, layers: [], widths: [] };
  }
  const layers = merged.layers as number[];
  const widths = merged.widths as number[];
  const last = widths[widths.length - 1]!;
  if (imageSize % MCI_STRIDE !== 0) issues.push({ path: [...path, "image_size"], message: `${imageSize} is not divisible by ${MCI_STRIDE}, the MCi output stride` });
  if (last % heads !== 0) issues.push({ path: [...path, "heads"], message: `${heads} does not divide the last stage width ${last}` });
  if (issues.length > before) return undefined;
  const depth = layers.reduce((a, b) => a + b, 0);
  return { preset, family, image_size: imageSize, width: last, depth, heads, patch: MCI_STRIDE, mlp_ratio: mlpRatio, layers: [...layers], widths: [...widths] };
}

/** The full text tower of `input` (like resolveImageTower; width divisible by heads). */
export function resolveTextTower(input: TowerInput, presets: Presets | null, path: Path, issues: Issue[]): TextTowerSpec | undefined {
  const { name, namePath, overrides } = splitInput(input, path);
  let base: TextPreset | undefined;
  if (name !== null) {
    base = presetOf("text", presets?.text, name, namePath, issues);
    if (base === undefined) return undefined;
  }
  const merged: Record<string, unknown> = { ...(base ?? {}) };
  for (const key of TEXT_TOWER_FIELDS) if (overrides[key] !== undefined) merged[key] = overrides[key];
  const before = issues.length;
  for (const key of TEXT_TOWER_FIELDS) {
    if (merged[key] === undefined) {
      issues.push({ path: [...path, key], message: `missing (expected ${expectation(fieldAt(TEXT_NODE, key).node)} for a text tower without a preset)` });
    }
  }
  if (issues.length > before) return undefined;
  const width = merged.width as number;
  const heads = merged.heads as number;
  if (width % heads !== 0) {
    issues.push({ path: [...path, "heads"], message: `${heads} does not divide the width ${width}` });
    return undefined;
  }
  return {
    preset: name,
    width,
    depth: merged.depth as number,
    heads,
    mlp_ratio: merged.mlp_ratio as number,
    context_length: merged.context_length as number,
    causal: merged.causal as boolean,
  };
}
