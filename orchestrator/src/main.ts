/**
 * Composition root: the only place where concrete adapters (file or NATS
 * store, in-process or NATS events, local or SSH launchers, the gRPC and
 * metrics servers) meet the job service. The CLI receives `embed` from here
 * and never reaches into the other modules' internals.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { INFO_FILE, runCli, type CliDeps, type EmbedOptions, type EmbeddedOrchestrator, type OrchestratorInfoFile } from "./cli/index.js";
import { systemClock, type NodeCheck } from "./domain/index.js";
import { openEventBus } from "./events/index.js";
import { loadNatsAccess, natsTarget, NO_NATS_ACCESS, redactNatsUrl } from "./nats/index.js";
import { JobLedger, JobLogs, JobService, ORCHESTRATOR_VERSION } from "./jobs/index.js";
import { checkNodes, checkOpenClipWeights, checkPluginEntryPoint, defaultKnownHostsPath, LocalLauncher, resolvePython, runSynth, runWorkerCli, SlurmLauncher, SshLauncher } from "./launcher/index.js";
import { DEFAULT_RETENTION_SECONDS, Metrics, serveMetrics, type MetricsServer } from "./metrics/index.js";
import { AccessLog, ANONYMOUS, loadServerTls, localIdentity } from "./auth/index.js";
import { KEYS_DIR, loadOrCreateSigningKey, PUBLIC_KEY_FILE } from "./checkpoints/index.js";
import { startControlServer, startWorkerServer } from "./rpc/index.js";
import { serveDashboard, type Dashboard } from "./ui/index.js";
import { localInventory, parseInventory, Scheduler, type Node } from "./scheduler/index.js";
import { loadPresets, readTextFile } from "./spec/index.js";
import { openStore } from "./store/index.js";
import { writeFileAtomic } from "./util/index.js";

/** The repository (or installed package) root: dist/orchestrator/src/main.js -> ../../.. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const WORKER_RUNTIME_DIR = join(ROOT, "worker-runtime");
export const PRESETS_PATH = join(WORKER_RUNTIME_DIR, "clipfleet_worker", "models", "presets.json");

/** Starts an orchestrator in this process: store, events, scheduler, job service, gRPC and metrics servers. */
export async function embed(opts: EmbedOptions): Promise<EmbeddedOrchestrator> {
  const stateDir = resolve(opts.stateDir);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const clock = systemClock;
  const natsAccess = natsAccessFor(opts);
  // Bad input is said before anything connects (the store's connect may take seconds to fail).
  if (opts.nats) natsTarget(opts.nats, "nats", natsAccess);
  const store = await openStore(opts.store ?? "file", stateDir, natsAccess);
  const bus = await openEventBus(opts.nats ?? null, natsAccess).catch(async (err: unknown) => {
    await store.close();
    throw err;
  });
  const metrics = new Metrics({ retentionSeconds: opts.metricsRetentionSeconds ?? DEFAULT_RETENTION_SECONDS });
  const nodes = loadInventory(opts.inventory ?? null);
  const scheduler = new Scheduler(nodes, clock);
  const local = new LocalLauncher();
  const ssh = sshLauncherFor(nodes, opts.knownHosts ?? null);
  const slurm = nodes.some((n) => n.launcher === "slurm") ? new SlurmLauncher() : null;
  const logs = new JobLogs(stateDir);
  const ledger = new JobLedger(store, bus, clock);
  const tls = opts.tlsDir ? loadServerTls(opts.tlsDir) : null;
  const manifestKey = await loadOrCreateSigningKey(stateDir);
  let gateway = "";
  const service = new JobService({
    ledger,
    bus,
    scheduler,
    launchers: { local, ssh, slurm },
    metrics,
    logs,
    clock,
    presets: loadPresets(PRESETS_PATH),
    stateDir,
    manifestKey,
    workerRuntimeDir: WORKER_RUNTIME_DIR,
    python: opts.python ?? process.env.CLIPFLEET_PYTHON ?? null,
    gatewayAddress: () => gateway,
    gatewayCa: tls ? tls.ca.toString("utf8") : null,
    synthesize: (python, synth, log) => runSynth(python, WORKER_RUNTIME_DIR, synth, log),
    checkOpenClip: (python, ref, modelJson) => checkOpenClipWeights(python, WORKER_RUNTIME_DIR, ref, modelJson),
    checkPlugin: (python, entryPoint, field) => checkPluginEntryPoint(python, WORKER_RUNTIME_DIR, entryPoint, field),
    scope: opts.embedded ? new Set(opts.scope ?? []) : null,
    policy: opts.policy ?? null,
    deleteGate: deleteGateFromEnv(),
  });
  metrics.setSource(service);
  let metricsServer: MetricsServer | null = null;
  if (opts.metricsListen) metricsServer = await serveMetrics(metrics, opts.metricsListen);
  if (opts.insecure) metrics.serverInsecure.set(1);
  const info = {
    version: ORCHESTRATOR_VERSION,
    stateDir,
    metricsAddress: () => metricsServer?.address ?? "",
    store: store.describe(),
    events: opts.nats ? redactNatsUrl(opts.nats) : "in-process",
    manifestKey: { publicKeyPem: manifestKey.publicKeyPem, fingerprint: manifestKey.fingerprint },
  };
  // A server's control API on its TCP address; an embedded orchestrator's on a socket only this user opens.
  const control = await startControlServer(
    opts.controlListen ?? `unix:${localSocketPath(stateDir)}`,
    service,
    info,
    { plainIdentity: opts.controlListen && opts.insecure ? ANONYMOUS : localIdentity(), accessLog: new AccessLog(opts.readOnly ? null : join(stateDir, "access.log")), now: () => clock.now() },
    opts.controlListen ? tls : null,
  );
  const workers = await startWorkerServer(opts.listen, service, tls);
  // A server's dashboard follows its control API's authentication (client certificates with --tls-dir); `run --ui`'s has a token.
  const dashboard: Dashboard | null = opts.uiListen
    ? await serveDashboard({ service, listen: opts.uiListen, tls: opts.controlListen ? tls : null, stateDir, logsPath: (id) => logs.path(id), subscribeAll: (h) => bus.subscribe("*", h) })
    : null;
  const listenHost = opts.listen.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const advertiseHost = opts.advertise ?? (listenHost === "0.0.0.0" || listenHost === "::" ? "127.0.0.1" : listenHost);
  gateway = `${advertiseHost}:${workers.port}`;
  const controlAddress = control.address.replace(/^(0\.0\.0\.0|\[::\]|::):/, "127.0.0.1:");
  const sweep = setInterval(() => void metrics.sweep(clock.now()), 30_000);
  // Read-only: the file store took the state-dir lock, so whoever ran these jobs is gone (shown interrupted).
  await service.start({ reconcile: !opts.readOnly, orphaned: opts.readOnly === true });
  const infoFile = join(stateDir, INFO_FILE);
  if (!opts.readOnly) {
    const record: OrchestratorInfoFile = { address: controlAddress, workerAddress: gateway, tls: tls !== null && opts.controlListen !== null, pid: process.pid, metricsAddress: metricsServer?.address ?? null, startedAtMs: clock.now() };
    await writeFileAtomic(infoFile, JSON.stringify(record) + "\n", 0o600);
  }

  let closing: Promise<void> | null = null;
  return {
    service,
    address: controlAddress,
    workerAddress: gateway,
    metricsAddress: metricsServer?.address ?? null,
    dashboardUrl: dashboard?.url ?? null,
    manifestKey: { fingerprint: manifestKey.fingerprint, publicKeyFile: join(stateDir, KEYS_DIR, PUBLIC_KEY_FILE) },
    close: () => {
      closing ??= (async () => {
        clearInterval(sweep);
        if (!opts.readOnly) rmSync(infoFile, { force: true });
        // Order matters: nothing new starts, then nobody can call in, then no rank is left, then
        // the last writes land; only then the bus and the store close (a write still on its way
        // to a slow NATS store would otherwise publish on a closed bus, or launch a rank late).
        await service.quiesce();
        await dashboard?.close();
        await control.close();
        await workers.close();
        await local.close();
        await ssh?.close();
        await slurm?.close();
        await service.close();
        await metricsServer?.close();
        logs.closeAll();
        await bus.close();
        await store.close();
      })();
      return closing;
    },
  };
}

/**
 * The --nats-* TLS files and credential, read once for both NATS connections;
 * given without any NATS URL they have no effect, and the user is told so.
 */
function natsAccessFor(opts: EmbedOptions): ReturnType<typeof loadNatsAccess> {
  const flags = opts.natsAccess ?? {};
  const usesNats = (opts.store ?? "file") !== "file" && (opts.store ?? "") !== "" || (opts.nats ?? "") !== "";
  if (usesNats) return loadNatsAccess(flags);
  const given = Object.values(flags).some((v) => v !== null && v !== undefined && v !== "");
  if (given) process.stderr.write("clipfleet: warning: the --nats-* flags have no effect without --store nats://... or --nats URL\n");
  return NO_NATS_ACCESS;
}

/**
 * Where an embedded orchestrator's control socket lives: in its state dir,
 * unless that path is too long for a socket address (about 100 bytes), then
 * in a private folder under the temp dir. The name carries the pid, so a
 * read-only orchestrator beside a running one never takes its socket.
 */
function localSocketPath(stateDir: string): string {
  const name = `control-${process.pid}.sock`;
  const inState = join(stateDir, name);
  if (Buffer.byteLength(inState) <= 100) return inState;
  const dir = join(tmpdir(), `clipfleet-${process.getuid?.() ?? 0}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  return join(dir, `${randomBytes(6).toString("hex")}-${name}`);
}

/** The inventory file's nodes, or this machine alone. */
function loadInventory(path: string | null): Node[] {
  // A missing or unreadable file is the user's error (one line naming it, exit 2), as for a spec.
  return path ? parseInventory(readTextFile(path), path) : [localInventory()];
}

/** An SSH launcher when some node needs one; notes (host keys recorded) go to stderr. */
function sshLauncherFor(nodes: readonly Node[], knownHosts: string | null): SshLauncher | null {
  if (!nodes.some((n) => n.launcher === "ssh")) return null;
  return new SshLauncher({
    knownHostsPath: knownHosts ? resolve(knownHosts) : defaultKnownHostsPath(),
    onNote: (line) => process.stderr.write(`clipfleet: ${line}\n`),
  });
}

/** `clipfleet nodes check`: probes every node of the inventory. */
async function checkInventory(opts: { inventory: string | null; knownHosts: string | null; python: string | null }): Promise<NodeCheck[]> {
  const nodes = loadInventory(opts.inventory);
  const ssh = sshLauncherFor(nodes, opts.knownHosts);
  const slurm = nodes.some((n) => n.launcher === "slurm") ? new SlurmLauncher() : null;
  try {
    return await checkNodes(nodes, { ssh, slurm, workerRuntimeDir: WORKER_RUNTIME_DIR, version: ORCHESTRATOR_VERSION, localPython: opts.python ?? process.env.CLIPFLEET_PYTHON ?? null });
  } finally {
    await ssh?.close();
  }
}

const deps: CliDeps = {
  embed,
  presetsPath: PRESETS_PATH,
  workerRuntimeDir: WORKER_RUNTIME_DIR,
  version: ORCHESTRATOR_VERSION,
  checkNodes: checkInventory,
  runWorkerCli: async (python, args) => runWorkerCli(await resolvePython(python ?? process.env.CLIPFLEET_PYTHON ?? null), WORKER_RUNTIME_DIR, args),
};

/** The CLI entry (bin/clipfleet calls it); returns the exit code. */
export function main(argv: string[]): Promise<number> {
  return runCli(argv, deps);
}

/**
 * Test hook: CLIPFLEET_DELETE_GATE=PATH holds every `delete` after its
 * tombstone until PATH exists, so a test can kill the orchestrator midway.
 * (Not CLIPFLEET_FAULT: ranks inherit the environment and parse that one.)
 */
function deleteGateFromEnv(): ((jobId: string) => Promise<void>) | undefined {
  const file = process.env.CLIPFLEET_DELETE_GATE;
  if (!file) return undefined;
  return async () => {
    while (!existsSync(file)) await new Promise((r) => setTimeout(r, 50));
  };
}
