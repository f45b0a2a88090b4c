/**
 * The rooms of jobs/ and their doors (docs/ARCHITECTURE.md, "Inside jobs/"):
 * each file imports only the files its row allows, so calls run one way
 * (the attempt never reaches the ending, the commit or the facade; only the
 * facade wires them), and the files form no cycle.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const JOBS = join(resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", ".."), "orchestrator", "src", "jobs");

/** file -> the jobs/ files it may import (type imports included). */
const ROOMS: Record<string, readonly string[]> = {
  // Pure or leaf: records, rules, in-memory shapes, the store's mirror.
  records: [],
  policy: [],
  traceback: ["policy"],
  lifecycle: [],
  logs: [],
  "step-history": [],
  runtime: ["policy", "traceback"],
  ledger: ["lifecycle"],
  // The supervisor of one attempt: decides; its hooks act.
  attempt: ["policy", "runtime"],
  context: ["attempt", "ledger", "logs", "runtime"],
  datasets: ["context", "records"],
  "checkpoint-refs": ["ledger", "records"],
  progress: ["attempt", "context", "datasets", "records", "runtime", "step-history"],
  commit: ["attempt", "context", "progress", "runtime"],
  spares: ["attempt", "context", "runtime"],
  ending: ["attempt", "context", "policy", "progress", "records", "spares"],
  gateway: ["attempt", "context", "records", "runtime"],
  recaption: ["attempt", "context", "runtime"],
  launch: ["attempt", "checkpoint-refs", "context", "datasets", "records", "runtime", "spares", "traceback"],
  dispatch: ["context", "launch", "records"],
  admission: ["checkpoint-refs", "context", "datasets", "dispatch", "records"],
  deletion: ["context"],
  // The facade wires every room; index re-exports.
  service: ["admission", "attempt", "checkpoint-refs", "commit", "context", "datasets", "deletion", "dispatch", "ending", "gateway", "launch", "logs", "progress", "recaption", "records", "runtime", "spares", "step-history"],
  index: ["*"],
};

function importsOf(file: string): string[] {
  const text = readFileSync(join(JOBS, `${file}.ts`), "utf8");
  return [...text.matchAll(/(?:import|export)\s[^;]*?\sfrom\s+"\.\/([a-z-]+)\.js"/g)].map((m) => m[1] as string);
}

void describe("jobs/ rooms", () => {
  const files = readdirSync(JOBS)
    .filter((f) => f.endsWith(".ts"))
    .map((f) => f.replace(/\.ts$/, ""));

  void it("every file of jobs/ has a row", () => {
    assert.deepEqual(files.filter((f) => !(f in ROOMS)), []);
  });

  void it("each file imports only what its row allows", () => {
    const problems: string[] = [];
    for (const f of files) {
      const allowed = ROOMS[f] ?? [];
      if (allowed.includes("*")) continue;
      for (const dep of new Set(importsOf(f))) if (!allowed.includes(dep)) problems.push(`jobs/${f}.ts imports ./${dep}.js`);
    }
    assert.deepEqual(problems, []);
  });

  void it("the rooms form no cycle", () => {
    const done = new Set<string>();
    const path: string[] = [];
    const visit = (n: string): void => {
      assert.ok(!path.includes(n), `cycle: ${[...path, n].join(" -> ")}`);
      if (done.has(n)) return;
      path.push(n);
      for (const m of ROOMS[n] ?? []) if (m !== "*") visit(m);
      path.pop();
      done.add(n);
    };
    for (const n of Object.keys(ROOMS)) visit(n);
  });
});
