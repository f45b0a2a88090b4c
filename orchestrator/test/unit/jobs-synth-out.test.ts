/**
 * What ensureSynth does with data.synth.out: generate into an absent or empty
 * folder, reuse one whose synth.json records the same parameters, and refuse
 * (exit 2, naming data.synth.out) anything else instead of overwriting it.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { InvalidArgumentError, type SynthSpec } from "../../src/domain/index.js";
import { synthOutState } from "../../src/jobs/datasets.js";

const tmp = mkdtempSync(join(tmpdir(), "synth-out-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function spec(out: string, o: Partial<SynthSpec> = {}): SynthSpec {
  return { out: join(tmp, out), train: 64, val: 16, shards: 8, size: 32, seed: 0, ...o };
}

/** A folder as the generator leaves it: synth.json records the parameters (and the val shard count, ceil(shards / 4)). */
function generated(name: string, marker: Record<string, unknown>): void {
  mkdirSync(join(tmp, name), { recursive: true });
  writeFileSync(join(tmp, name, "sizes.json"), "{}");
  writeFileSync(join(tmp, name, "synth.json"), JSON.stringify(marker));
}

void describe("synthOutState", () => {
  void it("generates into an absent or empty folder", () => {
    assert.equal(synthOutState(spec("absent")), "generate");
    mkdirSync(join(tmp, "empty"));
    assert.equal(synthOutState(spec("empty")), "generate");
  });

  void it("reuses a folder made with the same parameters", () => {
    generated("same", { train: 64, val: 16, shards: 8, val_shards: 2, size: 32, seed: 0, version: 2 });
    assert.equal(synthOutState(spec("same")), "reuse");
    // synth.json of version 1 did not record val_shards.
    generated("v1", { train: 64, val: 16, shards: 8, size: 32, seed: 0, version: 1 });
    assert.equal(synthOutState(spec("v1")), "reuse");
  });

  void it("refuses a folder made with other parameters, naming them and the field", () => {
    generated("other", { train: 64, val: 16, shards: 8, val_shards: 2, size: 32, seed: 0, version: 2 });
    for (const [change, text] of [
      [{ train: 128 }, /made with train 64, but this stage asks for train 128/],
      [{ shards: 4 }, /made with shards 8, val_shards 2, but this stage asks for shards 4, val_shards 1/],
      [{ size: 64, seed: 3 }, /size 32, seed 0, but this stage asks for size 64, seed 3/],
      [{ val: 32 }, /val 16/],
    ] as const) {
      assert.throws(() => synthOutState(spec("other", change)), (e: Error) => e instanceof InvalidArgumentError && /^data\.synth\.out: .*other holds a synthetic dataset/.test(e.message) && text.test(e.message));
    }
  });

  void it("refuses a folder with files but no synth.json: it may be the user's own data", () => {
    mkdirSync(join(tmp, "mine"));
    writeFileSync(join(tmp, "mine", "sizes.json"), '{"train-00000.tar": 5}');
    assert.throws(() => synthOutState(spec("mine")), (e: Error) => e instanceof InvalidArgumentError && /^data\.synth\.out: .*mine holds files but no readable synth\.json/.test(e.message));
    writeFileSync(join(tmp, "mine", "synth.json"), "not json");
    assert.throws(() => synthOutState(spec("mine")), /no readable synth\.json/);
    writeFileSync(join(tmp, "a-file"), "");
    assert.throws(() => synthOutState(spec("a-file")), /data\.synth\.out: .*a-file exists and is not a directory/);
  });
});
