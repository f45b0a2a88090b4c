/**
 * How attempts end: failed (tear the gang down, then restart with backoff or
 * fail the stage, per policy.ts), stopped (ranks save and exit, SIGTERM and
 * SIGKILL after the grace period), preempted (ranks save at one step and
 * exit, then the stage restarts from that checkpoint without spending a
 * restart), or succeeded (wait for clean exits, record the results). Each path moves the attempt to `ending` first, so
 * only the first of several racing endings acts; each ends by releasing the
 * attempt's slots and waking the dispatcher.
 */
import { isTerminal, settlesWithin, sleepOn, type AttemptOutcome, type StageRecord } from "../domain/index.js";
import type { Attempt } from "./attempt.js";
import type { JobContext } from "./context.js";
import { decide, decidePreemption, describeCause, failureNode, type FailureCause } from "./policy.js";
import type { Progress } from "./progress.js";
import { newestCommitted, stageRecordOf } from "./records.js";
import { dropFinishedSpares } from "./spares.js";

const STACK_DUMP_WAIT_MS = 1500;
const EXIT_WAIT_MS = 15000;
/** After SIGTERM, how long ranks get before SIGKILL. */
const TERM_WAIT_MS = 5000;
/** After a preempted gang's exits, how long its checkpoint's commit (the manifest write) may still take. */
const COMMIT_WAIT_MS = 10000;
/** The signal that makes a rank print every thread's stack (faulthandler); SIGUSR1 is the preemption signal. */
export const STACK_DUMP_SIGNAL = "SIGUSR2";

export class Ending {
  constructor(
    private readonly ctx: JobContext,
    private readonly progress: Progress,
  ) {}

  /** A failure signal the attempt decided to act on: run the failure path in the background. */
  failed(a: Attempt, cause: FailureCause, failedAtMs?: number): void {
    this.ctx.background(a, () => this.fail(a, cause, failedAtMs));
  }

  /** A bug in the orchestrator's handling of an attempt: logged, and the attempt fails (it is restarted). */
  internalError(a: Attempt, err: unknown): void {
    const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
    this.ctx.log(a.jobId, a.stage, a.attempt, `internal error: ${msg}`);
    this.failed(a, { kind: "orchestrator", message: `internal error: ${err instanceof Error ? err.message : String(err)}` });
  }

  /**
   * An attempt failed: dump stacks when it hung, tear the gang down (nothing
   * survives; later calls of its ranks are fenced), then restart with backoff
   * or fail, per the stage's policy.
   */
  async fail(a: Attempt, cause: FailureCause, failedAtMs?: number): Promise<void> {
    if (!a.apply({ type: "end", why: "failed" })) return;
    const { ledger, metrics } = this.ctx;
    const detectedAt = this.ctx.now();
    const labels = { job_id: a.jobId, stage: a.stage };
    const reason = describeCause(cause);
    metrics.detect.observe(labels, Math.max(0, (detectedAt - (failedAtMs ?? detectedAt)) / 1000));
    metrics.failures.inc({ ...labels, state: stageRecordOf(ledger.get(a.jobId), a.stage)?.state ?? "RUNNING" });
    this.ctx.log(a.jobId, a.stage, a.attempt, `attempt ${a.attempt} failed: ${reason}`);
    if (cause.kind === "hang" || cause.kind === "heartbeat") await this.dumpStacks(a);
    await this.teardown(a, "attempt failed: " + reason);

    if (cause.kind === "exception") {
      await ledger.note(a.jobId, a.stage, "failure", `rank ${cause.rank}: ${cause.failure.message}`, {
        attempt: a.attempt,
        rank: cause.rank,
        data: { step: cause.failure.step, kind: cause.failure.kind, fingerprint: cause.failure.fingerprint },
        update: (s) => {
          s.failures.push(cause.failure);
          if (s.failures.length > 50) s.failures.splice(0, s.failures.length - 50);
        },
      });
    }
    const job = ledger.get(a.jobId);
    const stage = stageRecordOf(job, a.stage);
    if (!stage) return;
    const lastStep = a.lastStep;
    if (job.cancelRequested) {
      await ledger.transition(a.jobId, a.stage, "CANCELLED", "cancelled by user", {
        attempt: a.attempt,
        unlessTerminal: true,
        update: (s) => this.closeAttempt(s, a, "cancelled", reason, lastStep),
      });
    } else {
      const f = a.spec.failure;
      const quarantine = { after: f.quarantine_after, seconds: f.quarantine_seconds, windowSeconds: f.quarantine_seconds };
      const failedNode = failureNode(cause, (rank) => a.ranks[rank]?.node.name ?? null);
      if (failedNode && this.ctx.scheduler.recordFailure(failedNode, this.ctx.now(), quarantine)) {
        this.ctx.log(a.jobId, a.stage, a.attempt, `node ${failedNode} quarantined for ${quarantine.seconds} s after ${quarantine.after} failures`);
      }
      const decision = decide(stage, f, cause, lastStep > a.facts.startStep);
      if (decision.action === "fail") {
        await ledger.transition(a.jobId, a.stage, "FAILED", decision.reason, {
          attempt: a.attempt,
          data: { cause: cause.kind },
          update: (s) => {
            this.closeAttempt(s, a, "failed", reason, lastStep);
            s.error = decision.error;
          },
        });
      } else {
        const committed = Math.max(a.lastCommittedStep, newestCommitted(stage)?.step ?? 0);
        const lost = Math.max(0, lastStep - committed);
        metrics.restarts.inc(labels);
        metrics.stepsLost.inc(labels, lost);
        await ledger.transition(a.jobId, a.stage, "RESTARTING", `${decision.reason}; restarting in ${(decision.delayMs / 1000).toFixed(1)} s from step ${committed}`, {
          attempt: a.attempt,
          data: { cause: cause.kind, stepsLost: lost, resumeStep: committed, delayMs: decision.delayMs, detectedAtMs: detectedAt },
          update: (s) => {
            this.closeAttempt(s, a, "failed", reason, lastStep);
            s.restarts += 1;
            s.notBeforeMs = this.ctx.now() + decision.delayMs;
          },
        });
        this.ctx.live.markRecovering(a.jobId, a.stage, failedAtMs ?? detectedAt);
      }
    }
    this.release(a);
  }

  /**
   * Graceful stop: ranks stop after an agreed step (checkpointing first when
   * asked); SIGTERM after the grace period, SIGKILL 5 s later. A gang that has
   * not formed has nothing to save: it is torn down at once.
   */
  async stop(a: Attempt, opts: { checkpoint: boolean; reason: string; graceSeconds: number | null }): Promise<void> {
    const step = a.nextSafeStep();
    if (!a.apply({ type: "stop", stopAt: { step, checkpoint: opts.checkpoint } })) {
      // Already stopping or over: its own path ends it.
      await a.allExited;
      return;
    }
    const formed = a.phase.kind === "stopping";
    const { ledger } = this.ctx;
    await ledger.transition(a.jobId, a.stage, "STOPPING", `${opts.reason}${opts.checkpoint && formed ? `; checkpoint at step ${step}` : ""}`, { attempt: a.attempt });
    if (!formed) {
      await this.teardown(a, opts.reason);
    } else {
      a.broadcast({ $case: "stopAt", value: { step: opts.checkpoint ? step : 0, checkpoint: opts.checkpoint, reason: opts.reason, preempt: false } });
      const grace = (opts.graceSeconds ?? a.spec.failure.grace_seconds) * 1000;
      if (!(await settlesWithin(this.ctx.timers, a.allExited, grace))) {
        this.ctx.log(a.jobId, a.stage, a.attempt, `ranks still running ${grace / 1000} s after the stop command: SIGTERM`);
        await this.signalRanks(a, "SIGTERM");
        if (!(await settlesWithin(this.ctx.timers, a.allExited, TERM_WAIT_MS))) {
          this.ctx.log(a.jobId, a.stage, a.attempt, "ranks still running 5 s after SIGTERM: SIGKILL");
          await this.signalRanks(a, "SIGKILL");
          await settlesWithin(this.ctx.timers, a.allExited, EXIT_WAIT_MS);
        }
      }
    }
    a.apply({ type: "end", why: "stopped" });
    this.ctx.live.forgetSessions(a);
    const lastStep = a.lastStep;
    const saved = opts.checkpoint && a.lastCommittedStep >= step;
    await ledger.transition(a.jobId, a.stage, "CANCELLED", saved ? `${opts.reason}; checkpoint committed at step ${a.lastCommittedStep}` : opts.reason, {
      unlessTerminal: true,
      attempt: a.attempt,
      update: (s) => this.closeAttempt(s, a, "cancelled", opts.reason, lastStep),
    });
    this.release(a);
  }

  /**
   * A rank received the preemption signal: every rank checkpoints at one
   * agreed step and exits; once that checkpoint is committed the stage
   * restarts from it at once, counted in `preemptions`, not `restarts`
   * (policy.ts decidePreemption). A gang that has not formed, or an
   * evaluation, has nothing new to save: it is torn down and restarts from
   * the checkpoint it started from. A rank dying before the commit, or ranks
   * still running grace_seconds after the stop command, fail the attempt
   * instead (the failure path and its budget). Later requests (other ranks
   * got the same signal) and requests during another ending are ignored.
   */
  async preempt(a: Attempt, reason: string): Promise<void> {
    const step = a.nextSafeStep();
    if (!a.apply({ type: "stop", stopAt: { step, checkpoint: true, preempt: true } })) return;
    const formed = a.phase.kind === "stopping";
    // An evaluation keeps no state between its steps, and a recaption's state is its committed shards
    // (persisted as each one finishes): like a gang that has not formed, they have nothing to save.
    const saves = formed && a.spec.task !== "eval" && a.spec.task !== "recaption";
    const { ledger, metrics } = this.ctx;
    const why = `preempted: ${reason}`;
    const nothing = `${why}; ${formed ? (a.spec.task === "recaption" ? "a recaption (its committed shards are kept)" : "an evaluation") : "before the gang formed"}, nothing to save`;
    await ledger.transition(a.jobId, a.stage, "STOPPING", saves ? `${why}; checkpoint at step ${step}` : nothing, {
      attempt: a.attempt,
      data: { preempt: true, stopStep: saves ? step : 0 },
    });
    if (!saves) {
      if (formed && !a.apply({ type: "end", why: "stopped" })) return;
      await this.teardown(a, why);
    } else {
      a.broadcast({ $case: "stopAt", value: { step, checkpoint: true, reason: why, preempt: true } });
      const grace = a.spec.failure.grace_seconds;
      const saved = a.allExited.then(() => settlesWithin(this.ctx.timers, a.committedAt(step), COMMIT_WAIT_MS));
      const inTime = await settlesWithin(this.ctx.timers, saved, grace * 1000);
      if (a.over) return; // a rank died on the way (or the gang finished): that path owns the attempt
      if (a.lastCommittedStep < step) {
        a.fail({ kind: "checkpoint", message: `preemption: the checkpoint at step ${step} was not committed within ${grace} s (failure.grace_seconds)` });
        return;
      }
      if (!a.apply({ type: "end", why: "stopped" })) return;
      if (!inTime) await this.teardown(a, `${why}; checkpoint committed, stragglers killed`);
      this.ctx.live.forgetSessions(a);
    }
    const job = ledger.get(a.jobId);
    const stage = stageRecordOf(job, a.stage);
    if (!stage) return;
    const lastStep = a.lastStep;
    const resumeStep = Math.max(a.lastCommittedStep, newestCommitted(stage)?.step ?? 0);
    const labels = { job_id: a.jobId, stage: a.stage };
    if (job.cancelRequested) {
      await ledger.transition(a.jobId, a.stage, "CANCELLED", `cancelled by user (while preempted: ${reason})`, {
        attempt: a.attempt,
        unlessTerminal: true,
        update: (s) => this.closeAttempt(s, a, "preempted", why, lastStep),
      });
    } else {
      const decision = decidePreemption(stage.preemptions ?? 0, a.spec.failure, reason);
      metrics.preemptions.inc(labels);
      await ledger.note(a.jobId, a.stage, "preemption", `${why}; ${saves ? `checkpoint committed at step ${resumeStep}` : `nothing to save, resuming from step ${resumeStep}`}`, {
        attempt: a.attempt,
        data: { resumeStep, preemptions: (stage.preemptions ?? 0) + 1 },
      });
      if (decision.action === "fail") {
        await ledger.transition(a.jobId, a.stage, "FAILED", decision.reason, {
          attempt: a.attempt,
          data: { cause: "preempt" },
          update: (s) => {
            this.closeAttempt(s, a, "preempted", why, lastStep);
            s.preemptions = (s.preemptions ?? 0) + 1;
          },
        });
      } else {
        const n = (stage.preemptions ?? 0) + 1;
        await ledger.transition(a.jobId, a.stage, "RESTARTING", `${decision.reason}; restarting from step ${resumeStep} (preemption ${n}, not a failure)`, {
          attempt: a.attempt,
          data: { cause: "preempt", resumeStep, delayMs: 0, preemptions: n },
          update: (s) => {
            this.closeAttempt(s, a, "preempted", why, lastStep);
            s.preemptions = (s.preemptions ?? 0) + 1;
            s.notBeforeMs = null;
          },
        });
      }
    }
    this.release(a);
  }

  /** Every rank finished: wait for clean exits, record results, free the slots, start what was waiting. */
  async succeed(a: Attempt): Promise<void> {
    if (!a.apply({ type: "end", why: "succeeded" })) return;
    const clean = await settlesWithin(this.ctx.timers, a.allExited, a.spec.failure.grace_seconds * 1000);
    if (!clean) await this.teardown(a, "finished; stragglers killed");
    this.ctx.live.forgetSessions(a);
    const fin = a.ranks[0]?.finished;
    const metrics = this.progress.bounded(a, fin?.metrics ?? {});
    await this.ctx.ledger.transition(a.jobId, a.stage, "SUCCEEDED", a.spec.command && !fin?.step ? `every rank exited 0` : `finished ${fin?.step ?? a.totalSteps} steps`, {
      attempt: a.attempt,
      data: { finalParamsSha256: fin?.finalParamsSha256 ?? "", metrics },
      update: (s) => {
        this.closeAttempt(s, a, "succeeded", "finished", fin?.step ?? a.totalSteps);
        Object.assign(s.metrics, metrics);
        s.finalParamsSha256 = fin?.finalParamsSha256 ?? "";
      },
    });
    this.ctx.metrics.jobFinished(a.jobId, this.ctx.now());
    this.release(a);
  }

  /** Kill every process of the attempt and wait until they are gone. */
  private async teardown(a: Attempt, why: string): Promise<void> {
    a.broadcast({ $case: "fenced", value: { reason: why } });
    this.ctx.live.forgetSessions(a);
    await this.signalRanks(a, "SIGKILL");
    await settlesWithin(this.ctx.timers, a.allExited, EXIT_WAIT_MS);
    for (const r of a.ranks) r.session?.end();
  }

  /** Before killing a hung gang: every rank prints the Python stack of each thread (faulthandler on SIGUSR2). */
  private async dumpStacks(a: Attempt): Promise<void> {
    this.ctx.log(a.jobId, a.stage, a.attempt, `asking every rank for a stack dump (${STACK_DUMP_SIGNAL}) before teardown`);
    await Promise.all(
      a.ranks.map(async (r) => {
        if (!r.proc || r.exit) return;
        await r.proc.signal("SIGCONT").catch(() => undefined);
        await r.proc.signal(STACK_DUMP_SIGNAL).catch(() => undefined);
      }),
    );
    await sleepOn(this.ctx.timers, STACK_DUMP_WAIT_MS);
  }

  /** Signals every rank process of the attempt that is still running (its whole process group). */
  private async signalRanks(a: Attempt, sig: NodeJS.Signals): Promise<void> {
    await Promise.all(a.ranks.map((r) => (r.proc && !r.exit ? r.proc.signal(sig).catch(() => undefined) : Promise.resolve())));
  }

  /** Records how an attempt ended on its stage record (inside a ledger update), with the ranks' last facts and the progress. */
  private closeAttempt(s: StageRecord, a: Attempt, outcome: AttemptOutcome, reason: string, lastStep: number): void {
    const rec = s.attempts.find((x) => x.number === a.attempt);
    if (rec) {
      rec.outcome = outcome;
      rec.reason = reason;
      rec.endedAtMs = this.ctx.now();
      rec.lastStep = lastStep;
    }
    // The ranks' last facts and the progress (which may move lastStep to the last reported step).
    this.progress.applyWithRanks(s, a);
  }

  /** Frees the attempt's slots and takes it out of the live table; a scheduling pass may start what waited. */
  private release(a: Attempt): void {
    a.apply({ type: "close" });
    // The stage is over: its warm spares go with it (a restart keeps them for its next attempt).
    if (isTerminal(stageRecordOf(this.ctx.ledger.get(a.jobId), a.stage)?.state ?? "FAILED")) void dropFinishedSpares(this.ctx, [this.ctx.deps.launchers.local, this.ctx.deps.launchers.ssh]);
    this.ctx.live.remove(a);
    this.ctx.scheduler.release(a.jobId, a.stage);
    if (isTerminal(this.ctx.ledger.get(a.jobId).state)) this.ctx.metrics.jobFinished(a.jobId, this.ctx.now());
    this.ctx.wake();
  }
}
