/**
 * `clipfleet launch [options] -- COMMAND ARGS...`: a `task: command` spec
 * built from the command line, run as `clipfleet run` runs a spec file
 * (foreground, progress, summary, --json, exit codes). `--spec-out FILE`
 * writes the spec it built, so a quick launch becomes a reproducible file.
 */
import { mkdirSync } from "node:fs";
import { basename, dirname, extname, relative, resolve } from "node:path";
import { stringify } from "yaml";
import type { ControlClient } from "../../client/index.js";
import type { Job } from "../../gen/clipfleet/v1/control.js";
import { localIdentity } from "../../auth/index.js";
import { asClipfleetError, COMMAND_PYTHON_NAMES, InvalidArgumentError } from "../../domain/index.js";
import { loadPresets, parseSpec } from "../../spec/index.js";
import type { Command } from "../command.js";
import { note } from "../context.js";
import { writeFileAtomic } from "../../util/index.js";
import { embedOptions, orchestratorOptions, type OrchestratorArgs } from "../embedded.js";
import { runJob } from "./run.js";

interface LaunchArgs extends OrchestratorArgs {
  workers: number;
  name?: string;
  "spec-out"?: string;
  grace?: number;
  _: (string | number)[];
  "--"?: (string | number)[];
}

/** A job name from the command: the script's or program's base name, cut to the characters names allow. */
function defaultName(argv: readonly string[]): string {
  const first = argv[0] ?? "launch";
  const target = COMMAND_PYTHON_NAMES.has(first) && argv[1] !== undefined && !argv[1].startsWith("-") ? argv[1] : first;
  const name = basename(target, extname(target)).replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 64);
  return /^[A-Za-z0-9]/.test(name) ? name : "launch";
}

/** The spec `launch` runs: the command in the current directory on `workers` ranks. */
export function launchSpec(argv: readonly string[], o: { workers: number; name?: string; workdir: string }): Record<string, unknown> {
  return { name: o.name ?? defaultName(argv), task: "command", command: [...argv], workdir: o.workdir, cluster: { workers: o.workers } };
}

export const launchCommand: Command<LaunchArgs> = (deps, state) => ({
  command: "launch",
  describe: "Run a command (your own training script) on N ranks with torchrun's environment and clipfleet's fault tolerance",
  builder: (y) =>
    orchestratorOptions(y, "127.0.0.1:0", "embedded")
      .parserConfiguration({ "populate--": true })
      .option("workers", { type: "number", default: 1, describe: "ranks (processes) to start" })
      .option("name", { type: "string", describe: "job name (default: the script's name)" })
      .option("spec-out", { type: "string", describe: "also write the task: command spec this launch runs to FILE (then `clipfleet run FILE` repeats it)" })
      .option("grace", { type: "number", describe: "seconds to wait for ranks to checkpoint and exit on Ctrl-C/SIGTERM" })
      .example("$0 launch --workers 2 -- python train.py --epochs 3", "a torchrun-style script on 2 ranks, restarted on failure")
      .example("$0 launch --workers 4 --inventory nodes.yaml --spec-out train.yaml -- python train.py", "on a fleet over SSH; keep the spec"),
  handler: async (args) => {
    const argv = (args["--"] ?? []).map(String);
    if (argv.length === 0) throw new InvalidArgumentError("launch: no command: put it after --, as in `clipfleet launch --workers 2 -- python train.py`", "command");
    if (!Number.isInteger(args.workers) || args.workers < 1) throw new InvalidArgumentError(`--workers: expected an integer >= 1, got ${args.workers}`, "workers");
    const cwd = process.cwd();
    const specOut = args["spec-out"] ? resolve(args["spec-out"]) : null;
    // Written next to --spec-out, the workdir is relative to it, as a spec file's is.
    const raw = launchSpec(argv, { workers: args.workers, name: args.name, workdir: specOut ? relative(dirname(specOut), cwd) || "." : cwd });
    // Messages name the spec file when there is one, else the command line it came from.
    const specPath = specOut ?? "clipfleet launch";
    const baseDir = specOut ? dirname(specOut) : cwd;
    const spec = parseSpec(raw, { specPath, baseDir, presets: loadPresets(deps.presetsPath) });
    if (specOut) {
      try {
        mkdirSync(dirname(specOut), { recursive: true });
        await writeFileAtomic(specOut, `# written by: clipfleet launch --workers ${args.workers} -- ${argv.join(" ")}\n${stringify(raw)}`, 0o644);
      } catch (err) {
        throw new InvalidArgumentError(`--spec-out: cannot write ${specOut}: ${err instanceof Error ? err.message : String(err)}`, "spec-out");
      }
      note(`clipfleet: wrote ${specOut} (clipfleet run ${relative(cwd, specOut) || specOut} runs it again)`);
    }
    const orch = await deps.embed(embedOptions(args, true));
    try {
      const submit = (client: ControlClient): Promise<Job> =>
        orch.service.submit({ specJson: JSON.stringify(raw), specPath, baseDir, validated: spec, submittedBy: localIdentity().name }).then(
          (job) => client.getJob(job.id),
          (err: unknown) => Promise.reject(asClipfleetError(err)),
        );
      state.exitCode = await runJob(deps, args, orch, submit);
    } finally {
      await orch.close();
    }
  },
});
