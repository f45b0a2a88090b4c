/** `clipfleet completion`: print the bash/zsh completion script (yargs generates it from the command tree). */
import type { Argv } from "yargs";
import type { Command } from "../command.js";
import type { GlobalArgs } from "../context.js";

/**
 * The script's completions come from yargs' hidden `--get-yargs-completions`
 * (enabled in cli/index.ts); this command only prints the script, with help
 * and examples like every other command.
 */
export const completionCommand: Command = () => {
  let parser: Argv<GlobalArgs> | null = null;
  return {
    command: "completion",
    describe: "Print a bash/zsh completion script (add it to ~/.bashrc)",
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
