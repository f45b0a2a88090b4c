/** The /metrics HTTP endpoint for Prometheus. */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { InvalidArgumentError } from "../domain/index.js";
import type { Metrics } from "./registry.js";

export interface MetricsServer {
  /** host:port actually bound (the port may have been 0). */
  readonly address: string;
  close(): Promise<void>;
}

/** Serves `metrics` on `listen` ("host:port"); GET /metrics and /healthz. */
export function serveMetrics(metrics: Metrics, listen: string): Promise<MetricsServer> {
  const { host, port } = splitHostPort(listen);
  const server: Server = createServer((req, res) => {
    if (req.url === "/metrics" || req.url?.startsWith("/metrics?")) {
      metrics
        .scrape()
        .then(({ contentType, body }) => {
          res.writeHead(200, { "Content-Type": contentType });
          res.end(body);
        })
        .catch((err: unknown) => {
          res.writeHead(500, { "Content-Type": "text/plain" });
          res.end(String(err));
        });
      return;
    }
    if (req.url === "/healthz") {
      res.writeHead(200, { "Content-Type": "text/plain" });
      res.end("ok\n");
      return;
    }
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found: try /metrics\n");
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      const a = server.address() as AddressInfo;
      resolve({
        address: `${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`,
        close: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}

/** Splits "host:port" (or "[v6]:port"); throws on anything else. */
export function splitHostPort(s: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  if (!m?.[1] || !m[2]) throw new InvalidArgumentError(`expected HOST:PORT, got "${s}"`);
  const port = Number(m[2]);
  if (port > 65535) throw new InvalidArgumentError(`port out of range in "${s}"`);
  return { host: m[1], port };
}
