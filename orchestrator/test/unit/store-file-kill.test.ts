/**
 * FileJobStore under SIGKILL: a child process writes growing and shrinking
 * records in a tight loop and is killed at seeded random moments; after each
 * kill every job.json must parse and be exactly one of the versions written
 * (never torn, never older than what an earlier round saw), and the store
 * must reopen (taking over the dead child's lock).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { FileJobStore } from "../../src/store/index.js";

const ROUNDS = 20;
const SEED = 0x5eed;
const IDS = ["j-kill-a", "j-kill-b", "j-kill-c"];

// The writer and the expected content of every version live in one module, so
// the parent checks against exactly what the child wrote.
const WRITER = `
export function versionOf(id, revision) {
  // Sizes jump up and down (a shrinking in-place write would leave a torn tail).
  const size = (revision * 7919 + id.length * 131) % 40000;
  return {
    schemaVersion: 1, id, name: id, state: "RUNNING", reason: "v" + revision, pendingReason: "",
    createdAtMs: 1, updatedAtMs: revision, priority: 0,
    spec: { name: id, priority: 0, stages: [], base_dir: "/", config_sha256: "" },
    token: "t", nextAttempt: revision, stages: [], nextEventSeq: revision,
    recentEvents: [], cancelRequested: null, padding: String(revision % 10).repeat(size),
  };
}

if (process.argv[2] !== undefined) {
  const [storeUrl, stateDir, ids] = process.argv.slice(2);
  const { FileJobStore } = await import(storeUrl);
  const store = await FileJobStore.open(stateDir);
  const revs = {};
  for (const id of ids.split(",")) revs[id] = (await store.get(id))?.revision ?? 0;
  process.stdout.write("ready\\n");
  for (let i = 0; ; i++) {
    const id = ids.split(",")[i % 3];
    await store.put(versionOf(id, revs[id] + 1), revs[id]);
    revs[id] += 1;
  }
}
`;

/** mulberry32: a tiny seeded generator, so a failing round can be replayed. */
function seeded(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let dir: string;
let writerFile: string;
let versionOf: (id: string, revision: number) => unknown;

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-kill-"));
  writerFile = path.join(dir, "writer.mjs");
  writeFileSync(writerFile, WRITER);
  ({ versionOf } = (await import(pathToFileURL(writerFile).href)) as { versionOf: typeof versionOf });
});
after(() => rmSync(dir, { recursive: true, force: true }));

void it(`records survive SIGKILL at random moments (${ROUNDS} rounds, seed ${SEED})`, async () => {
  const storeUrl = new URL("../../src/store/index.js", import.meta.url).href;
  const stateDir = path.join(dir, "state");
  const random = seeded(SEED);
  const seen = new Map<string, number>(IDS.map((id) => [id, 0]));
  let tempLeftovers = 0;

  for (let round = 0; round < ROUNDS; round++) {
    const killAfterMs = 5 + Math.floor(random() * 76);
    const child = spawn(process.execPath, [writerFile, storeUrl, stateDir, IDS.join(",")], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    await new Promise<void>((resolve, reject) => {
      child.stdout.once("data", () => resolve());
      void exited.then(() => reject(new Error(`round ${round}: writer exited before ready: ${stderr}`)));
    });
    await delay(killAfterMs);
    child.kill("SIGKILL");
    await exited;
    assert.equal(child.signalCode, "SIGKILL", `round ${round}: writer died on its own: ${stderr}`);

    for (const id of IDS) {
      const jobDir = path.join(stateDir, "jobs", id);
      let text: string;
      try {
        text = readFileSync(path.join(jobDir, "job.json"), "utf8");
      } catch {
        assert.equal(seen.get(id), 0, `round ${round}: ${id}/job.json vanished`);
        continue;
      }
      tempLeftovers += readdirSync(jobDir).filter((n) => n.endsWith(".tmp")).length;
      let parsed: { revision: number; job: unknown };
      try {
        parsed = JSON.parse(text) as typeof parsed;
      } catch (err) {
        assert.fail(`round ${round} (killed after ${killAfterMs} ms): ${id}/job.json is torn: ${String(err)}`);
      }
      assert.deepEqual(parsed.job, versionOf(id, parsed.revision), `round ${round}: ${id} is not version ${parsed.revision}`);
      assert.ok(parsed.revision >= (seen.get(id) ?? 0), `round ${round}: ${id} went back to ${parsed.revision}`);
      seen.set(id, parsed.revision);
    }

    // The parent can take over the dead writer's lock and read everything.
    const store = await FileJobStore.open(stateDir);
    const listed = await store.list();
    await store.close();
    assert.deepEqual(
      listed.map((j) => j.reason),
      IDS.filter((id) => (seen.get(id) ?? 0) > 0).map((id) => `v${seen.get(id)}`),
    );
  }

  const writes = [...seen.values()].reduce((a, b) => a + b, 0);
  // The loop must have exercised the writer; otherwise the test proves nothing.
  assert.ok(writes >= ROUNDS, `only ${writes} writes in ${ROUNDS} rounds`);
  process.stdout.write(`# ${writes} writes survived ${ROUNDS} kills; ${tempLeftovers} temp leftovers seen\n`);
});
