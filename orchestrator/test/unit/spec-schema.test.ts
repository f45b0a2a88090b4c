/**
 * The schema layer on its own: suggestions, canonical JSON, node
 * validation, and the JSON Schema derived from the field descriptions.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { SPEC_FIELDS, canonicalJson, jsonSchema, loadPresets } from "../../src/spec/index.js";
import {
  type Issue,
  type Json,
  type Node,
  expectation,
  fieldPaths,
  formatPath,
  integer,
  list,
  number,
  object,
  oneOf,
  range,
  required,
  show,
  string,
  validate,
  withDefault,
  union,
  nullable,
  boolean,
} from "../../src/spec/nodes.js";
import { JOB_FIELDS, STAGE_ITEM_NODE, STAGE_NODE } from "../../src/spec/schema.js";
import { didYouMean, editDistance } from "../../src/spec/suggest.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));

function check(node: Node, value: unknown): { value: unknown; issues: string[] } {
  const issues: Issue[] = [];
  const out = validate(node, value, ["x"], issues);
  return { value: out, issues: issues.map((i) => `${formatPath(i.path)}: ${i.message}`) };
}

void describe("suggestions", () => {
  void it("counts an adjacent swap as one edit", () => {
    assert.equal(editDistance("steps", "stpes"), 1);
    assert.equal(editDistance("lr", "lrr"), 1);
    assert.equal(editDistance("", "abc"), 3);
    assert.equal(editDistance("kitten", "sitting"), 3);
  });

  void it("suggests close names and prefixes, not wild guesses", () => {
    const fields = ["steps", "epochs", "batch_size", "lr", "min_lr", "warmup_steps"];
    assert.equal(didYouMean("lrr", fields), "lr");
    assert.equal(didYouMean("LR", fields), "lr");
    assert.equal(didYouMean("batchsize", fields), "batch_size");
    assert.equal(didYouMean("warm", fields), "warmup_steps");
    assert.equal(didYouMean("x", fields), null);
    assert.equal(didYouMean("optimizer", fields), null);
  });
});

void describe("canonicalJson", () => {
  void it("sorts keys at every depth and keeps list order", () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: null } }), '{"a":{"c":null,"d":[3,{"y":2,"z":1}]},"b":1}');
  });

  void it("is equal for equal values built in different orders", () => {
    assert.equal(canonicalJson({ x: 1, y: "s" }), canonicalJson({ y: "s", x: 1 }));
  });

  void it("drops undefined properties and refuses what JSON cannot hold", () => {
    assert.equal(canonicalJson({ a: undefined, b: true }), '{"b":true}');
    assert.throws(() => canonicalJson({ a: Number.NaN }), /no JSON form/);
    assert.throws(() => canonicalJson(() => 1), /no JSON form/);
  });
});

void describe("nodes", () => {
  void it("phrase expectations from constraints", () => {
    assert.equal(expectation(integer({ min: 1 })), "an integer >= 1");
    assert.equal(expectation(integer({ min: 0, max: 1000 })), "an integer in [0, 1000]");
    assert.equal(expectation(number({ min: 0, minExclusive: true })), "a positive number");
    assert.equal(expectation(nullable(number({ min: 0 }))), "a non-negative number or null");
    assert.equal(expectation(number({ min: 0, max: 1, minExclusive: true })), "a number in (0, 1]");
    assert.equal(expectation(oneOf(["a", "b"])), 'one of "a", "b"');
    assert.equal(expectation(nullable(union([boolean(), object({})], { expect: "true, false or a mapping", typeDoc: "" }))), "true, false, a mapping or null");
  });

  void it("name only the violated bound of an integer", () => {
    const node = integer({ min: 1, max: 10 });
    assert.deepEqual(check(node, 0).issues, ["x: expected an integer >= 1, got 0"]);
    assert.deepEqual(check(node, 11).issues, ["x: expected an integer <= 10, got 11"]);
    assert.deepEqual(check(node, "3").issues, ['x: expected an integer in [1, 10], got "3"']);
    assert.deepEqual(check(node, 2 ** 60).issues, [`x: expected an integer in [1, 10], got ${2 ** 60}`]);
  });

  void it("refuse non-finite numbers and empty strings", () => {
    assert.deepEqual(check(number(), Number.POSITIVE_INFINITY).issues, ["x: expected a number, got Infinity"]);
    assert.deepEqual(check(string(), "").issues, ['x: expected a non-empty string, got ""']);
  });

  void it("check every list item and range order", () => {
    assert.deepEqual(check(list(integer({ min: 0 })), [1, -1, "a"]).issues, ["x[1]: expected an integer >= 0, got -1", 'x[2]: expected an integer >= 0, got "a"']);
    assert.deepEqual(check(range(number()), [2, 1]).issues, ["x: expected [low, high] with low <= high, got [2, 1]"]);
    assert.deepEqual(check(range(number()), [1, 2, 3]).issues, ["x: expected a [low, high] pair, got [1, 2, 3]"]);
  });

  void it("fill nested defaults, report unknown fields first, and never alias defaults", () => {
    const node = object({
      a: required(integer(), "a"),
      b: withDefault(object({ c: withDefault(list(integer()), [1, 2], "c") }), {}, "b"),
    });
    const first = check(node, { zz: 1 });
    assert.deepEqual(first.issues, ['x.zz: unknown field (expected one of: a, b)', "x.a: missing (expected an integer)"]);
    const ok = check(node, { a: 1 }).value as { b: { c: number[] } };
    assert.deepEqual(ok, { a: 1, b: { c: [1, 2] } });
    ok.b.c.push(3);
    assert.deepEqual((check(node, { a: 1 }).value as { b: { c: number[] } }).b.c, [1, 2]);
  });

  void it("tell union options apart by JSON type and say what the union accepts", () => {
    const node = union([oneOf(["random"]), object({ checkpoint: required(string(), "") })], { expect: '"random" or a mapping {checkpoint: REF}', typeDoc: "" });
    assert.deepEqual(check(node, "randm").issues, ['x: expected "random" or a mapping {checkpoint: REF}, got "randm" (did you mean "random"?)']);
    assert.deepEqual(check(node, { checkpont: "a" }).issues, ['x.checkpont: unknown field (did you mean "checkpoint"?)', "x.checkpoint: missing (expected a non-empty string)"]);
    assert.deepEqual(check(node, 3).issues, ['x: expected "random" or a mapping {checkpoint: REF}, got 3']);
  });

  void it("show bad values briefly", () => {
    assert.equal(show("fast"), '"fast"');
    assert.equal(show([1, 2]), "[1, 2]");
    assert.equal(show({ a: 1 }), "{a: 1}");
    assert.equal(show(Array.from({ length: 50 }, (_, i) => i)), "a list of 50 items");
    assert.equal(show("y".repeat(100)), JSON.stringify(`${"y".repeat(57)}...`));
    assert.equal(formatPath(["stages", 1, "train", "lr"]), "stages[1].train.lr");
    assert.equal(formatPath(["cluster", "node_selector", "kubernetes.io/arch"]), 'cluster.node_selector["kubernetes.io/arch"]');
  });
});

void describe("the spec's field descriptions", () => {
  const all = [...fieldPaths(object(JOB_FIELDS)), ...fieldPaths(STAGE_ITEM_NODE, "stages[]"), ...fieldPaths(STAGE_NODE)];

  void it("have a valid default for every defaulted field", () => {
    for (const { path, field } of all) {
      if (field.presence.kind !== "default") continue;
      const issues: Issue[] = [];
      validate(field.node, structuredClone(field.presence.value), [path], issues);
      // An absent section with a required field reports it: that is the point of its {} default.
      const own = issues.filter((i) => !i.message.startsWith("missing"));
      assert.deepEqual(own, [], path);
    }
  });

  void it("document every field", () => {
    for (const { path, field } of all) assert.ok(field.doc.length > 5 && /^[\x20-\x7e]*$/.test(field.doc), path);
  });

  void it("list every field path for the docs", () => {
    assert.ok(SPEC_FIELDS.includes("train.lr"));
    assert.ok(SPEC_FIELDS.includes("model.image.patch"));
    assert.ok(SPEC_FIELDS.includes("stages[].needs"));
    assert.equal(new Set(SPEC_FIELDS).size, SPEC_FIELDS.length);
  });
});

void describe("jsonSchema", () => {
  const schema = JSON.parse(JSON.stringify(jsonSchema(presets))) as Record<string, Json>;

  /** The schema of a dotted field path, following $refs and anyOf options. */
  function schemaAt(path: string): Record<string, Json> | undefined {
    const defs = schema.$defs as Record<string, Record<string, Json>>;
    const deref = (s: Record<string, Json>): Record<string, Json> => (typeof s.$ref === "string" ? defs[s.$ref.replace("#/$defs/", "")]! : s);
    let cur: Record<string, Json>[] = [schema];
    for (const key of path.replace("stages[]", "stages.[]").split(".")) {
      const next: Record<string, Json>[] = [];
      for (const s0 of cur) {
        const s = deref(s0);
        const options = [s, ...((s.anyOf as Record<string, Json>[] | undefined) ?? [])];
        for (const o of options) {
          if (key === "[]" && o.items !== undefined) next.push(o.items as Record<string, Json>);
          const props = o.properties as Record<string, Record<string, Json>> | undefined;
          if (props?.[key] !== undefined) next.push(props[key]);
        }
      }
      cur = next;
    }
    return cur[0];
  }

  void it("is draft 2020-12 JSON with every documented field", () => {
    assert.equal(schema.$schema, "https://json-schema.org/draft/2020-12/schema");
    assert.deepEqual(Object.keys(schema.patternProperties as object), ["^x-"]);
    const missing = SPEC_FIELDS.filter((p) => schemaAt(p) === undefined);
    assert.deepEqual(missing, []);
  });

  void it("describes fields with their docs, defaults and constraints", () => {
    assert.deepEqual(
      { type: schemaAt("train.lr")!.type, exclusiveMinimum: schemaAt("train.lr")!.exclusiveMinimum, default: schemaAt("train.lr")!.default },
      { type: "number", exclusiveMinimum: 0, default: 5e-4 },
    );
    assert.match(schemaAt("train.lr")!.description as string, /learning rate/);
    assert.deepEqual(schemaAt("cluster.workers")!.maximum, 16384);
    assert.equal(schemaAt("stages[].name")!.pattern, "^[a-z0-9-]{1,64}$");
  });

  void it("enumerates preset names when presets are given", () => {
    const image = schemaAt("model.image")!;
    const names = (image.anyOf as Record<string, Json>[])[0]!.enum;
    assert.deepEqual(names, Object.keys(presets.image));
    const plain = JSON.parse(JSON.stringify(jsonSchema())) as { $defs: { model: { properties: { image: { anyOf: { enum?: unknown }[] } } } } };
    assert.equal(plain.$defs.model.properties.image.anyOf[0]!.enum, undefined);
  });

  void it("requires task and cluster.workers only in specs without stages", () => {
    assert.deepEqual(schema.if, { not: { required: ["stages"] } });
    assert.deepEqual(schema.then, { required: ["task", "cluster"], properties: { cluster: { required: ["workers"] } } });
    assert.equal(schemaAt("cluster")!.required, undefined);
  });

  void it("has no dangling $ref", () => {
    const defs = schema.$defs as Record<string, unknown>;
    const refs = JSON.stringify(schema).match(/"\$ref":"#\/\$defs\/[^"]+"/g) ?? [];
    assert.ok(refs.length > 10);
    for (const ref of refs) assert.ok(ref.slice(16, -1) in defs, ref);
  });
});
