/**
 * The worker gateway's side of the job machinery: a rank registers (job
 * token checked, attempt fenced, runtime version checked) and gets its
 * assignment; it binds a session stream to itself with `hello`; it fetches
 * the samples of its steps. Every call of a rank of an attempt that is over
 * is fenced.
 */
import {
  FailedPreconditionError,
  FencedError,
  InvalidArgumentError,
  UnauthenticatedError,
  type JobRecord,
  type NodeSpec,
  type StageSpec,
} from "../domain/index.js";
import { manifestIdOf, shardsPage, type ShardInfo } from "../data/index.js";
import type { Assignment, PlanRequest, PlanResponse, RegisterRequest, ShardsRequest, ShardsResponse, WorkerMessage } from "../gen/clipfleet/v1/worker.js";
import type { Attempt, AttemptFacts } from "./attempt.js";
import type { JobContext } from "./context.js";
import { recaptionPlugins } from "./records.js";
import { rankTokenMatches, type RankRuntime, type SessionHandle } from "./runtime.js";

/** Version of the orchestrator; a worker runtime of another version is refused at registration. */
export const ORCHESTRATOR_VERSION = "0.1.0";

/** Most steps one GetPlan answers. */
const MAX_PLAN_STEPS = 1024;

export class Gateway {
  constructor(private readonly ctx: JobContext) {}

  /**
   * A rank's first call: authenticate with the rank's own token (bound to
   * this job, stage, attempt and rank), fence, and hand out its assignment.
   */
  register(token: string | null, req: RegisterRequest): Assignment {
    if (!token) throw new UnauthenticatedError("missing job token (authorization metadata)");
    if (!this.ctx.ledger.has(req.jobId)) throw new UnauthenticatedError("invalid job token");
    const a = this.ctx.live.get(req.jobId, req.stage);
    // A rank token lives and dies with its attempt: a worker of an attempt that is over is fenced.
    if (!a || a.attempt !== req.attempt || a.over) {
      throw new FencedError(`attempt ${req.attempt} of ${req.jobId}/${req.stage} is over`);
    }
    const claimed = a.ranks[req.rank];
    if (!claimed || !rankTokenMatches(claimed, token)) throw new UnauthenticatedError("invalid job token");
    const rank = claimed;
    if (rank.registered) throw new FencedError(`rank ${req.rank} of attempt ${req.attempt} already registered`);
    if (req.runtimeVersion !== ORCHESTRATOR_VERSION) {
      const msg = `worker runtime ${req.runtimeVersion || "(unknown)"} on ${req.hostname} does not match orchestrator ${ORCHESTRATOR_VERSION}`;
      a.fail({ kind: "fatal", message: msg });
      throw new FailedPreconditionError(msg);
    }
    const now = this.ctx.now();
    rank.registered = true;
    rank.hostname = req.hostname;
    rank.pid = req.pid;
    rank.lastHeartbeatMs = now;
    rank.lastProgressMs = now;
    rank.phase = "registered";
    this.ctx.log(a.jobId, a.stage, a.attempt, `rank ${req.rank} registered from ${req.hostname} pid ${req.pid} (python ${req.pythonVersion}, torch ${req.torchVersion}, ${req.cudaDevices} CUDA devices)`);
    const warning = req.rank === 0 ? compileWarning(a.spec, req.torchVersion) : null;
    if (warning !== null) {
      // An event, so `run` and `watch` show it as it happens; each rank's log says it too.
      this.ctx.ledger
        .note(a.jobId, a.stage, "warning", warning, { attempt: a.attempt, rank: 0 })
        .catch((err: unknown) => this.ctx.log(a.jobId, a.stage, a.attempt, `could not record a warning: ${String(err)}`));
    }
    return assignment(a, rank, pluginsOf(this.ctx.ledger.get(a.jobId), a.spec));
  }

  /** Binds a session stream to its rank; returns the handlers of the stream's messages. */
  openSession(token: string | null, handle: SessionHandle): { onMessage: (msg: WorkerMessage) => void; onClose: (why: string) => void } {
    let bound: { attempt: Attempt; rank: RankRuntime } | null = null;
    return {
      onMessage: (msg) => {
        const body = msg.body;
        if (!body) return;
        if (bound) {
          bound.attempt.message(bound.rank, body);
          return;
        }
        if (body.$case !== "hello") throw new InvalidArgumentError("the first message of a session must be hello");
        const s = this.session(token, body.value.sessionId);
        if (s.attempt.over) throw new FencedError(`attempt ${s.attempt.attempt} is over`);
        // One stream per rank: a second hello with a known session id must not take the session over.
        if (s.rank.session !== null) throw new FencedError(`rank ${s.rank.rank} already has a session`);
        bound = s;
        s.attempt.sessionOpened(s.rank, handle);
      },
      onClose: (why) => {
        if (bound) bound.attempt.sessionClosed(bound.rank, handle, why);
      },
    };
  }

  /** The samples a rank reads in a range of steps. */
  plan(token: string | null, req: PlanRequest): PlanResponse {
    const { attempt: a, rank } = this.session(token, req.sessionId);
    if (req.split !== "" && req.split !== "train") {
      throw new InvalidArgumentError(`split: only "train" has a plan (evaluation reads data.val in full), got ${JSON.stringify(req.split.slice(0, 32))}`, "split");
    }
    if (!a.facts.plan) throw new FailedPreconditionError(`stage ${a.stage} has no training data plan`);
    const end = Math.min(a.totalSteps, req.fromStep + Math.min(req.count, MAX_PLAN_STEPS));
    const steps = [];
    for (let t = req.fromStep; t < end; t++) {
      const sl = a.facts.plan.slice(t, rank.rank, a.worldSize);
      steps.push({ step: t, epoch: sl.epoch, sampleInEpoch: sl.sampleInEpoch, shards: sl.shards, indices: sl.indices, sampleIds: sl.sampleIds });
    }
    return { steps };
  }

  /**
   * A page of the stage's train or val shard list (the assignment names the
   * lists by manifest id; a rank of another manifest is refused rather than
   * handed a different list).
   */
  shards(token: string | null, req: ShardsRequest): ShardsResponse {
    const { attempt: a } = this.session(token, req.sessionId);
    if (req.split !== "" && req.split !== "train" && req.split !== "val") {
      throw new InvalidArgumentError(`split: expected "train" or "val", got ${JSON.stringify(req.split.slice(0, 32))}`, "split");
    }
    const shared = sharedOf(a.facts);
    if (req.manifestId !== shared.manifestId) {
      throw new FailedPreconditionError(`manifest ${req.manifestId.slice(0, 64)} is not this attempt's (${shared.manifestId})`);
    }
    const list = req.split === "val" ? (a.facts.valManifest?.shards ?? []) : (a.facts.manifest?.shards ?? []);
    const page = shardsPage(list, req.pageToken, req.pageSize);
    return { shards: page.shards.map((s) => ({ url: s.url, samples: s.samples })), nextPageToken: page.nextPageToken, total: page.total };
  }

  /** The live rank a session id names (a recaption Lease call's rank); see session(). */
  bind(token: string | null, sessionId: string): { attempt: Attempt; rank: RankRuntime } {
    const s = this.session(token, sessionId);
    if (s.attempt.over) throw new FencedError(`attempt ${s.attempt.attempt} is over`);
    return s;
  }

  /** The live rank a session id names, when `token` is that rank's own; fenced once its attempt is over. */
  private session(token: string | null, sessionId: string): { attempt: Attempt; rank: RankRuntime } {
    if (!token) throw new UnauthenticatedError("missing job token (authorization metadata)");
    const s = this.ctx.live.session(sessionId);
    if (!s) throw new FencedError(`unknown or expired session ${sessionId.slice(0, 64)}`);
    if (!rankTokenMatches(s.rank, token)) throw new UnauthenticatedError("invalid job token");
    return s;
  }
}

/** What every rank of an attempt is told alike, computed once per attempt (a gang may have 16,384 ranks). */
interface SharedAssignment {
  readonly configJson: string;
  readonly manifestId: string;
  readonly cursor: { epoch: number; sampleInEpoch: number } | undefined;
}

const sharedByFacts = new WeakMap<AttemptFacts, SharedAssignment>();

function sharedOf(f: AttemptFacts): SharedAssignment {
  let s = sharedByFacts.get(f);
  if (!s) {
    const none: readonly ShardInfo[] = [];
    s = {
      configJson: JSON.stringify(f.spec),
      manifestId: manifestIdOf(f.manifest?.shards ?? none, f.valManifest?.shards ?? none),
      cursor: f.plan ? toProtoCursor(f.plan.cursorAt(f.startStep)) : undefined,
    };
    sharedByFacts.set(f, s);
  }
  return s;
}

/** What a rank is told at registration: its place in the gang, the frozen config, where to resume, its data (by reference). */
function assignment(a: Attempt, rank: RankRuntime, plugins: { captionerJson: string; fusionJson: string }): Assignment {
  const shared = sharedOf(a.facts);
  return {
    sessionId: rank.sessionId,
    rank: rank.rank,
    worldSize: a.worldSize,
    localRank: rank.localRank,
    localWorldSize: rank.localWorldSize,
    groupRank: rank.groupRank,
    masterAddr: a.facts.masterAddr,
    masterPort: a.facts.masterPort,
    backend: backendOf(a.spec, rank.node),
    configJson: shared.configJson,
    configSha256: a.facts.configSha256,
    resume: a.facts.resume,
    cursor: shared.cursor,
    startStep: a.facts.startStep,
    totalSteps: a.totalSteps,
    stepsPerEpoch: a.facts.stepsPerEpoch,
    globalBatch: a.globalBatch,
    perRankBatch: Math.floor(a.globalBatch / a.worldSize),
    heartbeatIntervalSeconds: Math.max(0.2, Math.min(2, a.spec.failure.heartbeat_timeout / 5)),
    fenceSeconds: a.spec.failure.fence_seconds,
    checkpointRoot: a.facts.checkpointRoot,
    attempt: a.attempt,
    stage: a.stage,
    init: a.facts.init,
    runDir: a.facts.runDir,
    manifestId: shared.manifestId,
    trainShardCount: a.facts.manifest?.shards.length ?? 0,
    valShardCount: a.facts.valManifest?.shards.length ?? 0,
    ...plugins,
    evalClip: a.facts.evalClip,
  };
}

/** task recaption: the captioner and fusion a rank loads (records.ts recaptionPlugins), as JSON. */
function pluginsOf(job: JobRecord, spec: StageSpec): { captionerJson: string; fusionJson: string } {
  const p = recaptionPlugins(job, spec);
  return p === null ? { captionerJson: "", fusionJson: "" } : { captionerJson: JSON.stringify(p.captioner), fusionJson: JSON.stringify(p.fusion) };
}

function toProtoCursor(c: { epoch: number; sampleInEpoch: number }): { epoch: number; sampleInEpoch: number } {
  return { epoch: c.epoch, sampleInEpoch: c.sampleInEpoch };
}

/**
 * `train.compile` on a rank whose torch predates torch.compile (2.0): the worker runs eager and
 * logs why (clipfleet_worker/accel.py compile_decision); this is the same notice as a job event.
 */
export function compileWarning(spec: StageSpec, torchVersion: string): string | null {
  if (!spec.train.compile) return null;
  const major = /^(\d+)\./.exec(torchVersion)?.[1];
  if (major === undefined || Number(major) >= 2) return null;
  return `train.compile ignored: torch ${torchVersion} has no torch.compile (needs 2.0 or later); running eager`;
}

/** The process group's backend: NCCL for GPU ranks, gloo otherwise, unless the spec names one. */
function backendOf(spec: StageSpec, node: NodeSpec): string {
  if (spec.cluster.backend !== "auto") return spec.cluster.backend;
  return node.gpus > 0 && spec.cluster.gpus_per_worker > 0 ? "nccl" : "gloo";
}
