/**
 * `clipfleet nodes`: the fleet as the scheduler sees it (with a Slurm
 * inventory, also the partition's nodes from sinfo: state, CPUs and GPUs
 * free); `clipfleet nodes check`: preflight of every node of an inventory
 * (reachability, host key, interpreter, torch, devices, free disk, worker
 * runtime version; Slurm nodes through srun).
 */
import type { Argv } from "yargs";
import type { NodeCheck } from "../../domain/index.js";
import type { CliDeps, GlobalArgs } from "../context.js";
import type { Command } from "../command.js";
import { EXIT, out, printJson } from "../context.js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlClient } from "../../client/index.js";
import { connectOrOpen } from "../offline.js";
import { table } from "../render.js";

interface CheckArgs {
  inventory?: string;
  "known-hosts"?: string;
}

interface ListArgs extends GlobalArgs {
  inventory?: string;
}

/**
 * `nodes --inventory FILE` without a server: the inventory as a fresh
 * orchestrator sees it (a Slurm partition from sinfo), through one that
 * schedules nothing and keeps nothing (a scratch state dir, removed after).
 */
async function withInventory(deps: CliDeps, inventory: string, fn: (client: ControlClient) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "clipfleet-nodes-"));
  try {
    const orch = await deps.embed({ stateDir: dir, listen: "127.0.0.1:0", embedded: true, scope: [], readOnly: true, inventory });
    const client = new ControlClient(orch.address);
    try {
      await fn(client);
    } finally {
      client.close();
      await orch.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function listNodes(deps: CliDeps, args: ListArgs): Promise<void> {
  const show = async (client: ControlClient): Promise<void> => {
    const { nodes } = await client.nodes();
    if (args.json) {
      printJson(nodes);
      return;
    }
    out(
      table(
        ["NODE", "HOST", "LAUNCHER", "SLOTS", "FREE", "GPUS", "STATE", "LABELS"],
        nodes.map((n) => [
          n.name,
          n.host,
          n.launcher,
          String(n.slots),
          String(n.freeSlots),
          // A Slurm partition's node: its CPUs are the slots, and its GPUs are shown free/total.
          n.slurmState ? `${n.gpus - n.gpusUsed}/${n.gpus}` : String(n.gpus),
          n.state +
            (n.quarantinedUntilMs ? ` until ${new Date(Number(n.quarantinedUntilMs)).toISOString().slice(11, 19)}` : "") +
            (n.slurmReason && n.slurmReason !== "none" ? ` (${n.slurmReason})` : ""),
          Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(","),
        ]),
      ),
    );
  };
  if (typeof args.inventory === "string" && !(args.server ?? process.env.CLIPFLEET_SERVER)) await withInventory(deps, args.inventory, show);
  else await connectOrOpen(deps, args, show);
}

/** 12.3G, 512M: free disk in the table. */
export function fmtBytes(n: number | null): string {
  if (n === null) return "-";
  const units = ["B", "K", "M", "G", "T", "P"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)}${units[i] ?? ""}`;
}

/** The preflight table, then one line per problem. */
export function renderChecks(checks: readonly NodeCheck[]): string {
  const rows = checks.map((c) => [
    c.node,
    c.launcher === "ssh" ? `${c.host}:${c.port}` : c.host,
    c.reachable ? "yes" : "no",
    c.hostKey ?? "-",
    c.pythonVersion ?? "-",
    c.torchVersion ?? "-",
    c.cudaDevices === null ? "-" : String(c.cudaDevices),
    fmtBytes(c.freeBytes),
    c.runtimeVersion ?? "-",
    c.ok ? "OK" : "FAIL",
  ]);
  const lines = [table(["NODE", "HOST", "REACHABLE", "HOST-KEY", "PYTHON", "TORCH", "CUDA", "FREE", "RUNTIME", "STATUS"], rows)];
  for (const c of checks) for (const p of c.problems) lines.push(`${c.node}: ${p}`);
  return lines.join("\n");
}

export const nodesCommand: Command = (deps, state) => ({
  command: "nodes",
  describe: "List nodes with their slots, free slots and state (`nodes check`: preflight every node of an inventory)",
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command<ListArgs>({
        command: "list",
        describe: "List nodes with their slots, free slots and state (the default)",
        builder: (l) =>
          l
            .option("inventory", { type: "string", describe: "without --server: list this nodes.yaml's fleet (a Slurm inventory: the partition's nodes from sinfo)" })
            .example("$0 nodes list --server 127.0.0.1:7070 --json", "the server's fleet as JSON")
            .example("$0 nodes list --inventory slurm-nodes.yaml", "a Slurm partition's nodes, state and free GPUs, without a server"),
        handler: (args) => listNodes(deps, args),
      })
      .command<CheckArgs>({
        command: "check",
        describe: "Connect to every node (a Slurm partition's nodes: a step on each through srun) and report reachability, host key, python, torch, CUDA devices, free disk in workdir and worker runtime version; exit 0 when all are OK",
        builder: (c) =>
          c
            .option("inventory", { type: "string", describe: "nodes.yaml describing the fleet (default: this machine)" })
            .option("known-hosts", { type: "string", describe: "known_hosts file for SSH nodes (default ~/.ssh/known_hosts)" })
            .example("$0 nodes check --inventory nodes.yaml", "preflight the fleet")
            .example("$0 nodes check --inventory nodes.yaml --json", "the same as JSON"),
        handler: async (a) => {
          const checks = await deps.checkNodes({ inventory: a.inventory ?? null, knownHosts: a["known-hosts"] ?? null, python: typeof a.python === "string" ? a.python : null });
          if (a.json) printJson(checks);
          else out(renderChecks(checks));
          state.exitCode = checks.every((c) => c.ok) ? EXIT.OK : EXIT.JOB_FAILED;
        },
      })
      .option("inventory", { type: "string", describe: "without --server: list this nodes.yaml's fleet (a Slurm inventory: the partition's nodes from sinfo)" })
      .example("$0 nodes --server 127.0.0.1:7070", "the server's fleet")
      .example("$0 nodes check --inventory nodes.yaml", "preflight every node"),
  handler: (args) => listNodes(deps, args),
});
