/**
 * deploy/prometheus with the real promtool: the scrape config and the alert
 * rules pass `promtool check`, the rules pass their unit tests
 * (`promtool test rules deploy/prometheus/tests.yml`), and every metric an
 * alert or the Grafana dashboard queries exists in the registry.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parse } from "yaml";
import { familiesOf, populatedMetrics, promqlMetricNames, promtool, ROOT, sampleNames } from "./metrics-helpers.js";

const PROM_DIR = join(ROOT, "deploy", "prometheus");
const DASHBOARD = join(ROOT, "deploy", "grafana", "clipfleet-dashboard.json");

/** Every sample name the orchestrator can expose (from a scrape of a fully fed registry). */
async function exposedNames(): Promise<Set<string>> {
  const { metrics } = populatedMetrics();
  return sampleNames(familiesOf((await metrics.scrape()).body));
}

function unknownNames(expr: string, known: Set<string>): string[] {
  return promqlMetricNames(expr).filter((n) => !known.has(n));
}

void describe("deploy/prometheus", () => {
  void it("prometheus.yml passes `promtool check config` (with its rule file)", async () => {
    const r = await promtool(["check", "config", "prometheus.yml"], { cwd: PROM_DIR });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /SUCCESS: 6 rules found/);
  });

  void it("needs no honor_labels: clipfleet's job label is job_id, so `job` stays the scrape job's name", () => {
    const cfg = parse(readFileSync(join(PROM_DIR, "prometheus.yml"), "utf8")) as { scrape_configs: { job_name: string; honor_labels?: boolean }[] };
    const clipfleet = cfg.scrape_configs.find((c) => c.job_name === "clipfleet");
    assert.ok(clipfleet, "a clipfleet scrape job");
    assert.equal(clipfleet.honor_labels, undefined);
  });

  void it("clipfleet.rules.yml passes `promtool check rules`", async () => {
    const r = await promtool(["check", "rules", "clipfleet.rules.yml"], { cwd: PROM_DIR });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /SUCCESS: 6 rules found/);
  });

  void it("the alert rules pass `promtool test rules tests.yml`", async () => {
    const r = await promtool(["test", "rules", "tests.yml"], { cwd: PROM_DIR });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /SUCCESS/);
  });

  void it("has the alerts the issues ask for, each tested, each querying only exposed metrics", async () => {
    const rules = parse(readFileSync(join(PROM_DIR, "clipfleet.rules.yml"), "utf8")) as { groups: { rules: { alert: string; expr: string }[] }[] };
    const alerts = rules.groups.flatMap((g) => g.rules);
    assert.deepEqual(alerts.map((a) => a.alert).sort(), [
      "ClipfleetCheckpointStale",
      "ClipfleetHeartbeatStale",
      "ClipfleetJobFailed",
      "ClipfleetNoStepProgress",
      "ClipfleetNodeQuarantined",
      "ClipfleetRestarts",
    ]);
    const tests = parse(readFileSync(join(PROM_DIR, "tests.yml"), "utf8")) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] };
    const firing = new Set(tests.tests.flatMap((t) => (t.alert_rule_test ?? []).filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    const quiet = new Set(tests.tests.flatMap((t) => (t.alert_rule_test ?? []).filter((a) => a.exp_alerts.length === 0).map((a) => a.alertname)));
    const known = await exposedNames();
    for (const a of alerts) {
      assert.ok(firing.has(a.alert), `tests.yml has no case where ${a.alert} fires`);
      assert.ok(quiet.has(a.alert), `tests.yml has no case where ${a.alert} stays quiet`);
      assert.ok(promqlMetricNames(a.expr).length > 0, `${a.alert}: no metric found in ${a.expr}`);
      assert.deepEqual(unknownNames(a.expr, known), [], `${a.alert} queries metrics the orchestrator does not expose`);
    }
  });
});

void describe("deploy/grafana/clipfleet-dashboard.json", () => {
  interface Target {
    expr: string;
  }
  interface Panel {
    title: string;
    type: string;
    targets?: Target[];
  }
  interface Dashboard {
    title: string;
    uid: string;
    panels: Panel[];
    templating: { list: { name: string; query?: string | { query: string } }[] };
    annotations: { list: { expr?: string }[] };
  }
  const load = (): Dashboard => JSON.parse(readFileSync(DASHBOARD, "utf8")) as Dashboard;

  void it("is valid JSON with the panels the issue asks for", () => {
    const d = load();
    assert.equal(d.uid, "clipfleet-training");
    const exprs = d.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)).join("\n");
    assert.match(exprs, /clipfleet_train_loss/, "loss");
    assert.match(exprs, /clipfleet_train_samples_per_second/, "throughput");
    assert.match(exprs, /histogram_quantile\(0\.5, sum by \(job_id, stage, le\) \(rate\(clipfleet_train_step_duration_seconds_bucket/, "step time p50 per stage");
    assert.match(exprs, /histogram_quantile\(0\.99, sum by \(job_id, stage, le\) \(rate\(clipfleet_train_step_duration_seconds_bucket/, "step time p99 per stage");
    assert.match(exprs, /clipfleet_restarts_total/, "restarts");
    assert.match(exprs, /clipfleet_preemptions_total/, "preemptions");
    assert.match(exprs, /clipfleet_checkpoint_age_seconds/, "checkpoint age");
    assert.match(exprs, /clipfleet_rank_last_step/, "ranks furthest behind");
    assert.match(exprs, /clipfleet_node_free_slots/, "node slots");
    assert.doesNotMatch(JSON.stringify(d), /[{,( ]job[=,)]|\{\{job\}\}|\$job\b/, "no query, legend or variable uses Prometheus's own `job` label");
    const ids = d.panels.map((p) => (p as unknown as { id: number }).id);
    assert.equal(new Set(ids).size, ids.length, "panel ids are unique");
  });

  void it("queries only metrics the orchestrator exposes (panels, annotations, variables)", async () => {
    const d = load();
    const known = await exposedNames();
    let checked = 0;
    for (const p of d.panels) {
      for (const t of p.targets ?? []) {
        assert.ok(promqlMetricNames(t.expr).length > 0, `${p.title}: no metric in ${t.expr}`);
        assert.deepEqual(unknownNames(t.expr, known), [], `panel "${p.title}": ${t.expr}`);
        checked += 1;
      }
    }
    for (const a of d.annotations.list) if (a.expr) assert.deepEqual(unknownNames(a.expr, known), [], `annotation: ${a.expr}`);
    for (const v of d.templating.list) {
      const q = typeof v.query === "string" ? v.query : v.query?.query;
      const m = q ? /^label_values\((\w+), *(\w+)\)$/.exec(q) : null;
      if (m?.[1]) assert.ok(known.has(m[1]), `variable ${v.name}: ${m[1]} is not exposed`);
    }
    assert.ok(checked >= 20, `only ${checked} panel queries`);
  });

  void it("the PromQL name extractor skips functions, keywords, labels and durations", () => {
    assert.deepEqual(
      promqlMetricNames('histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job=~"$job",x="y z"}[$__rate_interval]))) > on (job) group_left b_total offset 5m'),
      ["a_bucket", "b_total"],
    );
    assert.deepEqual(promqlMetricNames("changes(clipfleet_train_step[10m]) == 0 and on (job, stage) clipfleet_workers > 1e3"), ["clipfleet_train_step", "clipfleet_workers"]);
  });
});
