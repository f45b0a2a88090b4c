/**
 * How values and nodes read in messages and docs: a value (`got "fast"`), a
 * path (`stages[1].train.lr`), and a node as the "expected ..." phrase of
 * errors (`an integer >= 1`) or as the docs' type column (`integer >= 1`).
 */
import type { Node, Path } from "./nodes.js";

/** True for a mapping as YAML and JSON parsers produce it (not null, not a list). */
export function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A compact, YAML-flow-like rendering of a JSON value: `[0.9, 0.98]`, `{alt: 1}`, `"fast"`. */
export function flow(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v: unknown) => flow(v)).join(", ")}]`;
  if (isMapping(value)) {
    const keyText = (k: string): string => (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(k) ? k : JSON.stringify(k));
    return `{${Object.entries(value).map(([k, v]) => `${keyText(k)}: ${flow(v)}`).join(", ")}}`;
  }
  return String(value);
}

/** The bad value as an error message shows it (`got ...`), kept short. */
export function show(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  const text = flow(value);
  if (text.length <= 40) return text;
  if (Array.isArray(value)) return `a list of ${value.length} items`;
  return "a mapping";
}

/** A dotted path for messages: `stages[1].train.lr`, `data.captions["alt.v2"]`. */
export function formatPath(path: Path): string {
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out === "" ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

// ---- "expected ..." phrases (errors) and type column (docs) ----

function bounds(lo: number | undefined, hi: number | undefined, loEx = false, hiEx = false): string {
  if (lo !== undefined && hi !== undefined) return ` in ${loEx ? "(" : "["}${lo}, ${hi}${hiEx ? ")" : "]"}`;
  if (lo !== undefined) return ` ${loEx ? ">" : ">="} ${lo}`;
  if (hi !== undefined) return ` ${hiEx ? "<" : "<="} ${hi}`;
  return "";
}

function countPhrase(lo: number | undefined, hi: number | undefined): string {
  if (lo !== undefined && lo === hi) return ` of ${lo} items`;
  if (lo !== undefined && hi !== undefined) return ` of ${lo} to ${hi} items`;
  if (lo !== undefined) return ` of at least ${lo} items`;
  if (hi !== undefined) return ` of at most ${hi} items`;
  return "";
}

/** The "expected ..." phrase of a node: `an integer >= 1`, `a positive number or null`. */
export function expectation(node: Node): string {
  const base = node.expect ?? baseExpectation(node);
  if (!node.nullable) return base;
  // "true, false or a mapping" + null reads "true, false, a mapping or null".
  const i = base.lastIndexOf(" or ");
  return i < 0 ? `${base} or null` : `${base.slice(0, i)}, ${base.slice(i + 4)} or null`;
}

function baseExpectation(node: Node): string {
  switch (node.kind) {
    case "integer":
      return `an integer${bounds(node.min, node.max)}`;
    case "number":
      if (node.min === 0 && node.max === undefined) return node.minExclusive ? "a positive number" : "a non-negative number";
      return `a number${bounds(node.min, node.max, node.minExclusive, node.maxExclusive)}`;
    case "boolean":
      return "true or false";
    case "string":
      return node.maxLength === undefined ? "a non-empty string" : `a non-empty string of at most ${node.maxLength} characters`;
    case "enum":
      return node.values.length === 1 ? JSON.stringify(node.values[0]) : `one of ${node.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "list":
      if (node.minItems === 1 && node.maxItems === undefined) return "a non-empty list";
      return `a list${countPhrase(node.minItems, node.maxItems)}`;
    case "range":
      return "a [low, high] pair";
    case "map":
    case "object":
      return "a mapping";
    case "union":
      return node.expect;
  }
}

/** The docs' type column: `integer >= 1`, `list of string`, `"a" | "b"`. */
export function typeDoc(node: Node): string {
  const base = node.typeDoc ?? baseTypeDoc(node);
  return node.nullable ? `${base} or null` : base;
}

function baseTypeDoc(node: Node): string {
  switch (node.kind) {
    case "integer":
      return `integer${bounds(node.min, node.max)}`;
    case "number":
      return `number${bounds(node.min, node.max, node.minExclusive, node.maxExclusive)}`;
    case "boolean":
      return "boolean";
    case "string":
      return node.maxLength === undefined ? "string" : `string (<= ${node.maxLength} chars)`;
    case "enum":
      return node.values.map((v) => JSON.stringify(v)).join(" | ");
    case "list":
      if (node.minItems === 1 && node.maxItems === undefined) return `non-empty list of ${typeDoc(node.items)}`;
      return `list of ${typeDoc(node.items)}${countPhrase(node.minItems, node.maxItems)}`;
    case "range":
      return `[low, high] of ${typeDoc(node.items)}`;
    case "map":
      return `map ${node.keyDoc} -> ${typeDoc(node.values)}${node.maxEntries === undefined ? "" : ` (<= ${node.maxEntries} entries)`}`;
    case "object":
      return "mapping";
    case "union":
      return node.typeDoc;
  }
}
