/** launcher: starting and stopping worker ranks (local processes; SSH in ssh.ts). */
export { LocalLauncher, freeLocalPort, signalGroup } from "./local.js";
export { forEachLine } from "./lines.js";
export { DEFAULT_PYTHON_CANDIDATES, resolvePython } from "./python.js";
export { runSynth, runWorkerCli } from "./synth.js";
export { terminate } from "./types.js";
export type { ExitInfo, LaunchedProcess, LaunchRequest, Launcher } from "./types.js";
