/**
 * Starting an attempt of a placed stage: resolve its data and the checkpoint
 * it resumes from, persist STARTING with the attempt's ranks (persist before
 * acting: the attempt exists in the store before any process does), then
 * launch one process per rank with torchrun's environment.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { COMMAND_PYTHON_NAMES, InvalidArgumentError, isTerminal, NotFoundError, type NodeSpec, type StageSpec } from "../domain/index.js";
import { removeCheckpointDir, sha256Hex, uncommittedDirs } from "../checkpoints/index.js";
import { DataPlan } from "../data/index.js";
import { AllocationAborted, allocationLive, blameNode, type Allocation, type Launcher, type SlurmLauncher } from "../launcher/index.js";
import { rankEnv, type Placement } from "../scheduler/index.js";
import { canonicalJson } from "../spec/index.js";
import { Attempt, type AttemptHooks } from "./attempt.js";
import type { CheckpointRefs } from "./checkpoint-refs.js";
import type { JobContext } from "./context.js";
import type { Datasets } from "./datasets.js";
import { stageSpecOf, totalStepsOf } from "./records.js";
import { rankRecordFields, tokenHash, type RankRuntime } from "./runtime.js";
import { keepSpares, spareOwner, usesSpares } from "./spares.js";
import { TracebackCatcher } from "./traceback.js";

export class Launch {
  constructor(
    private readonly ctx: JobContext,
    private readonly datasets: Datasets,
    private readonly refs: CheckpointRefs,
    private readonly hooks: AttemptHooks,
  ) {}

  /** Whether starting `p` first waits for a cluster allocation (Slurm), which may take long. */
  allocates(p: Placement): boolean {
    return p.ranks[0]?.node.launcher === "slurm";
  }

  /**
   * Launch a placed gang: choose the checkpoint to resume, (Slurm: wait for
   * the attempt's allocation, the stage PENDING with Slurm's reason), persist
   * STARTING, start one process per rank.
   */
  start(p: Placement): Promise<void> {
    if (!this.allocates(p)) return this.startPlaced(p, null);
    // Registered before the first await: the next scheduling pass sees the stage as allocating.
    let settle: () => void = () => undefined;
    const done = new Promise<void>((r) => (settle = r));
    const signal = this.ctx.live.allocationStarted(p.jobId, p.stage, done);
    return this.startPlaced(p, signal).finally(settle);
  }

  private async startPlaced(placed: Placement, allocSignal: AbortSignal | null): Promise<void> {
    const { ledger, deps } = this.ctx;
    let p = placed;
    const job = ledger.get(p.jobId);
    const spec = stageSpecOf(job, p.stage);
    const stageRec = job.stages.find((s) => s.name === p.stage);
    if (!stageRec) throw new NotFoundError(`stage ${p.stage}`);
    const attempt = job.nextAttempt;
    const worldSize = p.ranks.length;
    const rank0 = p.ranks[0];
    if (!rank0) throw new Error("empty placement");
    const python = await this.pythonFor(spec, rank0.node);

    const manifest = await this.datasets.trainManifest(spec);
    const valManifest = spec.data.val.length > 0 ? await this.datasets.manifest(spec.data.val, 1, "data.val", spec.data.index) : null;
    const plan =
      manifest && spec.task !== "eval" && spec.task !== "recaption"
        ? new DataPlan({ manifest, seed: spec.seed, batchSize: spec.train.batch_size, shuffle: spec.data.shuffle, fraction: spec.data.fraction })
        : null;
    // task recaption: a step is a committed output shard.
    const stepsPerEpoch = plan?.stepsPerEpoch ?? (spec.task === "recaption" ? (manifest?.shards.length ?? 0) : 0);
    const totalSteps = totalStepsOf(spec, stepsPerEpoch);

    const resume = await this.refs.pickResume(job, stageRec);
    const init = spec.init.kind === "checkpoint" ? await this.refs.resolveInit(job, spec) : undefined;
    const evalClip = await this.refs.resolveEvalClip(job, spec);
    const checkpointRoot = join(spec.checkpoint.dir ?? join(deps.stateDir, "checkpoints"), job.id, p.stage);
    const runDir = join(deps.stateDir, "jobs", job.id, "stages", p.stage);
    mkdirSync(checkpointRoot, { recursive: true, mode: 0o700 });
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    // Directories of earlier attempts without a committed manifest are garbage.
    for (const dir of uncommittedDirs(checkpointRoot, new Set())) removeCheckpointDir(dir);

    let alloc: Allocation | null = null;
    let masterPort: number;
    if (allocSignal !== null) {
      alloc = await this.allocate(job.id, attempt, p, allocSignal);
      if (alloc === null) return;
      try {
        p = boundPlacement(p, alloc);
        masterPort = await alloc.freePort(p.ranks[0]?.node ?? rank0.node);
      } catch (err) {
        await alloc.release();
        throw err;
      }
    } else masterPort = await this.launcherFor(rank0.node).freePort(rank0.node);
    const startStep = resume ? Number(resume.step) : 0;
    const now = this.ctx.now();
    const tokens = p.ranks.map(() => randomBytes(32).toString("hex"));
    const ranks: RankRuntime[] = p.ranks.map((pr, i) => ({
      rank: i,
      node: pr.node,
      launcher: this.launcherFor(pr.node),
      slot: pr.slot,
      localRank: pr.localRank,
      localWorldSize: pr.localWorldSize,
      groupRank: pr.groupRank,
      device: pr.device,
      sessionId: randomBytes(12).toString("hex"),
      tokenHash: tokenHash(tokens[i] ?? ""),
      proc: null,
      session: null,
      registered: false,
      finished: null,
      exit: null,
      lastHeartbeatMs: now,
      lastProgressMs: now,
      step: startStep,
      phase: "launching",
      stepSeconds: [],
      hostname: pr.node.host,
      pid: null,
      failure: null,
      stderr: spec.command ? new TracebackCatcher() : null,
    }));
    const a = new Attempt(
      {
        jobId: job.id,
        stage: p.stage,
        attempt,
        spec,
        placement: p,
        ranks,
        plan,
        manifest,
        valManifest,
        totalSteps,
        stepsPerEpoch,
        startStep,
        masterAddr: p.masterAddress,
        masterPort,
        checkpointRoot,
        runDir,
        resume,
        init,
        evalClip,
        python,
        configSha256: sha256Hex(Buffer.from(canonicalJson(spec), "utf8")),
        recoveringSince: this.ctx.live.takeRecovering(job.id, p.stage),
        skippedBefore: stageRec.progress.skippedSamples,
        skippedByReasonBefore: { ...(stageRec.progress.skippedByReason ?? {}) },
        shardCacheBefore: stageRec.progress.shardCache,
        restartCount: stageRec.attempts.length,
      },
      this.ctx,
      alloc ? this.slurmHooks(alloc) : this.hooks,
    );

    if (alloc) {
      // The allocation lives as long as the attempt's processes: released once the last one is gone.
      const held = alloc;
      void a.allExited.then(() => held.release()).catch(() => undefined);
    }
    // Persist before acting: the attempt exists in the store before any process does.
    // Attempt numbers count across the job's stages (they fence workers); in a pipeline a stage's
    // first start may be "attempt 5", so say which start of this stage it is.
    const ordinal = stageRec.attempts.length + 1;
    const label = ordinal === attempt ? `attempt ${attempt}` : `attempt ${attempt} (${ordinal === 1 ? "first start" : `start ${ordinal}`} of this stage)`;
    await ledger.transition(job.id, p.stage, "STARTING", `${label}: ${worldSize} rank(s) on ${describePlacement(p)}${resume ? `, resuming from step ${startStep}` : ""}`, {
      attempt,
      data: { worldSize, resumeStep: startStep, nodes: p.ranks.map((r) => r.node.name) },
      update: (s) => {
        s.attempts.push({
          number: attempt,
          startedAtMs: now,
          endedAtMs: null,
          outcome: "running",
          reason: "",
          worldSize,
          resumedFromStep: startStep,
          lastStep: startStep,
          masterAddr: a.facts.masterAddr,
          masterPort,
          ranks: ranks.map((r) => ({ rank: r.rank, node: r.node.name, host: r.node.host, slot: r.slot, ...rankRecordFields(r) })),
        });
        s.notBeforeMs = null;
        s.progress.totalSteps = totalSteps;
        s.progress.worldSize = worldSize;
      },
    }).catch((err: unknown) => {
      // Not started (the stage ended meanwhile): nothing will run, so a held allocation goes back now.
      this.neverStarted(a, 0);
      throw err;
    });
    await ledger.update(job.id, (j) => {
      j.nextAttempt = attempt + 1;
      j.pendingReason = "";
    });
    this.ctx.live.add(a);
    this.ctx.metrics.attemptStarted(job.id, p.stage, totalSteps);
    // A cancel that arrived while the attempt was being set up found no live attempt to stop:
    // it is persisted on the job, so read it here and start nothing.
    if (ledger.get(job.id).cancelRequested) {
      this.neverStarted(a, 0);
      this.hooks.stopRequested(a, "cancelled while the attempt was starting");
      return;
    }

    const where = (r: RankRuntime): { python: string; workdir: string } =>
      r.node.launcher === "local" ? { python, workdir: deps.workerRuntimeDir } : { python: r.node.python ?? "python3", workdir: r.node.workdir ?? "." };
    for (const r of ranks) {
      // Ended (stopped, failed) while earlier ranks were being launched, or the orchestrator is
      // shutting down (its launchers may already have killed what they had): the rest never start.
      // The record says STARTING; the next start reconciles the attempt as lost.
      if (a.over || this.ctx.closing) {
        this.neverStarted(a, r.rank);
        return;
      }
      try {
        r.proc = await r.launcher.launch({
          jobId: job.id,
          stage: p.stage,
          attempt,
          rank: r.rank,
          node: r.node,
          ...where(r),
          command: spec.command ? { argv: spec.command, cwd: spec.workdir ?? "." } : null,
          env: this.rankEnvironment(a, r),
          secrets: { CLIPFLEET_TOKEN: tokens[r.rank] ?? "" },
          ...(alloc ? { allocation: alloc.jobId } : {}),
          ...(usesSpares(spec) ? { spareOwner: spareOwner(job.id, p.stage) } : {}),
          onOutput: (stream, line) => {
            if (stream === "stderr") r.stderr?.line(line);
            deps.logs.append(job.id, { tsMs: this.ctx.now(), stage: p.stage, attempt, rank: r.rank, stream, line });
          },
          onExit: (e) => {
            a.exited(r, e);
            a.processGone();
          },
        });
        r.pid = r.proc.pid;
        if (r.proc.warm) this.ctx.log(job.id, p.stage, attempt, `rank ${r.rank} runs in warm spare pid ${r.proc.pid} on ${r.node.name}`);
        // The attempt ended while this rank was being started: its teardown did not see this process.
        if (a.over) await r.proc.signal("SIGKILL").catch(() => undefined);
      } catch (err) {
        this.neverStarted(a, r.rank);
        const msg = err instanceof Error ? err.message : String(err);
        a.fail(r.node.launcher !== "local" ? { kind: "node", rank: r.rank, node: r.node.name, message: msg } : { kind: "fatal", message: `could not start rank ${r.rank}: ${msg}` });
        return;
      }
    }
    // A command's ranks need not say anything: the gang is formed once every process runs.
    if (spec.command) a.launched();
    void keepSpares(this.ctx, a, where, (r) => this.rankEnvironment(a, r)).catch((err: unknown) => this.ctx.log(job.id, p.stage, attempt, `spares: ${err instanceof Error ? err.message : String(err)}`));
    await ledger.update(job.id, (j) => {
      const rec = j.stages.find((s) => s.name === p.stage)?.attempts.find((x) => x.number === attempt);
      for (const rr of rec?.ranks ?? []) rr.pid = ranks[rr.rank]?.pid ?? null;
    });
  }

  /** Ranks from `from` on will never run: nothing of theirs will exit, so they count as gone. */
  private neverStarted(a: Attempt, from: number): void {
    for (const r of a.ranks.slice(from)) {
      r.exit = { code: null, signal: null };
      a.processGone();
    }
  }

  /**
   * A rank's environment: the spec's worker.env, then torchrun's variables
   * (scheduler.rankEnv, the one tested copy) with the rendezvous port, then
   * how to reach the orchestrator. A CPU slot is a core: a rank gets one
   * intra-op thread per slot it holds, so ranks of different jobs sharing a
   * node do not oversubscribe it; GPU ranks get a few for the host side.
   */
  private rankEnvironment(a: Attempt, r: RankRuntime): Record<string, string> {
    const threads = String(a.spec.train.threads ?? (r.node.gpus > 0 ? 4 : 1));
    return {
      ...a.spec.worker.env,
      ...rankEnv(a.facts.placement, r.rank),
      MASTER_PORT: String(a.facts.masterPort),
      CLIPFLEET_ADDR: this.ctx.deps.gatewayAddress(),
      CLIPFLEET_JOB_ID: a.jobId,
      CLIPFLEET_STAGE: a.stage,
      CLIPFLEET_ATTEMPT: String(a.attempt),
      CLIPFLEET_RANK: String(r.rank),
      // The rest of torchrun's contract, for scripts written for it: which restart this is, of how many.
      TORCHELASTIC_RUN_ID: a.jobId,
      TORCHELASTIC_RESTART_COUNT: String(a.facts.restartCount),
      TORCHELASTIC_MAX_RESTARTS: String(a.spec.failure.max_restarts),
      PYTHONUNBUFFERED: "1",
      OMP_NUM_THREADS: threads,
      CLIPFLEET_THREADS: threads,
      // Slurm's warning signal (slurm.signal) is the preemption signal of its ranks.
      ...(r.node.slurm?.signal ? { CLIPFLEET_PREEMPT_SIGNAL: r.node.slurm.signal.name } : {}),
      // Public: the CA that signed the gateway's certificate, so the rank dials it over TLS.
      ...(this.ctx.deps.gatewayCa ? { CLIPFLEET_TLS_CA: this.ctx.deps.gatewayCa } : {}),
    };
  }

  /**
   * Asks Slurm for the attempt's allocation and waits for it; the job's
   * pending reason says why Slurm keeps it waiting. Null when the wait was
   * given up (cancel, shutdown): the allocation is cancelled and the stage's
   * slots released.
   */
  private async allocate(jobId: string, attempt: number, p: Placement, signal: AbortSignal): Promise<Allocation | null> {
    const { ledger, scheduler } = this.ctx;
    const slurm = this.slurm(p.ranks[0]?.node.name ?? "?");
    const options = p.ranks[0]?.node.slurm;
    if (!options) throw new Error("a slurm node without its slurm options");
    const giveUp = (): boolean => signal.aborted || this.ctx.closing || !ledger.has(jobId) || ledger.get(jobId).cancelRequested !== null || isTerminal(ledger.get(jobId).state);
    // Allocations of earlier attempts still held (the orchestrator running them died) go back first.
    const left = await slurm.cancelNamed(`clipfleet-${jobId}-${p.stage}-a`).catch((err: unknown) => {
      // Not a reason to fail the attempt: at worst the orphan holds its nodes until its time limit.
      this.ctx.log(jobId, p.stage, attempt, `could not look for Slurm jobs left by earlier attempts of this stage: ${(err as Error).message}`);
      return [];
    });
    for (const id of left) this.ctx.log(jobId, p.stage, attempt, `cancelled Slurm job ${id}, left by an earlier attempt of this stage`);
    let alloc: Allocation;
    try {
      alloc = await slurm.allocate({
        name: `clipfleet-${jobId}-${p.stage}-a${attempt}`,
        nodes: p.nodes.length,
        options,
        exclude: scheduler.excludedClusterNodes(this.ctx.now()),
        onPending: (reason) => {
          this.ctx.log(jobId, p.stage, attempt, reason);
          void ledger
            .update(jobId, (j) => {
              if (isTerminal(j.state) || j.cancelRequested) return;
              j.pendingReason = reason;
              // The stage's own line (status REASON) says the same, not the scheduler's "waiting for slots".
              const stage = j.stages.find((s) => s.name === p.stage);
              if (stage && (stage.state === "PENDING" || stage.state === "STARTING" || stage.state === "RESTARTING")) stage.reason = reason;
            })
            .catch(() => undefined);
        },
        signal,
      });
    } catch (err) {
      if (!(err instanceof AllocationAborted)) throw err;
      scheduler.release(jobId, p.stage);
      return null;
    }
    if (giveUp()) {
      await alloc.release();
      scheduler.release(jobId, p.stage);
      return null;
    }
    if (alloc.nodes.length !== p.nodes.length) {
      await alloc.release();
      throw new Error(`Slurm job ${alloc.jobId} granted ${alloc.nodes.length} node(s), ${p.nodes.length} asked for`);
    }
    this.ctx.log(jobId, p.stage, attempt, `Slurm job ${alloc.jobId} running on ${alloc.nodes.map((n) => n.name).join(",")}`);
    return alloc;
  }

  /**
   * Slurm ends an allocation (scancel, time limit, preemption, node failure)
   * by sending SIGTERM to every step: a rank's SIGTERM, which otherwise asks
   * for a graceful stop of the job, is then Slurm taking the nodes back, and
   * the attempt fails at once as a node loss (the stage restarts on a new
   * allocation). While the allocation still runs, it is a stop as elsewhere.
   */
  private slurmHooks(alloc: Allocation): AttemptHooks {
    return {
      ...this.hooks,
      stopRequested: (a, reason) => {
        void alloc
          .state()
          .catch(() => null)
          .then((st) => {
            if (st === null || allocationLive(st.state)) {
              this.hooks.stopRequested(a, reason);
              return;
            }
            const r = a.ranks[Number(/rank (\d+)/.exec(reason)?.[1] ?? 0)] ?? a.ranks[0];
            if (!r) return;
            const why = `Slurm job ${alloc.jobId} ${st.state}${st.reason !== "None" ? ` (${st.reason})` : ""}`;
            // Slurm's SIGTERM reaches every rank of the allocation, the healthy nodes' ranks too, and
            // whichever asks to stop first is a race: Slurm's node states say which node failed (as for
            // an exit, SlurmLauncher), and the rank's own node only when none did.
            void this.slurm(r.node.name)
              .partitionNodes(null, alloc.nodes.map((n) => n.name))
              .catch(() => [])
              .then((nodes) => {
                const blamed = blameNode(r.node.name, nodes) ?? r.node.name;
                const how = blamed !== r.node.name ? ` (node ${blamed} ${nodes.find((n) => n.name === blamed)?.state ?? "down"})` : "";
                a.fail({ kind: "node", rank: r.rank, node: blamed, message: `${why}: Slurm sent SIGTERM to rank ${r.rank} on ${r.node.name}${how}` });
              });
          });
      },
    };
  }

  private slurm(node: string): SlurmLauncher {
    const s = this.ctx.deps.launchers.slurm;
    if (!s) throw new InvalidArgumentError(`node ${node} needs the Slurm launcher, which is not configured`);
    return s;
  }

  private launcherFor(node: NodeSpec): Launcher {
    if (node.launcher === "local") return this.ctx.deps.launchers.local;
    if (node.launcher === "slurm") return this.slurm(node.name);
    if (!this.ctx.deps.launchers.ssh) throw new InvalidArgumentError(`node ${node.name} needs the SSH launcher, which is not configured`);
    return this.ctx.deps.launchers.ssh;
  }

  private async pythonFor(spec: StageSpec, node: NodeSpec): Promise<string> {
    if (node.launcher !== "local") return spec.worker.python ?? node.python ?? "python3";
    // A command that is not a Python script runs without the worker interpreter: nothing to look for.
    if (spec.command && !COMMAND_PYTHON_NAMES.has(spec.command[0] ?? "")) return spec.worker.python ?? node.python ?? "python3";
    return this.ctx.resolvePython(spec.worker.python ?? this.ctx.deps.python ?? node.python ?? null);
  }
}

/**
 * The placement on an allocation's nodes: node position i (slurm-(i+1),
 * group rank i) becomes the i-th node Slurm granted, with its name and
 * address; slots, local and group ranks stay as placed.
 */
export function boundPlacement(p: Placement, alloc: Allocation): Placement {
  const bound = p.ranks.map((r) => {
    const real = alloc.nodes[r.groupRank];
    if (!real) throw new Error(`Slurm job ${alloc.jobId}: no node for group rank ${r.groupRank}`);
    return { ...r, node: Object.freeze({ ...r.node, name: real.name, host: real.name, address: real.address }) };
  });
  return { ...p, nodes: alloc.nodes.map((n) => n.name), ranks: bound, masterAddress: bound[0]?.node.address ?? p.masterAddress };
}

function describePlacement(p: Placement): string {
  const byNode = new Map<string, number>();
  for (const r of p.ranks) byNode.set(r.node.name, (byNode.get(r.node.name) ?? 0) + 1);
  return [...byNode].map(([n, c]) => `${n}x${c}`).join(", ");
}
