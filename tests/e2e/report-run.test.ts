/**
 * `clipfleet report` on a real run: a tiny job that fails once (injected
 * fault) and recovers, then the report from its state dir (read through the
 * StepHistory RPC of a read-only orchestrator). Every PNG is opened: a real
 * PNG of the figure size (960x540), not trivially small; index.md and
 * index.html reference each; report.json holds both attempts' steps. A
 * second job is stopped by the user (SIGINT to `clipfleet run`), resumed,
 * and fails once in the resumed attempt: its report tells the user stop and
 * the restart after a failure apart. `report J1 J2` compares the two jobs.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli, tempDir } from "../helpers/cli.js";
import { startRun, waitForStatus } from "../helpers/jobs.js";
import { synthData, writeSpec } from "./report-fixture.js";

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
// worker-runtime/clipfleet_worker/report.py: FIGSIZE (9.6, 5.4) inches at DPI 100.
const WIDTH = 960;
const HEIGHT = 540;

interface ReportJson {
  schema: string;
  job: { id: string; state: string };
  stages: {
    name: string;
    attempts: { attempt: number; resumedFromStep: number; lastStep: number; outcome: string }[];
    points: { attempt: number; step: number; loss: number; lr: number; samplesPerSecond: number; stepSeconds: number }[];
    metrics: Record<string, number>;
  }[];
}

/** Width and height from a PNG's IHDR chunk (after checking the signature). */
function pngSize(file: string): { width: number; height: number } {
  const raw = readFileSync(file);
  assert.ok(raw.subarray(0, 8).equals(PNG_SIGNATURE), `${file} does not start with the PNG signature`);
  assert.equal(raw.subarray(12, 16).toString("latin1"), "IHDR", `${file}: first chunk is not IHDR`);
  return { width: raw.readUInt32BE(16), height: raw.readUInt32BE(20) };
}

void describe("clipfleet report", () => {
  const tmp = tempDir("clipfleet-report-");
  const state = join(tmp.dir, "state");
  let jobId = "";

  before(async () => {
    const data = await synthData(tmp.dir);
    // Rank 0 raises at step 15 of attempt 1; attempt 2 resumes from the step-10 checkpoint.
    const spec = writeSpec(tmp.dir, data, { name: "report", steps: 20, fault: "raise@15:attempt=1", eval: true });
    const r = await runCli(["run", spec, "--json", "--state-dir", state], { cwd: tmp.dir, timeoutMs: 100_000 });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { jobId: string; restarts: number; state: string };
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    jobId = s.jobId;
  });
  after(() => tmp.cleanup());

  void it("writes real PNGs of the figure size and index.md/index.html that reference them", { timeout: 60_000 }, async () => {
    const out = join(tmp.dir, "report");
    const r = await runCli(["report", jobId, "--out", out, "--state-dir", state, "--json"], { cwd: tmp.dir, timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "") as { indexMd: string; indexHtml: string; plots: { file: string; width: number; height: number }[] };
    const files = summary.plots.map((p) => p.file).sort();
    assert.deepEqual(files, ["main_eval.png", "main_logit_scale.png", "main_loss.png", "main_lr.png", "main_step_time.png", "main_throughput.png"]);
    const md = readFileSync(join(out, "index.md"), "utf8");
    const html = readFileSync(join(out, "index.html"), "utf8");
    assert.equal(summary.indexMd, join(out, "index.md"));
    for (const f of files) {
      const path = join(out, f);
      assert.deepEqual(pngSize(path), { width: WIDTH, height: HEIGHT }, f);
      assert.ok(statSync(path).size > 10_000, `${f} is only ${statSync(path).size} bytes`);
      assert.ok(md.includes(`](${f})`), `index.md does not reference ${f}`);
      assert.ok(html.includes(`<img src="${f}"`), `index.html does not reference ${f}`);
    }
    assert.match(md, new RegExp(`^# clipfleet report: report \\(${jobId}\\)`));
    assert.match(md, /\| restarts after failures \| 1 \|/);
    assert.match(md, /\| user stops \(resumed\) \| 0 \|/);
    assert.match(md, /\| 1 \| 1 \| 0 \| 14 \| failed \| rank 0 raised RuntimeError: injected fault at step 15/);
    assert.match(md, /\| 2 \| 1 \| 10 \| 20 \| succeeded \| finished \|/);
    assert.match(md, /\| zeroshot\/top1 \| [0-9.]+ \|/);
    assert.match(html, /<td>retrieval\/i2t_R@1<\/td>/);
  });

  void it("keeps report.json with rank 0's steps of both attempts (the StepHistory RPC)", () => {
    const data = JSON.parse(readFileSync(join(tmp.dir, "report", "report.json"), "utf8")) as ReportJson;
    assert.equal(data.schema, "clipfleet.report/v1");
    assert.equal(data.job.id, jobId);
    const main = data.stages.find((s) => s.name === "main");
    assert.ok(main);
    assert.deepEqual(
      main.attempts.map((a) => [a.attempt, a.resumedFromStep, a.lastStep, a.outcome]),
      [
        [1, 0, 14, "failed"],
        [2, 10, 20, "succeeded"],
      ],
    );
    const steps = (attempt: number): number[] => main.points.filter((p) => p.attempt === attempt).map((p) => p.step);
    assert.deepEqual(steps(1), Array.from({ length: 14 }, (_, i) => i + 1));
    assert.deepEqual(steps(2), Array.from({ length: 10 }, (_, i) => i + 11));
    for (const p of main.points) {
      assert.ok(p.loss > 0 && p.lr > 0 && p.samplesPerSecond > 0 && p.stepSeconds > 0, JSON.stringify(p));
    }
    // The same seed and data plan: the redone steps 11-14 reproduce attempt 1's losses.
    for (const s of [11, 12, 13, 14]) {
      const [a, b] = [1, 2].map((n) => main.points.find((p) => p.attempt === n && p.step === s)?.loss);
      assert.ok(a !== undefined && b !== undefined && Math.abs(a - b) < 1e-4, `step ${s}: ${a} vs ${b}`);
    }
    assert.ok(Object.keys(main.metrics).some((k) => k.startsWith("retrieval/")));
  });

  void it("thins long histories with --max-points and names an unknown job (exit 3)", async () => {
    const out = join(tmp.dir, "thin");
    const r = await runCli(["report", jobId, "--out", out, "--state-dir", state, "--max-points", "10"], { cwd: tmp.dir, timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /report: .*index\.html and .*index\.md, 6 plot\(s\)/);
    const data = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as ReportJson;
    const pts = data.stages[0]?.points ?? [];
    assert.ok(pts.length <= 14 && pts.length >= 8, `${pts.length} points after thinning 24 to about 10`);
    // Each attempt keeps its first and last step.
    for (const [attempt, first, last] of [
      [1, 1, 14],
      [2, 11, 20],
    ]) {
      const own = pts.filter((p) => p.attempt === attempt).map((p) => p.step);
      assert.equal(own[0], first);
      assert.equal(own.at(-1), last);
    }
    const missing = await runCli(["report", "j-20000101-000000-000000", "--out", join(tmp.dir, "none"), "--state-dir", state], { cwd: tmp.dir });
    assert.equal(missing.code, 3, missing.stderr);
    assert.match(missing.stderr, /j-20000101-000000-000000/);
    assert.equal(existsSync(join(tmp.dir, "none")), false, "nothing written for an unknown job");
  });

  void describe("a user stop, a resume and a failure in one job, then two jobs compared", () => {
    let stopsId = "";

    before(async () => {
      const data = join(tmp.dir, "data");
      const spec = writeSpec(tmp.dir, data, { name: "stops", steps: 20, eval: true });
      // Attempt 1 waits before step 12 until the gate file exists: the user stops it there (SIGINT, as Ctrl-C).
      const gate = join(tmp.dir, "go");
      const run = await startRun(spec, state, [], { CLIPFLEET_FAULT: `gate@12:file=${gate}:attempt=1` });
      stopsId = run.jobId;
      await waitForStatus(stopsId, state, "step 11", (v) => (v.job.stages[0]?.attempts.at(-1)?.ranks[0]?.step ?? 0) >= 11);
      process.kill(run.child.pid ?? 0, "SIGINT");
      await waitForStatus(stopsId, state, "STOPPING", (v) => v.job.stages[0]?.state === 5 || v.job.stages[0]?.state === 8);
      writeFileSync(gate, "");
      const stopped = await run.done;
      assert.equal(stopped.code, 1, stopped.stderr);
      // Resumed, the second attempt raises at step 16 and the stage restarts after that failure.
      const resumed = await runCli(["resume", stopsId, "--json", "--state-dir", state], { cwd: tmp.dir, env: { CLIPFLEET_FAULT: "raise@16:attempt=2" }, timeoutMs: 100_000 });
      assert.equal(resumed.code, 0, resumed.stderr);
      const s = JSON.parse(resumed.stdout) as { state: string; restarts: number; userStops: number; preemptions: number };
      assert.deepEqual([s.state, s.restarts, s.userStops, s.preemptions], ["SUCCEEDED", 1, 1, 0]);
    });

    void it("the report tells the user stop and the restart after a failure apart", { timeout: 60_000 }, async () => {
      const out = join(tmp.dir, "stops-report");
      const r = await runCli(["report", "stops", "--out", out, "--state-dir", state], { cwd: tmp.dir, timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      const md = readFileSync(join(out, "index.md"), "utf8");
      assert.match(md, /\| restarts after failures \| 1 \|/);
      assert.match(md, /\| user stops \(resumed\) \| 1 \|/);
      assert.match(md, /\| preemptions \(resumed\) \| 0 \|/);
      assert.match(md, /1 restart after a failure, 1 user stop \(resumed\); each new attempt is marked/);
      const data = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as ReportJson & { stages: { restarts: number; userStops: number }[] };
      const main = data.stages[0];
      assert.ok(main);
      assert.deepEqual(main.attempts.map((a) => a.outcome), ["cancelled", "failed", "succeeded"]);
      assert.deepEqual([main.restarts, main.userStops], [1, 1]);
      assert.match(md, /\| 1 \| 1 \| 0 \| 1[2-9] \| cancelled \|/);
      assert.match(md, /\| 2 \| 1 \| 1[2-9] \| 1[56] \| failed \| rank 0 raised RuntimeError: injected fault at step 16/);
    });

    void it("report J1 J2 --out DIR compares the jobs: comparison.md/json/png, curves side by side, each job's report", { timeout: 90_000 }, async () => {
      const out = join(tmp.dir, "compared");
      const r = await runCli(["report", jobId, stopsId, "--out", out, "--state-dir", state, "--json"], { cwd: tmp.dir, timeoutMs: 90_000 });
      assert.equal(r.code, 0, r.stderr);
      const written = JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "") as { plots: { file: string; width: number; height: number }[] };
      assert.deepEqual(written.plots.map((p) => p.file).sort(), ["compare_main_loss.png", "compare_main_lr.png", "compare_main_throughput.png", "comparison.png"]);
      for (const p of written.plots) assert.deepEqual(pngSize(join(out, p.file)), { width: p.width, height: p.height }, p.file);
      const cmp = JSON.parse(readFileSync(join(out, "comparison.json"), "utf8")) as { by: string; rows: string[]; columns: { label: string }[]; values: (number | null)[][] };
      assert.equal(cmp.by, "job");
      assert.deepEqual(cmp.rows, ["report", "stops"]);
      const labels = cmp.columns.map((c) => c.label);
      assert.ok(labels.includes("retrieval/i2t_R@1") && labels.includes("zeroshot/top1"), labels.join(", "));
      // Sorted numerically: R@1, R@5, R@10.
      const i2t = labels.filter((l) => l.startsWith("retrieval/i2t_R@"));
      assert.deepEqual(i2t, ["retrieval/i2t_R@1", "retrieval/i2t_R@5", "retrieval/i2t_R@10"]);
      for (const row of cmp.values) assert.ok(row.every((v) => typeof v === "number"), JSON.stringify(row));
      const md = readFileSync(join(out, "comparison.md"), "utf8");
      assert.match(md, /^\| job \| retrieval\/i2t_R@1 \|/m);
      assert.match(md, /^\| report \| /m);
      assert.match(md, /^\| stops \| /m);
      const index = readFileSync(join(out, "index.md"), "utf8");
      assert.match(index, /^# clipfleet report: 2 jobs compared \(report, stops\)/);
      assert.match(index, new RegExp(`\\| stops \\| ${stopsId} \\| SUCCEEDED \\| 20 \\| [0-9.]+ -> [0-9.]+ \\| 1 \\| 1 \\| 0 \\|`));
      for (const id of [jobId, stopsId]) assert.ok(existsSync(join(out, id, "index.html")), `${id}'s own report`);
      // The same job twice is refused (exit 2), naming it.
      const twice = await runCli(["report", jobId, jobId.slice(-6), "--out", join(tmp.dir, "twice"), "--state-dir", state], { cwd: tmp.dir });
      assert.equal(twice.code, 2, twice.stderr);
      assert.match(twice.stderr, /named twice/);
    });
  });
});
