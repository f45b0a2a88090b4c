/**
 * The dashboard's pure parts (the token check, cookies, access decisions,
 * SSE framing, request routing and its bounds, the JSON-lines tail) and its
 * server over a real JobService (jobs harness) on 127.0.0.1: random and
 * hostile requests (fast-check) get a 4xx, never a crash or a 500; event
 * streams are bounded per client and cut when a client stops reading.
 */
import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { isValidJobId } from "../../src/domain/index.js";
import {
  cookieToken,
  decideAccess,
  isRefusal,
  JsonlTail,
  MAX_QUERY_PARAMS,
  MAX_URL_CHARS,
  route,
  serveDashboard,
  SseChannel,
  sseFrame,
  tokenCookie,
  tokenMatches,
  withoutToken,
  type Dashboard,
} from "../../src/ui/index.js";
import { jobsHarness, runningJob, stepAll, type Harness } from "../helpers/jobs-harness.js";

/** An SSE parser as the spec (and EventSource) reads a message: the event name and the data lines joined by LF. */
function parseSse(frame: string): { event: string; data: string } {
  assert.ok(frame.endsWith("\n\n"), "a message ends with a blank line");
  const lines = frame.slice(0, -1).split(/\r\n|\r|\n/).slice(0, -1);
  assert.ok(!lines.includes(""), "no blank line inside a message");
  let event = "";
  const data: string[] = [];
  for (const l of lines) {
    if (l.startsWith("event: ")) event = l.slice(7);
    else if (l.startsWith("data: ")) data.push(l.slice(6));
    else assert.fail(`unexpected line ${JSON.stringify(l)}`);
  }
  return { event, data: data.join("\n") };
}

void describe("ui: token, cookie and access", () => {
  void it("a token matches only itself; empty, missing and oversized ones never", () => {
    assert.ok(tokenMatches("s3cret-token", "s3cret-token"));
    for (const bad of ["", null, undefined, "s3cret-toke", "s3cret-token ", "x".repeat(100_000)]) assert.equal(tokenMatches("s3cret-token", bad), false);
    fc.assert(fc.property(fc.string({ minLength: 1, maxLength: 80 }), fc.string({ maxLength: 80 }), (t, g) => tokenMatches(t, g) === (t === g && g.length > 0)));
  });

  void it("the cookie is read back from any Cookie header, and never from an oversized one", () => {
    assert.equal(cookieToken("a=1; clipfleet_ui=abc; b=2"), "abc");
    assert.equal(cookieToken("clipfleet_ui_x=abc"), null);
    assert.equal(cookieToken(undefined), null);
    assert.equal(cookieToken(`clipfleet_ui=abc; pad=${"x".repeat(9000)}`), null);
    assert.match(tokenCookie("abc", false), /^clipfleet_ui=abc; HttpOnly; SameSite=Strict; Path=\/$/);
    assert.match(tokenCookie("abc", true), /; Secure$/);
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (h) => {
      const t = cookieToken(h);
      return t === null || typeof t === "string";
    }));
  });

  void it("decisions: the URL's token sets the cookie, the cookie lets in, anything else is 401 or 403", () => {
    const mode = { kind: "token", token: "tok" } as const;
    assert.deepEqual(decideAccess(mode, { queryToken: "tok", cookieHeader: undefined, certificate: null }), { allow: true, who: "token", setCookie: true });
    assert.deepEqual(decideAccess(mode, { queryToken: null, cookieHeader: "clipfleet_ui=tok", certificate: null }), { allow: true, who: "token", setCookie: false });
    assert.equal((decideAccess(mode, { queryToken: null, cookieHeader: undefined, certificate: null }) as { status: number }).status, 401);
    assert.equal((decideAccess(mode, { queryToken: "nope", cookieHeader: undefined, certificate: null }) as { status: number }).status, 403);
    // A certificate means nothing to a token dashboard.
    assert.equal(decideAccess(mode, { queryToken: null, cookieHeader: undefined, certificate: { authorized: true, subject: { CN: "vera", O: "viewer" } } }).allow, false);
  });

  void it("decisions over TLS: a verified certificate naming a role lets in; none, an unverified one or one without a role does not", () => {
    const mode = { kind: "certificate" } as const;
    const cert = (authorized: boolean, subject: Record<string, string> | undefined) => ({ queryToken: "tok", cookieHeader: "clipfleet_ui=tok", certificate: { authorized, subject } });
    for (const role of ["viewer", "operator", "admin"]) assert.deepEqual(decideAccess(mode, cert(true, { CN: "vera", O: role })), { allow: true, who: "vera", setCookie: false });
    assert.equal((decideAccess(mode, cert(true, undefined)) as { status: number }).status, 401);
    assert.equal((decideAccess(mode, cert(true, {})) as { status: number }).status, 401);
    assert.equal((decideAccess(mode, cert(false, { CN: "vera", O: "viewer" })) as { status: number }).status, 401);
    assert.equal((decideAccess(mode, cert(true, { CN: "vera", O: "root" })) as { status: number }).status, 403);
    assert.equal((decideAccess(mode, cert(true, { CN: "bad name!", O: "viewer" })) as { status: number }).status, 403);
  });
});

void describe("ui: SSE framing", () => {
  void it("any data comes back whole (line breaks as LF), in one message that no line break can end early", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200, unit: fc.constantFrom("a", "b", " ", "\n", "\r", ":", "data: x", "\r\n", "\u00e9", "\u2028") }), fc.constantFrom("job", "points", "logs", "event"), (data, event) => {
        const got = parseSse(sseFrame(event, data));
        assert.equal(got.event, event);
        assert.equal(got.data, data.replace(/\r\n|\r/g, "\n"));
      }),
    );
    assert.equal(sseFrame("job", JSON.stringify({ a: "x\ny" })), 'event: job\ndata: {"a":"x\\ny"}\n\n');
  });

  void it("event names are plain words", () => {
    for (const bad of ["", "Job", "a b", "x\ndata: y", "a".repeat(40)]) assert.throws(() => sseFrame(bad, "{}"));
  });
});

void describe("ui: routes and bounds", () => {
  const id = "j-20261206-101500-0b1c50";

  void it("pages, assets and the API", () => {
    assert.deepEqual(route("GET", "/"), { kind: "page", token: null });
    assert.deepEqual(route("GET", "/?token=abc"), { kind: "page", token: "abc" });
    assert.deepEqual(route("GET", `/jobs/${id}`), { kind: "page", token: null });
    assert.deepEqual(route("GET", "/nodes"), { kind: "page", token: null });
    assert.deepEqual(route("GET", "/compare?jobs=a,b"), { kind: "page", token: null });
    assert.deepEqual(route("GET", "/assets/app.js"), { kind: "asset", name: "app.js" });
    assert.deepEqual(route("HEAD", "/api/jobs"), { kind: "jobs" });
    assert.deepEqual(route("GET", `/api/jobs/${id}`), { kind: "job", id });
    assert.deepEqual(route("GET", `/api/jobs/${id}/history?stage=main&max=10`), { kind: "history", id, stage: "main", maxPoints: 10 });
    assert.deepEqual(route("GET", `/api/jobs/${id}/stream?tail=0`), { kind: "job-stream", id, tail: 0, maxPoints: 4000 });
    assert.deepEqual(route("GET", "/api/stream"), { kind: "overview-stream" });
    assert.deepEqual(route("GET", "/api/nodes"), { kind: "nodes" });
  });

  void it("refusals: other methods, long targets, many parameters, bad numbers and ids, escapes from the assets", () => {
    const status = (m: string, t: string): number => {
      const r = route(m, t);
      return isRefusal(r) ? r.status : 200;
    };
    for (const m of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", undefined]) assert.equal(status(m as string, "/api/jobs"), 405);
    assert.equal(status("GET", `/?${"a".repeat(MAX_URL_CHARS)}`), 414);
    assert.equal(status("GET", `/?${Array.from({ length: MAX_QUERY_PARAMS + 1 }, (_, i) => `p${i}=1`).join("&")}`), 400);
    assert.equal(status("GET", `/api/jobs/${id}/history?max=0`), 400);
    assert.equal(status("GET", `/api/jobs/${id}/history?max=20001`), 400);
    assert.equal(status("GET", `/api/jobs/${id}/history?max=1e3`), 400);
    assert.equal(status("GET", `/api/jobs/${id}/stream?tail=-1`), 400);
    assert.equal(status("GET", `/api/jobs/${id}/history?stage=../x`), 400);
    assert.equal(status("GET", "/api/jobs/..%2f..%2fetc/history"), 400);
    assert.equal(status("GET", "http://evil/"), 400);
    for (const t of ["/assets/../main.js", "/assets/%2e%2e%2fmain.js", "/assets/.env", "/assets/a/b.js", "/assets/%00.js", "/assets/"]) assert.equal(status("GET", t), 404, t);
    assert.equal(withoutToken("/jobs/x?token=abc&tab=1"), "/jobs/x?tab=1");
    assert.equal(withoutToken("/?token=abc"), "/");
  });

  void it("fuzz: any request target gets a route or a refusal, and a route names only safe assets and valid ids", () => {
    const piece = fc.constantFrom("/", "api", "jobs", "assets", "stream", "history", "nodes", "..", ".", "%2e", "%2f", "%", "%zz", "?", "&", "=", "#", "token", "max", "tail", "stage", "j-20261206-101500-0b1c50", "app.js", "\u00e9", "\\", "//", " ", "\n", "9".repeat(12));
    const target = fc.array(piece, { maxLength: 16 }).map((a) => `/${a.join("")}`);
    fc.assert(
      fc.property(fc.oneof(target, fc.string({ maxLength: 300 })), fc.constantFrom("GET", "HEAD", "POST"), (t, m) => {
        const r = route(m, t);
        if (isRefusal(r)) {
          assert.ok([400, 404, 405, 414].includes(r.status));
          return;
        }
        if (r.kind === "asset") assert.match(r.name, /^[A-Za-z0-9][A-Za-z0-9._-]*$/);
        if ("id" in r) assert.ok(isValidJobId(r.id));
        if (r.kind === "history" || r.kind === "job-stream") assert.ok(r.maxPoints >= 1 && r.maxPoints <= 20_000);
      }),
      { numRuns: 3000 },
    );
  });
});

void describe("ui: JSON-lines tail", () => {
  const dir = mkdtempSync(join(tmpdir(), "ui-tail-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it("reads each complete line once, waits for a torn one, skips bad ones, and starts near the end of a large file", () => {
    const f = join(dir, "a.jsonl");
    const t = new JsonlTail(f);
    assert.deepEqual(t.read(), []);
    writeFileSync(f, '{"n":1}\n{"n":2}\n{"n":');
    assert.deepEqual(t.read(), [{ n: 1 }, { n: 2 }]);
    assert.deepEqual(t.read(), []);
    appendFileSync(f, '3}\nnot json\n{"n":4}\n');
    assert.deepEqual(t.read(), [{ n: 3 }, { n: 4 }]);
    const big = join(dir, "big.jsonl");
    writeFileSync(big, Array.from({ length: 1000 }, (_, n) => JSON.stringify({ n })).join("\n") + "\n");
    const got = new JsonlTail(big, 100).read<{ n: number }>();
    assert.ok(got.length > 0 && got.length < 20, `only the tail: ${got.length}`);
    assert.equal(got.at(-1)?.n, 999);
    assert.equal(got[0]?.n, 1000 - got.length, "a whole first line (the torn one skipped)");
  });
});

void describe("ui: the server over a job service", () => {
  let h: Harness;
  let ui: Dashboard;
  let base: string;
  const cookie = "clipfleet_ui=unit-token";
  let jobId = "";
  const assets = mkdtempSync(join(tmpdir(), "ui-assets-"));

  before(async () => {
    h = await jobsHarness();
    writeFileSync(join(assets, "index.html"), "<!doctype html><title>t</title>");
    writeFileSync(join(assets, "uPlot.iife.min.js"), "var uPlot;");
    writeFileSync(join(assets, "secret.txt"), "not served: no type");
    ui = await serveDashboard({
      service: h.service,
      listen: "127.0.0.1:0",
      tls: null,
      stateDir: join(h.dir, "state"),
      logsPath: (id) => join(h.dir, "state", "jobs", id, "logs.jsonl"),
      subscribeAll: () => () => undefined,
      token: "unit-token",
      assetsDir: assets,
      limits: { maxStreamsPerClient: 2 },
    });
    base = `http://${ui.address}`;
    const { id, ranks } = await runningJob(h);
    stepAll(ranks, 1, 5);
    jobId = id;
  });
  after(async () => {
    await ui.close();
    await h.close();
    rmSync(assets, { recursive: true, force: true });
  });

  const get = async (path: string, withCookie = true): Promise<{ status: number; body: string }> => {
    const r = await fetch(base + path, { redirect: "manual", headers: withCookie ? { cookie } : {} });
    return { status: r.status, body: await r.text() };
  };

  void it("serves the job list, a job, its history and nodes; unknown jobs are 404; only typed assets are served", async () => {
    assert.equal(ui.url, `${base}/?token=unit-token`);
    const list = JSON.parse((await get("/api/jobs")).body) as { jobs: { id: string; state: string; step: number }[] };
    assert.equal(list.jobs[0]?.id, jobId);
    assert.equal(list.jobs[0]?.state, "RUNNING");
    const job = JSON.parse((await get(`/api/jobs/${jobId}`)).body) as { stages: { attempts: { ranks: unknown[] }[] }[] };
    assert.equal(job.stages[0]?.attempts[0]?.ranks.length, 2);
    const hist = JSON.parse((await get(`/api/jobs/${jobId}/history`)).body) as { points: unknown[][] };
    assert.deepEqual(hist.points.map((p) => p[1]), [1, 2, 3, 4, 5]);
    assert.equal((await get("/api/jobs/j-20990101-000000-000000")).status, 404);
    assert.equal((await get(`/api/jobs/${jobId}/history?stage=nope`)).status, 404);
    assert.equal((await get("/assets/index.html")).status, 200);
    assert.equal((await get("/assets/secret.txt")).status, 404);
    assert.equal((await get("/api/jobs", false)).status, 401);
  });

  void it("a job's stream: a snapshot, then each new step point once", async () => {
    const ac = new AbortController();
    const r = await fetch(`${base}/api/jobs/${jobId}/stream?tail=10`, { headers: { cookie }, signal: ac.signal });
    assert.equal(r.headers.get("content-type"), "text/event-stream; charset=utf-8");
    const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const steps = (): number[] =>
      text
        .split("\n\n")
        .filter((m) => m.startsWith("event: points"))
        .flatMap((m) => (JSON.parse(parseSse(`${m}\n\n`).data) as { points: number[][] }).points.map((p) => p[1] as number));
    const readUntil = async (cond: () => boolean): Promise<void> => {
      while (!cond()) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`stream ended: ${text}`);
        text += value;
      }
    };
    await readUntil(() => steps().length >= 5);
    assert.match(text, /^retry: 2000\n\nevent: job\n/);
    const ranks = await h.launched(1);
    // Step events go out at most every 250 ms of the (fake) clock; the stream reads the history file on each.
    await h.clock.advance(1000);
    stepAll(ranks, 6, 8);
    await readUntil(() => steps().length >= 8);
    assert.deepEqual(steps(), [1, 2, 3, 4, 5, 6, 7, 8]);
    ac.abort();
  });

  void it("at most maxStreamsPerClient streams per client: the next is 429 until one closes", async () => {
    const open = [new AbortController(), new AbortController()];
    for (const ac of open) assert.equal((await fetch(`${base}/api/stream`, { headers: { cookie }, signal: ac.signal })).status, 200);
    const third = await get("/api/stream");
    assert.equal(third.status, 429);
    open[0]!.abort();
    await waitUntil(async () => (await fetch(`${base}/api/stream`, { headers: { cookie } }).then((r) => (void r.body?.cancel(), r.status))) === 200);
    open[1]!.abort();
  });

  void it("fuzz: random requests, with or without the cookie, get a 2xx, 3xx or 4xx, never a 500; the server keeps serving", async () => {
    const piece = fc.constantFrom("/", "api", "jobs", jobId, "history", "nodes", "assets", "index.html", "..", "%2e%2e", "?", "&", "max=", "stage=", "tail=", "token=", "9", "-1", "main", "%", "x");
    await fc.assert(
      fc.asyncProperty(fc.array(piece, { maxLength: 10 }), fc.boolean(), fc.constantFrom("GET", "HEAD", "POST", "DELETE"), async (parts, withCookie, method) => {
        const path = `/${parts.join("")}`;
        if (/\/stream/.test(path)) return; // streams stay open; covered above
        const status = await new Promise<number>((resolve, reject) => {
          const req = request(`${base}${path.replace(/[^\x21-\x7e]/g, "")}`, { method, headers: withCookie ? { cookie } : {} }, (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode ?? 0));
          });
          req.on("error", reject);
          req.end();
        });
        assert.ok([200, 303, 400, 401, 403, 404, 405, 414].includes(status), `${method} ${path}: ${status}`);
      }),
      { numRuns: 300 },
    );
    assert.equal((await get("/api/jobs")).status, 200);
  });
});

void describe("ui: a stream whose client stops reading is cut", () => {
  let server: Server;
  let closedAfter = -1;

  before(async () => {
    server = createServer((_req, res) => {
      const ch = new SseChannel(res, 256 * 1024);
      const chunk = "x".repeat(64 * 1024);
      let sent = 0;
      const pump = (): void => {
        // 64 MB at most: far beyond the socket buffers and the 256 kB bound.
        while (ch.open && sent < 1024) {
          ch.send("logs", chunk);
          sent += 1;
        }
        closedAfter = ch.open ? -1 : sent;
      };
      setImmediate(pump);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  void it("the channel closes once its buffer passes the bound, instead of growing", async () => {
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve, reject) => {
      const req = request(`http://127.0.0.1:${port}/`, (res) => {
        res.pause(); // a tab that never reads
        setTimeout(() => {
          res.destroy();
          resolve();
        }, 300).unref();
      });
      req.on("error", reject);
      req.end();
    });
    await waitUntil(() => closedAfter !== -1);
    assert.ok(closedAfter > 0 && closedAfter < 1024, `cut after ${closedAfter} messages of 64 kB`);
  });
});

async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}
