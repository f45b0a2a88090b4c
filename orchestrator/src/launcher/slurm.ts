/**
 * Slurm launcher: ranks as Slurm job steps. Each attempt gets its own
 * allocation (`allocate`): sbatch of a holder job (`sleep`) asking for the
 * gang's nodes, its ranks per node and CPUs, GPUs, partition, account, qos,
 * constraint, time limit and warning signal; while Slurm keeps it PENDING the
 * caller is told Slurm's reason. Once it runs, each rank is one step on its
 * node (`srun --jobid=J --overlap -N1 -n1 -w NODE`), so a rank's exit is its
 * step's, and its output streams through srun. One step per rank rather than
 * one step of N tasks: each rank keeps its own exit, signals and stdin (its
 * own token), as the Launcher contract has them for local and SSH ranks;
 * SLURM_PROCID is then 0 in every step, and the rank comes from the
 * assignment (RANK and the rest of the environment on stdin). The rank's environment and
 * its token travel over srun's stdin (the same wrapper as SSH, ssh-command.ts),
 * never on a command line or in what `scontrol show job` shows. Signals go
 * to the step through `scancel --signal`; `release` cancels the allocation
 * and waits until squeue no longer lists it.
 *
 * Slurm is authoritative for node loss: a step that ends while its allocation
 * is no longer running (cancelled, NODE_FAIL, TIMEOUT, PREEMPTED) is reported
 * as lost, with Slurm's state and reason, which the jobs module counts as a
 * failure of that node.
 */
import { execFile, spawn } from "node:child_process";
import { constants } from "node:os";
import { EnvironmentError, type NodeSpec, type SlurmNode, type SlurmOptions } from "../domain/index.js";
import { forEachLine } from "./lines.js";
import {
  allocationLive,
  blameNode,
  parseSbatch,
  parseScontrolJob,
  parseSinfo,
  parseSqueue,
  SINFO_FIELDS,
  SQUEUE_FORMAT,
  srunTaskSignal,
  type SqueueJob,
} from "./slurm-parse.js";
import { FREE_PORT, PID_LINE, WRAPPER, workerStdin } from "./ssh-command.js";
import type { ExitInfo, LaunchedProcess, LaunchRequest, Launcher } from "./types.js";

/** First stdout line of a Slurm rank, before the wrapper's pid line: its step id. */
const STEP_LINE = /^CLIPFLEET_STEP (\d+|batch|extern)$/;
/** The wrapper, led by a line saying which step runs it (for signals through scancel). */
const SLURM_WRAPPER = `import os\nprint("CLIPFLEET_STEP", os.environ.get("SLURM_STEP_ID", "?"), flush=True)\n${WRAPPER}`;

/** How the Slurm launcher runs Slurm's commands. */
export interface SlurmLauncherOptions {
  /** Environment of sbatch, srun, squeue... (SLURM_CONF, PATH). Default: this process's, less its SLURM_* job variables. */
  readonly env?: NodeJS.ProcessEnv;
  /** A Slurm command that has not answered in this long fails. Default 30 s. */
  readonly commandTimeoutMs?: number;
}

/** What one attempt asks Slurm for. */
export interface AllocationRequest {
  /** Slurm job name (`clipfleet-JOB-STAGE-aN`): shown in squeue, holds nothing secret. */
  readonly name: string;
  readonly nodes: number;
  readonly options: SlurmOptions;
  /** Nodes Slurm must not give (quarantined). */
  readonly exclude: readonly string[];
  /** Told each time the allocation's pending reason changes: `Slurm job 12 PENDING (Resources)`. */
  readonly onPending: (reason: string) => void;
  /** Cancels the request: the allocation is scancel'ed and allocate() rejects with an AbortError. */
  readonly signal: AbortSignal;
}

/** A node of an allocation. */
export interface AllocatedNode {
  readonly name: string;
  /** Its NodeAddr: where its ranks are reached (rendezvous). */
  readonly address: string;
}

/** A granted allocation: its nodes in Slurm's order; release() gives them back. */
export interface Allocation {
  readonly jobId: string;
  readonly nodes: readonly AllocatedNode[];
  /** A TCP port free on `node` (a step running the probe). */
  freePort(node: NodeSpec): Promise<number>;
  /** scancel, then wait until squeue no longer lists it; idempotent. */
  release(): Promise<void>;
  /** Slurm's state and reason for it (null once slurmctld has forgotten it); see allocationLive. */
  state(): Promise<{ state: string; reason: string } | null>;
}

/** The output of one command. */
interface Ran {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Thrown by allocate() when its signal aborted it. */
export class AllocationAborted extends Error {
  constructor(jobId: string | null) {
    super(`Slurm allocation${jobId ? ` ${jobId}` : ""} cancelled before it started`);
    this.name = "AbortError";
  }
}

/** The sbatch arguments of an allocation request (no secret, nothing of a rank's environment). */
export function sbatchArgs(req: Pick<AllocationRequest, "name" | "nodes" | "options" | "exclude">): string[] {
  const o = req.options;
  const args = [
    "--parsable",
    `--job-name=${req.name}`,
    `--nodes=${req.nodes}`,
    `--ntasks-per-node=${o.ranks_per_node}`,
    `--cpus-per-task=${o.cpus_per_rank}`,
    "--export=NONE",
    // Restarts are the orchestrator's: a holder Slurm requeued would be an allocation nobody uses.
    "--no-requeue",
    "--output=/dev/null",
    "--error=/dev/null",
  ];
  if (o.partition) args.push(`--partition=${o.partition}`);
  if (o.account) args.push(`--account=${o.account}`);
  if (o.qos) args.push(`--qos=${o.qos}`);
  if (o.constraint) args.push(`--constraint=${o.constraint}`);
  if (o.gres) args.push(`--gres=${o.gres}`);
  if (o.gpus_per_node > 0) args.push(`--gpus-per-node=${o.gpus_per_node}`);
  if (o.time) args.push(`--time=${o.time}`);
  // No `B:`: the signal goes to every step, so every rank gets it (not the holder's shell).
  if (o.signal) args.push(`--signal=${o.signal.name}@${o.signal.seconds}`);
  if (req.exclude.length > 0) args.push(`--exclude=${req.exclude.join(",")}`);
  args.push(...o.sbatch_options);
  // The holder: it only keeps the allocation; ranks are steps beside it.
  args.push("--wrap=exec sleep infinity");
  return args;
}

/** The srun arguments of one rank's step (the rank's environment and token go to its stdin). */
export function srunArgs(jobId: string, node: NodeSpec, python: string, workdir: string, name: string): string[] {
  return [
    `--jobid=${jobId}`,
    "--overlap",
    "--nodes=1",
    "--ntasks=1",
    `--nodelist=${node.name}`,
    `--job-name=${name}`,
    `--chdir=${workdir}`,
    "--kill-on-bad-exit=1",
    "--quiet",
    python,
    "-c",
    SLURM_WRAPPER,
    node.address,
  ];
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Starts ranks as Slurm steps; see the module comment. */
export class SlurmLauncher implements Launcher {
  readonly kind = "slurm" as const;
  private readonly env: NodeJS.ProcessEnv;
  private readonly live = new Set<{ proc: LaunchedProcess; kill: () => void }>();
  private readonly allocations = new Set<Allocation>();

  constructor(private readonly opts: SlurmLauncherOptions = {}) {
    const base = opts.env ?? process.env;
    // A clipfleet started inside a Slurm job must not hand its own job's variables to srun and sbatch.
    this.env = Object.fromEntries(Object.entries(base).filter(([k]) => !k.startsWith("SLURM_") || k === "SLURM_CONF"));
  }

  /** Runs a Slurm command to its end. */
  run(cmd: string, args: readonly string[], stdin = ""): Promise<Ran> {
    return new Promise((resolve, reject) => {
      const child = execFile(cmd, args, { env: this.env, timeout: this.opts.commandTimeoutMs ?? 30_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
        if (e && e.code === "ENOENT") {
          reject(new EnvironmentError(`${cmd} not found: the Slurm client commands must be on PATH (Debian package slurm-client)`));
          return;
        }
        if (e && (e as { killed?: boolean }).killed) {
          reject(new EnvironmentError(`${cmd} ${args.slice(0, 3).join(" ")} did not answer within ${(this.opts.commandTimeoutMs ?? 30_000) / 1000} s`));
          return;
        }
        resolve({ code: e ? (typeof e.code === "number" ? e.code : 1) : 0, stdout, stderr });
      });
      child.stdin?.on("error", () => undefined); // a command that reads no stdin may be gone already
      child.stdin?.end(stdin);
    });
  }

  /** The allocation's line in squeue (any state), or null once Slurm has forgotten it. */
  async squeue(jobId: string): Promise<SqueueJob | null> {
    const r = await this.run("squeue", ["-h", "-t", "all", "-j", jobId, "-o", SQUEUE_FORMAT]);
    // An id slurmctld no longer holds: "Invalid job id specified".
    if (r.code !== 0) {
      if (/Invalid job id/i.test(r.stderr)) return null;
      throw new EnvironmentError(`squeue -j ${jobId} failed: ${r.stderr.trim() || `exit ${r.code}`}`);
    }
    return parseSqueue(r.stdout, jobId);
  }

  /**
   * Cancels this user's allocations whose name starts with `prefix`: those
   * of earlier attempts of a stage that an orchestrator which died left
   * behind (their ranks fenced themselves; the nodes are still held).
   */
  async cancelNamed(prefix: string): Promise<string[]> {
    // A loaded slurmctld times squeue out now and then ("Socket timed out"): a few tries before
    // giving up, since a missed orphan holds its nodes until its time limit.
    let r = await this.run("squeue", ["-h", "--me", "-o", "%i|%j"]);
    for (let wait = 250; r.code !== 0 && wait <= 4000; wait *= 2) {
      await sleep(wait);
      r = await this.run("squeue", ["-h", "--me", "-o", "%i|%j"]);
    }
    if (r.code !== 0) throw new EnvironmentError(`squeue --me failed: ${r.stderr.trim() || `exit ${r.code}`}`);
    const ids = r.stdout
      .split("\n")
      .map((l) => l.trim().split("|"))
      .filter(([id, name]) => id !== undefined && /^\d+$/.test(id) && name !== undefined && name.startsWith(prefix))
      .map(([id]) => id as string);
    await Promise.all(ids.map((id) => this.allocation(id, []).release()));
    return ids;
  }

  /** The partition's nodes (sinfo), one entry per node and partition. */
  async partitionNodes(partition: string | null, nodes: readonly string[] = []): Promise<SlurmNode[]> {
    const args = ["-N", "-h", "-O", SINFO_FIELDS];
    if (partition) args.push("-p", partition);
    if (nodes.length > 0) args.push("-n", nodes.join(","));
    const r = await this.run("sinfo", args);
    if (r.code !== 0) throw new EnvironmentError(`sinfo failed: ${r.stderr.trim() || `exit ${r.code}`}`);
    return parseSinfo(r.stdout);
  }

  /**
   * Asks Slurm for an attempt's allocation and waits until it runs, telling
   * `onPending` Slurm's reason while it waits. Rejects with AllocationAborted
   * (after scancel) when `signal` aborts, with EnvironmentError when sbatch
   * refuses or the allocation ends before it runs.
   */
  async allocate(req: AllocationRequest): Promise<Allocation> {
    if (req.signal.aborted) throw new AllocationAborted(null);
    const r = await this.run("sbatch", sbatchArgs(req));
    const jobId = r.code === 0 ? parseSbatch(r.stdout) : null;
    if (jobId === null) throw new EnvironmentError(`sbatch refused the allocation: ${r.stderr.trim() || r.stdout.trim() || `exit ${r.code}`}`);
    const alloc = this.allocation(jobId, []);
    let lastReason = "";
    let unseen = 0;
    try {
      for (;;) {
        if (req.signal.aborted) throw new AllocationAborted(jobId);
        const q = await this.squeue(jobId);
        if (q === null) {
          // Just submitted: a moment before squeue lists it; after that, it is gone.
          if (++unseen > 5) throw new EnvironmentError(`Slurm job ${jobId} vanished from squeue before it started`);
        } else if (q.state === "RUNNING") {
          const info = await this.partitionNodes(null, q.nodes);
          const nodes = q.nodes.map((name) => ({ name, address: info.find((n) => n.name === name)?.address || name }));
          const granted = this.allocation(jobId, nodes);
          this.allocations.delete(alloc);
          return granted;
        } else if (q.state === "PENDING" || q.state === "CONFIGURING" || q.state === "REQUEUED" || q.state === "RESIZING") {
          const reason = `Slurm job ${jobId} ${q.state} (${q.reason})`;
          if (reason !== lastReason) req.onPending(reason);
          lastReason = reason;
        } else {
          throw new EnvironmentError(`Slurm job ${jobId} ended ${q.state} (${q.reason}) before it started`);
        }
        await sleep(req.options.poll_seconds * 1000, req.signal);
      }
    } catch (err) {
      await alloc.release();
      throw err;
    }
  }

  private allocation(jobId: string, nodes: readonly AllocatedNode[]): Allocation {
    let released: Promise<void> | null = null;
    const alloc: Allocation = {
      jobId,
      nodes,
      freePort: (node) => this.freePort(node, jobId),
      state: () => this.jobState(jobId),
      release: () => {
        released ??= (async () => {
          await this.run("scancel", [jobId]).catch(() => undefined);
          // Until squeue (pending, running, completing) no longer lists it: nothing of it is left
          // (at most a minute: a Slurm that stopped answering must not hold up a shutdown).
          const deadline = Date.now() + 60_000;
          while (Date.now() < deadline) {
            const r = await this.run("squeue", ["-h", "-j", jobId, "-o", "%i"]).catch(() => null);
            if (r !== null && (r.code !== 0 || r.stdout.trim() === "")) break;
            await sleep(100);
          }
          this.allocations.delete(alloc);
        })();
        return released;
      },
    };
    this.allocations.add(alloc);
    return alloc;
  }

  /** Slurm ranks need their allocation's job id: see Allocation.freePort. */
  freePort(node: NodeSpec, jobId?: string): Promise<number> {
    if (jobId === undefined) return Promise.reject(new Error(`node ${node.name}: a Slurm node's port is found inside its allocation`));
    return this.run("srun", [`--jobid=${jobId}`, "--overlap", "--nodes=1", "--ntasks=1", `--nodelist=${node.name}`, "--quiet", node.python ?? "python3", "-c", FREE_PORT, node.address]).then((r) => {
      const port = Number(r.stdout.trim());
      if (r.code !== 0 || !Number.isInteger(port) || port <= 0) {
        throw new EnvironmentError(`node ${node.name}: could not find a free port through srun (${r.stderr.trim() || `exit ${r.code}, output ${JSON.stringify(r.stdout)}`})`);
      }
      return port;
    });
  }

  launch(req: LaunchRequest): Promise<LaunchedProcess> {
    const jobId = req.allocation;
    if (jobId === undefined) return Promise.reject(new Error(`rank ${req.rank}: a Slurm rank needs its allocation`));
    const name = `clipfleet-${req.jobId}-${req.stage}-a${req.attempt}-r${req.rank}`;
    // srun passes its own environment to the task: only the flag that says the token comes on stdin.
    const child = spawn("srun", srunArgs(jobId, req.node, req.python, req.workdir, name), { env: { ...this.env, CLIPFLEET_TOKEN_STDIN: "1" }, stdio: ["pipe", "pipe", "pipe"] });
    child.stdin.on("error", () => undefined);
    child.stdin.end(workerStdin(req));
    return new Promise<LaunchedProcess>((resolve, reject) => {
      let step: string | null = null;
      let proc: LaunchedProcess | null = null;
      let done = false;
      const tail: string[] = [];
      let resolveExited: (e: ExitInfo) => void = () => undefined;
      const exited = new Promise<ExitInfo>((r) => (resolveExited = r));
      const signal = async (sig: NodeJS.Signals): Promise<void> => {
        if (done) return;
        if (step === null) {
          // The step has not said who it is yet: srun forwards what it can, and dies of SIGKILL (Slurm then ends the step).
          child.kill(sig);
          return;
        }
        const r = await this.run("scancel", [`--signal=${sig.replace(/^SIG/, "")}`, `${jobId}.${step}`]);
        if (r.code !== 0 && !/already completing or completed|Invalid job id|does not exist/i.test(r.stderr) && !done) {
          throw new EnvironmentError(`node ${req.node.name}: scancel --signal=${sig} ${jobId}.${step} failed: ${r.stderr.trim() || `exit ${r.code}`}`);
        }
      };
      child.once("error", (err) => reject(new EnvironmentError(`srun: ${err.message}`)));
      forEachLine(child.stdout, (line) => {
        if (proc === null) {
          const s = STEP_LINE.exec(line);
          if (s && step === null) {
            step = s[1] as string;
            return;
          }
          const m = PID_LINE.exec(line);
          if (m) {
            proc = { pid: Number(m[1]), exited, signal };
            const entry = { proc, kill: () => child.kill("SIGKILL") };
            this.live.add(entry);
            void exited.then(() => this.live.delete(entry));
            resolve(proc);
            return;
          }
        }
        req.onOutput("stdout", line);
      });
      forEachLine(child.stderr, (line) => {
        tail.push(line);
        if (tail.length > 10) tail.shift();
        req.onOutput("stderr", line);
      });
      child.once("close", (code, sig) => {
        void (async () => {
          done = true;
          let info: ExitInfo = { code: sig ? null : code, signal: sig };
          const taskSignal = srunTaskSignal(tail);
          if (taskSignal !== null && code !== null && code > 128) info = { code: null, signal: taskSignal };
          else if (code !== null && code > 128 && code - 128 === constants.signals.SIGKILL) info = { code: null, signal: "SIGKILL" };
          // Slurm decides whether the node (the allocation) was lost: ask it how the allocation stands.
          const state = await this.jobState(jobId);
          if (state !== null && !allocationLive(state.state)) {
            // A node going down ends the whole allocation: every rank's step ends, and the first
            // exit seen must not blame its own healthy node. Slurm's node states say which failed.
            const held = [...this.allocations].find((a) => a.jobId === jobId)?.nodes.map((n) => n.name) ?? [];
            const nodes = await this.partitionNodes(null, held.length > 0 ? held : [req.node.name]).catch(() => []);
            const blamed = blameNode(req.node.name, nodes);
            const how = blamed ? ` (node ${blamed} ${nodes.find((n) => n.name === blamed)?.state ?? "down"})` : "";
            info = {
              ...info,
              lost: `Slurm job ${jobId} ${state.state}${state.reason !== "None" ? ` (${state.reason})` : ""} on ${req.node.name}${how}`,
              ...(blamed !== null && blamed !== req.node.name ? { lostNode: blamed } : {}),
            };
          }
          if (proc === null) {
            const how = info.lost ?? (info.signal ? `killed by ${info.signal}` : `exit ${info.code}`);
            reject(new EnvironmentError(`node ${req.node.name}: rank ${req.rank} did not start through srun (${how})${tail.length ? `: ${tail.slice(-3).join(" | ")}` : ""}`));
            return;
          }
          resolveExited(info);
          req.onExit(info);
        })();
      });
    });
  }

  /** The allocation's state per slurmctld (null when it no longer knows the job). */
  async jobState(jobId: string): Promise<{ state: string; reason: string } | null> {
    const r = await this.run("scontrol", ["show", "job", "-o", jobId]).catch(() => null);
    if (r === null || r.code !== 0) return null;
    return parseScontrolJob(r.stdout);
  }

  /** Kills every step still running (srun), then cancels every allocation it holds. */
  async close(): Promise<void> {
    const live = [...this.live];
    for (const l of live) l.kill();
    await Promise.all([...this.allocations].map((a) => a.release()));
    await Promise.all(live.map((l) => Promise.race([l.proc.exited, sleep(5000)])));
  }
}
