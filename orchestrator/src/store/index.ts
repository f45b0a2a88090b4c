/** store: durable job records (JobStore), on files or on a NATS JetStream KV bucket. */
export { RevisionConflictError, type JobStore, type StoredJob } from "./store.js";
export { FileJobStore, JOB_FILE } from "./file-store.js";
export { NatsKvJobStore, DEFAULT_BUCKET, type NatsKvStoreOptions } from "./nats-kv-store.js";
export { LOCK_FILE, StateDirLock, type LockHolder } from "./lock.js";
export { openStore } from "./open.js";
