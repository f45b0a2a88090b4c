/**
 * Warm spares of a stage (`cluster.spares`, docs/recovery.md): which owner a
 * stage's spares belong to, starting them once an attempt trains (not while
 * its ranks start: on a small node their imports would slow the restart
 * they are meant to speed up), and killing them when the stage is over. The
 * launchers' `SparePool` does the process work; ranks are handed to spares
 * in `launch.ts` through the launch request's `spareOwner`.
 */
import { isTerminal, type StageSpec } from "../domain/index.js";
import type { Launcher } from "../launcher/index.js";
import type { Attempt } from "./attempt.js";
import type { JobContext } from "./context.js";
import type { RankRuntime } from "./runtime.js";

/** The owner key of a stage's spares: a spare only ever becomes a rank of its own job's stage. */
export function spareOwner(jobId: string, stage: string): string {
  return `${jobId}/${stage}`;
}

/** Whether ranks of `spec` may run in spares (a user's `task: command` program is not the worker). */
export function usesSpares(spec: StageSpec): boolean {
  return spec.cluster.spares > 0 && spec.command === null;
}

/**
 * Once `a` reports its first step (or right away when it ends first, then
 * nothing), tops up `cluster.spares` spares on each of its nodes whose
 * launcher keeps spares; `env(r)` is rank r's environment, of which a spare
 * gets the stage's part (no token).
 */
export async function keepSpares(ctx: JobContext, a: Attempt, python: (r: RankRuntime) => { python: string; workdir: string }, env: (r: RankRuntime) => Record<string, string>): Promise<void> {
  if (!usesSpares(a.spec)) return;
  await Promise.race([a.firstStep, a.allExited]);
  if (a.over || ctx.closing) return;
  const seen = new Set<string>();
  for (const r of a.ranks) {
    const pool = r.launcher.spares;
    if (!pool || seen.has(r.node.name)) continue;
    seen.add(r.node.name);
    const where = python(r);
    await pool.keep(
      {
        owner: spareOwner(a.jobId, a.stage),
        node: r.node,
        python: where.python,
        workdir: where.workdir,
        env: { ...env(r), CLIPFLEET_SPARE: "1" },
        log: (line) => ctx.log(a.jobId, a.stage, a.attempt, line),
      },
      a.spec.cluster.spares,
    );
  }
}

/** Kills the spares of every stage that is over (or whose job is gone); resolves once they are. */
export async function dropFinishedSpares(ctx: JobContext, launchers: readonly (Launcher | null | undefined)[]): Promise<void> {
  const done: Promise<void>[] = [];
  for (const l of launchers) {
    const pool = l?.spares;
    if (!pool) continue;
    for (const owner of pool.owners()) {
      const slash = owner.indexOf("/");
      const jobId = owner.slice(0, slash);
      const stage = owner.slice(slash + 1);
      const job = ctx.ledger.has(jobId) ? ctx.ledger.get(jobId) : null;
      const st = job?.stages.find((s) => s.name === stage);
      if (!job || !st || isTerminal(st.state) || job.cancelRequested) done.push(pool.drop(owner));
    }
  }
  await Promise.all(done);
}
