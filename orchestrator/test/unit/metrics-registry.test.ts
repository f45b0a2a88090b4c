/**
 * Metrics: naming and labels follow Prometheus conventions (checked by the
 * real `promtool check metrics`), scrape-time gauges follow the source, and
 * a finished job's series are dropped after the retention time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Metrics, serveMetrics, splitHostPort } from "../../src/metrics/index.js";
import { familiesOf, FakeSource, feedJob, populatedMetrics, promtool } from "./metrics-helpers.js";

const ALLOWED_LABELS = new Set(["job_id", "stage", "rank", "node", "state"]);
const DEFAULT_PREFIXES = ["clipfleet_process_", "clipfleet_nodejs_"];

/** Series of a metric in a scrape: the label sets (as text) of its samples. */
function series(body: string, name: string): string[] {
  return body
    .split("\n")
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .map((l) => l.slice(name.length).replace(/ [^ ]+$/, ""));
}

void describe("Metrics", () => {
  void it("passes `promtool check metrics` on a scrape with every metric populated", async () => {
    const { metrics } = populatedMetrics();
    const { body } = await metrics.scrape();
    const r = await promtool(["check", "metrics"], { stdin: body });
    assert.equal(r.code, 0, `promtool check metrics failed:\n${r.out}`);
    assert.equal(r.out.trim(), "", "promtool printed lint warnings");
  });

  void it("names every family clipfleet_*, with help text, and labels only among job_id, stage, rank, node, state (+metric on eval results, name on job_state), never Prometheus's own job", async () => {
    const { metrics } = populatedMetrics();
    const { body } = await metrics.scrape();
    const families = familiesOf(body);
    assert.ok(families.size > 30, `only ${families.size} families`);
    for (const [name, type] of families) {
      assert.match(name, /^clipfleet_[a-z0-9_]+$/);
      assert.match(body, new RegExp(`^# HELP ${name} \\S.{8,}$`, "m"), `${name} has no help text`);
      if (type === "counter") assert.match(name, /_total$/, `counter ${name} must end in _total`);
      else assert.doesNotMatch(name, /_total$/, `${type} ${name} must not end in _total`);
    }
    for (const line of body.split("\n")) {
      if (line.startsWith("#") || !line) continue;
      const name = line.replace(/[{ ].*$/, "");
      if (DEFAULT_PREFIXES.some((p) => name.startsWith(p))) continue;
      for (const [, label] of line.matchAll(/[{,]([a-zA-Z_]+)="/g)) {
        if (label === "le" && /_bucket$/.test(name)) continue;
        if (label === "metric" && name === "clipfleet_eval_result") continue;
        if (label === "name" && name === "clipfleet_job_state") continue;
        assert.ok(label && ALLOWED_LABELS.has(label), `${name} has label ${label}`);
      }
    }
  });

  void it("exposes every metric the issue asks for, with the values fed", async () => {
    const { metrics } = populatedMetrics();
    const { body } = await metrics.scrape();
    const families = familiesOf(body);
    const wanted: Record<string, string> = {
      clipfleet_jobs: "gauge",
      clipfleet_job_state: "gauge",
      clipfleet_attempts_total: "counter",
      clipfleet_restarts_total: "counter",
      clipfleet_workers: "gauge",
      clipfleet_train_step: "gauge",
      clipfleet_train_loss: "gauge",
      clipfleet_train_learning_rate: "gauge",
      clipfleet_train_logit_scale: "gauge",
      clipfleet_train_samples_per_second: "gauge",
      clipfleet_train_step_duration_seconds: "histogram",
      clipfleet_train_data_wait_seconds_total: "counter",
      clipfleet_heartbeat_age_seconds: "gauge",
      clipfleet_checkpoint_save_duration_seconds: "histogram",
      clipfleet_checkpoint_size_bytes: "gauge",
      clipfleet_checkpoint_age_seconds: "gauge",
      clipfleet_failure_detection_seconds: "histogram",
      clipfleet_recovery_seconds: "histogram",
      clipfleet_steps_lost_total: "counter",
      clipfleet_train_samples_skipped_total: "counter",
      clipfleet_eval_result: "gauge",
      clipfleet_gpu_utilization_ratio: "gauge",
      clipfleet_gpu_memory_bytes: "gauge",
      clipfleet_rank_last_step: "gauge",
      clipfleet_heartbeat_age_max_seconds: "gauge",
      clipfleet_node_slots: "gauge",
      clipfleet_node_free_slots: "gauge",
      clipfleet_node_cordoned: "gauge",
      clipfleet_node_quarantined: "gauge",
      clipfleet_process_cpu_seconds_total: "counter",
      clipfleet_process_resident_memory_bytes: "gauge",
    };
    for (const [name, type] of Object.entries(wanted)) assert.equal(families.get(name), type, `${name}: expected a ${type}`);
    assert.match(body, /^clipfleet_train_step\{job_id="j-a",stage="main"\} 20$/m);
    assert.match(body, /^clipfleet_attempts_total\{job_id="j-a",stage="main"\} 2$/m);
    // Per stage, not per rank: both ranks' 20 steps in one histogram.
    assert.match(body, /^clipfleet_train_step_duration_seconds_count\{job_id="j-a",stage="main"\} 40$/m);
    assert.match(body, /^clipfleet_train_data_wait_seconds_total\{job_id="j-a",stage="main"\} 0.04/m);
    assert.match(body, /^clipfleet_job_state\{job_id="j-a",name="name-of-j-a",state="RUNNING"\} 1$/m);
    assert.match(body, /^clipfleet_rank_last_step\{job_id="j-a",stage="main",rank="1",node="n2"\} 19$/m);
    assert.match(body, /^clipfleet_heartbeat_age_max_seconds\{job_id="j-a",stage="main"\} 1.5$/m);
    assert.match(body, /^clipfleet_gpu_utilization_ratio\{job_id="j-a",stage="main"\} 0.8$/m);
    assert.match(body, /^clipfleet_gpu_memory_bytes\{job_id="j-a",stage="main"\} 1073741824$/m);
    assert.match(body, /^clipfleet_node_slots\{node="n1"\} 8$/m);
    assert.match(body, /^clipfleet_node_free_slots\{node="n2"\} 7$/m);
    assert.match(body, /^clipfleet_node_cordoned\{node="n1"\} 0$/m);
    assert.match(body, /^clipfleet_node_cordoned\{node="n2"\} 1$/m);
    assert.match(body, /^clipfleet_node_quarantined\{node="n2"\} 1$/m);
    assert.doesNotMatch(body, /[{,]job="/, "no series carries a `job` label");
    assert.match(body, /^clipfleet_eval_result\{job_id="j-a",stage="main",metric="zeroshot\/top1"\} 0.5$/m);
    assert.match(body, /^clipfleet_checkpoint_age_seconds\{job_id="j-a",stage="main"\} 90$/m);
    assert.match(body, /^clipfleet_heartbeat_age_seconds\{job_id="j-a",stage="main",rank="1",node="n2"\} 1.5$/m);
    assert.match(body, /^clipfleet_workers\{job_id="j-a",stage="main",state="running"\} 2$/m);
    assert.match(body, /^clipfleet_jobs\{state="SUCCEEDED"\} 1$/m);
  });

  void it("creates a stage's counters at zero when its first attempt starts, so increase() sees the first restart", async () => {
    const m = new Metrics({ scrapeCacheMs: 0, defaultMetrics: false });
    m.attemptStarted("j-z", "main", 10);
    const { body } = await m.scrape();
    for (const name of ["clipfleet_restarts_total", "clipfleet_steps_lost_total", "clipfleet_checkpoints_committed_total", "clipfleet_train_samples_skipped_total"]) {
      assert.deepEqual(series(body, name), ['{job_id="j-z",stage="main"}'], name);
      assert.match(body, new RegExp(`^${name}\\{job_id="j-z",stage="main"\\} 0$`, "m"));
    }
  });

  void it("recomputes scrape-time gauges from the source: exited ranks have no heartbeat age, finished jobs leave job_state after the retention time", async () => {
    const m = new Metrics({ scrapeCacheMs: 0, defaultMetrics: false, retentionSeconds: 60 });
    const src = new FakeSource();
    m.setSource(src);
    src.rankList = [
      { job: "j-a", stage: "main", rank: 0, node: "n1", state: "running", heartbeatAgeSeconds: 2, step: 1 },
      { job: "j-a", stage: "main", rank: 1, node: "n1", state: "exited", heartbeatAgeSeconds: 40, step: 1 },
      { job: "j-a", stage: "main", rank: 2, node: "n1", state: "launching", heartbeatAgeSeconds: null, step: 1 },
    ];
    src.jobList = [
      { job: "j-a", state: "RUNNING", updatedAtMs: src.nowMs - 3_600_000 },
      { job: "j-f", state: "FAILED", updatedAtMs: src.nowMs - 30_000 },
      { job: "j-old", state: "SUCCEEDED", updatedAtMs: src.nowMs - 61_000 },
    ];
    let body = (await m.scrape()).body;
    assert.deepEqual(series(body, "clipfleet_heartbeat_age_seconds"), ['{job_id="j-a",stage="main",rank="0",node="n1"}']);
    assert.deepEqual(series(body, "clipfleet_job_state").sort(), ['{job_id="j-a",name="name-of-j-a",state="RUNNING"}', '{job_id="j-f",name="name-of-j-f",state="FAILED"}']);
    src.rankList = [];
    src.nowMs += 31_000;
    body = (await m.scrape()).body;
    assert.deepEqual(series(body, "clipfleet_heartbeat_age_seconds"), []);
    assert.deepEqual(series(body, "clipfleet_workers"), []);
    assert.deepEqual(series(body, "clipfleet_job_state"), ['{job_id="j-a",name="name-of-j-a",state="RUNNING"}']);
  });

  void it("shows per rank only the k stalest and the k furthest-behind live ranks of each stage, however many ranks there are", async () => {
    const m = new Metrics({ scrapeCacheMs: 0, defaultMetrics: false, rankTopK: 3 });
    const src = new FakeSource();
    m.setSource(src);
    src.jobList = [{ job: "j-a", state: "RUNNING", updatedAtMs: src.nowMs }];
    // 10,000 ranks in two stages; rank 7777 is stuck (old heartbeat, far behind), ranks 3 and 5 lag a little.
    for (let rank = 0; rank < 10_000; rank++) {
      const stage = rank < 5000 ? "a" : "b";
      const stuck = rank === 7777;
      const lag = rank === 3 || rank === 5 ? 2 : 0;
      src.rankList.push({ job: "j-a", stage, rank, node: `n${rank % 100}`, state: "running", heartbeatAgeSeconds: stuck ? 95 : 0.5 + lag, step: stuck ? 40 : 100 - lag });
    }
    src.rankList.push({ job: "j-a", stage: "a", rank: 10_000, node: "n0", state: "exited", heartbeatAgeSeconds: 500, step: 1 });
    const body = (await m.scrape()).body;
    const hb = series(body, "clipfleet_heartbeat_age_seconds");
    const behind = series(body, "clipfleet_rank_last_step");
    assert.equal(hb.length, 6, "3 per stage");
    assert.equal(behind.length, 6, "3 per stage");
    assert.match(body, /^clipfleet_heartbeat_age_seconds\{job_id="j-a",stage="b",rank="7777",node="n77"\} 95$/m);
    assert.match(body, /^clipfleet_rank_last_step\{job_id="j-a",stage="b",rank="7777",node="n77"\} 40$/m);
    // Stage a: ranks 3 and 5 first (ties broken by rank), then rank 0; the exited rank is not shown.
    assert.deepEqual(behind.filter((l) => l.includes('stage="a"')), ['{job_id="j-a",stage="a",rank="3",node="n3"}', '{job_id="j-a",stage="a",rank="5",node="n5"}', '{job_id="j-a",stage="a",rank="0",node="n0"}']);
    assert.match(body, /^clipfleet_heartbeat_age_max_seconds\{job_id="j-a",stage="b"\} 95$/m);
    assert.match(body, /^clipfleet_heartbeat_age_max_seconds\{job_id="j-a",stage="a"\} 2.5$/m);
    assert.match(body, /^clipfleet_workers\{job_id="j-a",stage="a",state="running"\} 5000$/m);
    assert.match(body, /^clipfleet_workers\{job_id="j-a",stage="a",state="exited"\} 1$/m);
    assert.ok(body.split("\n").filter((l) => l && !l.startsWith("#")).length < 100, "the scrape is bounded by stages, not ranks");
  });

  void it("serves a scrape from its cache within the cache time, and builds once for scrapes that arrive together", async () => {
    const m = new Metrics({ defaultMetrics: false, scrapeCacheMs: 60_000 });
    const src = new FakeSource();
    m.setSource(src);
    let calls = 0;
    src.ranks = () => {
      calls += 1;
      return src.rankList;
    };
    src.rankList = [{ job: "j-a", stage: "main", rank: 0, node: "n1", state: "running", heartbeatAgeSeconds: 3, step: 7 }];
    const [a, b] = await Promise.all([m.scrape(), m.scrape()]);
    assert.equal(a.body, b.body);
    assert.equal(calls, 1, "one pass over the ranks for both scrapes (and for every rank gauge of a build)");
    src.rankList = [];
    assert.equal((await m.scrape()).body, a.body, "cached");
    assert.equal(calls, 1);
    await m.forgetJob("j-a"); // drops the cache with the job's series
    assert.doesNotMatch((await m.scrape()).body, /rank="0"/);
    assert.equal(calls, 2);
  });

  void it("sweep drops every series of a job finished at least the retention time ago, and only those", async () => {
    const m = new Metrics({ scrapeCacheMs: 0, defaultMetrics: false, retentionSeconds: 600 });
    feedJob(m, "j-a");
    feedJob(m, "j-b");
    const t0 = 1_800_000_000_000;
    m.jobFinished("j-b", t0);
    assert.equal(await m.sweep(t0 + 599_000), 0, "swept before the retention time");
    assert.match((await m.scrape()).body, /job_id="j-b"/);

    const removed = await m.sweep(t0 + 600_000);
    const body = (await m.scrape()).body;
    // Every directly-updated series of j-b, e.g. its step-duration histogram, 2 eval results.
    assert.ok(removed >= 20, `removed only ${removed} series`);
    assert.deepEqual(body.split("\n").filter((l) => l.includes('job_id="j-b"')), [], "series of the swept job remain");
    assert.match(body, /^clipfleet_train_loss\{job_id="j-a",stage="main"\} 2$/m);
    assert.match(body, /^clipfleet_train_step_duration_seconds_count\{job_id="j-a",stage="main"\} 40$/m);
    assert.equal(await m.sweep(t0 + 10_000_000), 0, "a job is swept once");
  });

  void it("forgetJob (a deleted job) drops every series of that job at once, whatever the retention, and only those", async () => {
    const m = new Metrics({ scrapeCacheMs: 0, defaultMetrics: false, retentionSeconds: 3600 });
    feedJob(m, "j-a");
    feedJob(m, "j-b");
    const removed = await m.forgetJob("j-b");
    const body = (await m.scrape()).body;
    assert.ok(removed >= 20, `removed only ${removed} series`);
    assert.deepEqual(body.split("\n").filter((l) => l.includes('job_id="j-b"')), [], "series of the deleted job remain");
    assert.match(body, /^clipfleet_train_loss\{job_id="j-a",stage="main"\} 2$/m);
    assert.equal(await m.forgetJob("j-b"), 0, "nothing left to forget");
  });

  void it("sweep also drops jobs the source shows terminal for the retention time, however they ended, and never active ones", async () => {
    const { metrics, source } = populatedMetrics({ defaultMetrics: false, retentionSeconds: 600 });
    // j-b ended (SUCCEEDED) 5 s before source.nowMs without a jobFinished call (e.g. cancelled while waiting to restart).
    metrics.jobFinished("j-a", 0); // a stale note: the source says j-a is RUNNING
    assert.equal(await metrics.sweep(source.nowMs + 594_000), 0);
    assert.ok((await metrics.sweep(source.nowMs + 595_000)) >= 20);
    const body = (await metrics.scrape()).body;
    assert.doesNotMatch(body, /^clipfleet_train_step\{job_id="j-b"/m);
    assert.match(body, /^clipfleet_train_step\{job_id="j-a",stage="main"\} 20$/m);
  });

  void it("a finished job that runs again (resume) is not swept", async () => {
    const m = new Metrics({ scrapeCacheMs: 0, defaultMetrics: false });
    feedJob(m, "j-r");
    m.jobFinished("j-r", 0);
    m.attemptStarted("j-r", "main", 100);
    assert.equal(await m.sweep(10 * 3_600_000, 1000), 0);
    assert.match((await m.scrape()).body, /^clipfleet_train_step\{job_id="j-r",stage="main"\} 20$/m);
  });
});

void describe("serveMetrics", () => {
  void it("serves the scrape on /metrics, ok on /healthz, 404 elsewhere", async () => {
    const { metrics } = populatedMetrics({ defaultMetrics: false });
    const server = await serveMetrics(metrics, "127.0.0.1:0");
    try {
      const res = await fetch(`http://${server.address}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      assert.match(await res.text(), /^clipfleet_train_step\{job_id="j-a",stage="main"\} 20$/m);
      assert.equal((await fetch(`http://${server.address}/healthz`)).status, 200);
      assert.equal((await fetch(`http://${server.address}/`)).status, 404);
    } finally {
      await server.close();
    }
  });

  void it("splits HOST:PORT and [v6]:PORT, and names the bad value otherwise", () => {
    assert.deepEqual(splitHostPort("0.0.0.0:9400"), { host: "0.0.0.0", port: 9400 });
    assert.deepEqual(splitHostPort("[::1]:0"), { host: "::1", port: 0 });
    assert.throws(() => splitHostPort("9400"), /expected HOST:PORT, got "9400"/);
    assert.throws(() => splitHostPort("h:70000"), /port out of range in "h:70000"/);
  });
});
