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
  readonly launcher: "local" | "ssh";
}

/**
 * What `clipfleet nodes check` found on one node (the launcher probes it,
 * the CLI renders it): can the orchestrator reach it, and would a worker run there.
 */
export interface NodeCheck {
  readonly node: string;
  readonly host: string;
  readonly port: number;
  readonly launcher: "local" | "ssh";
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
