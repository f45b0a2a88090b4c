/** metrics: prom-client registry, metric definitions, the /metrics HTTP server. */
export { DEFAULT_RETENTION_SECONDS, Metrics, type MetricsSource } from "./registry.js";
export { serveMetrics, splitHostPort, type MetricsServer } from "./server.js";
