/**
 * Composition root: the only place where concrete adapters (file or NATS
 * store, in-process or NATS events, local or SSH launchers, the gRPC and
 * metrics servers) meet the job service. The CLI receives `embed` from here
 * and never reaches into the other modules' internals.
 */
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { INFO_FILE, runCli, type CliDeps, type EmbedOptions, type EmbeddedOrchestrator, type OrchestratorInfoFile } from "./cli/index.js";
import { InvalidArgumentError, systemClock } from "./domain/index.js";
import { openEventBus } from "./events/index.js";
import { JobLedger, JobLogs, JobService, ORCHESTRATOR_VERSION } from "./jobs/index.js";
import { LocalLauncher, resolvePython, runSynth, runWorkerCli, type Launcher } from "./launcher/index.js";
import { Metrics, serveMetrics, type MetricsServer } from "./metrics/index.js";
import { startRpcServer } from "./rpc/index.js";
import { localInventory, parseInventory, Scheduler } from "./scheduler/index.js";
import { loadPresets } from "./spec/index.js";
import { openStore } from "./store/index.js";
import { atomicWriteFileSync } from "./util/index.js";

/** The repository (or installed package) root: dist/orchestrator/src/main.js -> ../../.. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const WORKER_RUNTIME_DIR = join(ROOT, "worker-runtime");
export const PRESETS_PATH = join(WORKER_RUNTIME_DIR, "clipfleet_worker", "models", "presets.json");

/** Starts an orchestrator in this process: store, events, scheduler, job service, gRPC and metrics servers. */
export async function embed(opts: EmbedOptions): Promise<EmbeddedOrchestrator> {
  const stateDir = resolve(opts.stateDir);
  mkdirSync(stateDir, { recursive: true });
  const clock = systemClock;
  const store = await openStore(opts.store ?? "file", stateDir);
  const bus = await openEventBus(opts.nats ?? null);
  const metrics = new Metrics();
  const nodes = opts.inventory ? parseInventory(readFileSync(opts.inventory, "utf8"), opts.inventory) : [localInventory()];
  const scheduler = new Scheduler(nodes, clock);
  const local = new LocalLauncher();
  const ssh = null as Launcher | null;
  const remote = nodes.find((n) => n.launcher === "ssh");
  if (remote) throw new InvalidArgumentError(`${opts.inventory}: node ${remote.name} needs the SSH launcher, not built yet`);
  const logs = new JobLogs(stateDir);
  const ledger = new JobLedger(store, bus, clock);
  let gateway = "";
  const service = new JobService({
    ledger,
    bus,
    scheduler,
    launchers: { local, ssh },
    metrics,
    logs,
    clock,
    presets: loadPresets(PRESETS_PATH),
    stateDir,
    workerRuntimeDir: WORKER_RUNTIME_DIR,
    python: opts.python ?? process.env.CLIPFLEET_PYTHON ?? null,
    gatewayAddress: () => gateway,
    synthesize: (python, synth, log) => runSynth(python, WORKER_RUNTIME_DIR, synth, log),
    scope: opts.embedded ? new Set(opts.scope ?? []) : null,
  });
  metrics.setSource(service);
  let metricsServer: MetricsServer | null = null;
  if (opts.metricsListen) metricsServer = await serveMetrics(metrics, opts.metricsListen);
  const rpc = await startRpcServer(opts.listen, service, {
    version: ORCHESTRATOR_VERSION,
    stateDir,
    metricsAddress: () => metricsServer?.address ?? "",
    store: store.describe(),
    events: opts.nats ?? "in-process",
  });
  const listenHost = opts.listen.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const advertiseHost = opts.advertise ?? (listenHost === "0.0.0.0" || listenHost === "::" ? "127.0.0.1" : listenHost);
  gateway = `${advertiseHost}:${rpc.port}`;
  const sweep = setInterval(() => metrics.sweep(clock.now(), (opts.metricsRetentionSeconds ?? 3600) * 1000), 30_000);
  await service.start({ reconcile: !opts.readOnly });
  const infoFile = join(stateDir, INFO_FILE);
  if (!opts.readOnly) {
    const info: OrchestratorInfoFile = { address: `${advertiseHost}:${rpc.port}`, pid: process.pid, metricsAddress: metricsServer?.address ?? null, startedAtMs: clock.now() };
    atomicWriteFileSync(infoFile, JSON.stringify(info) + "\n");
  }

  let closing: Promise<void> | null = null;
  return {
    service,
    address: `${listenHost === "0.0.0.0" ? "127.0.0.1" : listenHost}:${rpc.port}`,
    metricsAddress: metricsServer?.address ?? null,
    close: () => {
      closing ??= (async () => {
        clearInterval(sweep);
        if (!opts.readOnly) rmSync(infoFile, { force: true });
        await service.close();
        await rpc.close();
        await local.close();
        await ssh?.close();
        await metricsServer?.close();
        logs.closeAll();
        await bus.close();
        await store.close();
      })();
      return closing;
    },
  };
}

const deps: CliDeps = {
  embed,
  presetsPath: PRESETS_PATH,
  workerRuntimeDir: WORKER_RUNTIME_DIR,
  version: ORCHESTRATOR_VERSION,
  runWorkerCli: async (python, args) => runWorkerCli(await resolvePython(python ?? process.env.CLIPFLEET_PYTHON ?? null), WORKER_RUNTIME_DIR, args),
};

/** The CLI entry (bin/clipfleet calls it); returns the exit code. */
export function main(argv: string[]): Promise<number> {
  return runCli(argv, deps);
}
