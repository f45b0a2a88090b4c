/**
 * cli: the `clipfleet` command line (yargs), one file per verb under
 * commands/. Errors become one line and an exit code here, in one place;
 * --verbose adds the stack.
 */
import yargs, { type Argv } from "yargs";
import { asClipfleetError, ClipfleetError, InvalidArgumentError } from "../domain/index.js";
import type { CliState, Command } from "./command.js";
import { EXIT, exitCodeOf, type CliDeps, type GlobalArgs } from "./context.js";
import { SpecValidationError } from "../spec/index.js";
import { auditCommand } from "./commands/audit.js";
import { cancelCommand } from "./commands/cancel.js";
import { certsCommand } from "./commands/certs.js";
import { checkpointCommand, checkpointsCommand } from "./commands/checkpoint.js";
import { manifestsCommand } from "./commands/manifests.js";
import { cordonCommand, uncordonCommand } from "./commands/cordon.js";
import { completeJobRefs, completionCommand, type CompletionArgs } from "./commands/completion.js";
import { dataCommand } from "./commands/data.js";
import { deleteCommand } from "./commands/delete.js";
import { exportCommand } from "./commands/export.js";
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
  deleteCommand,
  checkpointCommand,
  checkpointsCommand,
  manifestsCommand,
  nodesCommand,
  cordonCommand,
  uncordonCommand,
  auditCommand,
  reportCommand,
  exportCommand,
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
  const parser = buildParser(argv, deps, state, Math.min(110, process.stdout.columns || 100));
  try {
    await parser.parseAsync();
    return state.exitCode;
  } catch (err) {
    const e = asClipfleetError(err);
    // A spec's problems are all told at once, one line each (as kubectl and compilers do); other errors by their first line.
    const lines = e instanceof SpecValidationError ? e.message.split("\n") : [e.message.split("\n")[0] ?? e.message];
    for (const line of lines) process.stderr.write(`clipfleet: ${e instanceof ClipfleetError && e.code !== "INTERNAL" ? line : `internal error: ${line}`}\n`);
    if (e.code === "INTERNAL" && !verbose) process.stderr.write("clipfleet: run again with --verbose for details\n");
    if (verbose && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return exitCodeOf(e);
  }
}

/** The root parser with every command; `width`: the columns help is wrapped to. */
function buildParser(argv: string[], deps: CliDeps, state: CliState, width: number): Argv {
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
    .wrap(width)
    .epilogue("Exit codes: 0 succeeded, 1 the job failed, 2 invalid input, 3 orchestrator unreachable or job not found, 4 not allowed (your identity's role is too low).")
    .fail((msg, err) => {
      // Usage errors (a missing argument, an unknown flag) are invalid input: exit 2.
      throw err ?? new InvalidArgumentError(usageMessage(msg, argv, modules));
    });
  const modules = COMMANDS.map((c) => c(deps, state));
  wholeExamples(parser, width);
  for (const m of modules) parser.command(m as never);
  return parser;
}

/**
 * yargs puts an example's description in a second column and wraps the command
 * in the first, mid-command on a narrow terminal; instead each example is a
 * comment line, then the command alone (as kubectl shows them), a long one
 * broken before a flag into shell continuation lines (` \\`) that fit
 * `width`. Applies to every command's parser (they share this instance).
 */
function wholeExamples(parser: Argv, width: number): void {
  const example = parser.example.bind(parser);
  const whole = (cmd: string | [string, string?][], desc?: string): Argv => {
    if (Array.isArray(cmd)) {
      for (const [c, d] of cmd) whole(c, d);
      return parser;
    }
    for (const line of commentLines(desc ?? "", width - 4)) example(line, "");
    for (const line of continuationLines(cmd.replace(/\$0/g, "clipfleet"), width - 4)) example(line, "");
    return parser;
  };
  Object.assign(parser, { example: whole });
}

/**
 * A shell command as lines of at most `width` columns (every line but the
 * last ending in ` \\`), broken before a flag or `--`, so a flag stays with
 * its value (between words only where that does not fit). yargs trims leading
 * blanks, so continuations are not indented.
 */
export function continuationLines(cmd: string, width: number): string[] {
  if (cmd.length <= width) return [cmd];
  const units: string[] = [];
  for (const word of cmd.split(" ")) {
    if (units.length === 0 || word.startsWith("-")) units.push(word);
    else units[units.length - 1] += ` ${word}`;
  }
  const lines: string[] = [];
  let current = "";
  // A flag and its value stay together unless that alone is too long (a long path): then words.
  for (const unit of units.flatMap((u) => (u.length + 2 > width ? u.split(" ") : [u]))) {
    if (current !== "" && current.length + 1 + unit.length + 2 > width) {
      lines.push(current);
      current = unit;
    } else {
      current = current === "" ? unit : `${current} ${unit}`;
    }
  }
  lines.push(current);
  return lines.map((l, i) => (i < lines.length - 1 ? `${l} \\` : l));
}

/** A description as `# ` comment lines of at most `width` columns (none for an empty one). */
function commentLines(desc: string, width: number): string[] {
  const lines: string[] = [];
  for (const word of desc.split(" ").filter((w) => w !== "")) {
    const last = lines.at(-1);
    if (last !== undefined && last.length + 1 + word.length <= width) lines[lines.length - 1] = `${last} ${word}`;
    else lines.push(`# ${word}`);
  }
  return lines;
}

/** Help as `clipfleet ARGV --help` prints it at `width` columns (for tests). */
export async function renderHelp(argv: string[], deps: CliDeps, width: number): Promise<string> {
  const parser = buildParser([...argv, "--help"], deps, { exitCode: EXIT.OK }, width).exitProcess(false);
  return new Promise((resolve, reject) => {
    void parser.parse([...argv, "--help"], {}, (err, _args, output) => (err ? reject(err) : resolve(output)));
  });
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
