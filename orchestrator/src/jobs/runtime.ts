/**
 * In-memory state of a live attempt's ranks: what cannot (and need not)
 * survive an orchestrator crash, because a crash ends every attempt anyway
 * (fencing).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { NodeSpec, RankRecord } from "../domain/index.js";
import type { Command, Finished } from "../gen/clipfleet/v1/worker.js";
import type { FailureCause } from "./policy.js";
import type { TracebackCatcher } from "./traceback.js";
import type { LaunchedProcess, ExitInfo, Launcher } from "../launcher/index.js";

/** The rpc layer's handle on one worker session stream. */
export interface SessionHandle {
  send(cmd: Command): void;
  end(): void;
}

/** One rank of a live attempt. */
export interface RankRuntime {
  readonly rank: number;
  readonly node: NodeSpec;
  readonly launcher: Launcher;
  readonly slot: number;
  readonly localRank: number;
  readonly localWorldSize: number;
  readonly groupRank: number;
  /** CUDA_VISIBLE_DEVICES of the rank on a GPU node (physical ids); null on CPU. */
  readonly device: string | null;
  readonly sessionId: string;
  /**
   * sha256 of the rank's own token: bound to (job, stage, attempt, rank) and
   * valid while the attempt lives. The token itself goes only to the rank's
   * process; nothing stores it.
   */
  readonly tokenHash: Buffer;
  proc: LaunchedProcess | null;
  session: SessionHandle | null;
  registered: boolean;
  finished: Finished | null;
  exit: ExitInfo | null;
  lastHeartbeatMs: number;
  /** Last time the rank completed a step (or became ready to). */
  lastProgressMs: number;
  step: number;
  phase: string;
  /** Recent step durations (s), for the hang bound. */
  stepSeconds: number[];
  hostname: string;
  pid: number | null;
  /** What the rank reported before it went down (an exception, corrupt data), if anything. */
  failure: FailureCause | null;
  /** task command: the last Python traceback on its stderr (a script without the API reports nothing else). */
  readonly stderr: TracebackCatcher | null;
}

/** The digest a rank token is kept as. */
export function tokenHash(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

/** Whether `token` is the rank's own (constant time). */
export function rankTokenMatches(rank: Pick<RankRuntime, "tokenHash">, token: string): boolean {
  return timingSafeEqual(tokenHash(token), rank.tokenHash);
}

/** A rank's state as status and metrics show it. */
export function rankState(r: RankRuntime): RankRecord["state"] | "finished" {
  if (r.exit) return "exited";
  if (r.finished) return "finished";
  if (r.session) return "running";
  if (r.registered) return "registered";
  return "launching";
}

/** The live facts of a rank that its persisted RankRecord carries. */
export function rankRecordFields(r: RankRuntime): {
  pid: number | null;
  state: RankRecord["state"];
  step: number;
  lastHeartbeatMs: number | null;
  phase: string;
  exitCode: number | null;
  signal: string | null;
} {
  const st = rankState(r);
  return {
    pid: r.pid,
    state: st === "finished" ? "exited" : st,
    step: r.step,
    lastHeartbeatMs: r.registered ? r.lastHeartbeatMs : null,
    phase: r.phase,
    exitCode: r.exit?.code ?? null,
    signal: r.exit?.signal ?? null,
  };
}
