/**
 * checkpoint.every: auto — the pure interval function (Young-Daly, bounded
 * by CheckFreq's 3.5 % overhead), with the observed time of a fake clock.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { autoIntervalS, estimatedMtbfS, MAX_CHECKPOINT_OVERHEAD } from "../../src/checkpoints/index.js";

const HOUR = 3600;

void describe("checkpoint.every: auto interval", () => {
  void it("is 0 until a save was measured: the first checkpoint measures the cost", () => {
    assert.equal(autoIntervalS({ saveCostS: null, failures: 0, observedS: 0, mtbfPriorS: 24 * HOUR }), 0);
  });

  void it("is Young-Daly's sqrt(2 x cost x MTBF) with the prior before any failure", () => {
    const t = autoIntervalS({ saveCostS: 10, failures: 0, observedS: 0, mtbfPriorS: 24 * HOUR });
    assert.ok(Math.abs(t - Math.sqrt(2 * 10 * 24 * HOUR)) < 1e-9, String(t));
  });

  void it("follows a fake clock: failure-free time lengthens it, each failure shortens it", () => {
    let now = 0; // seconds on the fake clock
    const at = (failures: number): number => autoIntervalS({ saveCostS: 5, failures, observedS: now, mtbfPriorS: HOUR });
    const start = at(0);
    now += 10 * HOUR;
    const later = at(0);
    assert.ok(later > start, `${later} > ${start}`);
    assert.ok(Math.abs(later - Math.sqrt(2 * 5 * 11 * HOUR)) < 1e-9);
    const afterFailures = [1, 2, 4].map(at);
    assert.ok(afterFailures[0]! < later && afterFailures[1]! < afterFailures[0]! && afterFailures[2]! < afterFailures[1]!, afterFailures.join(","));
    assert.equal(estimatedMtbfS(4, now, HOUR), (11 * HOUR) / 5);
  });

  void it("never lets the stall exceed 3.5 % of run time, however often failures come", () => {
    for (const [cost, failures, mtbf] of [
      [30, 50, 60],
      [1, 1000, 1],
      [120, 0, 600],
      [0.2, 3, 24 * HOUR],
    ] as const) {
      const t = autoIntervalS({ saveCostS: cost, failures, observedS: 100, mtbfPriorS: mtbf });
      assert.ok(cost / t <= MAX_CHECKPOINT_OVERHEAD + 1e-12, `cost ${cost} every ${t} s`);
    }
    // The bound binds only when failures are frequent: a 30 s save with an MTBF of about a minute.
    assert.equal(autoIntervalS({ saveCostS: 30, failures: 50, observedS: 100, mtbfPriorS: 60 }), 30 / MAX_CHECKPOINT_OVERHEAD);
  });
});
