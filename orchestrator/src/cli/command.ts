/** The shape of one CLI verb: a yargs command module built from the injected dependencies. */
import type { Argv, CommandModule } from "yargs";
import type { CliDeps, GlobalArgs } from "./context.js";

/** Where a command leaves its exit code (yargs handlers return nothing). */
export interface CliState {
  exitCode: number;
}

export type Command<A = object> = (deps: CliDeps, state: CliState) => CommandModule<GlobalArgs, GlobalArgs & A>;

export type Builder<A> = (y: Argv<GlobalArgs>) => Argv<GlobalArgs & A>;
