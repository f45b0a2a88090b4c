/**
 * Checkpoints: two-phase commit and retention. Ranks write their files into a
 * fresh directory and report digests; only when every rank has reported does
 * the orchestrator write the directory's manifest (atomically). A directory
 * without a committed manifest is garbage; only committed checkpoints are
 * resumed from or deleted by retention.
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { CheckpointRecord, CheckpointSpec, FileDigestRecord, ImageTowerSpec, Task } from "../domain/index.js";
import { writeFileAtomic } from "../util/index.js";

export const MANIFEST_NAME = "manifest.json";

/** What a committed checkpoint directory says about itself. */
export interface CheckpointManifest {
  schemaVersion: 1;
  jobId: string;
  stage: string;
  task: Task;
  step: number;
  attempt: number;
  worldSize: number;
  configSha256: string;
  cursor: { epoch: number; sampleInEpoch: number };
  /** The image tower the weights belong to, checked when a fine-tune initialises from it. */
  imageTower: ImageTowerSpec;
  files: FileDigestRecord[];
  committedAtMs: number;
}

/** Writes the manifest (the commit point) and returns its sha256. */
export async function commitManifest(dir: string, manifest: CheckpointManifest): Promise<string> {
  const text = JSON.stringify(manifest, null, 2) + "\n";
  await writeFileAtomic(join(dir, MANIFEST_NAME), text, 0o644);
  return sha256Hex(Buffer.from(text, "utf8"));
}

/** Reads a committed manifest, or null when the directory has none (not committed). */
export function readManifest(dir: string): CheckpointManifest | null {
  const file = join(dir, MANIFEST_NAME);
  if (!existsSync(file)) return null;
  return JSON.parse(readFileSync(file, "utf8")) as CheckpointManifest;
}

export function sha256Hex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** sha256 of a file, streamed. */
export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path)
      .on("data", (chunk) => h.update(chunk))
      .on("error", reject)
      .on("end", () => resolve(h.digest("hex")));
  });
}

/**
 * Checks that every file of a committed checkpoint is there with its size and
 * digest. Returns null when intact, else the reason (naming the file).
 */
export async function verifyCheckpoint(ckpt: Pick<CheckpointRecord, "dir" | "files">): Promise<string | null> {
  if (!existsSync(join(ckpt.dir, MANIFEST_NAME))) return `${ckpt.dir}: manifest.json missing`;
  for (const f of ckpt.files) {
    const path = join(ckpt.dir, f.path);
    if (!existsSync(path)) return `${f.path} missing`;
    const size = statSync(path).size;
    if (size !== f.size) return `${f.path} has ${size} bytes, manifest says ${f.size}`;
    const digest = await sha256File(path);
    if (digest !== f.sha256) return `${f.path} sha256 ${digest.slice(0, 12)} does not match manifest ${f.sha256.slice(0, 12)}`;
  }
  return null;
}

/**
 * Which committed checkpoints retention removes: all but the newest
 * `keep_last`, except those whose step is a multiple of `keep_every_steps`.
 * Only committed checkpoints are considered; the newest is always kept.
 */
export function retentionVictims(records: readonly CheckpointRecord[], spec: Pick<CheckpointSpec, "keep_last" | "keep_every_steps">): CheckpointRecord[] {
  const committed = records.filter((r) => r.status === "committed").sort((a, b) => b.step - a.step);
  const keep = new Set(committed.slice(0, Math.max(1, spec.keep_last)));
  return committed.filter((r) => {
    if (keep.has(r)) return false;
    if (spec.keep_every_steps && r.step % spec.keep_every_steps === 0) return false;
    return true;
  });
}

/** Deletes a checkpoint directory (manifest first, so a crash mid-delete leaves garbage, never a torn commit). */
export function removeCheckpointDir(dir: string): void {
  rmSync(join(dir, MANIFEST_NAME), { force: true });
  rmSync(dir, { recursive: true, force: true });
}

/** Directories under `root` without a committed manifest, except those in `keep` (being written). */
export function uncommittedDirs(root: string, keep: ReadonlySet<string>): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root, { withFileTypes: true })
    .filter((d) => d.isDirectory() && d.name.startsWith("step-"))
    .map((d) => join(root, d.name))
    .filter((dir) => !keep.has(dir) && !existsSync(join(dir, MANIFEST_NAME)));
}

/** Directory name of a checkpoint: sortable by step, unique per attempt. */
export function checkpointDirName(step: number, attempt: number): string {
  return `step-${String(step).padStart(8, "0")}-a${attempt}`;
}
