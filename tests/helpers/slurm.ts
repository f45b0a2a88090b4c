/**
 * Test helper: a real Slurm cluster on this machine. munged with a test key
 * on its own socket, slurmctld in the root namespace on the test fleet's
 * bridge address, and one slurmd per host of a test fleet (network
 * namespaces, tests/helpers/netns.ts), each with its own address, all
 * described by a generated slurm.conf with one partition of those nodes.
 * Everything lives in a per-run folder with per-run ports, and is stopped by
 * cleanup(), by an exit handler when a test dies before its after() hook.
 *
 *   const SKIP = slurmSkipReason() ?? false;
 *   before(async () => { if (!SKIP) cluster = await startSlurm(2); });
 *   after(() => cluster?.cleanup());
 *   ... clipfleet with env cluster.env (SLURM_CONF) and an inventory `launcher: slurm`, partition cluster.partition
 *
 * slurmd runs in its host's network namespace through `nsenter --net` (not
 * `ip netns exec`, which mounts a fresh /sys where slurmd finds no cgroup
 * file system and refuses to start). Process tracking is proctrack/linuxproc
 * and task/none: no cgroups needed, so it runs in containers. Needs root,
 * iproute2, util-linux (nsenter), slurm-wlm and munge (`make deps`).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { freePort, waitFor } from "./cli.js";
import { netnsSkipReason, startFleet, type Fleet } from "./netns.js";

const TOOLS = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/srun", "/usr/bin/sbatch", "/usr/bin/squeue", "/usr/bin/sinfo", "/usr/bin/scancel", "/usr/bin/nsenter"];

/** One slurmd host. */
export interface SlurmNodeHost {
  readonly name: string;
  readonly address: string;
  readonly ns: string;
}

/** A started cluster. */
export interface SlurmCluster {
  readonly dir: string;
  /** The generated slurm.conf. */
  readonly conf: string;
  /** Environment for Slurm's commands and for clipfleet (SLURM_CONF). */
  readonly env: Readonly<Record<string, string>>;
  readonly partition: string;
  readonly nodes: readonly SlurmNodeHost[];
  /** The fleet under the nodes: its bridge address is where the orchestrator is reachable from them. */
  readonly fleet: Fleet;
  /** Runs a Slurm command with the cluster's environment; its stdout (throws on a non-zero exit). */
  cmd(tool: string, args: readonly string[]): string;
  /** Job ids squeue lists (pending, running, completing), with their names. */
  queue(): { id: string; name: string; state: string }[];
  /** Stops every daemon, removes the namespaces and the folder. Idempotent. */
  cleanup(): void;
}

let cached: string | null | undefined;

/** Why a Slurm cluster cannot be started here, or null. */
export function slurmSkipReason(): string | null {
  if (cached !== undefined) return cached;
  const missing = TOOLS.filter((t) => !existsSync(t));
  cached = missing.length > 0 ? `${missing.join(", ")} not found (Debian packages slurm-wlm, munge: make deps)` : netnsSkipReason();
  return cached;
}

const live = new Set<SlurmCluster>();
let exitHook = false;

function pidFrom(file: string): number | null {
  try {
    const n = Number(readFileSync(file, "utf8").trim());
    return Number.isInteger(n) && n > 1 ? n : null;
  } catch {
    return null;
  }
}

function kill(pid: number | null): void {
  if (pid === null) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/** Starts munged, slurmctld and `count` slurmd hosts; resolves once sinfo shows every node idle. */
export async function startSlurm(count: number): Promise<SlurmCluster> {
  const fleet = await startFleet(count);
  const id = fleet.id;
  const dir = join(fleet.dir, "slurm");
  const partition = `cf${id}`;
  mkdirSync(join(dir, "state"), { recursive: true });
  mkdirSync(join(dir, "log"));
  const key = join(dir, "munge.key");
  writeFileSync(key, randomBytes(1024), { mode: 0o600 });
  const sock = join(dir, "munge.sock");
  const conf = join(dir, "slurm.conf");
  const env = { SLURM_CONF: conf };
  const nodes: SlurmNodeHost[] = fleet.hosts.map((h, i) => ({ name: `${partition}n${i + 1}`, address: h.address, ns: h.ns }));
  for (const n of nodes) mkdirSync(join(dir, `spool-${n.name}`));
  let cleaned = false;
  const daemons = new Map<string, number | null>();

  const run = (tool: string, args: readonly string[], extraEnv: Record<string, string> = {}): string =>
    execFileSync(tool, args, { encoding: "utf8", env: { ...process.env, ...env, ...extraEnv }, stdio: ["ignore", "pipe", "pipe"], timeout: 30_000 });

  const cluster: SlurmCluster = {
    dir,
    conf,
    env,
    partition,
    nodes,
    fleet,
    cmd: (tool, args) => run(tool, args),
    queue: () =>
      run("squeue", ["-h", "-o", "%i|%j|%T"])
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => {
          const [jid = "", name = "", state = ""] = l.trim().split("|");
          return { id: jid, name, state };
        }),
    cleanup: () => {
      if (cleaned) return;
      cleaned = true;
      live.delete(cluster);
      // slurmd and the steps it runs live in the namespaces: the fleet's cleanup kills them all.
      for (const n of nodes) kill(pidFrom(join(dir, `slurmd-${n.name}.pid`)));
      // The daemons' pids as read when they started: a signal handler of the fleet may have removed the folder already.
      for (const d of ["slurmctld", "munged"]) kill(daemons.get(d) ?? pidFrom(join(dir, `${d}.pid`)));
      fleet.cleanup();
    },
  };
  live.add(cluster);
  if (!exitHook) {
    exitHook = true;
    process.once("exit", () => {
      for (const c of [...live]) c.cleanup();
    });
  }

  try {
    const [ctldPort, slurmdPort] = [await freePort(), await freePort()];
    const host = hostname().split(".")[0] ?? "localhost";
    writeFileSync(
      conf,
      [
        `ClusterName=${partition}`,
        `SlurmctldHost=${host}(${fleet.bridgeAddress})`,
        "SlurmUser=root",
        "SlurmdUser=root",
        `SlurmctldPort=${ctldPort}`,
        `SlurmdPort=${slurmdPort}`,
        "AuthType=auth/munge",
        `AuthInfo=socket=${sock}`,
        "CredType=cred/munge",
        `StateSaveLocation=${join(dir, "state")}`,
        `SlurmdSpoolDir=${join(dir, "spool-%n")}`,
        `SlurmctldPidFile=${join(dir, "slurmctld.pid")}`,
        `SlurmdPidFile=${join(dir, "slurmd-%n.pid")}`,
        `SlurmctldLogFile=${join(dir, "log", "slurmctld.log")}`,
        `SlurmdLogFile=${join(dir, "log", "slurmd-%n.log")}`,
        // No cgroups: containers often have none to give.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "KillWait=5",
        "MinJobAge=60",
        ...nodes.map((n) => `NodeName=${n.name} NodeAddr=${n.address} CPUs=2 State=UNKNOWN`),
        `PartitionName=${partition} Nodes=${nodes.map((n) => n.name).join(",")} Default=YES MaxTime=INFINITE State=UP`,
        "",
      ].join("\n"),
    );
    run("/usr/sbin/munged", ["--force", `--socket=${sock}`, `--key-file=${key}`, `--log-file=${join(dir, "log", "munged.log")}`, `--pid-file=${join(dir, "munged.pid")}`, `--seed-file=${join(dir, "munged.seed")}`]);
    daemons.set("munged", pidFrom(join(dir, "munged.pid")));
    run("/usr/sbin/slurmctld", ["-f", conf, "-i"]);
    daemons.set("slurmctld", await waitFor("slurmctld's pid file", () => pidFrom(join(dir, "slurmctld.pid")), 10_000, 20));
    for (const n of nodes) run("/usr/bin/nsenter", [`--net=/var/run/netns/${n.ns}`, "/usr/sbin/slurmd", "-f", conf, "-N", n.name]);
    await waitFor(
      `sinfo to show ${nodes.length} idle node(s)`,
      () => {
        const r = spawnSync("sinfo", ["-h", "-N", "-p", partition, "-o", "%N %t"], { encoding: "utf8", env: { ...process.env, ...env } });
        const idle = r.stdout.split("\n").filter((l) => / idle$/.test(l.trim())).length;
        return idle === nodes.length;
      },
      60_000,
      200,
    );
  } catch (err) {
    const logs = ["slurmctld.log", ...nodes.map((n) => `slurmd-${n.name}.log`)]
      .map((f) => join(dir, "log", f))
      .filter((f) => existsSync(f))
      .map((f) => `${f}:\n${readFileSync(f, "utf8").split("\n").slice(-15).join("\n")}`)
      .join("\n");
    cluster.cleanup();
    throw new Error(`${(err as Error).message}\n${logs}`);
  }
  return cluster;
}
