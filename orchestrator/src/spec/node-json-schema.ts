/** JSON Schema (draft 2020-12) of nodes and fields, documentation included, for editors. */
import type { Field, Json, Node } from "./nodes.js";

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
      put(s, "maxLength", node.maxLength);
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
      put(s, "maxProperties", node.maxEntries);
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
