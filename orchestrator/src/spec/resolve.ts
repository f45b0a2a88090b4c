/**
 * From a parsed document to a JobSpec: the pipeline (stage names, needs,
 * order), the merge of shared fields with each stage's overrides, each
 * merged stage resolved (stage.ts: schema validation and the rules that span
 * fields), and each stage's issues attributed to the stage or the shared
 * fields. Problems are collected, never thrown, so the user sees all of them
 * at once.
 */
import { createHash } from "node:crypto";
import * as nodePath from "node:path";
import { type JobSpec, MAX_RESOLVED_SPEC_BYTES, MAX_STAGES, type SynthSpec } from "../domain/index.js";
import { canonicalJson } from "./canonical.js";
import { type Issue, type Path, deepFreeze, expectation, formatPath, isMapping, show, unknownFieldMessage, validate } from "./nodes.js";
import { type Presets } from "./presets.js";
import { JOB_FIELDS, JOB_NAME, STAGE_ITEM_NODE, STAGE_NODE, TOP_LEVEL_KEYS } from "./schema.js";
import { type StageContext, type StageItem, resolveStage } from "./stage.js";
import { didYouMean } from "./suggest.js";

// Defined with the stage rules that use them; the unit tests import them from here.
export { resolvePattern, synthShards } from "./stage.js";

/** Where a spec came from: its path names the job by default, its directory anchors relative paths. */
export interface SpecContext {
  readonly specPath: string;
  readonly baseDir: string;
  readonly presets: Presets;
}

/** The outcome of resolution: a frozen job, or every problem found. */
export type Resolution = { readonly ok: true; readonly job: JobSpec } | { readonly ok: false; readonly issues: readonly Issue[] };

const STAGE_KEYS: readonly string[] = Object.keys(STAGE_NODE.fields);
const STAGE_ITEM_KEYS: readonly string[] = Object.keys(STAGE_ITEM_NODE.fields);

function pick(source: Readonly<Record<string, unknown>>, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of keys) if (source[key] !== undefined) out[key] = source[key];
  return out;
}

/**
 * Shorthands that mean a mapping, so that a stage's mapping merges into a
 * shared shorthand (`model.image: vit-tiny` + `{image_size: 64}`) instead of
 * replacing it. A shorthand over a mapping still replaces it.
 */
const SHORTHANDS: Readonly<Record<string, (v: unknown) => unknown>> = {
  "model.image": (v) => (typeof v === "string" ? { preset: v } : v),
  "model.text": (v) => (typeof v === "string" ? { preset: v } : v),
  "model.tokenizer": (v) => (typeof v === "string" ? { type: v } : v),
  "data.augment": (v) => (v === true ? {} : v),
  eval: (v) => (v === true ? {} : v),
};

/** Stage overrides on top of shared fields: mappings merge recursively, anything else replaces. */
export function mergeOverrides(base: unknown, over: unknown, at = ""): unknown {
  if (over === undefined) return base;
  const expand = SHORTHANDS[at];
  const b = isMapping(over) && !isMapping(base) && expand !== undefined ? expand(base) : base;
  if (!isMapping(b) || !isMapping(over)) return over;
  const out: Record<string, unknown> = { ...b };
  for (const [key, value] of Object.entries(over)) out[key] = mergeOverrides(b[key], value, at === "" ? key : `${at}.${key}`);
  return out;
}

/** Whether `source` gives the value at `path` (a scalar or list on the way also counts: it replaces what is below). */
function gives(source: unknown, path: Path): boolean {
  let cur = source;
  for (const seg of path) {
    if (isMapping(cur)) {
      if (cur[seg] === undefined) return false;
      cur = cur[seg];
    } else if (Array.isArray(cur)) {
      if (typeof seg !== "number" || cur[seg] === undefined) return false;
      cur = cur[seg];
    } else {
      return true;
    }
  }
  return true;
}

// ---- the pipeline ----

function describeTop(raw: unknown): string {
  if (raw === null || raw === undefined) return "an empty document";
  if (Array.isArray(raw)) return "a list";
  return typeof raw === "string" ? `the string ${show(raw)}` : show(raw);
}

function resolveName(raw: Readonly<Record<string, unknown>>, specPath: string, issues: Issue[]): string | undefined {
  if (raw.name !== undefined) return validate(JOB_FIELDS.name!.node, raw.name, ["name"], issues) as string | undefined;
  const stem = nodePath.basename(specPath).replace(/\.[^.]*$/, "");
  if (JOB_NAME.test(stem)) return stem;
  issues.push({ path: ["name"], message: `missing, and the file name ${JSON.stringify(stem)} is not a valid job name (expected ${expectation(JOB_FIELDS.name!.node)})` });
  return undefined;
}

function stageItems(raw: Readonly<Record<string, unknown>>, issues: Issue[]): StageItem[] {
  const stages = raw.stages;
  if (stages === undefined) return [{ index: null, name: "main", needs: [], overrides: {} }];
  if (!Array.isArray(stages) || stages.length === 0) {
    issues.push({ path: ["stages"], message: `expected a non-empty list of stages, got ${show(stages)}` });
    return [];
  }
  if (stages.length > MAX_STAGES) {
    issues.push({ path: ["stages"], message: `expected at most ${MAX_STAGES} stages, got ${stages.length}` });
    return [];
  }
  const items: StageItem[] = [];
  stages.forEach((item: unknown, index) => {
    const at = ["stages", index];
    if (!isMapping(item)) {
      issues.push({ path: at, message: `expected a mapping with a name, got ${show(item)}` });
      return;
    }
    for (const key of Object.keys(item)) {
      if (key === "priority" || key === "stages") issues.push({ path: [...at, key], message: `belongs to the job, not to a stage (set it at the top level)` });
      else if (!STAGE_ITEM_KEYS.includes(key)) issues.push({ path: [...at, key], message: unknownFieldMessage(key, STAGE_ITEM_KEYS) });
    }
    const nameField = STAGE_ITEM_NODE.fields.name!;
    let name: string | undefined;
    if (item.name === undefined) issues.push({ path: [...at, "name"], message: `missing (expected ${expectation(nameField.node)})` });
    else name = validate(nameField.node, item.name, [...at, "name"], issues) as string | undefined;
    const needs = (validate(STAGE_ITEM_NODE.fields.needs!.node, item.needs === undefined ? [] : item.needs, [...at, "needs"], issues) as string[] | undefined) ?? [];
    items.push({ index, name, needs, overrides: pick(item, STAGE_KEYS) });
  });
  return items;
}

/** Check names and needs; return the stages in a stable topological order (user order where free). */
function orderStages(items: readonly StageItem[], issues: Issue[]): StageItem[] {
  const byName = new Map<string, StageItem>();
  for (const item of items) {
    if (item.name === undefined) continue;
    const first = byName.get(item.name);
    if (first !== undefined) issues.push({ path: ["stages", item.index!, "name"], message: `duplicate stage name ${JSON.stringify(item.name)} (also stages[${first.index}])` });
    else byName.set(item.name, item);
  }
  const names = [...byName.keys()];
  for (const item of items) {
    const seen = new Set<string>();
    item.needs.forEach((need, k) => {
      const at = ["stages", item.index!, "needs", k];
      if (seen.has(need)) issues.push({ path: at, message: `${JSON.stringify(need)} is listed twice` });
      seen.add(need);
      if (!byName.has(need)) {
        const guess = didYouMean(need, names);
        const mean = guess === null ? `known: ${names.join(", ")}` : `did you mean ${JSON.stringify(guess)}?`;
        issues.push({ path: at, message: `stage ${JSON.stringify(item.name ?? "?")} needs ${JSON.stringify(need)}, which is not a stage of this spec (${mean})` });
      }
    });
  }
  // Kahn's algorithm, always taking the earliest ready stage in user order.
  const ordered: StageItem[] = [];
  const done = new Set<string>();
  const pending = items.filter((i) => i.name !== undefined && byName.get(i.name) === i);
  for (;;) {
    const ready = pending.findIndex((i) => i.needs.every((n) => done.has(n) || !byName.has(n)));
    if (ready < 0) break;
    const [item] = pending.splice(ready, 1);
    ordered.push(item!);
    done.add(item!.name!);
  }
  if (pending.length > 0) issues.push({ path: ["stages"], message: `cycle ${findCycle(pending, byName).join(" -> ")}` });
  return ordered;
}

/** A cycle among `pending` stages (each of which waits on another pending one), from its earliest stage in user order. */
function findCycle(pending: readonly StageItem[], byName: ReadonlyMap<string, StageItem>): string[] {
  const waiting = new Set(pending.map((i) => i.name!));
  const walk: string[] = [];
  let cur = pending[0]!.name!;
  while (!walk.includes(cur)) {
    walk.push(cur);
    cur = byName.get(cur)!.needs.find((n) => waiting.has(n))!;
  }
  const cycle = walk.slice(walk.indexOf(cur));
  const order = pending.map((i) => i.name!);
  const start = cycle.reduce((best, n) => (order.indexOf(n) < order.indexOf(best) ? n : best));
  const k = cycle.indexOf(start);
  const rotated = [...cycle.slice(k), ...cycle.slice(0, k)];
  return [...rotated, start];
}

/**
 * Resolve a parsed spec document. Issues come in order of importance: the
 * job's own fields and the pipeline first, then each stage's fields in user
 * order. A stage's issue is reported once, unprefixed, when its value is
 * shared and every stage has it; otherwise it is prefixed `stages[i].`.
 */
export function resolveSpec(raw: unknown, ctx: SpecContext): Resolution {
  if (!isMapping(raw)) return { ok: false, issues: [{ path: [], message: `top level must be a mapping of spec fields, got ${describeTop(raw)}` }] };
  const baseDir = nodePath.resolve(ctx.baseDir);
  const issues: Issue[] = [];
  for (const key of Object.keys(raw)) {
    // `x-` keys hold YAML anchors for reuse (as in Compose files) and are ignored.
    if (!TOP_LEVEL_KEYS.includes(key) && !key.startsWith("x-")) issues.push({ path: [key], message: unknownFieldMessage(key, TOP_LEVEL_KEYS) });
  }
  const name = resolveName(raw, ctx.specPath, issues);
  const priority = validate(JOB_FIELDS.priority!.node, raw.priority === undefined ? 0 : raw.priority, ["priority"], issues) as number | undefined;
  const items = stageItems(raw, issues);
  const ordered = orderStages(items, issues);
  const byName = new Map<string, StageItem>();
  for (const item of items) if (item.name !== undefined && !byName.has(item.name)) byName.set(item.name, item);
  const shared = pick(raw, STAGE_KEYS);
  const merged = new Map(items.map((item) => [item, mergeOverrides(shared, item.overrides) as Record<string, unknown>]));
  const stageCtx: StageContext = { baseDir, presets: ctx.presets, byName, taskOf: (n) => merged.get(byName.get(n)!)!.task, fieldsOf: (n) => merged.get(byName.get(n)!)! };
  const results = new Map(items.map((item) => [item, resolveStage(merged.get(item)!, item, stageCtx)]));

  // Attribute each stage issue: to the stage when its value comes from the
  // stage, else to the shared fields when every stage has the same issue.
  const count = new Map<string, number>();
  const keyOf = (i: Issue): string => `${formatPath(i.path)}\u0000${i.message}`;
  for (const item of items) for (const i of results.get(item)!.issues) if (!gives(item.overrides, i.path)) count.set(keyOf(i), (count.get(keyOf(i)) ?? 0) + 1);
  const emitted = new Set<string>();
  for (const item of items) {
    for (const i of results.get(item)!.issues) {
      const key = keyOf(i);
      if (item.index === null || (!gives(item.overrides, i.path) && count.get(key) === items.length)) {
        if (!emitted.has(key)) issues.push(i);
        emitted.add(key);
      } else {
        issues.push({ path: ["stages", item.index, ...i.path], message: i.message });
      }
    }
  }
  // The generator skips an `out` that already holds shards, so stages sharing
  // one must agree on what is in it (the size defaults to each stage's image size).
  const synthOwner = new Map<string, { item: StageItem; synth: SynthSpec }>();
  for (const item of items) {
    const synth = results.get(item)!.stage?.data.synth;
    if (synth === null || synth === undefined) continue;
    const first = synthOwner.get(synth.out);
    if (first === undefined) {
      synthOwner.set(synth.out, { item, synth });
      continue;
    }
    const diffs = (Object.keys(synth) as (keyof SynthSpec)[]).filter((k) => synth[k] !== first.synth[k]).map((k) => `${k} ${synth[k]} vs ${first.synth[k]}`);
    if (diffs.length > 0) {
      issues.push({
        path: ["stages", item.index!, "data", "synth"],
        message: `generates into ${synth.out} like stage ${JSON.stringify(first.item.name)} but differently (${diffs.join(", ")}); set data.synth.size or use another out`,
      });
    }
  }
  if (issues.length > 0) return { ok: false, issues };

  const stages = ordered.map((item) => results.get(item)!.stage!);
  const canonical = canonicalJson(stages);
  const bytes = Buffer.byteLength(canonical, "utf8");
  if (bytes > MAX_RESOLVED_SPEC_BYTES) {
    const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MiB`;
    return { ok: false, issues: [{ path: [], message: `expands to ${mib(bytes)} once every stage inherits the top-level fields (at most ${mib(MAX_RESOLVED_SPEC_BYTES)}): move large values into the stages that need them` }] };
  }
  const job: JobSpec = {
    name: name!,
    priority: priority!,
    stages,
    base_dir: baseDir,
    config_sha256: createHash("sha256").update(canonical).digest("hex"),
  };
  return { ok: true, job: deepFreeze(job) };
}
