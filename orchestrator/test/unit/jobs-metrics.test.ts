/**
 * The metrics the real JobService feeds (fake ranks, fake clock): step
 * times and data waits per stage with no rank label, the ranks furthest
 * behind from the live ranks, the job's name on clipfleet_job_state, and
 * the node gauges from the scheduler (a cordon shows at once).
 */
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { jobsHarness, runningJob, stepAll, until, type Harness } from "../helpers/jobs-harness.js";

void describe("metrics fed by the job service", () => {
  let h: Harness;
  beforeEach(async () => {
    h = await jobsHarness();
  });
  afterEach(async () => {
    await h.close();
  });

  void it("per stage histograms and counters, per rank only the top-k, job_id and name, node gauges", async () => {
    const { id, ranks } = await runningJob(h, { train: { steps: 50, batch_size: 8 } });
    stepAll(ranks, 1, 3);
    ranks[0]?.step(4); // rank 1 is now one step behind
    await until(() => h.service.ranks().some((r) => r.step === 4), "rank 0 at step 4");
    const body = (await h.metrics.scrape()).body;
    const labels = `job_id="${id}",stage="main"`;
    assert.match(body, new RegExp(`^clipfleet_train_step_duration_seconds_count\\{${labels}\\} 7$`, "m"), "both ranks' 7 steps in one histogram");
    assert.doesNotMatch(body, /^clipfleet_train_step_duration_seconds\w*\{[^}]*rank=/m);
    assert.doesNotMatch(body, /^clipfleet_train_data_wait_seconds_total\{[^}]*rank=/m);
    assert.match(body, new RegExp(`^clipfleet_rank_last_step\\{${labels},rank="1",node="n\\d"\\} 3$`, "m"), "rank 1 furthest behind, first");
    assert.match(body, new RegExp(`^clipfleet_job_state\\{job_id="${id}",name="${h.job(id).name}",state="RUNNING"\\} 1$`, "m"));
    assert.doesNotMatch(body, /[{,]job="/);
    assert.match(body, /^clipfleet_node_slots\{node="n0"\} 2$/m);
    const free = [...body.matchAll(/^clipfleet_node_free_slots\{node="n\d"\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
    assert.equal(free, 2, "4 slots, 2 ranks");
    assert.match(body, /^clipfleet_node_cordoned\{node="n1"\} 0$/m);
    h.service.setNodeSchedulable("n1", false);
    const after = (await h.metrics.scrape()).body;
    assert.match(after, /^clipfleet_node_cordoned\{node="n1"\} 1$/m);
    assert.match(after, /^clipfleet_node_quarantined\{node="n1"\} 0$/m);
  });
});
