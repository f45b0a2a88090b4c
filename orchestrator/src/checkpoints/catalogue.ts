/**
 * Checkpoints: two-phase commit and retention. Ranks write their files into a
 * fresh directory and report digests; only when every rank has reported does
 * the orchestrator write the directory's manifest (atomically). A directory
 * without a committed manifest is garbage; only committed checkpoints are
 * resumed from or deleted by retention.
 *
 * Signatures are detached (manifest.sig, the 64 raw bytes of the Ed25519
 * signature of manifest.json's exact bytes) rather than a field inside the
 * JSON: nothing has to be canonicalised to be checked, manifest.json keeps
 * its format (schemaVersion 1) for the tools that read it, and an admin can
 * check one offline with openssl alone (`openssl pkeyutl -verify -pubin
 * -inkey manifest-signing.pub -rawin -in manifest.json -sigfile manifest.sig`).
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { InvalidArgumentError, UntrustedCheckpointError, type CheckpointRecord, type CheckpointSpec, type FileDigestRecord, type ImageTowerSpec, type SignedManifestRecord, type Task } from "../domain/index.js";
import { writeFileAtomic } from "../util/index.js";
import type { ManifestSigner, ManifestVerifier } from "./signing.js";

export const MANIFEST_NAME = "manifest.json";
export const SIGNATURE_NAME = "manifest.sig";

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
  /**
   * Only in a manifest made by an import: the init.checkpoint it was made for, and when its files were hashed.
   * `openClip`: open_clip weights (an export directory or a weights file), whose one file lies in `filesDir`.
   */
  importedFrom?: { dir: string; atMs: number; openClip?: { filesDir: string } };
}

/** A manifest whose signature verified, and the sha256 of its bytes. */
export interface VerifiedManifest {
  readonly manifest: CheckpointManifest;
  readonly sha256: string;
}

/**
 * Signs and writes the manifest and returns its sha256. The signature is
 * written first, so manifest.json's rename stays the commit point: a crash
 * between the two leaves an uncommitted directory, never an unsigned commit.
 */
export async function commitManifest(dir: string, manifest: CheckpointManifest, signer: ManifestSigner): Promise<string> {
  const bytes = Buffer.from(JSON.stringify(manifest, null, 2) + "\n", "utf8");
  await signManifestBytes(dir, bytes, signer);
  await writeFileAtomic(join(dir, MANIFEST_NAME), bytes, 0o644);
  return sha256Hex(bytes);
}

/** Writes manifest.sig for the exact bytes of a manifest (a commit, or an admin adopting a checkpoint). */
export async function signManifestBytes(dir: string, bytes: Uint8Array, signer: ManifestSigner): Promise<void> {
  await writeFileAtomic(join(dir, SIGNATURE_NAME), signer.sign(bytes), 0o644);
}

/**
 * Reads a committed manifest and checks its signature: null when the
 * directory has no manifest.json (not committed); UntrustedCheckpointError,
 * naming the directory, when manifest.sig is missing or does not verify.
 */
export function readVerifiedManifest(dir: string, verifier: ManifestVerifier): VerifiedManifest | null {
  const bytes = readManifestBytes(dir);
  if (bytes === null) return null;
  let signature: Buffer;
  try {
    signature = readFileSync(join(dir, SIGNATURE_NAME));
  } catch {
    throw new UntrustedCheckpointError(
      dir,
      `${dir}: manifest.json has no ${SIGNATURE_NAME} (committed by a clipfleet older than signed manifests, or stripped); an admin adopts it with \`clipfleet manifests sign ${dir}\``,
    );
  }
  if (!verifier.verify(bytes, signature)) {
    throw new UntrustedCheckpointError(
      dir,
      `${dir}: ${SIGNATURE_NAME} does not verify with this orchestrator's key (${verifier.fingerprint}): the manifest was changed, or another orchestrator signed it; an admin adopts it with \`clipfleet manifests sign ${dir}\``,
    );
  }
  return { manifest: JSON.parse(bytes.toString("utf8")) as CheckpointManifest, sha256: sha256Hex(bytes) };
}

/**
 * Imports a checkpoint directory this orchestrator did not commit (another
 * orchestrator's, or one older than signed manifests): its files are hashed
 * now and must match its manifest; the result is a manifest naming the
 * directory, signed with this orchestrator's key, for the job's record. A
 * file swapped afterwards no longer matches the digest taken here.
 */
export async function importCheckpoint(dir: string, signer: ManifestSigner, nowMs: number): Promise<SignedManifestRecord> {
  const source = await readForeignCheckpoint(dir, "init.checkpoint");
  const manifest: CheckpointManifest = { ...source, importedFrom: { dir, atMs: nowMs } };
  const text = JSON.stringify(manifest, null, 2) + "\n";
  return { text, signature: signer.sign(Buffer.from(text, "utf8")).toString("base64") };
}

/**
 * Submit of open_clip weights as init.checkpoint `ref` (an export directory or
 * a weights file; `weights` the file the worker runtime checked against the
 * stage's towers): the file hashed now into a manifest this orchestrator
 * signs, so the rank loads exactly these bytes. `imageTower` is the stage's
 * own, since the check proved the weights fit it.
 */
export async function importOpenClipWeights(ref: string, weights: string, imageTower: ImageTowerSpec, signer: ManifestSigner, nowMs: number): Promise<SignedManifestRecord> {
  const filesDir = dirname(weights);
  if (weights !== ref && filesDir !== ref) throw new InvalidArgumentError(`init.checkpoint: ${weights} is not inside ${ref}`, "init.checkpoint");
  const manifest: CheckpointManifest = {
    schemaVersion: 1,
    jobId: "",
    stage: "",
    task: "pretrain",
    step: 0,
    attempt: 0,
    worldSize: 0,
    configSha256: "",
    cursor: { epoch: 0, sampleInEpoch: 0 },
    imageTower,
    files: [{ path: basename(weights), sha256: await sha256File(weights), size: statSync(weights).size }],
    committedAtMs: nowMs,
    importedFrom: { dir: ref, atMs: nowMs, openClip: { filesDir } },
  };
  const text = JSON.stringify(manifest, null, 2) + "\n";
  return { text, signature: signer.sign(Buffer.from(text, "utf8")).toString("base64") };
}

/**
 * The manifest of a checkpoint directory whose signature is not (yet) to be
 * trusted, once its files were hashed and match it: a clipfleet manifest
 * whose paths stay inside the directory. Errors name `field` and the directory.
 */
export async function readForeignCheckpoint(dir: string, field: string): Promise<CheckpointManifest & { readonly bytes: Buffer }> {
  const bytes = readManifestBytes(dir);
  if (bytes === null) throw new InvalidArgumentError(`${field}: ${dir} has no manifest.json: not a committed checkpoint directory`, field);
  let source: CheckpointManifest | null = null;
  try {
    source = JSON.parse(bytes.toString("utf8")) as CheckpointManifest;
  } catch {
    // reported below
  }
  if (source?.schemaVersion !== 1 || !Array.isArray(source.files) || source.files.length === 0) {
    throw new InvalidArgumentError(`${field}: ${dir}/manifest.json is not a clipfleet checkpoint manifest (schemaVersion 1 with files)`, field);
  }
  const files = source.files.map((f) => ({ path: String(f.path), sha256: String(f.sha256), size: Number(f.size) }));
  const bad = files.find((f) => !isPlainRelative(f.path));
  if (bad) throw new InvalidArgumentError(`${field}: ${dir}/manifest.json names a file outside the directory: ${JSON.stringify(bad.path.slice(0, 200))}`, field);
  const problem = await verifyCheckpoint({ dir, files });
  if (problem) throw new InvalidArgumentError(`${field}: ${dir}: its files do not match its manifest: ${problem}`, field);
  return { ...source, files, bytes };
}

/** The manifest of an import kept in a job's record, once its signature verifies and it names `dir`. */
export function readImportedManifest(imported: SignedManifestRecord, dir: string, verifier: ManifestVerifier): VerifiedManifest {
  const bytes = Buffer.from(imported.text, "utf8");
  if (!verifier.verify(bytes, Buffer.from(imported.signature, "base64"))) {
    throw new UntrustedCheckpointError(dir, `${dir}: the manifest imported at submit does not verify with this orchestrator's key (${verifier.fingerprint}); submit the job again to import the checkpoint anew`);
  }
  const manifest = JSON.parse(imported.text) as CheckpointManifest;
  if (manifest.importedFrom?.dir !== dir) throw new UntrustedCheckpointError(dir, `${dir}: the manifest imported at submit is for ${manifest.importedFrom?.dir ?? "another directory"}`);
  return { manifest, sha256: sha256Hex(bytes) };
}

/** A relative path without `..` (a foreign manifest's file must stay inside its directory). */
function isPlainRelative(path: string): boolean {
  return path !== "" && !path.startsWith("/") && !path.includes("\0") && !path.split("/").includes("..");
}

/**
 * A recorded checkpoint's manifest, verified, and saying what the record
 * says (job, stage, step): a record edited in the store cannot point at
 * another job's signed checkpoint. Null when the directory has no
 * manifest.json; UntrustedCheckpointError otherwise.
 */
export function readRecordedManifest(c: Pick<CheckpointRecord, "dir" | "step">, jobId: string, stage: string, verifier: ManifestVerifier): VerifiedManifest | null {
  const v = readVerifiedManifest(c.dir, verifier);
  if (v && (v.manifest.jobId !== jobId || v.manifest.stage !== stage || v.manifest.step !== c.step)) {
    throw new UntrustedCheckpointError(
      c.dir,
      `${c.dir}: its signed manifest is job ${v.manifest.jobId} stage ${v.manifest.stage} step ${v.manifest.step}, the record says job ${jobId} stage ${stage} step ${c.step}`,
    );
  }
  return v;
}

/** Why a recorded checkpoint must not be used or deleted (no manifest, not signed by `verifier`, another's), or null. */
export function recordedManifestProblem(c: Pick<CheckpointRecord, "dir" | "step">, jobId: string, stage: string, verifier: ManifestVerifier): string | null {
  try {
    return readRecordedManifest(c, jobId, stage, verifier) === null ? `${c.dir}: manifest.json missing` : null;
  } catch (err) {
    if (err instanceof UntrustedCheckpointError) return err.message;
    throw err;
  }
}

/** The bytes of a directory's manifest.json, or null when it has none. Unverified: callers check them. */
export function readManifestBytes(dir: string): Buffer | null {
  const file = join(dir, MANIFEST_NAME);
  if (!existsSync(file)) return null;
  return readFileSync(file);
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
  return verifyFiles(ckpt);
}

/** Checks that every file is in `dir` with its size and digest (an imported open_clip file has no manifest.json beside it). */
export async function verifyFiles(ckpt: Pick<CheckpointRecord, "dir" | "files">): Promise<string | null> {
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
