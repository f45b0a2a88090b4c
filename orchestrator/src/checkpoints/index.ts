/** checkpoints: two-phase commit, signed manifests, verification and retention of checkpoint directories. */
export { autoIntervalS, estimatedMtbfS, MAX_CHECKPOINT_OVERHEAD, type IntervalInput } from "./interval.js";
export {
  checkpointDirName,
  commitManifest,
  importCheckpoint,
  importOpenClipWeights,
  MANIFEST_NAME,
  readForeignCheckpoint,
  readImportedManifest,
  readManifestBytes,
  readRecordedManifest,
  recordedManifestProblem,
  readVerifiedManifest,
  removeCheckpointDir,
  retentionVictims,
  sha256File,
  sha256Hex,
  signManifestBytes,
  SIGNATURE_NAME,
  uncommittedDirs,
  verifyCheckpoint,
  verifyFiles,
} from "./catalogue.js";
export type { CheckpointManifest, VerifiedManifest } from "./catalogue.js";
export { KEYS_DIR, loadOrCreateSigningKey, ManifestSigner, ManifestVerifier, PUBLIC_KEY_FILE, readPublicKey, readSigningKey, SIGNING_KEY_FILE } from "./signing.js";
