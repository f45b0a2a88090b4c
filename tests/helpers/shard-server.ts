/**
 * A real HTTP file server for shard sets on 127.0.0.1 (tests and benches):
 * Range support, a request log, and stop()/start() on the same port so a
 * test can take the data source away mid-job and bring it back.
 */
import { readFileSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { createServer as createTcpServer, type Socket } from "node:net";
import { join, normalize } from "node:path";

/** One served request: the path, the Range header, the status sent. */
export interface ServedRequest {
  readonly path: string;
  readonly range: string | undefined;
  readonly status: number;
}

/** A shard server over the files of `root` (read into memory on first use). */
export class ShardServer {
  readonly log: ServedRequest[] = [];
  /** Connections refused while stopped (see `refuseWhileStopped`). */
  refused = 0;
  /** Called for every request before it is answered; return true to drop the connection instead. */
  onRequest: ((path: string) => boolean) | null = null;
  private server: Server | null = null;
  private refuser: ReturnType<typeof createTcpServer> | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly cache = new Map<string, Buffer>();
  port = 0;

  constructor(readonly root: string) {}

  /** The base URL (`http://127.0.0.1:PORT`). */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Listens (again) on `port`, or on a new free port the first time. */
  async start(): Promise<void> {
    if (this.refuser !== null) await this.closeRefuser();
    const server = createServer((req, res) => {
      const path = decodeURIComponent((req.url ?? "/").split("?")[0] ?? "/");
      if (this.onRequest?.(path)) {
        this.log.push({ path, range: req.headers.range, status: 0 });
        req.socket.destroy();
        return;
      }
      const body = this.file(path);
      if (body === null) {
        this.log.push({ path, range: req.headers.range, status: 404 });
        res.writeHead(404).end("not found");
        return;
      }
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
      if (m) {
        const start = Number(m[1]);
        const end = m[2] ? Math.min(Number(m[2]), body.length - 1) : body.length - 1;
        if (start >= body.length) {
          this.log.push({ path, range: req.headers.range, status: 416 });
          res.writeHead(416, { "content-range": `bytes */${body.length}` }).end();
          return;
        }
        this.log.push({ path, range: req.headers.range, status: 206 });
        res.writeHead(206, { "content-length": end - start + 1, "content-range": `bytes ${start}-${end}/${body.length}`, "accept-ranges": "bytes" }).end(body.subarray(start, end + 1));
        return;
      }
      this.log.push({ path, range: undefined, status: 200 });
      res.writeHead(200, { "content-length": body.length, "accept-ranges": "bytes" }).end(body);
    });
    server.on("connection", (s) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
    await new Promise<void>((ok, fail) => {
      server.once("error", fail);
      server.listen(this.port, "127.0.0.1", () => ok());
    });
    const addr = server.address();
    if (addr !== null && typeof addr === "object") this.port = addr.port;
    this.server = server;
  }

  /** Stops serving: closes the listener and every open connection. */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server === null) return;
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((ok) => server.close(() => ok()));
  }

  /** While stopped, accept connections on the port and reset them at once, counting them (a client's retries become observable). */
  async refuseWhileStopped(): Promise<void> {
    const refuser = createTcpServer((s) => {
      this.refused++;
      s.resetAndDestroy();
    });
    await new Promise<void>((ok, fail) => {
      refuser.once("error", fail);
      refuser.listen(this.port, "127.0.0.1", () => ok());
    });
    this.refuser = refuser;
  }

  /** Requests for `path` so far (answered or dropped). */
  requests(path: string): ServedRequest[] {
    return this.log.filter((r) => r.path === path);
  }

  private async closeRefuser(): Promise<void> {
    const r = this.refuser;
    this.refuser = null;
    if (r !== null) await new Promise<void>((ok) => r.close(() => ok()));
  }

  private file(path: string): Buffer | null {
    const rel = normalize(path).replace(/^\/+/, "");
    if (rel.startsWith("..")) return null;
    let body = this.cache.get(rel);
    if (body === undefined) {
      const full = join(this.root, rel);
      try {
        if (!statSync(full).isFile()) return null;
      } catch {
        return null;
      }
      body = readFileSync(full);
      this.cache.set(rel, body);
    }
    return body;
  }

  /** Stops everything (the listener, a refuser). */
  async close(): Promise<void> {
    await this.stop();
    await this.closeRefuser();
  }
}
