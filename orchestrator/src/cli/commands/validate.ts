/** `clipfleet validate SPEC` and `clipfleet schema`. */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { jsonSchema } from "../../spec/index.js";
import { readSpecInput } from "../spec-input.js";

export const validateCommand: Command<{ spec: string }> = (deps) => ({
  command: "validate <spec>",
  describe: "Check a job spec without running it; print the resolved stages (exit 2 on errors)",
  builder: (y) => y.positional("spec", { type: "string", demandOption: true }).example("$0 validate spec.yaml --json", "print the frozen config"),
  handler: (args) => {
    const { spec } = readSpecInput(args.spec, deps.presetsPath);
    if (args.json) {
      printJson(spec);
      return;
    }
    out(`${args.spec}: valid; job "${spec.name}" with ${spec.stages.length} stage(s)`);
    for (const s of spec.stages) {
      const steps = s.train.steps !== null ? `${s.train.steps} steps` : s.train.epochs !== null ? `${s.train.epochs} epochs` : null;
      const needs = s.needs.length ? `, needs ${s.needs.join(", ")}` : "";
      if (s.command !== null) {
        const plan = s.data.num_samples !== null ? `, a plan of ${s.data.num_samples} samples, batch ${s.train.batch_size}` : "";
        out(`  ${s.name}: command \`${s.command.join(" ")}\` in ${s.workdir}, ${s.cluster.workers} worker(s)${steps ? `, ${steps}` : ""}${plan}${needs}`);
      } else out(`  ${s.name}: ${s.task}, ${s.cluster.workers} worker(s), batch ${s.train.batch_size}, ${steps}${needs}`);
    }
  },
});

export const schemaCommand: Command = () => ({
  command: "schema",
  describe: "Print the JSON Schema of job specs (for editors)",
  builder: (y) => y.example("$0 schema > clipfleet.schema.json", "save it for your editor"),
  handler: () => {
    printJson(jsonSchema());
  },
});
