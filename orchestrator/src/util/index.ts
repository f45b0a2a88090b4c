/** util: filesystem primitives with no knowledge of jobs (imports nothing from the project). */
export { fsyncDir, isTempFile, writeFileAtomic } from "./atomic.js";
