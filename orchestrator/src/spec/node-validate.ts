/**
 * Validation of a value against a node: every problem found, each with its
 * path and the bad value, and the value with defaults filled in.
 */
import type { Issue, Node, ObjectNode, Path } from "./nodes.js";
import { expectation, show } from "./node-text.js";
import { didYouMean } from "./suggest.js";

type JsType = "null" | "boolean" | "number" | "string" | "array" | "object";

function jsType(value: unknown): JsType {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  const t = typeof value;
  if (t === "boolean" || t === "number" || t === "string") return t;
  return "object";
}

function accepts(node: Node, t: JsType): boolean {
  if (t === "null" && node.nullable) return true;
  switch (node.kind) {
    case "integer":
    case "number":
      return t === "number";
    case "boolean":
      return t === "boolean";
    case "string":
    case "enum":
      return t === "string";
    case "list":
    case "range":
      return t === "array";
    case "map":
    case "object":
      return t === "object";
    case "union":
      return node.options.some((o) => accepts(o, t));
  }
}

function hint(values: readonly string[], value: unknown): string {
  const guess = typeof value === "string" ? didYouMean(value, values) : null;
  return guess === null ? "" : ` (did you mean ${JSON.stringify(guess)}?)`;
}

/**
 * Check `value` against `node`, pushing every problem found onto `issues`.
 * Returns the value with object defaults filled in (fields in declared
 * order; derived fields left out), or undefined when the value itself is
 * invalid (objects: see validateObject). The result never aliases `value`
 * or a default.
 */
export function validate(node: Node, value: unknown, path: Path, issues: Issue[]): unknown {
  const bad = (extra = ""): undefined => {
    issues.push({ path, message: `expected ${expectation(node)}, got ${show(value)}${extra}` });
    return undefined;
  };
  if (value === null && node.nullable) return null;
  if (!accepts(node, jsType(value))) return bad();
  switch (node.kind) {
    case "integer": {
      const v = value as number;
      if (!Number.isSafeInteger(v)) return bad();
      // Name only the violated bound: "an integer >= 1, got 0" says what to do.
      if (node.min !== undefined && v < node.min) return expectBound(issues, path, `an integer >= ${node.min}`, v);
      if (node.max !== undefined && v > node.max) return expectBound(issues, path, `an integer <= ${node.max}`, v);
      return v;
    }
    case "number": {
      const v = value as number;
      if (!Number.isFinite(v)) return bad();
      const low = node.min === undefined ? true : node.minExclusive ? v > node.min : v >= node.min;
      const high = node.max === undefined ? true : node.maxExclusive ? v < node.max : v <= node.max;
      return low && high ? v : bad();
    }
    case "boolean":
      return value;
    case "string": {
      const v = value as string;
      if (v === "" || (node.maxLength !== undefined && v.length > node.maxLength)) return bad();
      if (node.pattern !== undefined && !node.pattern.test(v)) return bad();
      return v;
    }
    case "enum":
      return node.values.includes(value as string) ? value : bad(hint(node.values, value));
    case "list": {
      const items = value as unknown[];
      const tooFew = node.minItems !== undefined && items.length < node.minItems;
      const tooMany = node.maxItems !== undefined && items.length > node.maxItems;
      if (tooFew || tooMany) return bad();
      const out = items.map((item, i) => validate(node.items, item, [...path, i], issues));
      return out.includes(undefined) ? undefined : out;
    }
    case "range": {
      const items = value as unknown[];
      if (items.length !== 2) return bad();
      const out = items.map((item, i) => validate(node.items, item, [...path, i], issues));
      if (out.includes(undefined)) return undefined;
      if ((out[0] as number) > (out[1] as number)) {
        issues.push({ path, message: `expected [low, high] with low <= high, got ${show(value)}` });
        return undefined;
      }
      return out;
    }
    case "map": {
      const entries = Object.entries(value as Record<string, unknown>);
      if (node.minEntries !== undefined && entries.length < node.minEntries) {
        issues.push({ path, message: `expected at least ${node.minEntries} ${node.minEntries === 1 ? "entry" : "entries"}, got ${show(value)}` });
        return undefined;
      }
      if (node.maxEntries !== undefined && entries.length > node.maxEntries) {
        issues.push({ path, message: `expected at most ${node.maxEntries} entries, got ${entries.length}` });
        return undefined;
      }
      const out: Record<string, unknown> = {};
      let ok = true;
      for (const [key, item] of entries) {
        if (!node.keyPattern.test(key)) {
          issues.push({ path: [...path, key], message: `invalid key (expected ${node.keyDoc})` });
          ok = false;
          continue;
        }
        const v = validate(node.values, item, [...path, key], issues);
        if (v === undefined) ok = false;
        out[key] = v;
      }
      return ok ? out : undefined;
    }
    case "object":
      return validateObject(node, value as Record<string, unknown>, path, issues);
    case "union": {
      const t = jsType(value);
      const option = node.options.find((o) => accepts(o, t))!;
      if (option.kind === "object" || option.kind === "map" || option.kind === "list" || option.kind === "range") {
        return validate(option, value, path, issues);
      }
      // A scalar option that rejects the value: say what the whole union accepts.
      const local: Issue[] = [];
      const v = validate(option, value, path, local);
      if (v !== undefined) return v;
      return bad(option.kind === "enum" ? hint(option.values, value) : "");
    }
  }
}

function expectBound(issues: Issue[], path: Path, phrase: string, value: number): undefined {
  issues.push({ path, message: `expected ${phrase}, got ${value}` });
  return undefined;
}

/** The message for a key that no field of `fields` has. */
export function unknownFieldMessage(key: string, known: readonly string[]): string {
  const guess = didYouMean(key, known);
  return guess === null ? `unknown field (expected one of: ${known.join(", ")})` : `unknown field (did you mean ${JSON.stringify(guess)}?)`;
}

/**
 * Unlike other nodes, an object comes back even when some of its fields are
 * invalid (those are undefined): later rules check the valid fields, and the
 * issue paths say which ones are not.
 */
function validateObject(node: ObjectNode, value: Record<string, unknown>, path: Path, issues: Issue[]): Record<string, unknown> {
  const known = Object.keys(node.fields);
  // Unknown keys first: a typo'd key is usually also why a required field is "missing".
  for (const key of Object.keys(value)) {
    if (!Object.hasOwn(node.fields, key)) issues.push({ path: [...path, key], message: unknownFieldMessage(key, known) });
  }
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(node.fields)) {
    const given = value[key];
    if (given !== undefined) {
      out[key] = validate(field.node, given, [...path, key], issues);
    } else if (field.presence.kind === "required") {
      issues.push({ path: [...path, key], message: `missing (expected ${expectation(field.node)})` });
    } else if (field.presence.kind === "default") {
      // Validating the default fills in nested defaults (and reports required
      // fields inside an absent section: "cluster.workers: missing").
      out[key] = validate(field.node, structuredClone(field.presence.value), [...path, key], issues);
    }
  }
  return out;
}
