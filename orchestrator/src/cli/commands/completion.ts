/** `clipfleet completion`: print the bash/zsh completion script (yargs generates it from the command tree). */
import type { Argv } from "yargs";
import type { Command } from "../command.js";
import type { CliDeps, GlobalArgs } from "../context.js";
import { connectOrOpen } from "../offline.js";

/**
 * The script's completions come from yargs' hidden `--get-yargs-completions`
 * (enabled in cli/index.ts); this command only prints the script, with help
 * and examples like every other command.
 */
export const completionCommand: Command = () => {
  let parser: Argv<GlobalArgs> | null = null;
  return {
    command: "completion",
    describe: "Print a bash/zsh completion script (add it to ~/.bashrc); it completes commands, options, and job ids and names",
    builder: (y) => {
      parser = y;
      return y
        .example("$0 completion >> ~/.bashrc", "complete commands and options in new bash shells")
        .example("$0 completion >> ~/.zshrc", "the same for zsh");
    },
    handler: () => {
      // yargs' typings omit the optional ($0, cmd) arguments; cmd names this command in the script's install hint.
      (parser as unknown as { showCompletionScript($0: string, cmd: string): void } | null)?.showCompletionScript("clipfleet", "completion");
    },
  };
};

/** Commands whose first positional is a job (their JOB completes to ids and names). */
const JOB_COMMANDS: ReadonlySet<string> = new Set(["status", "logs", "watch", "cancel", "resume", "checkpoint", "checkpoints", "audit", "report", "delete", "export"]);

/** Commands that take several jobs (`report JOB1 JOB2 ...`): every positional completes to ids and names. */
const MULTI_JOB_COMMANDS: ReadonlySet<string> = new Set(["report"]);

/** What yargs hands a completion function: the words so far and the global options. */
export type CompletionArgs = GlobalArgs & { _: (string | number)[] };

/**
 * Job ids and names starting with `current` when the word being completed is
 * a command's JOB (from --server, the state dir's live orchestrator, or the
 * state dir itself); null otherwise, for yargs' own completions. Quiet: a
 * failure to list completes nothing.
 */
export async function completeJobRefs(deps: CliDeps, args: CompletionArgs, current: string): Promise<string[] | null> {
  const words = args._.map(String);
  // words: [verb, ...positionals so far]; the word being completed is the last one when it is not empty.
  const before = current === "" ? words.length : words.length - 1;
  const verb = words[0];
  if (current.startsWith("-") || verb === undefined || !JOB_COMMANDS.has(verb)) return null;
  if (before !== 1 && !(MULTI_JOB_COMMANDS.has(verb) && before > 1)) return null;
  const refs = new Set<string>();
  try {
    await connectOrOpen(deps, { ...args, json: true }, async (client) => {
      for (const j of (await client.listJobs([], 0)).jobs) {
        refs.add(j.id);
        if (j.name) refs.add(j.name);
      }
    });
  } catch {
    return [];
  }
  return [...refs].filter((r) => r.startsWith(current)).sort();
}
