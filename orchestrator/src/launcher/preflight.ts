/**
 * Preflight (`clipfleet nodes check`): for every node, whether the
 * orchestrator can reach it (SSH: connect, host key, authentication) and
 * whether a worker would run there: `python -m clipfleet_worker info` in the
 * node's workdir reports the interpreter, torch, CUDA devices, free disk and
 * the worker runtime version, which must equal the orchestrator's. A Slurm
 * inventory's nodes are its partition's, each checked through srun.
 */
import { execFile } from "node:child_process";
import type { NodeCheck, NodeSpec } from "../domain/index.js";
import { HostKeyError } from "./known-hosts.js";
import { resolvePython } from "./python.js";
import { shellQuote } from "./ssh-command.js";
import type { SlurmLauncher } from "./slurm.js";
import { type HostKeyInfo, type SshLauncher } from "./ssh.js";

/** What checkNodes needs besides the nodes. */
export interface PreflightOptions {
  /** For a `launcher: slurm` inventory; null when it is not one. */
  readonly slurm?: SlurmLauncher | null;
  /** For ssh nodes; null when the inventory has none. */
  readonly ssh: SshLauncher | null;
  /** The worker runtime local nodes run from (the local launcher's workdir). */
  readonly workerRuntimeDir: string;
  /** The orchestrator's version: a worker runtime of another version would be refused at registration. */
  readonly version: string;
  /** Interpreter for local nodes (--python, CLIPFLEET_PYTHON); null: auto-detect. */
  readonly localPython: string | null;
  /** Per node, for connecting and for the info command. Default 60 s. */
  readonly timeoutMs?: number;
}

/** The JSON line `python -m clipfleet_worker info` prints. */
interface WorkerInfo {
  runtime_version?: string;
  python?: string;
  torch?: string | null;
  torch_error?: string;
  cuda_devices?: number;
  free_bytes?: number;
}

/** Checks every node concurrently; never throws for a node's own problems (they are in its result). */
export function checkNodes(nodes: readonly NodeSpec[], opts: PreflightOptions): Promise<NodeCheck[]> {
  const slurm = nodes.find((n) => n.launcher === "slurm");
  if (slurm) return checkSlurm(slurm, opts);
  return Promise.all(nodes.map((n) => (n.launcher === "local" ? checkLocal(n, opts) : checkSsh(n, opts))));
}

function blank(node: NodeSpec, workdir: string): NodeCheck {
  return {
    node: node.name,
    host: node.host,
    port: node.port,
    launcher: node.launcher,
    reachable: false,
    hostKey: null,
    fingerprint: null,
    workdir,
    pythonVersion: null,
    torchVersion: null,
    cudaDevices: null,
    freeBytes: null,
    runtimeVersion: null,
    ok: false,
    problems: [],
  };
}

async function checkSsh(node: NodeSpec, opts: PreflightOptions): Promise<NodeCheck> {
  const workdir = node.workdir ?? ".";
  const base = blank(node, workdir);
  if (!opts.ssh) return { ...base, problems: ["no SSH launcher configured"] };
  const timeoutMs = opts.timeoutMs ?? 60_000;
  let key: HostKeyInfo;
  try {
    key = await withTimeout(opts.ssh.hostKey(node), timeoutMs, `node ${node.name}: no connection within ${timeoutMs} ms`);
  } catch (err) {
    if (err instanceof HostKeyError) return { ...base, hostKey: err.verdict, fingerprint: err.fingerprint, problems: [err.message] };
    return { ...base, problems: [(err as Error).message] };
  }
  const reached: NodeCheck = { ...base, reachable: true, hostKey: key.status, fingerprint: key.fingerprint };
  const python = node.python ?? "python3";
  const cmd = `cd ${shellQuote(workdir)} && exec env PYTHONPATH=${shellQuote(workdir)} ${shellQuote(python)} -m clipfleet_worker info`;
  try {
    const r = await opts.ssh.run(node, cmd, { timeoutMs });
    return withInfo(reached, r.code, r.stdout, r.stderr, python, opts.version);
  } catch (err) {
    return { ...reached, problems: [(err as Error).message] };
  }
}

/**
 * A Slurm inventory: every node of its partition (sinfo), each checked by a
 * one-task job step on it (`srun --nodelist=NODE --immediate`, so a node
 * busy with other jobs says so instead of waiting) running the info command
 * in the workdir. A node that is down or drained is reported as such.
 */
async function checkSlurm(position: NodeSpec, opts: PreflightOptions): Promise<NodeCheck[]> {
  const options = position.slurm;
  if (!opts.slurm || !options) return [{ ...blank(position, position.workdir ?? "."), problems: ["no Slurm launcher configured"] }];
  const workdir = position.workdir ?? ".";
  const python = position.python ?? "python3";
  let nodes;
  try {
    nodes = await opts.slurm.partitionNodes(options.partition);
  } catch (err) {
    return [{ ...blank(position, workdir), problems: [(err as Error).message] }];
  }
  const seen = new Set<string>();
  const unique = nodes.filter((n) => !seen.has(n.name) && seen.add(n.name));
  const wait = Math.max(1, Math.round((opts.timeoutMs ?? 60_000) / 1000));
  return Promise.all(
    unique.map(async (n): Promise<NodeCheck> => {
      const spec: NodeSpec = { ...position, name: n.name, host: n.address, address: n.address };
      const base = blank(spec, workdir);
      if (/^(down|drain|fail|maint|inval|unknown|future)/.test(n.state) || n.state.endsWith("*")) {
        return { ...base, problems: [`Slurm node ${n.name} is ${n.state}${n.reason !== "none" ? ` (${n.reason})` : ""}`] };
      }
      const args = ["--nodes=1", "--ntasks=1", `--nodelist=${n.name}`, `--immediate=${wait}`, "--time=5", "--job-name=clipfleet-nodes-check", `--chdir=${workdir}`, "--quiet"];
      if (options.partition) args.push(`--partition=${options.partition}`);
      if (options.account) args.push(`--account=${options.account}`);
      if (options.qos) args.push(`--qos=${options.qos}`);
      args.push("env", `PYTHONPATH=${workdir}`, python, "-m", "clipfleet_worker", "info");
      try {
        const r = await opts.slurm!.run("srun", args);
        if (r.code !== 0 && /Unable to allocate|Immediate execution impossible|Requested node configuration|not available/i.test(r.stderr)) {
          return { ...base, problems: [`Slurm node ${n.name}: no step could start there now (${r.stderr.trim().split("\n").pop() ?? ""})`] };
        }
        return withInfo({ ...base, reachable: true }, r.code, r.stdout, r.stderr, python, opts.version);
      } catch (err) {
        return { ...base, problems: [(err as Error).message] };
      }
    }),
  );
}

async function checkLocal(node: NodeSpec, opts: PreflightOptions): Promise<NodeCheck> {
  const workdir = opts.workerRuntimeDir;
  const base: NodeCheck = { ...blank(node, workdir), reachable: true, hostKey: "local" };
  let python: string;
  try {
    python = await resolvePython(opts.localPython ?? node.python);
  } catch (err) {
    return { ...base, problems: [(err as Error).message] };
  }
  return new Promise((resolve) => {
    execFile(
      python,
      ["-m", "clipfleet_worker", "info"],
      { cwd: workdir, env: { ...process.env, PYTHONPATH: workdir }, timeout: opts.timeoutMs ?? 60_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve(withInfo(base, code, stdout, stderr, python, opts.version));
      },
    );
  });
}

/** Fills in what the info command printed, and what is wrong with it. */
function withInfo(base: NodeCheck, code: number | null, stdout: string, stderr: string, python: string, version: string): NodeCheck {
  const last = stdout.trim().split("\n").pop() ?? "";
  let info: WorkerInfo | null = null;
  try {
    info = JSON.parse(last) as WorkerInfo;
  } catch {
    info = null;
  }
  if (code !== 0 || info === null) {
    const why = stderr.trim().split("\n").slice(-2).join(" | ") || `exit ${code}`;
    return { ...base, problems: [`${python} -m clipfleet_worker info in ${base.workdir} failed: ${why}`] };
  }
  const problems: string[] = [];
  if (!info.torch) problems.push(`torch does not import with ${python}${info.torch_error ? `: ${info.torch_error}` : ""}`);
  if (info.runtime_version !== version) {
    problems.push(`worker runtime ${info.runtime_version ?? "(unknown)"} in ${base.workdir} does not match orchestrator ${version}`);
  }
  return {
    ...base,
    pythonVersion: info.python ?? null,
    torchVersion: info.torch ?? null,
    cudaDevices: info.cuda_devices ?? null,
    freeBytes: info.free_bytes ?? null,
    runtimeVersion: info.runtime_version ?? null,
    ok: problems.length === 0,
    problems,
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
