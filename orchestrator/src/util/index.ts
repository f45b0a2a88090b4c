/** util: filesystem primitives with no knowledge of jobs (imports nothing from the project). */
export { atomicWriteFileSync, fsyncDir } from "./atomic.js";
