/**
 * `delete`: removes an ended job for good. Crash-safe by order: the record is
 * tombstoned first (every read hides the job from then on), then the files go
 * (checkpoints, logs, step history, run dirs), and the record last; a crash
 * anywhere leaves a hidden tombstone that the next `delete` finishes, never a
 * half job that `list` shows. Only what lies under the job's own directories
 * is removed, and no symlink is followed out of them.
 */
import { lstatSync, readdirSync, realpathSync, rmSync, type Stats } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { FailedPreconditionError, isTerminal, type JobRecord } from "../domain/index.js";
import type { JobContext } from "./context.js";
import { JOB_FILE as JOB_RECORD_FILE } from "../store/index.js";

/** What a delete removed. */
export interface DeleteResult {
  jobId: string;
  freedBytes: number;
  checkpointsKept: boolean;
}

export class Deletion {
  constructor(private readonly ctx: JobContext) {}

  /** Deletes an ended job (or finishes an interrupted delete); refuses a live one. */
  async delete(id: string, opts: { keepCheckpoints: boolean }): Promise<DeleteResult> {
    const { ledger, deps } = this.ctx;
    const job = ledger.getTombstoned(id);
    const live = job.stages.some((s) => this.ctx.live.has(id, s.name));
    if (!isTerminal(job.state) || live) {
      throw new FailedPreconditionError(`job ${id} is ${job.state}: cancel it first (\`clipfleet cancel ${id}\`) or pass --force to cancel and delete it`);
    }
    if (job.deletingSinceMs === undefined) {
      await ledger.update(id, (j) => {
        j.deletingSinceMs = this.ctx.now();
      });
    }
    await deps.deleteGate?.(id);
    deps.logs.close(id);
    let freed = 0;
    if (!opts.keepCheckpoints) for (const root of checkpointRoots(job, deps.stateDir)) freed += removeTree(root.base, root.dir);
    // The job's own directory: everything but the record, which goes last (the file store keeps it there).
    const jobsDir = join(deps.stateDir, "jobs");
    const jobDir = join(jobsDir, id);
    for (const name of listDir(jobDir)) if (name !== JOB_RECORD_FILE) freed += removeTree(jobsDir, join(jobDir, name));
    await ledger.remove(id);
    freed += removeTree(jobsDir, jobDir);
    await this.ctx.metrics.forgetJob(id);
    deps.scope?.delete(id);
    return { jobId: id, freedBytes: freed, checkpointsKept: opts.keepCheckpoints };
  }
}

/**
 * The job's checkpoint roots, once each: `<checkpoint.dir or state-dir/checkpoints>/<job id>`
 * of each stage, and the root of every recorded checkpoint laid out as
 * `<base>/<job id>/<stage>/<step dir>` (written under another state dir, e.g.
 * by a server that shared a NATS store). Other recorded folders (imports) are not the job's.
 */
export function checkpointRoots(job: JobRecord, stateDir: string): { base: string; dir: string }[] {
  const seen = new Map<string, { base: string; dir: string }>();
  const add = (base: string): void => {
    const dir = join(base, job.id);
    seen.set(dir, { base, dir });
  };
  for (const st of job.spec.stages) add(resolve(st.checkpoint.dir ?? join(stateDir, "checkpoints")));
  for (const stage of job.stages) {
    for (const c of stage.checkpoints) {
      const stageDir = dirname(resolve(c.dir));
      const jobDir = dirname(stageDir);
      if (basename(stageDir) === stage.name && basename(jobDir) === job.id) add(dirname(jobDir));
    }
  }
  return [...seen.values()];
}

/**
 * Removes `target` (a file or a tree) if it lies inside `base`, returning the
 * bytes freed. `base` may itself be reached through a symlink (checkpoints on
 * another disk); below it nothing is followed: a symlink is removed as a link.
 */
export function removeTree(base: string, target: string): number {
  let st: Stats;
  try {
    st = lstatSync(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return 0;
    throw err;
  }
  const realBase = realpathOrSelf(base);
  const parent = realpathOrSelf(resolve(target, ".."));
  const rel = relative(realBase, join(parent, target.split(sep).at(-1) ?? ""));
  if (rel === "" || rel.startsWith("..") || isAbsolute(rel)) {
    throw new FailedPreconditionError(`refusing to delete ${target}: it is not inside ${base}`);
  }
  const bytes = treeBytes(target, st);
  rmSync(target, { recursive: true, force: true });
  return bytes;
}

/** Bytes of the regular files of a tree, symlinks not followed. */
function treeBytes(path: string, st: Stats): number {
  if (st.isSymbolicLink()) return 0;
  if (!st.isDirectory()) return st.size;
  let sum = 0;
  for (const name of listDir(path)) {
    const child = join(path, name);
    sum += treeBytes(child, lstatSync(child));
  }
  return sum;
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw err;
  }
}

function realpathOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
}
