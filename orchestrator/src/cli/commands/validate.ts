/** `clipfleet validate SPEC` and `clipfleet schema`. */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { JobSpec, StageSpec } from "../../domain/index.js";
import type { ValidateJobReply } from "../../gen/clipfleet/v1/control.js";
import type { StageData } from "../../jobs/index.js";
import { issueAtField, jsonSchema, loadPresets, loadSpecDocument, SpecValidationError, type SpecIssue, type SpecLocator } from "../../spec/index.js";
import type { Command } from "../command.js";
import { connect, EXIT, note, out, printJson } from "../context.js";
import { pidAlive, readInfo } from "../offline.js";

interface ValidateArgs {
  spec: string;
  offline: boolean;
  inventory?: string;
  "known-hosts"?: string;
}

export const validateCommand: Command<ValidateArgs> = (deps, state) => ({
  command: "validate <spec>",
  describe: "Check a job spec as `run` (or, with --server, the server's submit) would before starting it (the spec, its data, init checkpoints, placement on the inventory); print every problem, or the resolved stages (exit 2 on problems)",
  builder: (y) =>
    y
      .positional("spec", { type: "string", demandOption: true })
      .option("offline", { type: "boolean", default: false, describe: "check the spec only, not its data, checkpoints or nodes" })
      .option("inventory", { type: "string", describe: "nodes.yaml the stages must fit (default: this machine), as for `run`" })
      .option("known-hosts", { type: "string", describe: "known_hosts file for SSH nodes (default ~/.ssh/known_hosts)" })
      .example("$0 validate spec.yaml", "every problem `run` would meet here, one line each")
      .example("$0 validate spec.yaml --server 10.0.0.5:7070", "the server's dry run of submit: its data, checkpoints and nodes")
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
    // Specs for a server (--server, CLIPFLEET_SERVER) are placed on its nodes and read its data: the server
    // runs submit's checks as a dry run (ValidateJob), unless --inventory asks for them here.
    const server = args.server ?? process.env.CLIPFLEET_SERVER;
    const mode = args.offline ? "offline" : server && !args.inventory ? "server" : "local";
    if (mode === "server") {
      const client = await connect(args);
      try {
        const reply = await client.validateJob(JSON.stringify(raw), resolve(args.spec), dirname(resolve(args.spec)));
        data = stageDataOf(reply);
        if (reply.problems.length > 0) {
          state.exitCode = refuse(args, new SpecValidationError(args.spec, reply.problems.map((p) => serverIssue(raw, p, locate))));
          return;
        }
      } finally {
        client.close();
      }
    } else if (mode === "local") {
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
    const how = mode === "offline" ? " (--offline: data, checkpoints and nodes not checked)" : mode === "server" ? ` (data, checkpoints and nodes checked by the server ${server})` : "";
    out(`${args.spec}: valid; job "${spec.name}" with ${spec.stages.length} stage(s)${how}`);
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

/** A problem the server found, at its place in the file: a spec problem at its full path, a later check's at its stage's field. */
function serverIssue(raw: unknown, p: ValidateJobReply["problems"][number], locate: SpecLocator): SpecIssue {
  if (p.specPath !== "") {
    const at = locate(parsePath(p.specPath));
    return { path: p.specPath, message: p.message, line: at?.line ?? null, column: at?.column ?? null };
  }
  return issueAtField(raw, p.stage === "" ? null : p.stage, p.field, p.message, locate);
}

/** `stages[1].train.lr` -> ["stages", 1, "train", "lr"]. */
function parsePath(path: string): (string | number)[] {
  return path.split(/\.|(?=\[)/).filter(Boolean).map((seg) => (/^\[\d+\]$/.test(seg) ? Number(seg.slice(1, -1)) : seg));
}

/** Each stage's data as the server counted it. */
function stageDataOf(reply: ValidateJobReply): Map<string, StageData> {
  const count = (counted: boolean, samples: number, shards: number) => (counted ? { samples, shards } : null);
  return new Map(
    reply.stages.map((d) => [
      d.stage,
      {
        train: count(d.trainCounted, d.trainSamples, d.trainShards),
        steps: d.stepsKnown ? d.steps : null,
        val: count(d.valCounted, d.valSamples, d.valShards),
        synth: d.synth === "generate" || d.synth === "reuse" ? d.synth : null,
      },
    ]),
  );
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
