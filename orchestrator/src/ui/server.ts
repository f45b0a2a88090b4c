/**
 * The dashboard's HTTP(S) server: a thin transport over the job service, as
 * rpc/ is for gRPC. Pages and assets are static files; the job list, a job's
 * detail and its curves come as JSON; live updates come as Server-Sent
 * Events fed by the same job events, step history and log files the CLI's
 * Watch, StepHistory and StreamLogs read. Read-only: it has no handler that
 * changes anything.
 */
import { readdirSync, readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { dirname, extname, join } from "node:path";
import type { TLSSocket } from "node:tls";
import { fileURLToPath } from "node:url";
import type { TlsFiles } from "../auth/index.js";
import { asClipfleetError, InvalidArgumentError, isTerminal, type JobEvent, type JobRecord } from "../domain/index.js";
import { stepHistoryPath, thinPoints, type JobService, type LogEntry, type StepPointRecord } from "../jobs/index.js";
import { decideAccess, newToken, tokenCookie, type AccessMode } from "./access.js";
import { isRefusal, route, withoutToken, type Route } from "./request.js";
import { SseChannel } from "./sse.js";
import { JsonlTail } from "./tail.js";
import { eventView, jobDetail, jobList, nodeList, pointView } from "./views.js";

/** Where `make build` puts the pages, scripts and styles (and uPlot's). */
export const ASSETS_DIR = join(dirname(fileURLToPath(import.meta.url)), "assets");

/** Bounds on what the dashboard holds for its visitors. */
export interface DashboardLimits {
  /** Open event streams in all. */
  readonly maxStreams: number;
  /** Open event streams per client address (a few tabs). */
  readonly maxStreamsPerClient: number;
  /** Bytes that may wait in one stream's socket before the stream is cut (its client reconnects). */
  readonly maxBufferedBytes: number;
  /** Log lines one update of a job's stream carries at most; the rest are counted as skipped. */
  readonly maxLogLinesPerUpdate: number;
}

export const DEFAULT_LIMITS: DashboardLimits = { maxStreams: 64, maxStreamsPerClient: 8, maxBufferedBytes: 4 * 1024 * 1024, maxLogLinesPerUpdate: 1000 };
/** Longest log line shown (the rest is cut, with a mark). */
const MAX_LOG_LINE_CHARS = 4000;

export interface DashboardOptions {
  readonly service: JobService;
  /** HOST:PORT (port 0: any). */
  readonly listen: string;
  /** With TLS material: HTTPS, and a client certificate of the fleet CA is the credential; without: a token. */
  readonly tls: TlsFiles | null;
  readonly stateDir: string;
  /** The log file of a job (jobs' JobLogs.path). */
  readonly logsPath: (jobId: string) => string;
  /** Every job's events (the bus's "*"), for the job list. */
  readonly subscribeAll: (handler: (e: JobEvent) => void) => () => void;
  readonly limits?: Partial<DashboardLimits>;
  /** The token (tests); default a fresh one. */
  readonly token?: string;
  readonly assetsDir?: string;
}

/** A running dashboard. */
export interface Dashboard {
  /** What to open: with the token for a token dashboard. */
  readonly url: string;
  /** HOST:PORT it listens on. */
  readonly address: string;
  close(): Promise<void>;
}

const TYPES: Record<string, string> = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml" };

const SECURITY_HEADERS = {
  "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

/** Starts the dashboard. */
export async function serveDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const assets = loadAssets(opts.assetsDir ?? ASSETS_DIR);
  const mode: AccessMode = opts.tls ? { kind: "certificate" } : { kind: "token", token: opts.token ?? newToken() };
  const streams = new Map<string, number>();
  const open = new Set<SseChannel>();

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const r = route(req.method, req.url);
    if (isRefusal(r)) return sendText(res, r.status, r.reason);
    if (r.kind === "asset") {
      const a = assets.get(r.name);
      if (!a) return sendText(res, 404, "no such asset");
      res.writeHead(200, { ...SECURITY_HEADERS, "content-type": a.type, "cache-control": "max-age=300" });
      res.end(req.method === "HEAD" ? undefined : a.body);
      return;
    }
    const tlsSocket = opts.tls ? (req.socket as TLSSocket) : null;
    const decision = decideAccess(mode, {
      queryToken: r.kind === "page" ? r.token : null,
      cookieHeader: req.headers.cookie,
      certificate: tlsSocket ? { authorized: tlsSocket.authorized, subject: tlsSocket.getPeerCertificate()?.subject } : null,
    });
    if (!decision.allow) {
      if (r.kind === "page") return sendPage(res, decision.status, refusedPage(decision.status, decision.reason));
      return sendText(res, decision.status, decision.reason);
    }
    if (decision.setCookie && mode.kind === "token") {
      // The token leaves the address bar (and history) at once; the cookie carries it from now on.
      res.writeHead(303, { ...SECURITY_HEADERS, location: withoutToken(req.url ?? "/"), "set-cookie": tokenCookie(mode.token, opts.tls !== null) });
      res.end();
      return;
    }
    try {
      serve(r, req, res);
    } catch (err) {
      const e = asClipfleetError(err);
      sendText(res, e.code === "NOT_FOUND" ? 404 : e.code === "INVALID_ARGUMENT" ? 400 : 500, e.message);
    }
  };

  const serve = (r: Route, req: IncomingMessage, res: ServerResponse): void => {
    const { service } = opts;
    switch (r.kind) {
      case "page":
        return sendPage(res, 200, assets.get("index.html")?.body ?? "");
      case "jobs":
        return sendJson(res, jobList(liveList(service)));
      case "nodes":
        return sendJson(res, { nodes: nodeList(service.nodes()) });
      case "job":
        return sendJson(res, jobDetail(service.get(r.id)));
      case "history": {
        const h = service.stepHistory(r.id, r.stage, r.maxPoints);
        return sendJson(res, { points: h.points.map(pointView) });
      }
      case "overview-stream":
      case "job-stream": {
        if (req.method !== "GET") return sendText(res, 405, "event streams need GET");
        if (r.kind === "job-stream") service.get(r.id); // 404 before the stream opens
        const client = req.socket.remoteAddress ?? "?";
        const mine = streams.get(client) ?? 0;
        if (open.size >= limits.maxStreams || mine >= limits.maxStreamsPerClient) {
          res.setHeader("retry-after", "5");
          return sendText(res, 429, `too many open event streams (at most ${limits.maxStreamsPerClient} per client, ${limits.maxStreams} in all)`);
        }
        streams.set(client, mine + 1);
        const ch = new SseChannel(res, limits.maxBufferedBytes);
        open.add(ch);
        ch.whenClosed(() => {
          open.delete(ch);
          const n = (streams.get(client) ?? 1) - 1;
          if (n <= 0) streams.delete(client);
          else streams.set(client, n);
        });
        if (r.kind === "overview-stream") streamOverview(ch, opts);
        else streamJob(ch, opts, limits, r.id, r.tail, r.maxPoints);
        return;
      }
      case "asset":
        return sendText(res, 404, "no such asset");
    }
  };

  const server: Server = opts.tls
    ? createHttpsServer({ ca: opts.tls.ca, cert: opts.tls.cert, key: opts.tls.key, requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.2" }, handle)
    : createHttpServer(handle);
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.maxConnections = limits.maxStreams * 2 + 32;
  const [host, port] = splitHostPort(opts.listen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(new InvalidArgumentError(`--ui-listen ${opts.listen}: cannot listen (${err.code ?? err.message})`, "ui-listen")),
    );
    server.listen(port, host, () => resolve());
  });
  const bound = server.address() as AddressInfo;
  const shownHost = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host.includes(":") ? `[${host}]` : host;
  const address = `${shownHost}:${bound.port}`;
  return {
    address,
    url: mode.kind === "token" ? `http://${address}/?token=${mode.token}` : `https://${address}/`,
    close: async () => {
      for (const ch of [...open]) ch.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** Every job, the live ones with their running attempts' progress laid over (as GetJob shows them). */
function liveList(service: JobService): JobRecord[] {
  return service.list().map((j) => (isTerminal(j.state) ? j : service.get(j.id)));
}

/** The job list and the nodes, again after every burst of events (at most once a second). */
function streamOverview(ch: SseChannel, opts: DashboardOptions): void {
  const send = (): void => {
    ch.send("jobs", jobList(liveList(opts.service)));
    ch.send("nodes", { nodes: nodeList(opts.service.nodes()) });
  };
  const refresh = coalesce(ch, send, 1000);
  const unsub = opts.subscribeAll(() => refresh());
  ch.whenClosed(unsub);
  send();
}

/**
 * A job's page, live: its detail after every event (coalesced), each step
 * point as rank 0's history file gets it, each log line as the log file
 * gets it. Both files are read from where the previous read stopped, so
 * nothing is sent twice and nothing between the snapshot and the first
 * update is lost.
 */
function streamJob(ch: SseChannel, opts: DashboardOptions, limits: DashboardLimits, id: string, tail: number, maxPoints: number): void {
  const { service } = opts;
  const histories = new Map<string, JsonlTail>();
  const logs = new JsonlTail(opts.logsPath(id), 512 * 1024);
  const newPoints = (): StepPointRecord[] => {
    const out: StepPointRecord[] = [];
    for (const s of service.get(id).stages) {
      let t = histories.get(s.name);
      if (!t) histories.set(s.name, (t = new JsonlTail(stepHistoryPath(opts.stateDir, id, s.name))));
      out.push(...t.read<StepPointRecord>());
    }
    return out;
  };
  const guarded = (fn: () => void) => () => {
    try {
      fn();
    } catch {
      ch.close(); // the job is gone (deleted)
    }
  };
  const sendJob = guarded(() => ch.send("job", jobDetail(service.get(id))));
  const sendPoints = guarded(() => {
    const pts = newPoints();
    if (pts.length > 0) ch.send("points", { points: pts.map(pointView) });
  });
  const sendLogs = (entries: LogEntry[]): void => {
    const skipped = Math.max(0, entries.length - limits.maxLogLinesPerUpdate);
    const lines = entries.slice(skipped).map((e) => [e.tsMs, e.stage, e.attempt, e.rank, e.stream, e.line.length > MAX_LOG_LINE_CHARS ? `${e.line.slice(0, MAX_LOG_LINE_CHARS)} [cut]` : e.line]);
    if (lines.length > 0 || skipped > 0) ch.send("logs", { lines, skipped });
  };
  const jobSoon = coalesce(ch, sendJob, 250);
  const progressSoon = coalesce(ch, sendJob, 1000);
  const pointsSoon = coalesce(ch, sendPoints, 200);
  const logsSoon = coalesce(ch, () => sendLogs(logs.read<LogEntry>()), 200);
  const unsubEvents = service.subscribe(id, (e) => {
    if (e.type === "step") {
      pointsSoon();
      progressSoon();
      return;
    }
    ch.send("event", eventView(e));
    pointsSoon();
    jobSoon();
  });
  const unsubLogs = service.followLogs(id, () => logsSoon());
  ch.whenClosed(() => {
    unsubEvents();
    unsubLogs();
  });
  sendJob();
  const first = newPoints();
  ch.send("points", { points: thinPoints(first, maxPoints).map(pointView), reset: true });
  const stored = logs.read<LogEntry>();
  sendLogs(tail > 0 ? stored.slice(-tail) : []);
}

/** `fn` at most once per `ms`, after the first call of a burst; nothing once the channel closes. */
function coalesce(ch: SseChannel, fn: () => void, ms: number): () => void {
  let timer: NodeJS.Timeout | null = null;
  ch.whenClosed(() => {
    if (timer) clearTimeout(timer);
  });
  return () => {
    if (timer || !ch.open) return;
    timer = setTimeout(() => {
      timer = null;
      if (ch.open) fn();
    }, ms);
  };
}

/** The built assets by name: the only files the dashboard serves (nothing is looked up by a request's path). */
function loadAssets(dir: string): Map<string, { body: Buffer; type: string }> {
  const out = new Map<string, { body: Buffer; type: string }>();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    throw new InvalidArgumentError(`the dashboard's assets are missing (${dir}); run \`make build\``, "ui");
  }
  for (const name of names) {
    const type = TYPES[extname(name)];
    if (type) out.set(name, { body: readFileSync(join(dir, name)), type });
  }
  if (!out.has("index.html") || !out.has("uPlot.iife.min.js")) throw new InvalidArgumentError(`the dashboard's assets are incomplete (${dir}); run \`make build\``, "ui");
  return out;
}

function splitHostPort(listen: string): [string, number] {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new InvalidArgumentError(`--ui-listen: expected HOST:PORT, got ${JSON.stringify(listen)}`, "ui-listen");
  return [(m[1] ?? m[2]) as string, port];
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { ...SECURITY_HEADERS, "content-type": "text/plain; charset=utf-8" });
  res.end(`${text}\n`);
}

function sendPage(res: ServerResponse, status: number, body: Buffer | string): void {
  res.writeHead(status, { ...SECURITY_HEADERS, "content-type": "text/html; charset=utf-8" });
  res.end(body);
}

function sendJson(res: ServerResponse, body: unknown): void {
  res.writeHead(200, { ...SECURITY_HEADERS, "content-type": "application/json; charset=utf-8" });
  res.end(JSON.stringify(body));
}

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** The page a refused visitor sees. */
export function refusedPage(status: number, reason: string): string {
  const title = status === 401 ? "401: who are you?" : "403: not allowed";
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>clipfleet: ${title}</title><link rel="stylesheet" href="/assets/style.css"></head><body class="refused"><main><h1>clipfleet dashboard</h1><p class="refused-status">${escapeHtml(title)}</p><p>${escapeHtml(reason)}.</p><p>See docs/ui.md.</p></main></body></html>`;
}
