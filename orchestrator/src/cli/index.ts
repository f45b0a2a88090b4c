/**
 * cli: the `clipfleet` command line (yargs), one file per verb under
 * commands/. Errors become one line and an exit code here, in one place;
 * --verbose adds the stack.
 */
import yargs from "yargs";
import { asClipfleetError, ClipfleetError, InvalidArgumentError } from "../domain/index.js";
import type { CliState, Command } from "./command.js";
import { EXIT, exitCodeOf, type CliDeps, type GlobalArgs } from "./context.js";
import { auditCommand } from "./commands/audit.js";
import { cancelCommand } from "./commands/cancel.js";
import { certsCommand } from "./commands/certs.js";
import { checkpointCommand, checkpointsCommand } from "./commands/checkpoint.js";
import { manifestsCommand } from "./commands/manifests.js";
import { cordonCommand, uncordonCommand } from "./commands/cordon.js";
import { completeJobRefs, completionCommand, type CompletionArgs } from "./commands/completion.js";
import { dataCommand } from "./commands/data.js";
import { listCommand } from "./commands/list.js";
import { logsCommand } from "./commands/logs.js";
import { nodesCommand } from "./commands/nodes.js";
import { reportCommand } from "./commands/report.js";
import { resumeCommand } from "./commands/resume.js";
import { runCommand } from "./commands/run.js";
import { launchCommand } from "./commands/launch.js";
import { serverCommand } from "./commands/server.js";
import { statusCommand } from "./commands/status.js";
import { submitCommand } from "./commands/submit.js";
import { schemaCommand, validateCommand } from "./commands/validate.js";
import { watchCommand } from "./commands/watch.js";

export type { CliDeps, EmbedOptions, EmbeddedOrchestrator } from "./context.js";
export { EXIT, exitCodeOf } from "./context.js";
export { ProgressView, renderBar, renderLine, fmtDuration } from "./progress.js";
export { INFO_FILE, type OrchestratorInfoFile } from "./offline.js";

const COMMANDS: Command<never>[] = [
  runCommand,
  launchCommand,
  serverCommand,
  certsCommand,
  submitCommand,
  statusCommand,
  listCommand,
  logsCommand,
  watchCommand,
  cancelCommand,
  resumeCommand,
  checkpointCommand,
  checkpointsCommand,
  manifestsCommand,
  nodesCommand,
  cordonCommand,
  uncordonCommand,
  auditCommand,
  reportCommand,
  validateCommand,
  schemaCommand,
  dataCommand,
  completionCommand,
] as Command<never>[];

/** yargs intercepts its completion command before any handler runs; ours needs another name to have help and examples. */
const COMPLETION_HIDDEN_COMMAND = "completion-script";

/** Parses `argv`, runs the command, and returns the exit code (never throws). */
export async function runCli(argv: string[], deps: CliDeps): Promise<number> {
  const state: CliState = { exitCode: EXIT.OK };
  // `clipfleet list | head`: a closed pipe ends the command quietly, as for any Unix tool.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EPIPE") process.exit(state.exitCode);
      throw err;
    });
  }
  const verbose = argv.includes("--verbose");
  const parser = yargs(argv)
    .scriptName("clipfleet")
    .usage("$0 <command> [options]\n\nTrain CLIP-style models data-parallel on a fleet of nodes.")
    .option("server", { type: "string", describe: "orchestrator address HOST:PORT (default: $CLIPFLEET_SERVER)", global: true })
    .option("state-dir", {
      type: "string",
      // An empty CLIPFLEET_STATE_DIR means none, as an unset one; the flag wins over both.
      default: process.env.CLIPFLEET_STATE_DIR || ".clipfleet",
      defaultDescription: "$CLIPFLEET_STATE_DIR, else ./.clipfleet",
      describe: "where an embedded orchestrator keeps jobs, logs and checkpoints",
      global: true,
    })
    .option("json", { type: "boolean", default: false, describe: "machine-readable output", global: true })
    .option("verbose", { type: "boolean", default: false, describe: "show stack traces of errors, and which job a name or id prefix named", global: true })
    .option("tls-dir", { type: "string", describe: "client identity for a server with TLS: a folder with ca.crt, client.crt, client.key (default: $CLIPFLEET_TLS_DIR; `clipfleet certs issue` makes one)", global: true })
    .option("python", { type: "string", describe: "worker interpreter with torch (default: $CLIPFLEET_PYTHON, else the first of python3, /usr/bin/python3 that imports torch)", global: true })
    // Hidden: answers the script's --get-yargs-completions; the visible `completion` command prints the script.
    .completion(COMPLETION_HIDDEN_COMMAND, false, (current: string, parsed: unknown, defaults: (cb?: (err: Error | null, c: string[] | undefined) => void) => unknown, done: (c: string[]) => void) => {
      void completeJobRefs(deps, parsed as CompletionArgs, current).then((refs) => (refs ? done(refs) : defaults()));
    })
    .strict()
    .demandCommand(1, "name a command (clipfleet --help lists them)")
    .recommendCommands()
    .version(deps.version)
    .help()
    .alias("h", "help")
    .wrap(Math.min(110, process.stdout.columns || 100))
    .epilogue("Exit codes: 0 succeeded, 1 the job failed, 2 invalid input, 3 orchestrator unreachable or job not found, 4 not allowed (your identity's role is too low).")
    .fail((msg, err) => {
      // Usage errors (a missing argument, an unknown flag) are invalid input: exit 2.
      throw err ?? new InvalidArgumentError(usageMessage(msg, argv, modules));
    });
  const modules = COMMANDS.map((c) => c(deps, state));
  for (const m of modules) parser.command(m as never);
  try {
    await parser.parseAsync();
    return state.exitCode;
  } catch (err) {
    const e = asClipfleetError(err);
    const line = e.message.split("\n")[0] ?? e.message;
    process.stderr.write(`clipfleet: ${e instanceof ClipfleetError && e.code !== "INTERNAL" ? line : `internal error: ${line}`}\n`);
    if (e.code === "INTERNAL" && !verbose) process.stderr.write("clipfleet: run again with --verbose for details\n");
    if (verbose && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return exitCodeOf(e);
  }
}

/**
 * yargs says "Not enough non-option arguments: got 0, need at least 1";
 * users need to hear which argument is missing, so name it from the command's usage.
 */
function usageMessage(msg: string, argv: string[], modules: { command?: string | readonly string[] }[]): string {
  if (!/^Not enough non-option arguments/.test(msg)) return msg;
  const verb = argv.find((a) => !a.startsWith("-"));
  const usage = modules
    .flatMap((m) => (typeof m.command === "string" ? [m.command] : [...(m.command ?? [])]))
    .find((c) => c.split(" ")[0] === verb);
  if (!usage) return msg;
  const required = usage.match(/<[^>]+>/g) ?? [];
  return `${verb}: missing ${required.join(" ")} (usage: clipfleet ${usage})`;
}

export type { GlobalArgs };
