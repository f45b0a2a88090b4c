/**
 * data: the dataset manifest (shard patterns, sizes.json, _stats.json, tar
 * indexing, remote shards' counts and `data.index` directories), the data plan (which samples each step and rank consume), data
 * cursors, and the exactly-once audit.
 */
export { expandShardPattern } from "../domain/index.js";
export { countTarSamples, firstSamples, sampleKeyOf, TarReader, type TarEntry, type TarSample } from "./tar.js";
export {
  checkFraction,
  locateSample,
  manifestOf,
  peekCaptionSources,
  resolveManifest,
  subsetSize,
  type Manifest,
  type ResolveManifestOptions,
  type ShardInfo,
} from "./manifest.js";
export { fetchJson, indexKey, isGzipName, isRemote, parseIndex, parseSizes, parseStats, readIndexDir, type IndexEntry } from "./remote.js";
export { Permutation, permutationKey } from "./permutation.js";
export { DEFAULT_SHARDS_PAGE, manifestIdOf, MAX_SHARDS_PAGE, MAX_SHARDS_PAGE_BYTES, shardsPage, type ShardsPage } from "./shard-pages.js";
export {
  allowedWorldSizes,
  checkWorldSize,
  DataPlan,
  type DataCursor,
  type DataPlanOptions,
  type StepSlice,
} from "./plan.js";
export { Audit, trajectoryOf, type AuditReport, type EpochAudit, type TrajectorySegment } from "./audit.js";
export { LeaseLedger, type CommitDecision, type LeaseCommitRecord, type LeaseGrant, type OutputDigest } from "./leases.js";
