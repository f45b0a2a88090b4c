/**
 * In-memory state of running attempts: what cannot (and need not) survive an
 * orchestrator crash, because a crash ends every attempt anyway (fencing).
 */
import type { NodeSpec, StageSpec } from "../domain/index.js";
import type { CheckpointRef, CheckpointWritten, Command, Finished, StepReport } from "../gen/clipfleet/v1/worker.js";
import type { FailureCause } from "./policy.js";
import type { LaunchedProcess, ExitInfo, Launcher } from "../launcher/index.js";
import type { DataPlan, Manifest } from "../data/index.js";

/** The rpc layer's handle on one worker session stream. */
export interface SessionHandle {
  send(cmd: Command): void;
  end(): void;
}

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
}

export interface AttemptRuntime {
  readonly jobId: string;
  readonly stage: string;
  readonly attempt: number;
  readonly spec: StageSpec;
  readonly ranks: RankRuntime[];
  readonly worldSize: number;
  readonly globalBatch: number;
  readonly plan: DataPlan | null;
  readonly manifest: Manifest | null;
  readonly valManifest: Manifest | null;
  readonly totalSteps: number;
  readonly stepsPerEpoch: number;
  readonly startStep: number;
  readonly masterAddr: string;
  readonly masterPort: number;
  readonly checkpointRoot: string;
  readonly runDir: string;
  readonly startedMs: number;
  /** The assignment's resume and init references (proto form). */
  readonly resume: CheckpointRef | undefined;
  readonly init: CheckpointRef | undefined;
  readonly python: string;
  /** Reports of ranks per checkpoint step, until every rank has reported. */
  readonly pendingCheckpoints: Map<number, Map<number, CheckpointWritten>>;
  /** A secondary failure signal waiting for the primary cause (see JobService.fail). */
  secondary: FailureCause | null;
  /** Set once the attempt is over (failed, succeeded, stopped): later signals are ignored. */
  ending: boolean;
  running: boolean;
  lastCommitMs: number;
  lastCommittedStep: number;
  /** Step of a requested stop, when one is in progress. */
  stopAt: { step: number; checkpoint: boolean } | null;
  /** The step at which an on-demand checkpoint was requested, if pending. */
  checkpointAt: number | null;
  /** When the previous attempt's failure was detected (for the recovery-time metric). */
  recoveringSince: number | null;
  lastStepEventMs: number;
  lastReport: StepReport | null;
  /** Loss of the attempt's first reported step. */
  firstLoss: number | null;
  /** Undecodable samples skipped by this attempt's ranks, and by the stage's earlier attempts. */
  skippedSamples: number;
  readonly skippedBefore: number;
  samplesSeen: number;
  /** Resolves when every process of the attempt has exited. */
  allExited: Promise<void>;
}
