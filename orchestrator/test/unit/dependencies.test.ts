/**
 * The module rule of docs/ARCHITECTURE.md, enforced: each folder of
 * orchestrator/src imports only the folders its row allows, only through
 * their index.ts, and folders form no cycle.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
const SRC = join(ROOT, "orchestrator", "src");

/** folder -> folders it may import (keep equal to the table in docs/ARCHITECTURE.md). */
const ALLOWED: Record<string, readonly string[]> = {
  gen: [],
  util: [],
  domain: ["gen"],
  spec: ["domain"],
  data: ["domain"],
  scheduler: ["domain"],
  nats: ["domain"],
  store: ["domain", "util", "nats"],
  events: ["domain", "nats"],
  metrics: ["domain"],
  launcher: ["domain"],
  checkpoints: ["domain", "util"],
  auth: ["domain", "gen"],
  jobs: ["gen", "util", "domain", "spec", "data", "scheduler", "store", "events", "metrics", "launcher", "checkpoints"],
  rpc: ["jobs", "auth", "domain", "gen"],
  ui: ["jobs", "auth", "domain"],
  client: ["gen", "domain"],
  cli: ["client", "auth", "domain", "spec", "jobs", "gen", "checkpoints", "util"],
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** Relative import specifiers of a file (static imports and re-exports; type imports included). */
function imports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const out: string[] = [];
  for (const m of text.matchAll(/(?:import|export)\s[^;]*?\sfrom\s+"(\.[^"]+)"/g)) out.push(m[1] as string);
  for (const m of text.matchAll(/import\("(\.[^"]+)"\)/g)) out.push(m[1] as string);
  return out;
}

const folderOf = (file: string): string => relative(SRC, file).split("/")[0] as string;

void describe("module dependencies", () => {
  const all = files(SRC).filter((f) => folderOf(f) !== "gen");

  void it("every folder is in the table", () => {
    for (const f of all) {
      const folder = folderOf(f);
      if (folder === "main.ts") continue;
      assert.ok(folder in ALLOWED, `${relative(ROOT, f)}: folder ${folder} is not in the dependency table`);
    }
  });

  void it("imports point down the table, through index.ts", () => {
    const problems: string[] = [];
    for (const f of all) {
      const from = folderOf(f);
      for (const spec of imports(f)) {
        const target = resolve(dirname(f), spec).replace(/\.js$/, ".ts");
        const to = folderOf(target);
        if (to === from || from === "main.ts") continue;
        if (!(ALLOWED[from] ?? []).includes(to)) problems.push(`${relative(ROOT, f)} imports ${to}/ (not allowed for ${from}/)`);
        else if (to !== "gen" && relative(join(SRC, to), target) !== "index.ts") problems.push(`${relative(ROOT, f)} reaches into ${relative(SRC, target)} instead of ${to}/index.ts`);
      }
    }
    assert.deepEqual(problems, []);
  });

  void it("the allowed graph has no cycle", () => {
    const seen = new Set<string>();
    const stack = new Set<string>();
    const visit = (n: string): void => {
      assert.ok(!stack.has(n), `cycle through ${n}`);
      if (seen.has(n)) return;
      stack.add(n);
      for (const m of ALLOWED[n] ?? []) visit(m);
      stack.delete(n);
      seen.add(n);
    };
    for (const n of Object.keys(ALLOWED)) visit(n);
  });
});
