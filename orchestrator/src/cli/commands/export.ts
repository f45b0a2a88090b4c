/**
 * `clipfleet export JOB --format open_clip --out DIR`: a stage's final
 * committed checkpoint as a model open_clip loads
 * (`open_clip.create_model_and_transforms("local-dir:DIR")`).
 *
 * The CLI picks the stage and its newest committed checkpoint (one the
 * orchestrator's signed manifest vouches for) and hands it, with the stage's
 * resolved model config, to the worker runtime (`python -m clipfleet_worker
 * openclip export`), which converts the tensors. The checkpoint's files are
 * read here, so export runs where they are (this machine, or a filesystem it
 * shares with the server). docs/open_clip.md has the details.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { FailedPreconditionError, InvalidArgumentError, type JobSpec, type StageSpec } from "../../domain/index.js";
import type { Command } from "../command.js";
import { resolveJob } from "../job-ref.js";
import { connectOrOpen } from "../offline.js";

interface ExportArgs {
  job: string;
  stage?: string;
  format: string;
  out: string;
}

/** Export formats; open_clip only, for now. */
export const EXPORT_FORMATS = ["open_clip"] as const;

export const exportCommand: Command<ExportArgs> = (deps, state) => ({
  command: "export <job>",
  describe: "Write a stage's final checkpoint as an open_clip model (open_clip_config.json and weights; open_clip.create_model('local-dir:DIR') loads it)",
  builder: (y) =>
    y
      .positional("job", { type: "string", demandOption: true, describe: "job id, unique id prefix, or job name (its newest job)" })
      .option("format", { type: "string", choices: EXPORT_FORMATS, demandOption: true, describe: "what to write" })
      .option("out", { type: "string", demandOption: true, describe: "the export directory (created)" })
      .option("stage", { type: "string", describe: "the stage whose checkpoint to export (default: the last pretrain stage with a committed checkpoint)" })
      .example("$0 export tiny-pretrain --format open_clip --out export/", "the newest job named tiny-pretrain")
      .example("$0 export j-20261123-101500-a1b2c3 --stage pretrain-vecap --format open_clip --out vecap/", "one stage of a pipeline"),
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const job = await client.getJob((await resolveJob(client, args.job, args)).id);
      const spec = JSON.parse(job.specJson) as JobSpec;
      const committed = (await client.checkpoints(job.id)).checkpoints.filter((c) => c.status === "committed");
      const stage = pickStage(spec, args.stage, (name) => committed.some((c) => c.stage === name));
      const ckpt = committed.filter((c) => c.stage === stage.name).sort((a, b) => b.step - a.step)[0];
      if (!ckpt) throw new FailedPreconditionError(`stage ${stage.name} of job ${job.id} has no committed checkpoint to export`);
      // The files are read here: a server's checkpoints must be on this machine's filesystem too.
      if (!existsSync(join(ckpt.dir, "manifest.json"))) {
        throw new FailedPreconditionError(`${ckpt.dir} (stage ${stage.name}, step ${ckpt.step}) is not readable on this machine: run export where the checkpoints are (the server's machine, or a filesystem shared with it)`);
      }
      const meta = {
        job: job.id,
        jobName: job.name,
        stage: stage.name,
        step: ckpt.step,
        checkpoint: ckpt.dir,
        manifestSha256: ckpt.manifestSha256,
        image: stage.model.image.preset ?? stage.model.image.family,
        text: stage.model.text.preset ?? "custom",
        tokenizer: stage.model.tokenizer.type,
      };
      const python = typeof args.python === "string" ? args.python : null;
      state.exitCode = await deps.runWorkerCli(python, [
        "openclip",
        "export",
        "--checkpoint",
        ckpt.dir,
        "--model-json",
        JSON.stringify(stage.model),
        "--meta-json",
        JSON.stringify(meta),
        "--out",
        resolve(args.out),
        ...(args.json ? ["--json"] : []),
      ]);
    });
  },
});

/** The stage to export: the one named, which must be a pretrain stage, else the last pretrain stage with a committed checkpoint. */
export function pickStage(spec: JobSpec, name: string | undefined, hasCheckpoint: (stage: string) => boolean): StageSpec {
  if (name !== undefined) {
    const st = spec.stages.find((s) => s.name === name);
    if (!st) throw new InvalidArgumentError(`--stage: no stage ${JSON.stringify(name)} in job ${spec.name} (stages: ${spec.stages.map((s) => s.name).join(", ")})`, "stage");
    if (st.task !== "pretrain") throw new InvalidArgumentError(`--stage: stage ${st.name} is task ${st.task}; only a pretrain stage's checkpoint is a CLIP (image and text towers)`, "stage");
    return st;
  }
  const found = [...spec.stages].reverse().find((s) => s.task === "pretrain" && hasCheckpoint(s.name));
  if (!found) throw new FailedPreconditionError(`job ${spec.name} has no pretrain stage with a committed checkpoint to export`);
  return found;
}
