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
