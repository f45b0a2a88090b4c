import { test } from "node:test";
import assert from "node:assert/strict";
import { Audit, DataPlan, manifestOf, trajectoryOf } from "../../src/data/index.js";

/** 100 samples, B = 8: 12 steps per epoch, 4 dropped. */
function plan(): DataPlan {
  const manifest = manifestOf([40, 35, 25].map((samples, i) => ({ url: `/d/${i}.tar`, samples })));
  return new DataPlan({ manifest, seed: 5, batchSize: 8, shuffle: true, fraction: 1 });
}

/** Every rank of a `world`-rank attempt reports its slice of steps [from, to). */
function run(audit: Audit, p: DataPlan, attempt: number, world: number, from: number, to: number): void {
  for (let step = from; step < to; step++) {
    for (let r = 0; r < world; r++) audit.record(attempt, step, p.slice(step, r, world).sampleIds);
  }
}

void test("a restart that redoes the steps after the committed checkpoint, at another world size, is exactly-once", () => {
  const p = plan();
  const audit = new Audit(p);
  // Attempt 1 (2 ranks) commits a checkpoint at step 10, runs on to step 20, and dies.
  run(audit, p, 1, 2, 0, 20);
  // Attempt 2 (4 ranks, after a node loss) resumes from the checkpoint and finishes 3 epochs.
  run(audit, p, 2, 4, 10, 36);
  const trajectory = trajectoryOf([
    { number: 2, resumedFromStep: 10, lastStep: 36 },
    { number: 1, resumedFromStep: 0, lastStep: 20 },
  ]);
  assert.deepEqual(trajectory, [
    { attempt: 1, fromStep: 0, toStep: 20 },
    { attempt: 2, fromStep: 10, toStep: 36 },
  ]);
  const report = audit.finalize(trajectory);
  assert.equal(report.exactlyOnce, true);
  assert.equal(report.steps, 36);
  assert.equal(report.supersededReports, 20); // steps 10..19, 2 ranks each
  assert.deepEqual(
    report.epochs.map((e) => [e.epoch, e.steps, e.expected, e.unique, e.duplicates, e.missing, e.unexpected, e.dropped]),
    [
      [0, 12, 96, 96, 0, 0, 0, 4],
      [1, 12, 96, 96, 0, 0, 0, 4],
      [2, 12, 96, 96, 0, 0, 0, 4],
    ],
  );
  // The report is plain JSON.
  assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
});

void test("a duplicated step shows as duplicates, an unreported one as missing, a wrong id as unexpected", () => {
  const p = plan();
  const audit = new Audit(p);
  run(audit, p, 1, 2, 0, 20);
  // Rank 0 of step 14 reports twice (a replayed batch).
  audit.record(1, 14, p.slice(14, 0, 2).sampleIds);
  // Step 16 never reports rank 1's half; step 3 reports a sample the plan drops from epoch 0.
  const audit2 = new Audit(p);
  for (let step = 0; step < 20; step++) {
    for (let r = 0; r < 2; r++) {
      if (step === 16 && r === 1) continue;
      const ids = [...p.slice(step, r, 2).sampleIds];
      if (step === 3 && r === 0) ids[0] = p.sampleIdAt(0, 97); // a dropped sample of epoch 0
      audit2.record(1, step, ids);
    }
  }
  const t = [{ attempt: 1, fromStep: 0, toStep: 20 }];

  const dup = audit.finalize(t);
  assert.equal(dup.exactlyOnce, false);
  assert.deepEqual(
    dup.epochs.map((e) => [e.steps, e.expected, e.unique, e.duplicates, e.missing, e.exactlyOnce]),
    [
      [12, 96, 96, 0, 0, true],
      [8, 64, 64, 4, 0, false],
    ],
  );

  const bad = audit2.finalize(t);
  const [e0, e1] = bad.epochs;
  assert.deepEqual([e0?.unique, e0?.missing, e0?.unexpected, e0?.exactlyOnce], [95, 1, 1, false]);
  assert.deepEqual([e1?.unique, e1?.missing, e1?.unexpected, e1?.unreportedSteps], [60, 4, 0, 0]);
});

void test("reports of a superseded attempt do not count; a step its owner never reported is missing", () => {
  const p = plan();
  const audit = new Audit(p);
  run(audit, p, 1, 1, 0, 12);
  run(audit, p, 2, 2, 6, 8); // attempt 2 redid steps 6 and 7, then died before reporting more
  audit.record(1, 7, p.slice(7, 0, 1).sampleIds); // a straggler of the fenced attempt 1
  run(audit, p, 3, 1, 8, 12); // attempt 3 resumed from a checkpoint at step 8
  const report = audit.finalize(
    trajectoryOf([
      { number: 1, resumedFromStep: 0, lastStep: 12 },
      { number: 2, resumedFromStep: 6, lastStep: 8 },
      { number: 3, resumedFromStep: 8, lastStep: 12 },
    ]),
  );
  assert.equal(report.staleReports, 1);
  assert.equal(report.exactlyOnce, true);

  // Were attempt 3 to own step 6 (it resumed earlier than it reported), step 6 has no report of its owner.
  const gap = audit.finalize([
    { attempt: 1, fromStep: 0, toStep: 12 },
    { attempt: 3, fromStep: 6, toStep: 12 },
  ]);
  assert.deepEqual([gap.epochs[0]?.unreportedSteps, gap.epochs[0]?.missing, gap.exactlyOnce], [2, 16, false]);
});
