/**
 * Preflight of local nodes (the same `python -m clipfleet_worker info` an
 * SSH node runs in its workdir), and what makes a node fail it. SSH nodes
 * are checked against real sshd hosts in tests/e2e/ssh-fleet.test.ts.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkNodes } from "../../src/launcher/index.js";
import { localInventory } from "../../src/scheduler/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const RUNTIME = join(ROOT, "worker-runtime");
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const PYTHON = "/usr/bin/python3";

void describe("nodes check", () => {
  void it("reports a healthy local node (versions, devices, free disk), and fails it against another version", async () => {
    // Both at once: each runs the info command, which imports torch (seconds on a small machine).
    const [[c], [old]] = await Promise.all([
      checkNodes([localInventory()], { ssh: null, workerRuntimeDir: RUNTIME, version: VERSION, localPython: PYTHON }),
      checkNodes([localInventory()], { ssh: null, workerRuntimeDir: RUNTIME, version: "9.9.9", localPython: PYTHON }),
    ]);
    assert.ok(c && old);
    assert.deepEqual(c.problems, []);
    assert.equal(c.ok, true);
    assert.equal(c.reachable, true);
    assert.equal(c.hostKey, "local");
    assert.equal(c.runtimeVersion, VERSION);
    assert.match(c.pythonVersion ?? "", /^3\.\d+\.\d+$/);
    assert.match(c.torchVersion ?? "", /^\d+\.\d+/);
    assert.equal(typeof c.cudaDevices, "number");
    assert.ok((c.freeBytes ?? 0) > 0);
    assert.equal(c.workdir, RUNTIME);
    assert.equal(old.ok, false);
    assert.deepEqual(old.problems, [`worker runtime ${VERSION} in ${RUNTIME} does not match orchestrator 9.9.9`]);
  });

  void it("fails a node whose workdir has no worker runtime, with the interpreter's complaint", async () => {
    const empty = mkdtempSync(join(tmpdir(), "cf-preflight-"));
    try {
      const [c] = await checkNodes([localInventory()], { ssh: null, workerRuntimeDir: empty, version: VERSION, localPython: PYTHON });
      assert.equal(c?.ok, false);
      assert.match(c?.problems[0] ?? "", /clipfleet_worker info in .* failed: .*No module named clipfleet_worker/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  void it("fails an ssh node when no SSH launcher is configured, without trying to connect", async () => {
    const node = { ...localInventory(), name: "far", host: "10.255.255.1", launcher: "ssh" as const };
    const [c] = await checkNodes([node], { ssh: null, workerRuntimeDir: RUNTIME, version: VERSION, localPython: PYTHON });
    assert.deepEqual([c?.ok, c?.reachable, c?.problems], [false, false, ["no SSH launcher configured"]]);
  });
});
