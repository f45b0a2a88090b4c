/**
 * The web dashboard (issue 20) in a real Chromium (Debian's, driven by
 * puppeteer-core; nothing is downloaded): `clipfleet run --ui` prints a URL
 * with a token; the page lists the job, its loss curve grows while it trains,
 * a kill -9 of a rank shows as a restart on the curves and in the attempt
 * timeline, log lines arrive live; without the token it is refused; a server
 * with TLS and roles refuses it without a viewer's client certificate.
 * Screenshots are kept as artefacts in the folder the test prints.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { freePort, ROOT, runCli, startServer, tempDir, waitFor, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { currentAttempt, startRun, status, waitForStatus } from "../helpers/jobs.js";

const CHROMIUM = process.env.CLIPFLEET_CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.CLIPFLEET_UI_SHOTS ?? join(ROOT, "dist", "test-artifacts", "ui");

/** GET over HTTP(S) with node (no browser), following no redirect. */
async function get(url: string, opts: { cookie?: string; tls?: { ca: Buffer; cert?: Buffer; key?: Buffer } } = {}): Promise<{ status: number; body: string; headers: Record<string, string | string[] | undefined> }> {
  if (url.startsWith("https:")) {
    return new Promise((resolve, reject) => {
      const req = httpsRequest(url, { ca: opts.tls?.ca, cert: opts.tls?.cert, key: opts.tls?.key, headers: opts.cookie ? { cookie: opts.cookie } : {} }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      });
      req.on("error", reject);
      req.end();
    });
  }
  const r = await fetch(url, { redirect: "manual", headers: opts.cookie ? { cookie: opts.cookie } : {} });
  return { status: r.status, body: await r.text(), headers: Object.fromEntries(r.headers.entries()) };
}

/** The DOM as these callbacks see it (the tests compile without the DOM library). */
interface El {
  textContent: string | null;
  getAttribute(name: string): string | null;
}

/** A numeric attribute of the first element `selector` matches. */
async function attr(page: Page, selector: string, name: string): Promise<number> {
  return page.$eval(selector, (el: El, n: string) => Number(el.getAttribute(n) ?? "0"), name);
}

/** The text of the first element `selector` matches. */
function text(page: Page, selector: string): Promise<string> {
  return page.$eval(selector, (el: El) => el.textContent ?? "");
}

void describe("web dashboard", () => {
  const tmp = tempDir();
  let browser: Browser;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: \`make deps\` installs Debian's chromium`);
    mkdirSync(SHOTS, { recursive: true });
    process.stderr.write(`ui test: screenshots in ${SHOTS}\n`);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
      defaultViewport: { width: 1440, height: 1000 },
    });
  });
  after(async () => {
    await browser?.close();
    tmp.cleanup();
  });

  void it("run --ui: the job listed, its loss curve growing, a kill -9 marked as a restart, live logs; refused without the token", { timeout: 600_000 }, async () => {
    const gate = join(tmp.dir, "go");
    // Both ranks of the first attempt wait before step 24 until the gate file exists: the kill lands mid-run, not by timing.
    const spec = writeTinySpec(tmp.dir, { name: "ui-demo", steps: 60, batch: 32, everySteps: 10, failure: { backoff_seconds: 0.2, heartbeat_timeout: 3 }, env: { CLIPFLEET_FAULT: `gate@24:file=${gate}:attempt=1` }, extra: "eval:\n  every_steps: 15\n  zero_shot: false\n  at_end: true\n" });
    const state = join(tmp.dir, "state");
    const run = await startRun(spec, state, ["--ui", "--json"]);
    const url = await waitFor("the dashboard URL on stderr", () => /clipfleet: dashboard (http:\/\/127\.0\.0\.1:\d+\/\?token=[A-Za-z0-9_-]{20,})/.exec(run.child.output.stderr)?.[1], 60_000);
    const base = new URL(url).origin;

    // Refused without the token, and with a wrong one; no API or stream either.
    const bare = await get(`${base}/`);
    assert.equal(bare.status, 401);
    assert.match(bare.body, /open the dashboard with the URL clipfleet printed/);
    assert.equal((await get(`${base}/?token=not-the-token`)).status, 403);
    assert.equal((await get(`${base}/api/jobs`)).status, 401);
    assert.equal((await get(`${base}/api/jobs/${run.jobId}/stream`)).status, 401);
    assert.equal((await get(`${base}/api/jobs`, { cookie: "clipfleet_ui=guess" })).status, 401);
    // The token is traded for an HttpOnly, SameSite=Strict cookie, and leaves the address.
    const first = await get(url);
    assert.equal(first.status, 303);
    assert.equal(first.headers.location, "/");
    assert.match(String(first.headers["set-cookie"]), /^clipfleet_ui=[A-Za-z0-9_-]+; HttpOnly; SameSite=Strict; Path=\//);
    // Read-only: nothing but GET.
    assert.equal((await fetch(`${base}/api/jobs`, { method: "POST" })).status, 405);

    const page = await browser.newPage();
    const problems: string[] = [];
    page.on("pageerror", (e) => problems.push(String(e)));
    await page.goto(url);
    assert.equal(new URL(page.url()).search, "", "the token is gone from the address bar");
    await page.waitForSelector(`tr[data-job="${run.jobId}"] a.job-link`, { timeout: 60_000 });
    await waitFor("the job's progress in the list", async () => (await text(page, `tr[data-job="${run.jobId}"]`)).match(/RUNNING/), 120_000, 200);

    // A reload works (the cookie), and the job's page opens from the list.
    await page.reload();
    await page.waitForSelector(`tr[data-job="${run.jobId}"] a.job-link`);
    await Promise.all([page.waitForNavigation(), page.click(`tr[data-job="${run.jobId}"] a.job-link`)]);
    await page.waitForSelector("#chart-loss .u-over");
    const early = await waitFor("loss points", async () => ((await attr(page, "#chart-loss", "data-points")) >= 3 ? attr(page, "#chart-loss", "data-points") : null), 120_000, 200);
    await waitFor("the loss curve to grow while it trains", async () => (await attr(page, "#chart-loss", "data-points")) > early, 120_000, 200);
    // Evaluation results as they arrive (step 15, before the gate).
    await waitFor("evaluation results on the page", async () => /retrieval\//.test(await text(page, "#evals")), 120_000, 200);
    await waitFor("log lines", async () => (await text(page, "#log")).match(/rank [01]\]/), 60_000, 200);

    // kill -9 of rank 1 while both ranks wait at the gate.
    const held = await waitForStatus(run.jobId, state, "the ranks at the gate (step 23)", (v) => (v.job.stages[0]?.progress?.step ?? 0) >= 23);
    // Meanwhile (the ranks are held), the nodes page and the comparison view.
    const other = await browser.newPage();
    other.on("pageerror", (e) => problems.push(String(e)));
    await other.goto(`${base}/`);
    await waitFor("the job's progress in the list", async () => /2[0-9] \/ 60/.test(await text(other, `tr[data-job="${run.jobId}"]`)), 60_000, 200);
    await other.screenshot({ path: join(SHOTS, "jobs.png") });
    await other.goto(`${base}/nodes`);
    await other.waitForSelector('tr[data-node="local"]');
    assert.match(await text(other, 'tr[data-node="local"]'), /ready/);
    await other.screenshot({ path: join(SHOTS, "nodes.png") });
    await other.goto(`${base}/compare?jobs=${run.jobId}`);
    await other.waitForSelector("#cmp-loss .u-over");
    assert.match(await text(other, "#cmp-metrics"), /last loss/);
    await other.screenshot({ path: join(SHOTS, "compare.png"), fullPage: true });
    await other.close();
    const victim = currentAttempt(held).ranks.find((r) => r.rank === 1);
    assert.ok(victim && victim.pid > 0);
    process.kill(victim.pid, "SIGKILL");
    writeFileSync(gate, "");
    await page.waitForSelector("#markers li.marker-restart", { timeout: 120_000 });
    const marker = await text(page, "#markers li.marker-restart");
    assert.match(marker, /attempt 2 from step 20 \(failed: .*rank 1 was killed by SIGKILL/);
    await waitFor("the restart counted", async () => (await text(page, "#restarts")) === "1", 60_000, 200);
    await waitFor("attempt 2's points", async () => (await attr(page, "#chart-loss", "data-points")) >= 45, 180_000, 200);
    const timeline = await text(page, "#attempts");
    assert.match(timeline, /failed/);
    assert.match(timeline, /rank 1 @ local/);
    // The orchestrator's own lines and a rank's, live.
    await waitFor("the orchestrator's restart line in the log", async () => (await text(page, "#log")).match(/a2 rank [01]\]/), 60_000, 200);
    await page.screenshot({ path: join(SHOTS, "job.png"), fullPage: true });
    await page.screenshot({ path: join(SHOTS, "job-curves.png"), clip: { x: 0, y: 0, width: 1440, height: 900 } });

    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { state: string; restarts: number };
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    assert.deepEqual(problems, [], "no script error on the page");
    const final = await status(run.jobId, state);
    assert.equal(final.job.stages[0]?.attempts.length, 2);
  });

  void it("a server with TLS and roles: the dashboard over HTTPS refuses a visitor without a viewer's client certificate of the fleet CA", { timeout: 600_000 }, async () => {
    const tls = join(tmp.dir, "tls");
    const other = join(tmp.dir, "other");
    for (const args of [
      ["certs", "init", "--dir", tls, "--host", "127.0.0.1"],
      ["certs", "issue", "--dir", tls, "--name", "vera", "--role", "viewer"],
      ["certs", "init", "--dir", other, "--host", "127.0.0.1"],
    ]) {
      const r = await runCli(args);
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    }
    const uiPort = await freePort();
    const server: ServerHandle = await startServer({ stateDir: join(tmp.dir, "server"), args: ["--tls-dir", tls, "--worker-listen", "127.0.0.1:0", "--ui-listen", `127.0.0.1:${uiPort}`] });
    try {
      assert.match(server.child.output.stderr, new RegExp(`dashboard https://127\\.0\\.0\\.1:${uiPort}/ \\(a viewer's client certificate`));
      const base = `https://127.0.0.1:${uiPort}`;
      const ca = readFileSync(join(tls, "ca.crt"));
      const vera = { ca, cert: readFileSync(join(tls, "clients", "vera", "client.crt")), key: readFileSync(join(tls, "clients", "vera", "client.key")) };
      const stranger = { ca, cert: readFileSync(join(other, "client.crt")), key: readFileSync(join(other, "client.key")) };
      const none = await get(`${base}/`, { tls: { ca } });
      assert.equal(none.status, 401);
      assert.match(none.body, /needs a client certificate of the fleet CA/);
      assert.equal((await get(`${base}/api/jobs`, { tls: { ca } })).status, 401);
      assert.equal((await get(`${base}/api/jobs`, { tls: stranger })).status, 401, "a certificate of another CA");
      const ok = await get(`${base}/api/jobs`, { tls: vera });
      assert.equal(ok.status, 200, ok.body);
      assert.deepEqual(JSON.parse(ok.body), { jobs: [], total: 0 });
      const nodes = await get(`${base}/api/nodes`, { tls: vera });
      assert.equal(nodes.status, 200);
      assert.equal((JSON.parse(nodes.body) as { nodes: { name: string }[] }).nodes[0]?.name, "local");
      // A token means nothing here: the certificate is the credential.
      assert.equal((await get(`${base}/?token=x`, { tls: { ca } })).status, 401);
      await assert.rejects(fetch(`http://127.0.0.1:${uiPort}/`), "plain HTTP is not served");
    } finally {
      await server.stop();
    }
  });
});
