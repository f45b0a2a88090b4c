/**
 * The field tables of docs/spec.md, rendered from the schema so the docs
 * cannot drift from validation. The hand-written prose around them stays;
 * only the text between `<!-- generated:NAME begin -->` and
 * `<!-- generated:NAME end -->` markers is replaced (refreshDoc).
 */
import { type Field, type ObjectNode, flow, objectShapes, object, typeDoc } from "./nodes.js";
import { JOB_FIELDS, STAGE_ITEM_NODE, STAGE_NODE } from "./schema.js";

function cell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\n/g, " ");
}

function defaultCell(field: Field): string {
  if (field.defaultDoc !== undefined) return field.defaultDoc;
  switch (field.presence.kind) {
    case "required":
      return "**required**";
    case "derived":
      return field.presence.how;
    case "default": {
      const v = field.presence.value;
      if (field.node.kind === "object") return "";
      // YAML-style: bare strings read better than quoted ones in a table.
      return `\`${scalar(v)}\``;
    }
  }
}

/** Sections get their own table; a small mapping form of a value (`init: {checkpoint}`) is rows of its parent. */
function ownTable(field: Field): ObjectNode | undefined {
  const shape = objectShapes(field.node)[0];
  if (shape === undefined) return undefined;
  return field.node.kind === "object" || Object.keys(shape.fields).length > 2 ? shape : undefined;
}

/** Small numbers as YAML users write them: 5e-4, not 0.0005. */
function scalar(v: unknown): string {
  if (typeof v === "number" && v !== 0 && Math.abs(v) < 1e-3) return v.toExponential();
  return typeof v === "string" ? v : flow(v);
}

interface Table {
  readonly title: string;
  readonly rows: string[];
}

function tables(node: ObjectNode, prefix: string, title: string, out: Table[]): void {
  const table: Table = { title, rows: [] };
  out.push(table);
  const nested: [string, ObjectNode][] = [];
  const addRows = (n: ObjectNode, pre: string): void => {
    for (const [key, field] of Object.entries(n.fields)) {
      const path = pre === "" ? key : `${pre}.${key}`;
      const sub = ownTable(field);
      const meaning = sub === undefined ? field.doc : `${field.doc} See \`${path}\` below.`;
      table.rows.push(`| \`${path}\` | ${cell(typeDoc(field.node))} | ${cell(defaultCell(field))} | ${cell(meaning)} |`);
      if (sub !== undefined) nested.push([path, sub]);
      else for (const shape of objectShapes(field.node)) addRows(shape, path);
    }
  };
  addRows(node, prefix);
  for (const [path, sub] of nested) tables(sub, path, `\`${path}\``, out);
}

function render(list: readonly Table[], level: string): string {
  const parts: string[] = [];
  for (const t of list) {
    parts.push(`${level} ${t.title}`, "", "| Field | Type | Default | Meaning |", "|---|---|---|---|", ...t.rows, "");
  }
  return parts.join("\n");
}

/** The generated blocks of docs/spec.md, by marker name. */
export function renderDocBlocks(): Record<string, string> {
  const fields: Table[] = [];
  tables(object({ ...JOB_FIELDS, ...STAGE_NODE.fields }), "", "Top level", fields);
  const item: Record<string, Field> = { name: STAGE_ITEM_NODE.fields.name!, needs: STAGE_ITEM_NODE.fields.needs! };
  const stages: Table[] = [];
  tables(object(item), "stages[]", "Stage fields", stages);
  return { fields: render(fields, "###"), stages: render(stages, "###") };
}

/**
 * `markdown` with each generated block replaced by its current rendering.
 * Throws when a marker pair is missing, so a doc edit cannot silently drop one.
 */
export function refreshDoc(markdown: string): string {
  let out = markdown;
  for (const [name, body] of Object.entries(renderDocBlocks())) {
    const begin = `<!-- generated:${name} begin -->`;
    const end = `<!-- generated:${name} end -->`;
    const i = out.indexOf(begin);
    const j = out.indexOf(end);
    if (i < 0 || j < i) throw new Error(`docs: markers ${begin} ... ${end} not found`);
    out = `${out.slice(0, i + begin.length)}\n\n${body}\n${out.slice(j)}`;
  }
  return out;
}
