/**
 * The schema machinery: a node describes a value (type and constraints), a
 * field adds presence (required, default or derived) and doc text. From one
 * description come validation (all problems, with the dotted path and the bad
 * value), JSON Schema for editors, and the docs tables. schema.ts holds the
 * spec's own fields; this file knows nothing about clipfleet.
 */
import { didYouMean } from "./suggest.js";

/** A JSON value, as defaults and examples are written. */
export type Json = null | boolean | number | string | readonly Json[] | { readonly [key: string]: Json };

/** One step of a path into a document: a mapping key or a list index. */
export type PathSeg = string | number;
export type Path = readonly PathSeg[];

/** One validation problem: where it is and what is wrong (the message omits the path). */
export interface Issue {
  readonly path: Path;
  readonly message: string;
}

interface Common {
  /** null is a valid value. */
  readonly nullable?: boolean;
  /** Replaces the derived "expected ..." phrase of error messages. */
  readonly expect?: string;
  /** Replaces the derived type column of the docs. */
  readonly typeDoc?: string;
}

export interface IntegerNode extends Common {
  readonly kind: "integer";
  readonly min?: number;
  readonly max?: number;
}

export interface NumberNode extends Common {
  readonly kind: "number";
  readonly min?: number;
  readonly max?: number;
  readonly minExclusive?: boolean;
  readonly maxExclusive?: boolean;
}

export interface BooleanNode extends Common {
  readonly kind: "boolean";
}

/** A non-empty string, optionally matching an anchored pattern. */
export interface StringNode extends Common {
  readonly kind: "string";
  readonly pattern?: RegExp;
}

export interface EnumNode extends Common {
  readonly kind: "enum";
  readonly values: readonly string[];
}

export interface ListNode extends Common {
  readonly kind: "list";
  readonly items: Node;
  readonly minItems?: number;
  readonly maxItems?: number;
}

/** A [low, high] range of two items with low <= high. */
export interface RangeNode extends Common {
  readonly kind: "range";
  readonly items: Node;
}

/** Free-form keys (matching `keyPattern`) with values of one node. */
export interface MapNode extends Common {
  readonly kind: "map";
  readonly keyPattern: RegExp;
  readonly keyDoc: string;
  readonly values: Node;
  readonly minEntries?: number;
}

/** A mapping with known fields; any other key is an error. */
export interface ObjectNode extends Common {
  readonly kind: "object";
  readonly fields: Readonly<Record<string, Field>>;
}

/**
 * One of several shapes. The option is chosen by the value's JSON type (the
 * first option accepting it), so options must differ in JSON type.
 */
export interface UnionNode extends Common {
  readonly kind: "union";
  readonly options: readonly Node[];
  readonly expect: string;
  readonly typeDoc: string;
}

export type Node =
  | IntegerNode
  | NumberNode
  | BooleanNode
  | StringNode
  | EnumNode
  | ListNode
  | RangeNode
  | MapNode
  | ObjectNode
  | UnionNode;

/**
 * What happens when a field is absent: an error (required), a fixed value
 * (default), or left out for the resolver to compute from other fields
 * (derived; `how` says from what, for the docs).
 */
export type Presence =
  | { readonly kind: "required" }
  | { readonly kind: "default"; readonly value: Json }
  | { readonly kind: "derived"; readonly how: string };

/** A field of an object node: its value node, presence and documentation. */
export interface Field {
  readonly node: Node;
  readonly presence: Presence;
  readonly doc: string;
  /** Replaces the docs' default column where the default is too long to show. */
  readonly defaultDoc?: string;
  readonly examples?: readonly Json[];
}

// ---- builders: short names keep schema.ts readable ----

type Opts<T> = Omit<T, "kind">;

/** An integer node. */
export const integer = (o: Opts<IntegerNode> = {}): IntegerNode => ({ kind: "integer", ...o });
/** A finite number node. */
export const number = (o: Opts<NumberNode> = {}): NumberNode => ({ kind: "number", ...o });
/** A number > 0. */
export const positive = (o: Common = {}): NumberNode => number({ min: 0, minExclusive: true, ...o });
/** A boolean node. */
export const boolean = (o: Common = {}): BooleanNode => ({ kind: "boolean", ...o });
/** A non-empty string node. */
export const string = (o: Opts<StringNode> = {}): StringNode => ({ kind: "string", ...o });
/** One of fixed strings. */
export const oneOf = (values: readonly string[], o: Common = {}): EnumNode => ({ kind: "enum", values, ...o });
/** A list of one node. */
export const list = (items: Node, o: Omit<Opts<ListNode>, "items"> = {}): ListNode => ({ kind: "list", items, ...o });
/** A [low, high] pair. */
export const range = (items: Node, o: Common = {}): RangeNode => ({ kind: "range", items, ...o });
/** A map with free-form keys. */
export const mapOf = (values: Node, o: Omit<Opts<MapNode>, "values">): MapNode => ({ kind: "map", values, ...o });
/** A mapping with known fields. */
export const object = (fields: Readonly<Record<string, Field>>, o: Common = {}): ObjectNode => ({ kind: "object", fields, ...o });
/** One of several shapes, told apart by JSON type. */
export const union = (options: readonly Node[], o: Omit<Opts<UnionNode>, "options">): UnionNode => ({ kind: "union", options, ...o });
/** Make a node also accept null. */
export const nullable = <T extends Node>(node: T): T => ({ ...node, nullable: true });

type FieldExtra = Pick<Field, "defaultDoc" | "examples">;
/** A field that must be given. */
export const required = (node: Node, doc: string, extra: FieldExtra = {}): Field => ({ node, presence: { kind: "required" }, doc, ...extra });
/** A field with a fixed default. */
export const withDefault = (node: Node, value: Json, doc: string, extra: FieldExtra = {}): Field => ({ node, presence: { kind: "default", value }, doc, ...extra });
/** A field whose default the resolver computes; `how` documents from what. */
export const derived = (node: Node, how: string, doc: string, extra: FieldExtra = {}): Field => ({ node, presence: { kind: "derived", how }, doc, ...extra });

// ---- values in messages ----

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

/** Freeze a value and everything it holds, so a validated config cannot change under its readers. */
export function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
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
      return "a non-empty string";
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
      return "string";
    case "enum":
      return node.values.map((v) => JSON.stringify(v)).join(" | ");
    case "list":
      if (node.minItems === 1 && node.maxItems === undefined) return `non-empty list of ${typeDoc(node.items)}`;
      return `list of ${typeDoc(node.items)}${countPhrase(node.minItems, node.maxItems)}`;
    case "range":
      return `[low, high] of ${typeDoc(node.items)}`;
    case "map":
      return `map ${node.keyDoc} -> ${typeDoc(node.values)}`;
    case "object":
      return "mapping";
    case "union":
      return node.typeDoc;
  }
}

// ---- validation ----

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
      if (v === "" || (node.pattern !== undefined && !node.pattern.test(v))) return bad();
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

// ---- JSON Schema (draft 2020-12) ----

/**
 * Options of JSON Schema generation. `required: false` drops `required`
 * lists: for values that overlay others (a stage's overrides) every field is
 * optional.
 */
export interface SchemaOptions {
  readonly required: boolean;
}

/** The JSON Schema of a node, documentation included. */
export function toJsonSchema(node: Node, opts: SchemaOptions = { required: true }): Record<string, Json> {
  const s = baseSchema(node, opts);
  if (!node.nullable) return s;
  if (typeof s.type === "string" && s.enum === undefined) return { ...s, type: [s.type, "null"] };
  const options = s.anyOf;
  if (Array.isArray(options)) return { ...s, anyOf: [...(options as readonly Json[]), { type: "null" }] };
  return { anyOf: [s, { type: "null" }] };
}

function baseSchema(node: Node, opts: SchemaOptions): Record<string, Json> {
  const put = (s: Record<string, Json>, key: string, v: Json | undefined): void => {
    if (v !== undefined) s[key] = v;
  };
  switch (node.kind) {
    case "integer": {
      const s: Record<string, Json> = { type: "integer" };
      put(s, "minimum", node.min);
      put(s, "maximum", node.max);
      return s;
    }
    case "number": {
      const s: Record<string, Json> = { type: "number" };
      put(s, node.minExclusive ? "exclusiveMinimum" : "minimum", node.min);
      put(s, node.maxExclusive ? "exclusiveMaximum" : "maximum", node.max);
      return s;
    }
    case "boolean":
      return { type: "boolean" };
    case "string": {
      const s: Record<string, Json> = { type: "string", minLength: 1 };
      put(s, "pattern", node.pattern?.source);
      return s;
    }
    case "enum":
      return { enum: [...node.values] };
    case "list": {
      const s: Record<string, Json> = { type: "array", items: toJsonSchema(node.items, opts) };
      put(s, "minItems", node.minItems);
      put(s, "maxItems", node.maxItems);
      return s;
    }
    case "range":
      return { type: "array", items: toJsonSchema(node.items, opts), minItems: 2, maxItems: 2 };
    case "map": {
      const s: Record<string, Json> = {
        type: "object",
        propertyNames: { pattern: node.keyPattern.source },
        additionalProperties: toJsonSchema(node.values, opts),
      };
      put(s, "minProperties", node.minEntries);
      return s;
    }
    case "object": {
      const properties: Record<string, Json> = {};
      const req: string[] = [];
      for (const [key, field] of Object.entries(node.fields)) {
        properties[key] = fieldSchema(field, opts);
        if (opts.required && field.presence.kind === "required") req.push(key);
      }
      const s: Record<string, Json> = { type: "object", properties, additionalProperties: false };
      if (req.length > 0) s.required = req;
      return s;
    }
    case "union":
      return { anyOf: node.options.map((o) => toJsonSchema(o, opts)) };
  }
}

/** The JSON Schema of a field: its node plus description, default and examples. */
export function fieldSchema(field: Field, opts: SchemaOptions = { required: true }): Record<string, Json> {
  const s: Record<string, Json> = { ...toJsonSchema(field.node, opts), description: field.doc };
  if (field.presence.kind === "default") s.default = field.presence.value;
  if (field.examples !== undefined) s.examples = [...field.examples];
  return s;
}

// ---- walking ----

/** The object shapes a node can take (an object node, or the object options of a union). */
export function objectShapes(node: Node): ObjectNode[] {
  if (node.kind === "object") return [node];
  if (node.kind === "union") return node.options.flatMap((o) => objectShapes(o));
  return [];
}

/** The field at a dotted path under `node` (through object shapes of unions); throws on a wrong path, a bug. */
export function fieldAt(node: ObjectNode, dotted: string): Field {
  let shapes: ObjectNode[] = [node];
  let field: Field | undefined;
  for (const key of dotted.split(".")) {
    field = shapes.map((s) => s.fields[key]).find((f) => f !== undefined);
    if (field === undefined) throw new Error(`fieldAt: no field ${dotted}`);
    shapes = objectShapes(field.node);
  }
  return field!;
}

/** Every field under `node` with its dotted path, depth first in declared order. */
export function fieldPaths(node: ObjectNode, prefix = ""): { path: string; field: Field }[] {
  const out: { path: string; field: Field }[] = [];
  for (const [key, field] of Object.entries(node.fields)) {
    const path = prefix === "" ? key : `${prefix}.${key}`;
    out.push({ path, field });
    for (const shape of objectShapes(field.node)) out.push(...fieldPaths(shape, path));
  }
  return out;
}
