/** `clipfleet validate SPEC` and `clipfleet schema`. */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JobSpec, StageSpec } from "../../domain/index.js";
import type { StageData } from "../../jobs/index.js";
import { issueAtField, jsonSchema, loadPresets, loadSpecDocument, SpecValidationError, type SpecLocator } from "../../spec/index.js";
import type { Command } from "../command.js";
import { EXIT, note, out, printJson } from "../context.js";
import { pidAlive, readInfo } from "../offline.js";

interface ValidateArgs {
  spec: string;
  offline: boolean;
  inventory?: string;
  "known-hosts"?: string;
}

export const validateCommand: Command<ValidateArgs> = (deps, state) => ({
  command: "validate <spec>",
  describe: "Check a job spec as `run` would before starting it (the spec, its data, init checkpoints, placement on the inventory); print every problem, or the resolved stages (exit 2 on problems)",
  builder: (y) =>
    y
      .positional("spec", { type: "string", demandOption: true })
      .option("offline", { type: "boolean", default: false, describe: "check the spec only, not its data, checkpoints or nodes (the default with --server and no --inventory)" })
      .option("inventory", { type: "string", describe: "nodes.yaml the stages must fit (default: this machine), as for `run`" })
      .option("known-hosts", { type: "string", describe: "known_hosts file for SSH nodes (default ~/.ssh/known_hosts)" })
      .example("$0 validate spec.yaml", "every problem `run` would meet here, one line each")
      .example("$0 validate spec.yaml --offline --json", "the spec alone; print the frozen config"),
  handler: async (args) => {
    let loaded: { spec: JobSpec; raw: unknown; locate: SpecLocator };
    try {
      loaded = loadSpecDocument(args.spec, { presets: loadPresets(deps.presetsPath) });
    } catch (err) {
      // The spec's own problems come all at once; the data is not checked until they are fixed.
      if (!(err instanceof SpecValidationError)) throw err;
      state.exitCode = refuse(args, err);
      return;
    }
    const { spec, raw, locate } = loaded;
    let data = new Map<string, StageData>();
    // Specs for a server (--server, CLIPFLEET_SERVER) are placed on its nodes, not this machine's: without
    // --inventory, its data and nodes are left to the server's own checks at submit.
    const skipped = args.offline ? "--offline" : (args.server ?? process.env.CLIPFLEET_SERVER) && !args.inventory ? "for a server" : null;
    if (skipped === null) {
      // The checks of submit itself, on an orchestrator of this state dir and inventory that schedules nothing.
      const scratch = scratchStateDir(args["state-dir"]);
      const orch = await deps
        .embed({
          stateDir: scratch?.dir ?? args["state-dir"],
          listen: "127.0.0.1:0",
          embedded: true,
          scope: [],
          readOnly: true,
          inventory: args.inventory ?? null,
          knownHosts: args["known-hosts"] ?? null,
          python: args.python ?? null,
        })
        .catch((err: unknown) => {
          scratch?.remove();
          throw err;
        });
      try {
        const checked = await orch.service.check(spec, args.spec);
        data = checked.data;
        if (checked.problems.length > 0) {
          state.exitCode = refuse(args, new SpecValidationError(args.spec, checked.problems.map((p) => issueAtField(raw, p.stage, p.field, p.message, locate))));
          return;
        }
      } finally {
        await orch.close();
        scratch?.remove();
      }
    }
    if (args.json) {
      printJson(spec);
      return;
    }
    out(`${args.spec}: valid; job "${spec.name}" with ${spec.stages.length} stage(s)${skipped === "--offline" ? " (--offline: data, checkpoints and nodes not checked)" : skipped ? " (data, checkpoints and nodes: the server checks them at submit; --inventory checks them here)" : ""}`);
    for (const s of spec.stages) out(`  ${stageLine(s, data.get(s.name) ?? null)}`);
  },
});

/**
 * A throwaway state dir for the dry run when the user's holds no jobs (so
 * validate creates nothing there) or a live orchestrator holds its lock (a
 * `run` or server on it: checkpoints of its jobs and signed by it cannot be
 * checked then, and a note says so); null: use the user's.
 */
function scratchStateDir(stateDir: string): { dir: string; remove: () => void } | null {
  if (existsSync(join(stateDir, "jobs"))) {
    const info = readInfo(stateDir);
    if (info === null || !pidAlive(info.pid)) return null;
    note(`clipfleet: ${stateDir} is in use by a running orchestrator (pid ${info.pid}); init checkpoints of its jobs, or signed by it, are checked as if unknown`);
  }
  const dir = mkdtempSync(join(tmpdir(), "clipfleet-validate-"));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The problems: one line each on stderr (through the error), or `{valid: false, errors}` on stdout with --json; exit 2. */
function refuse(args: { json: boolean }, err: SpecValidationError): number {
  if (!args.json) throw err;
  printJson({ valid: false, errors: err.issues.map((i) => ({ file: err.file, line: i.line, col: i.column, path: i.path, message: i.message })) });
  return EXIT.INVALID;
}

/** One stage in words: its task, workers, batch, and the length that applies to it (an eval stage has none), with its data counted when known. */
export function stageLine(s: StageSpec, data: StageData | null): string {
  // An epochs length is shown with the steps it resolves to over the counted data (what status will show as the total).
  const resolved = data?.steps !== null && data?.steps !== undefined ? ` (${data.steps} steps)` : "";
  const length = s.train.steps !== null ? `${s.train.steps} steps` : s.train.epochs !== null ? `${s.train.epochs} epochs${resolved}` : null;
  const needs = s.needs.length ? `, needs ${s.needs.join(", ")}` : "";
  const counted = (what: string, c: { samples: number; shards: number } | null): string => (c ? `, ${what} ${c.samples} samples in ${c.shards} shard(s)` : "");
  const generated = data?.synth === "generate" && s.data.synth ? `, data.synth: run first generates ${s.data.synth.train} train samples into ${s.data.synth.out}` : "";
  // An eval stage reads only its val shards.
  const dataText = data ? `${s.task === "eval" ? "" : counted("train", data.train)}${counted("val", data.val)}${generated}` : "";
  if (s.command !== null) {
    const plan = s.data.num_samples !== null ? `, a plan of ${s.data.num_samples} samples, batch ${s.train.batch_size}` : "";
    return `${s.name}: command \`${s.command.join(" ")}\` in ${s.workdir}, ${s.cluster.workers} worker(s)${length ? `, ${length}` : ""}${plan}${dataText}${needs}`;
  }
  const what = s.task === "eval" ? "evaluation only" : length ?? "no length";
  return `${s.name}: ${s.task}, ${s.cluster.workers} worker(s), batch ${s.train.batch_size}, ${what}${dataText}${needs}`;
}

export const schemaCommand: Command = () => ({
  command: "schema",
  describe: "Print the JSON Schema of job specs (for editors)",
  builder: (y) => y.example("$0 schema > clipfleet.schema.json", "save it for your editor"),
  handler: () => {
    printJson(jsonSchema());
  },
});
