/** metrics: prom-client registry, metric definitions, the /metrics HTTP server. */
export { DEFAULT_RANK_TOP_K, DEFAULT_RETENTION_SECONDS, DEFAULT_SCRAPE_CACHE_MS, Metrics, type MetricsSource } from "./registry.js";
export { serveMetrics, splitHostPort, type MetricsServer } from "./server.js";
