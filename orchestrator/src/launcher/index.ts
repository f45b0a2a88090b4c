/** launcher: starting and stopping worker ranks (local processes; SSH in ssh.ts, its command lines in ssh-command.ts; Slurm allocations and steps in slurm.ts, parsing Slurm's output in slurm-parse.ts); node preflight. */
export { LocalLauncher, freeLocalPort, signalGroup } from "./local.js";
export { forEachLine } from "./lines.js";
export { DEFAULT_PYTHON_CANDIDATES, resolvePython } from "./python.js";
export { checkOpenClipWeights, checkPluginEntryPoint, runSynth, runWorkerCli } from "./synth.js";
export { terminate } from "./types.js";
export { CRASH_WINDOW_MS, MAX_SPARE_CRASHES, SpareBook, SparePool, parseSpareLine } from "./spares.js";
export type { SpareEntry, SpareProcess, SpareRequest, SpareState } from "./spares.js";
export type { ExitInfo, LaunchedProcess, LaunchRequest, Launcher } from "./types.js";
export {
  HostKeyError,
  KnownHostsFile,
  defaultKnownHostsPath,
  entryMatches,
  fingerprintSha256,
  keyTypeOf,
  knownHostLine,
  knownHostName,
  parseKnownHosts,
  verifyHostKey,
} from "./known-hosts.js";
export type { HostKeyVerdict, KnownHostEntry } from "./known-hosts.js";
export { SshLauncher } from "./ssh.js";
export { PID_LINE, hostKeyAlgorithms, killCommand, shellQuote, spareCommand, workerCommand, workerStdin } from "./ssh-command.js";
export type { HostKeyInfo, RemoteResult, SshLauncherOptions } from "./ssh.js";
export { AllocationAborted, SlurmLauncher, sbatchArgs, srunArgs } from "./slurm.js";
export type { AllocatedNode, Allocation, AllocationRequest, SlurmLauncherOptions } from "./slurm.js";
export { allocationLive, blameNode, expandHostlist, gresGpus, parseSbatch, parseScontrolJob, parseSinfo, parseSqueue, srunTaskSignal } from "./slurm-parse.js";
export type { SqueueJob } from "./slurm-parse.js";
export { checkNodes } from "./preflight.js";
export type { PreflightOptions } from "./preflight.js";
