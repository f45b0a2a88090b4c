/**
 * The schema machinery: a node describes a value (type and constraints), a
 * field adds presence (required, default or derived) and doc text. From one
 * description come validation (all problems, with the dotted path and the bad
 * value), JSON Schema for editors, and the docs tables. schema.ts holds the
 * spec's own fields; this file and the node-*.ts files it re-exports know
 * nothing about clipfleet. Here: the node types, their builders and walking
 * them; node-text.ts: values and nodes in words; node-validate.ts:
 * validation; node-json-schema.ts: JSON Schema.
 */
export { isMapping, flow, show, formatPath, expectation, typeDoc } from "./node-text.js";
export { validate, unknownFieldMessage } from "./node-validate.js";
export { type SchemaOptions, toJsonSchema, fieldSchema } from "./node-json-schema.js";

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
  /** Longest value, in characters (UTF-16 code units, as JSON Schema's maxLength). */
  readonly maxLength?: number;
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
  /** Most entries; checked before any entry is looked at, so a huge map costs nothing. */
  readonly maxEntries?: number;
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

// ---- validated values ----

/** Freeze a value and everything it holds, so a validated config cannot change under its readers. */
export function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
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
