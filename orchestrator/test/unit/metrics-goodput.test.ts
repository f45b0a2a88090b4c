/**
 * Goodput (metrics/goodput.ts, `clipfleet_job_goodput_ratio`): productive
 * step time over wall time since the job started running, with a fake
 * clock: redone steps count once, a job's ratio freezes when it ends, and
 * the gauge carries job_id and name.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { JobState } from "../../src/domain/index.js";
import { Metrics } from "../../src/metrics/index.js";
import { GOODPUT_STEPS_KEPT, GoodputLedger } from "../../src/metrics/goodput.js";

void describe("GoodputLedger", () => {
  void it("is null before the job runs, then productive over wall time", () => {
    const g = new GoodputLedger();
    assert.equal(g.ratio("j", 0), null);
    g.running("j", 10_000);
    assert.equal(g.ratio("j", 10_000), null, "no wall time yet");
    for (let s = 1; s <= 8; s++) g.step("j", "main", s, 1);
    assert.equal(g.ratio("j", 20_000), 0.8);
  });

  void it("counts the steps a restart redoes once: the redone ones, not the lost ones", () => {
    const g = new GoodputLedger();
    g.running("j", 0);
    for (let s = 1; s <= 25; s++) g.step("j", "main", s, 0.1); // 2.5 s
    // Killed after step 25; resumes from the checkpoint at step 20 and redoes 21-25 at 0.2 s each.
    for (let s = 21; s <= 30; s++) g.step("j", "main", s, 0.2);
    assert.ok(Math.abs(g.productiveSeconds("j") - (2.0 + 2.0)) < 1e-9);
    g.running("j", 99_000); // a later attempt: the clock keeps its start
    assert.ok(Math.abs((g.ratio("j", 8000) ?? 0) - 0.5) < 1e-9);
  });

  void it("sums stages, freezes at the end, goes on after a resume, and drops bad values", () => {
    const g = new GoodputLedger();
    g.running("j", 0);
    g.step("j", "a", 1, 2);
    g.step("j", "b", 1, 2);
    for (const bad of [Number.NaN, -1, Number.POSITIVE_INFINITY]) g.step("j", "b", 2, bad);
    g.step("j", "b", 0, 5);
    g.step("j", "b", 1.5, 5);
    g.finished("j", 8000);
    assert.equal(g.ratio("j", 1e9), 0.5);
    g.running("j", 1e9);
    assert.ok((g.ratio("j", 2e9) ?? 1) < 0.001, "a resumed job's wall time runs from its first start");
    g.forget("j");
    assert.equal(g.ratio("j", 1e9), null);
  });

  void it("is clamped to [0, 1] and bounded in memory on a very long stage", () => {
    const g = new GoodputLedger();
    g.running("j", 0);
    const n = GOODPUT_STEPS_KEPT * 2 + 10;
    for (let s = 1; s <= n; s++) g.step("j", "main", s, 1);
    assert.equal(g.productiveSeconds("j"), n);
    assert.equal(g.ratio("j", 1000), 1);
    // A resume far back unwinds only to what is kept, never below zero.
    g.step("j", "main", 1, 1);
    assert.ok(g.productiveSeconds("j") > 0 && g.productiveSeconds("j") <= n);
  });
});

void describe("clipfleet_job_goodput_ratio", () => {
  void it("is exported per job with job_id and name, once the job ran", async () => {
    let now = 0;
    const m = new Metrics({ defaultMetrics: false, scrapeCacheMs: 0 });
    const jobs: { job: string; name: string; state: JobState; updatedAtMs: number }[] = [
      { job: "j-1", name: "tiny", state: "RUNNING", updatedAtMs: 0 },
      { job: "j-2", name: "waiting", state: "PENDING", updatedAtMs: 0 },
    ];
    m.setSource({ jobsByState: () => ({}), jobs: () => jobs, ranks: () => [], newestCheckpoints: () => [], nodeSlots: () => [], now: () => now });
    m.goodput.running("j-1", 0);
    m.goodput.step("j-1", "main", 1, 3);
    now = 4000;
    const text = await m.registry.metrics();
    assert.match(text, /^clipfleet_job_goodput_ratio\{job_id="j-1",name="tiny"\} 0\.75$/m);
    assert.doesNotMatch(text, /clipfleet_job_goodput_ratio\{job_id="j-2"/);
  });
});
