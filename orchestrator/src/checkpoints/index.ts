/** checkpoints: two-phase commit, verification and retention of checkpoint directories. */
export {
  checkpointDirName,
  commitManifest,
  MANIFEST_NAME,
  readManifest,
  removeCheckpointDir,
  retentionVictims,
  sha256File,
  sha256Hex,
  uncommittedDirs,
  verifyCheckpoint,
} from "./catalogue.js";
export type { CheckpointManifest } from "./catalogue.js";
