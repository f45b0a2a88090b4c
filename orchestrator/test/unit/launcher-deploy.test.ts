/**
 * The inventory examples people copy (deploy/inventory.example.yaml and the
 * `# nodes.yaml` blocks of docs/spec.md) stay valid, and say what they claim.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseInventory } from "../../src/scheduler/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

void describe("inventory examples", () => {
  void it("deploy/inventory.example.yaml parses, with its defaults applied", () => {
    const path = join(ROOT, "deploy/inventory.example.yaml");
    const nodes = parseInventory(readFileSync(path, "utf8"), path);
    assert.deepEqual(
      nodes.map((n) => [n.name, n.launcher, n.slots, n.gpus, n.port, n.host_key_policy]),
      [
        ["gpu-a1", "ssh", 8, 8, 22, "strict"],
        ["gpu-a2", "ssh", 8, 8, 22, "strict"],
        ["gpu-b1", "ssh", 4, 4, 22, "strict"],
        ["cpu-1", "ssh", 16, 0, 2222, "accept-new"],
        ["control", "local", 2, 0, 22, "strict"],
      ],
    );
    const a1 = nodes[0]!;
    assert.equal(a1.address, "10.10.0.11", "ranks meet on the interconnect address");
    assert.equal(a1.user, "train");
    assert.equal(a1.identity_file, "/etc/clipfleet/id_ed25519");
    assert.equal(a1.workdir, "/opt/clipfleet/worker-runtime");
    assert.equal(nodes[3]!.address, "10.10.2.21", "address defaults to host");
  });

  void it("the nodes.yaml blocks of docs/spec.md parse", () => {
    const doc = readFileSync(join(ROOT, "docs/spec.md"), "utf8");
    const blocks = [...doc.matchAll(/```yaml\n(# nodes\.yaml\n[\s\S]*?)```/g)].map((m) => m[1]!);
    assert.ok(blocks.length >= 1);
    for (const b of blocks) assert.ok(parseInventory(b, "docs/spec.md").length >= 1);
  });
});
