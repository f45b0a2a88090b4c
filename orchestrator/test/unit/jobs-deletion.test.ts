/**
 * What `delete` may remove: only a tree inside its base, symlinks removed as
 * links and never followed (their targets survive, their bytes are not
 * counted); a base reached through a symlink (checkpoints on another disk)
 * works; a job's checkpoint roots come from its stages' checkpoint.dir and
 * from where its recorded checkpoints lie, never from an imported folder.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { JobRecord } from "../../src/domain/index.js";
import { checkpointRoots, removeTree } from "../../src/jobs/deletion.js";

void describe("delete: removeTree and checkpointRoots", () => {
  const tmp = mkdtempSync(join(tmpdir(), "clipfleet-deletion-"));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  void it("removes a tree inside its base, counting its files' bytes; symlinks go as links, their targets stay", () => {
    const base = join(tmp, "a", "checkpoints");
    const outside = join(tmp, "a", "precious");
    mkdirSync(join(base, "j-1", "main", "step-1"), { recursive: true });
    mkdirSync(outside, { recursive: true });
    writeFileSync(join(outside, "data"), "x".repeat(1000));
    writeFileSync(join(base, "j-1", "main", "step-1", "model.pt"), "y".repeat(300));
    symlinkSync(outside, join(base, "j-1", "main", "link-dir"));
    symlinkSync(join(outside, "data"), join(base, "j-1", "main", "link-file"));
    assert.equal(removeTree(base, join(base, "j-1")), 300);
    assert.equal(existsSync(join(base, "j-1")), false);
    assert.equal(readFileSync(join(outside, "data"), "utf8").length, 1000);
    assert.equal(removeTree(base, join(base, "j-1")), 0, "a missing tree frees nothing");
  });

  void it("refuses a target outside its base, or the base itself", () => {
    const base = join(tmp, "b", "checkpoints");
    mkdirSync(join(tmp, "b", "other"), { recursive: true });
    mkdirSync(base, { recursive: true });
    assert.throws(() => removeTree(base, join(tmp, "b", "other")), /refusing to delete .* not inside/);
    assert.throws(() => removeTree(base, join(base, "..", "other")), /refusing to delete/);
    assert.throws(() => removeTree(base, base), /refusing to delete/);
    assert.ok(existsSync(join(tmp, "b", "other")));
  });

  void it("works through a base that is itself a symlink (checkpoints on another disk)", () => {
    const disk = join(tmp, "c", "disk");
    mkdirSync(join(disk, "j-2"), { recursive: true });
    writeFileSync(join(disk, "j-2", "f"), "z".repeat(10));
    symlinkSync(disk, join(tmp, "c", "checkpoints"));
    assert.equal(removeTree(join(tmp, "c", "checkpoints"), join(tmp, "c", "checkpoints", "j-2")), 10);
    assert.equal(existsSync(join(disk, "j-2")), false);
    assert.ok(existsSync(disk));
  });

  void it("a job's checkpoint roots: each stage's checkpoint.dir (or the state dir's), and where its recorded checkpoints lie; never an import", () => {
    const job = {
      id: "j-3",
      spec: { stages: [{ name: "pre", checkpoint: { dir: null } }, { name: "ft", checkpoint: { dir: "/big/ckpt" } }] },
      stages: [
        { name: "pre", checkpoints: [{ dir: "/old-state/checkpoints/j-3/pre/step-00000010-a1" }] },
        { name: "ft", checkpoints: [{ dir: "/imports/some-model" }, { dir: "/big/ckpt/j-3/ft/step-00000005-a2" }] },
      ],
    } as unknown as JobRecord;
    assert.deepEqual(
      checkpointRoots(job, "/state").map((r) => [r.base, r.dir]),
      [
        ["/state/checkpoints", "/state/checkpoints/j-3"],
        ["/big/ckpt", "/big/ckpt/j-3"],
        ["/old-state/checkpoints", "/old-state/checkpoints/j-3"],
      ],
    );
  });
});
