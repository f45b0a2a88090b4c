/** Step history files: append and read back, torn lines, thinning that keeps restarts visible. */
import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { StepReport } from "../../src/gen/clipfleet/v1/worker.js";
import { appendStepPoint, readStepHistory, stepHistoryPath, stepPointOf, thinPoints, type StepPointRecord } from "../../src/jobs/index.js";

function point(attempt: number, step: number): StepPointRecord {
  return { stage: "main", attempt, step, epoch: 0, loss: 5 - step / 100, lr: 1e-3, temperature: 14.3, samplesPerSecond: 100, stepSeconds: 0.1, dataWaitSeconds: 0.01, gradNorm: 1, tsMs: 1000 + step };
}

void describe("step history", () => {
  const dir = mkdtempSync(join(tmpdir(), "clipfleet-steps-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it("appends under <state>/jobs/<id>/steps/<stage>.jsonl (creating it) and reads back in order", () => {
    const file = stepHistoryPath(dir, "j-1", "main");
    assert.equal(file, join(dir, "jobs", "j-1", "steps", "main.jsonl"));
    assert.deepEqual(readStepHistory(file), [], "no file: no points");
    const pts = [point(1, 1), point(1, 2), point(2, 2), point(2, 3)];
    for (const p of pts) appendStepPoint(file, p);
    assert.deepEqual(readStepHistory(file), pts);
  });

  void it("skips a line torn by a crash mid-write", () => {
    const file = stepHistoryPath(dir, "j-2", "main");
    appendStepPoint(file, point(1, 1));
    appendFileSync(file, '{"stage":"main","attempt":1,"st');
    assert.deepEqual(readStepHistory(file), [point(1, 1)]);
  });

  void it("takes rank 0's report fields", () => {
    const rep = StepReport.fromPartial({ step: 7, epoch: 1, loss: 2.5, lr: 5e-4, temperature: 14, samplesPerSecond: 320, stepSeconds: 0.2, dataWaitSeconds: 0.05, gradNorm: 0.9, skippedSamples: 3 });
    assert.deepEqual(stepPointOf("ft", 3, rep, 42), {
      stage: "ft",
      attempt: 3,
      step: 7,
      epoch: 1,
      loss: 2.5,
      lr: 5e-4,
      temperature: 14,
      samplesPerSecond: 320,
      stepSeconds: 0.2,
      dataWaitSeconds: 0.05,
      gradNorm: 0.9,
      tsMs: 42,
    });
  });

  void it("thins to about maxPoints, in order, keeping each attempt's first and last point", () => {
    const pts = [...Array.from({ length: 600 }, (_, i) => point(1, i + 1)), ...Array.from({ length: 401 }, (_, i) => point(2, 500 + i))];
    const thin = thinPoints(pts, 100);
    assert.ok(thin.length >= 85 && thin.length <= 104, `${thin.length} points`);
    const idx = thin.map((p) => pts.indexOf(p));
    assert.deepEqual(idx, [...idx].sort((a, b) => a - b), "order kept");
    for (const [attempt, first, last] of [
      [1, 1, 600],
      [2, 500, 900],
    ]) {
      const own = thin.filter((p) => p.attempt === attempt);
      assert.equal(own[0]?.step, first);
      assert.equal(own.at(-1)?.step, last);
    }
    assert.equal(thinPoints(pts, 0).length, pts.length);
    assert.equal(thinPoints(pts.slice(0, 50), 100).length, 50);
    const file = stepHistoryPath(dir, "j-3", "main");
    for (const p of pts) appendStepPoint(file, p);
    assert.deepEqual(readStepHistory(file, 100), thin);
  });
});
