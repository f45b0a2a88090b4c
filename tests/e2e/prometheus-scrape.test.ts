/**
 * A real Prometheus server (Debian's /usr/bin/prometheus) scrapes
 * `clipfleet run --metrics-listen` while a tiny job trains: the shipped
 * scrape config (deploy/prometheus/prometheus.yml, interval lowered to 1 s)
 * and alert rules load, the HTTP query API returns the job's loss and
 * step series labelled with the clipfleet job id in `job_id` while `job`
 * stays the scrape job's name (no honor_labels), the job's name is on
 * clipfleet_job_state, the node gauges are there, and the live exposition
 * passes `promtool check metrics`.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { parse, stringify } from "yaml";
import { finished, ROOT, startCli, tempDir, waitFor } from "../helpers/cli.js";
import { synthData, writeSpec } from "./report-fixture.js";

const PROMETHEUS = "/usr/bin/prometheus";

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

/** A port nothing listens on right now (bind to 0, read it, close). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Prometheus's HTTP API: GET /api/v1/<path>, the `data` of a success answer (throws otherwise). */
async function api<T>(port: number, path: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${port}/api/v1/${path}`);
  const body = (await res.json()) as { status: string; data: T; error?: string };
  if (body.status !== "success") throw new Error(`prometheus ${path}: ${body.error ?? res.status}`);
  return body.data;
}

/** `promtool check metrics` on an exposition; its exit code and output. */
function promtoolCheckMetrics(body: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn("/usr/bin/promtool", ["check", "metrics"], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr.on("data", (d: Buffer) => (out += d.toString()));
    p.on("error", reject);
    p.on("close", (code) => resolve({ code, out }));
    p.stdin.end(body);
  });
}

function query(port: number, expr: string): Promise<Sample[]> {
  return api<{ result: Sample[] }>(port, `query?query=${encodeURIComponent(expr)}`).then((d) => d.result);
}

void describe("a real Prometheus scraping `clipfleet run --metrics-listen`", () => {
  const tmp = tempDir("clipfleet-prom-");
  let run: ReturnType<typeof startCli> | null = null;
  let prom: ChildProcess | null = null;
  let promLog = "";

  after(async () => {
    if (prom && prom.exitCode === null) {
      const gone = new Promise((r) => prom?.once("exit", r));
      prom.kill("SIGTERM");
      await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
      if (prom.exitCode === null) prom.kill("SIGKILL");
    }
    if (run && run.exitCode === null) {
      try {
        process.kill(-(run.pid ?? 0), "SIGKILL");
      } catch {
        // already gone
      }
    }
    tmp.cleanup();
  });

  void it("has the job's loss and step series, labelled job_id with \`job\` left to Prometheus, node gauges, and loads the alert rules", { timeout: 110_000 }, async () => {
    const data = await synthData(tmp.dir);
    // Long enough to still be training when Prometheus has scraped it; stopped below.
    const spec = writeSpec(tmp.dir, data, { name: "prom", steps: 2000 });
    const cli = startCli(["run", spec, "--state-dir", join(tmp.dir, "state"), "--metrics-listen", "127.0.0.1:0"], { cwd: tmp.dir });
    run = cli;
    const banner = await waitFor("the job and metrics address on the CLI's stderr", () => /job (j-\S+) .*metrics on http:\/\/([^/]+)\/metrics/.exec(cli.output.stderr), 60_000);
    const [, jobId, metricsAddress] = banner;
    assert.ok(jobId && metricsAddress);

    // The shipped config, with a 1 s interval, pointed at this orchestrator, with the shipped rules.
    const cfg = parse(readFileSync(join(ROOT, "deploy/prometheus/prometheus.yml"), "utf8")) as {
      global: Record<string, string>;
      rule_files: string[];
      scrape_configs: { job_name: string; honor_labels?: boolean; static_configs: { targets: string[] }[] }[];
    };
    cfg.global.scrape_interval = "1s";
    cfg.global.evaluation_interval = "1s";
    cfg.rule_files = [join(ROOT, "deploy/prometheus/clipfleet.rules.yml")];
    const scrape = cfg.scrape_configs.find((c) => c.job_name === "clipfleet");
    assert.ok(scrape, "deploy/prometheus/prometheus.yml has a clipfleet scrape job");
    assert.equal(scrape.honor_labels, undefined, "the shipped scrape config needs no honor_labels");
    scrape.static_configs = [{ targets: [metricsAddress] }];
    writeFileSync(join(tmp.dir, "prometheus.yml"), stringify(cfg));
    mkdirSync(join(tmp.dir, "tsdb"));
    const port = await freePort();
    prom = spawn(
      PROMETHEUS,
      [`--config.file=${join(tmp.dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(tmp.dir, "tsdb")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    prom.stdout?.on("data", (d: Buffer) => (promLog += d.toString()));
    prom.stderr?.on("data", (d: Buffer) => (promLog += d.toString()));

    // Bounded wait for both series; on timeout say what Prometheus saw of the target.
    const deadline = Date.now() + 60_000;
    let loss: Sample[] = [];
    let step: Sample[] = [];
    for (;;) {
      try {
        loss = await query(port, `clipfleet_train_loss{job_id="${jobId}"}`);
        step = await query(port, `clipfleet_train_step{job_id="${jobId}"}`);
        if (loss.length > 0 && step.length > 0 && Number(step[0]?.value[1]) >= 1) break;
      } catch {
        // Prometheus is still starting
      }
      if (prom.exitCode !== null) assert.fail(`prometheus exited with code ${prom.exitCode}:\n${promLog}`);
      if (Date.now() > deadline) {
        const targets = await api<{ activeTargets: { scrapeUrl: string; health: string; lastError: string }[] }>(port, "targets").catch((e: Error) => e.message);
        assert.fail(
          `after 60 s Prometheus has no clipfleet_train_loss/clipfleet_train_step series for ${jobId} (loss: ${JSON.stringify(loss)}, step: ${JSON.stringify(step)}).\n` +
            `targets: ${JSON.stringify(targets)}\nprometheus log:\n${promLog}\nclipfleet stderr:\n${cli.output.stderr}`,
        );
      }
      await new Promise((r) => setTimeout(r, 500));
    }

    const l = loss[0];
    assert.equal(l?.metric.job_id, jobId, "the clipfleet job id is in `job_id`");
    assert.equal(l.metric.job, "clipfleet", "`job` is the scrape job's name, as Prometheus sets it");
    assert.equal(l.metric.exported_job, undefined, "nothing clashed with Prometheus's `job`");
    assert.equal(l.metric.stage, "main");
    assert.equal(l.metric.instance, metricsAddress);
    assert.ok(Number.isFinite(Number(l.value[1])) && Number(l.value[1]) > 0, `loss ${l.value[1]}`);
    const up = await query(port, 'up{job="clipfleet"}');
    assert.equal(up[0]?.value[1], "1");
    const perStage = await query(port, `clipfleet_train_step_duration_seconds_count{job_id="${jobId}",stage="main"}`);
    assert.equal(perStage.length, 1, "one step duration histogram per stage, not per rank");
    assert.equal(perStage[0]?.metric.rank, undefined);
    assert.ok(Number(perStage[0]?.value[1]) >= 1, "the stage's step duration histogram is scraped");
    const p99 = await query(port, `histogram_quantile(0.99, sum by (le) (clipfleet_train_step_duration_seconds_bucket{job_id="${jobId}"}))`);
    assert.ok(Number(p99[0]?.value[1]) > 0, `p99 step time ${JSON.stringify(p99)}`);

    const state = await query(port, `clipfleet_job_state{job_id="${jobId}"} == 1`);
    assert.equal(state[0]?.metric.name, "prom", "the job's name is on clipfleet_job_state");
    assert.equal(state[0]?.metric.job, "clipfleet");
    const behind = await query(port, `clipfleet_rank_last_step{job_id="${jobId}"}`);
    assert.ok(behind.length >= 1 && behind[0]?.metric.rank !== undefined, `ranks furthest behind: ${JSON.stringify(behind)}`);
    const slots = await query(port, "clipfleet_node_slots");
    assert.ok(slots.length >= 1 && Number(slots[0]?.value[1]) >= 1, `node slots: ${JSON.stringify(slots)}`);
    const free = await query(port, "clipfleet_node_free_slots");
    assert.ok(free.length >= 1, "node free slots");
    assert.equal((await query(port, "clipfleet_node_cordoned"))[0]?.value[1], "0");
    assert.equal((await query(port, "clipfleet_node_quarantined"))[0]?.value[1], "0");

    // The live exposition of the running orchestrator passes promtool's lint too.
    const live = await (await fetch(`http://${metricsAddress}/metrics`)).text();
    const lint = await promtoolCheckMetrics(live);
    assert.equal(lint.code, 0, `promtool check metrics:\n${lint.out}`);
    assert.equal(lint.out.trim(), "");

    const rules = await api<{ groups: { name: string; rules: { name: string; health: string; lastError?: string }[] }[] }>(port, "rules");
    const loaded = rules.groups.flatMap((g) => g.rules);
    assert.equal(loaded.length, 6, JSON.stringify(rules));
    await waitFor("every alert rule evaluated", async () => {
      const r = await api<{ groups: { rules: { health: string }[] }[] }>(port, "rules");
      return r.groups.flatMap((g) => g.rules).every((x) => x.health === "ok");
    }, 20_000, 500);

    // Ctrl-C: the run checkpoints, stops and exits (1: the job ended CANCELLED).
    process.kill(cli.pid ?? 0, "SIGINT");
    const r = await finished(cli, 60_000);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /CANCELLED/);
  });
});
