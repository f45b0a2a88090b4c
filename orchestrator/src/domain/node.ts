/**
 * A node of the fleet as the inventory describes it. The scheduler places
 * ranks on its slots; a launcher starts processes on it (locally or over SSH).
 */
export interface NodeSpec {
  readonly name: string;
  /** How the orchestrator reaches the node (SSH host; "localhost" for the local node). */
  readonly host: string;
  readonly port: number;
  readonly user: string | null;
  /** Private key file for SSH; null: the SSH agent (SSH_AUTH_SOCK). */
  readonly identity_file: string | null;
  /** Address other ranks use to reach this node (rendezvous); default `host`. */
  readonly address: string;
  readonly slots: number;
  readonly gpus: number;
  readonly labels: Readonly<Record<string, string>>;
  /** Worker interpreter on the node; null: auto-detect (local) or `python3` (ssh). */
  readonly python: string | null;
  /** Directory holding the worker runtime (the folder with clipfleet_worker/). */
  readonly workdir: string | null;
  /** `strict`: refuse unknown host keys; `accept-new`: record unknown keys, refuse changed ones. */
  readonly host_key_policy: "strict" | "accept-new";
  readonly launcher: LauncherKind;
  /**
   * launcher slurm: how to ask Slurm for allocations (nodes.yaml `slurm:`).
   * The inventory's nodes are then the gang's node positions (slurm-1..N),
   * bound to real Slurm nodes per attempt, when the allocation is granted.
   */
  readonly slurm?: SlurmOptions;
}

/** How a node's ranks are started: child processes, SSH, or Slurm steps. */
export type LauncherKind = "local" | "ssh" | "slurm";

/** The inventory's `slurm:` section, validated (scheduler/inventory.ts); sbatch options of every allocation. */
export interface SlurmOptions {
  readonly partition: string | null;
  readonly account: string | null;
  readonly qos: string | null;
  readonly constraint: string | null;
  /** `--gres` (e.g. `gpu:a100:8`); null: none, or gpus_per_node. */
  readonly gres: string | null;
  /** GPUs per node (`--gpus-per-node`); also the node's slots when ranks_per_node is not given. */
  readonly gpus_per_node: number;
  /** Ranks (Slurm tasks) per node: the slots of each node position. */
  readonly ranks_per_node: number;
  /** CPUs per rank (`--cpus-per-task`). */
  readonly cpus_per_rank: number;
  /** Time limit (`--time`, Slurm's syntax: `MM`, `HH:MM:SS`, `D-HH`...); null: the partition's default. */
  readonly time: string | null;
  /** The warning signal before the time limit or a preemption (`--signal=USR1@120`): name and seconds. */
  readonly signal: { readonly name: string; readonly seconds: number } | null;
  /** More sbatch options, passed as given (`--reservation=r1`). */
  readonly sbatch_options: readonly string[];
  /** How often squeue is asked about an allocation that is pending. */
  readonly poll_seconds: number;
}

/**
 * What `clipfleet nodes check` found on one node (the launcher probes it,
 * the CLI renders it): can the orchestrator reach it, and would a worker run there.
 */
export interface NodeCheck {
  readonly node: string;
  readonly host: string;
  readonly port: number;
  readonly launcher: LauncherKind;
  readonly reachable: boolean;
  /** How the host key compares with known_hosts ("recorded": added under accept-new); "local" for local nodes; null when not reached. */
  readonly hostKey: "known" | "recorded" | "unknown" | "changed" | "revoked" | "local" | null;
  /** SHA256 fingerprint of the key the host offered, when it offered one. */
  readonly fingerprint: string | null;
  readonly workdir: string;
  readonly pythonVersion: string | null;
  readonly torchVersion: string | null;
  readonly cudaDevices: number | null;
  /** Free bytes on the file system of `workdir`. */
  readonly freeBytes: number | null;
  readonly runtimeVersion: string | null;
  /** Reachable, host key accepted, torch imports, runtime version matches the orchestrator's. */
  readonly ok: boolean;
  /** Why it is not ok, one line each. */
  readonly problems: readonly string[];
}

/** One node of a Slurm partition, as sinfo shows it (`clipfleet nodes` with a Slurm inventory). */
export interface SlurmNode {
  readonly name: string;
  readonly address: string;
  /** idle, mixed, allocated, down, drained, draining, ... (a trailing `*`: not responding). */
  readonly state: string;
  readonly partition: string;
  readonly cpusTotal: number;
  readonly cpusIdle: number;
  readonly gpusTotal: number;
  readonly gpusUsed: number;
  /** Free memory in MiB, null when sinfo does not know. */
  readonly freeMemMiB: number | null;
  /** Why it is down or drained ("none" otherwise). */
  readonly reason: string;
}
