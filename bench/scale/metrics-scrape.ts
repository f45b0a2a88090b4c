/**
 * The /metrics exposition alone, side by side: the Metrics registry of
 * each dist tree given (e.g. main's, copied aside, and this one), fed as
 * the job service feeds it for RANKS ranks (gangs of 2,500, 20 step
 * reports each, heartbeat ages and last steps in the source, 100-slot
 * nodes), then scraped SCRAPES times with the scrape cache off. Per tree:
 * bytes, series, build time per scrape, and per scrape the longest stretch
 * the event loop was blocked (a 1 ms ticker's largest gap, the wait after
 * the scrape included, so about 5 ms even with no stall). One
 * JSON line per tree. No load generators, so the two trees see the same
 * machine within seconds of each other.
 *
 *   node dist/bench/scale/metrics-scrape.js RANKS SCRAPES DIST_ROOT...
 */
import { join } from "node:path";
import { pathToFileURL } from "node:url";

interface AnyMetrics {
  setSource(s: unknown): void;
  attemptStarted(job: string, stage: string, steps: number): void;
  stepDuration: { observe(labels: Record<string, string>, v: number): void };
  dataWait: { inc(labels: Record<string, string>, v: number): void };
  step: { set(labels: Record<string, string>, v: number): void };
  loss: { set(labels: Record<string, string>, v: number): void };
  gpuSample?: unknown;
  scrape(): Promise<{ body: string }>;
}

async function measure(distRoot: string, ranks: number, scrapes: number): Promise<Record<string, unknown>> {
  const mod = (await import(pathToFileURL(join(distRoot, "orchestrator/src/metrics/index.js")).href)) as { Metrics: new (o: object) => AnyMetrics };
  const m = new mod.Metrics({ scrapeCacheMs: 0 });
  const perRank = typeof m.gpuSample !== "function"; // main's registry: per-rank series, `job` label
  const jobLabel = perRank ? "job" : "job_id";
  const gang = 2500;
  const jobs = Math.ceil(ranks / gang);
  const now = Date.now();
  const rankList: unknown[] = [];
  for (let j = 0; j < jobs; j++) {
    const job = `j-bench-${j}`;
    m.attemptStarted(job, "main", 1000);
    for (let r = 0; r < Math.min(gang, ranks - j * gang); r++) {
      const labels: Record<string, string> = perRank ? { [jobLabel]: job, stage: "main", rank: String(r) } : { [jobLabel]: job, stage: "main" };
      for (let s = 0; s < 20; s++) {
        m.stepDuration.observe(labels, 0.05 + (r % 7) / 100);
        m.dataWait.inc(labels, 0.001);
      }
      rankList.push({ job, stage: "main", rank: r, node: `sim-${String(Math.floor((j * gang + r) / 100)).padStart(3, "0")}`, state: "running", heartbeatAgeSeconds: (r % 13) / 10, step: 20 - (r % 3) });
    }
    m.step.set({ [jobLabel]: job, stage: "main" }, 20);
    m.loss.set({ [jobLabel]: job, stage: "main" }, 3.2);
  }
  const nodes = Array.from({ length: Math.ceil(ranks / 100) }, (_, i) => ({ node: `sim-${String(i).padStart(3, "0")}`, slots: 100, freeSlots: 0, cordoned: false, quarantined: false }));
  m.setSource({
    jobsByState: () => ({ RUNNING: jobs }),
    jobs: () => Array.from({ length: jobs }, (_, j) => ({ job: `j-bench-${j}`, name: "bench", state: "RUNNING", updatedAtMs: now })),
    ranks: () => rankList,
    newestCheckpoints: () => [],
    nodeSlots: () => nodes,
    now: () => Date.now(),
  });
  let last = performance.now();
  let maxGap = 0;
  const ticker = setInterval(() => {
    const t = performance.now();
    maxGap = Math.max(maxGap, t - last);
    last = t;
  }, 1);
  await new Promise((r) => setTimeout(r, 20));
  maxGap = 0;
  const ms: number[] = [];
  const stalls: number[] = [];
  let body = "";
  for (let i = 0; i < scrapes; i++) {
    last = performance.now();
    maxGap = 0;
    const t0 = performance.now();
    body = (await m.scrape()).body;
    ms.push(performance.now() - t0);
    // The stall that ends the scrape shows at the ticker's next tick.
    await new Promise((r) => setTimeout(r, 5));
    stalls.push(maxGap);
  }
  clearInterval(ticker);
  const series = body.split("\n").filter((l) => l !== "" && !l.startsWith("#")).length;
  return { dist: distRoot, ranks, registry: perRank ? "per-rank (main)" : "per-stage + top-k", bytes: Buffer.byteLength(body), series, scrapeMs: ms, loopStallMs: stalls, maxLoopBlockMs: Math.max(...stalls) };
}

const [ranks, scrapes, ...roots] = process.argv.slice(2);
if (!ranks || !scrapes || roots.length === 0) throw new Error("usage: metrics-scrape.js RANKS SCRAPES DIST_ROOT...");
for (const root of roots) process.stdout.write(JSON.stringify(await measure(root, Number(ranks), Number(scrapes))) + "\n");
