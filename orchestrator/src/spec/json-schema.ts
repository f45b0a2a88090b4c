/**
 * The JSON Schema (draft 2020-12) of a spec file, for editors, derived from
 * the field descriptions of schema.ts.
 */
import { type Json, type ObjectNode, fieldSchema } from "./nodes.js";
import { type Presets } from "./presets.js";
import { STAGE_NODE, jobFields, stageFields, stageItemFields } from "./schema.js";

/**
 * The JSON Schema (draft 2020-12) of a spec file, for editors. With presets,
 * preset names become enums. A spec without `stages` must give `task` and
 * `cluster.workers` at the top level; with stages every field is an
 * override, so nothing else is required there.
 */
export function jsonSchema(presets: Presets | null = null): Record<string, Json> {
  const job = jobFields(presets);
  const stage = stageFields(presets);
  const defs: Record<string, Json> = {};
  const properties: Record<string, Json> = {};
  for (const [key, field] of Object.entries(stage)) {
    defs[key] = fieldSchema(field, { required: false });
    properties[key] = { $ref: `#/$defs/${key}` };
  }
  const stageItem: Record<string, Json> = {
    type: "object",
    description: job.stages.doc,
    properties: {
      name: fieldSchema(stageItemFields(presets).name!),
      needs: fieldSchema(stageItemFields(presets).needs!),
      ...properties,
    },
    required: ["name"],
    additionalProperties: false,
  };
  return {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    title: "clipfleet job spec",
    description: "A clipfleet job: model, data, training, cluster and failure handling; see docs/spec.md.",
    type: "object",
    properties: {
      name: fieldSchema(job.name),
      priority: fieldSchema(job.priority),
      stages: { type: "array", description: job.stages.doc, minItems: 1, items: stageItem },
      ...properties,
    },
    patternProperties: { "^x-": { description: "Ignored: a place for YAML anchors." } },
    additionalProperties: false,
    if: { not: { required: ["stages"] } },
    then: requiredTree(STAGE_NODE),
    $defs: defs,
  };
}

/** `{required: [...], properties: {x: {required: [...]}}}` for the required fields under an object. */
function requiredTree(node: ObjectNode): Record<string, Json> {
  const req: string[] = [];
  const properties: Record<string, Json> = {};
  for (const [key, field] of Object.entries(node.fields)) {
    if (field.presence.kind === "required") req.push(key);
    // A section that defaults to a mapping is always there, so its required fields are too.
    if (field.node.kind === "object" && !field.node.nullable && field.presence.kind === "default") {
      const sub = requiredTree(field.node);
      if (sub.required !== undefined) {
        req.push(key);
        properties[key] = sub;
      }
    }
  }
  const out: Record<string, Json> = {};
  if (req.length > 0) out.required = req;
  if (Object.keys(properties).length > 0) out.properties = properties;
  return out;
}
