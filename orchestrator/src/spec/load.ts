/**
 * The spec's entry points: a file (YAML or JSON) or an already parsed value
 * (a spec sent as JSON over gRPC) in, a frozen JobSpec out, or one
 * InvalidArgumentError listing every problem, each line starting with the
 * file (and, for files, the line and column).
 */
import * as nodePath from "node:path";
import { type Document, LineCounter, type ParsedNode, type YAMLError, isAlias, isMap, isScalar, isSeq, parseDocument } from "yaml";
import { type JobSpec, InvalidArgumentError } from "../domain/index.js";
import { readTextFile } from "./files.js";
import { SpecValidationError } from "./issues.js";
import { type Path, formatPath } from "./nodes.js";
import { type Presets } from "./presets.js";
import { type SpecContext, resolveSpec } from "./resolve.js";

/** Options of loadSpecFile. */
export interface LoadOptions {
  readonly presets: Presets;
}

/** Position of a path in the source document, when it can be found. */
type Locator = (path: Path) => { line: number; col: number } | null;

/**
 * Read, parse and validate a spec file. JSON when the name ends in `.json`,
 * YAML otherwise (duplicate keys rejected; anchors, aliases and `<<` merge
 * keys allowed). Relative paths in the spec resolve against its directory;
 * the job name defaults to the file name without its extension.
 */
export function loadSpecFile(file: string, opts: LoadOptions): JobSpec {
  return loadSpecDocument(file, opts).spec;
}

/**
 * Like loadSpecFile, and also returns the parsed document as plain data
 * (anchors and merge keys resolved): what a client sends to a server, which
 * validates it again with parseSpec.
 */
export function loadSpecDocument(file: string, opts: LoadOptions): { spec: JobSpec; raw: unknown; locate: SpecLocator } {
  const text = readTextFile(file);
  const { value, locate } = parseText(file, text);
  const spec = compile(value, { specPath: file, baseDir: nodePath.dirname(nodePath.resolve(file)), presets: opts.presets }, locate);
  // Exact: a path not written in the file (its nearest ancestor found instead) is null.
  const located: SpecLocator = (path) => {
    const at = locate(path);
    if (at === null || path.length === 0) return null;
    const parent = path.length > 1 ? locate(path.slice(0, -1)) : null;
    return parent !== null && parent.line === at.line && parent.col === at.col ? null : { line: at.line, column: at.col };
  };
  return { spec, raw: value, locate: located };
}

/** Where a path of the document is written in its file (1-based line and column of its key); null when it is not written there. */
export type SpecLocator = (path: Path) => { line: number; column: number } | null;

/**
 * Validate an already parsed spec (e.g. the JSON a client sent) into a
 * deeply frozen JobSpec. `specPath` names the job by default and prefixes
 * messages; `baseDir` anchors relative paths.
 */
export function parseSpec(raw: unknown, ctx: SpecContext): JobSpec {
  return compile(raw, ctx, null);
}

function compile(raw: unknown, ctx: SpecContext, locate: Locator | null): JobSpec {
  const result = resolveSpec(raw, ctx);
  if (result.ok) return result.job;
  throw new SpecValidationError(
    ctx.specPath,
    result.issues.map((issue) => {
      const at = locate === null ? null : locate(issue.path);
      return { path: formatPath(issue.path), message: issue.message, line: at?.line ?? null, column: at?.col ?? null };
    }),
  );
}

function yamlError(file: string, err: YAMLError, kind: string): string {
  const first = err.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
  const pos = err.linePos?.[0];
  return pos === undefined ? `${file}: invalid ${kind}: ${first}` : `${file}:${pos.line}:${pos.col}: invalid ${kind}: ${first}`;
}

function parseText(file: string, text: string): { value: unknown; locate: Locator } {
  const json = /\.json$/i.test(file);
  const kind = json ? "JSON" : "YAML";
  const lineCounter = new LineCounter();
  // The json schema refuses YAML-only scalars (unquoted strings) in .json files.
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, merge: !json, schema: json ? "json" : "core" });
  // Only the first syntax error: the parser's later ones mostly follow from it.
  const problem = doc.errors[0] ?? doc.warnings[0];
  if (problem !== undefined) throw new InvalidArgumentError(yamlError(file, problem, kind), null, { cause: problem });
  if (json) {
    try {
      JSON.parse(text); // what YAML's flow syntax tolerates and JSON does not (trailing commas)
    } catch (err) {
      throw new InvalidArgumentError(`${file}: invalid JSON: ${err instanceof Error ? err.message : String(err)}`, null, { cause: err });
    }
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 1000 });
  } catch (err) {
    // Only alias expansion fails here ("billion laughs").
    throw new InvalidArgumentError(`${file}: invalid YAML: ${err instanceof Error ? err.message : String(err)}`, null, { cause: err });
  }
  return { value, locate: locator(doc, lineCounter) };
}

/** Find the key (or list item) of a path, or its nearest ancestor that exists. */
function locator(doc: Document.Parsed, lines: LineCounter): Locator {
  const deref = (node: unknown): unknown => (isAlias(node) ? node.resolve(doc) : node);
  const findPair = (map: unknown, key: string, depth = 0): { key: unknown; value: unknown } | undefined => {
    if (!isMap(map) || depth > 8) return undefined;
    const own = map.items.find((p) => isScalar(p.key) && String(p.key.value) === key);
    if (own !== undefined) return own;
    // `<<: *anchor` (or a list of them) contributes the anchor's keys.
    for (const pair of map.items) {
      // With merge keys on, the parser turns `<<` into a symbol value; its source stays "<<".
      if (!isScalar(pair.key) || pair.key.source !== "<<") continue;
      const sources = isSeq(pair.value) ? pair.value.items : [pair.value];
      for (const source of sources) {
        const found = findPair(deref(source), key, depth + 1);
        if (found !== undefined) return found;
      }
    }
    return undefined;
  };
  const start = (node: unknown): number | null => (node as ParsedNode | null)?.range?.[0] ?? null;
  return (path) => {
    let node: unknown = doc.contents;
    let offset: number | null = null;
    for (const seg of path) {
      node = deref(node);
      if (isMap(node)) {
        const pair = findPair(node, String(seg));
        if (pair === undefined) break;
        offset = start(pair.key) ?? offset;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === "number" && seg < node.items.length) {
        node = node.items[seg];
        offset = start(node) ?? offset;
      } else {
        break;
      }
    }
    return offset === null ? null : lines.linePos(offset);
  };
}
