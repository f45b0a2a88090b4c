/** `clipfleet data synth|convert|index`: make and index WebDataset shards (the worker runtime does the work). */
import type { Argv } from "yargs";
import type { Command } from "../command.js";
import type { GlobalArgs } from "../context.js";

interface SynthArgs {
  out: string;
  train?: number;
  val?: number;
  shards?: number;
  seed?: number;
  size?: number;
}

interface ConvertArgs {
  images: string;
  masks?: string;
  depth?: string;
  out: string;
  shards: number;
  split: string;
  "reduce-zero-label": boolean;
  classes?: string;
}

/**
 * The worker CLI's arguments for `data synth`: only the flags given, so the
 * defaults live in one place (SYNTH_DEFAULTS in worker-runtime's synth/dataset.py).
 */
export function synthArgs(a: SynthArgs): string[] {
  const args = ["synth", "--out", a.out];
  for (const flag of ["train", "val", "shards", "seed", "size"] as const) {
    const v = a[flag];
    if (v !== undefined) args.push(`--${flag}`, String(v));
  }
  return args;
}

/** The worker CLI's arguments for `data convert`. */
export function convertArgs(a: ConvertArgs): string[] {
  const args = ["convert", "--images", a.images, "--out", a.out, "--shards", String(a.shards), "--split", a.split];
  if (a.masks !== undefined) args.push("--masks", a.masks);
  if (a.depth !== undefined) args.push("--depth", a.depth);
  if (a["reduce-zero-label"]) args.push("--reduce-zero-label");
  if (a.classes !== undefined) args.push("--classes", a.classes);
  return args;
}

interface IndexArgs {
  patterns: string[];
  out?: string;
  jobs: number;
}

export const dataCommand: Command = (deps, state) => ({
  command: "data <command>",
  describe: "Dataset tools: synthetic scenes with captions, masks and depth; conversion of image folders into shards; indexing shards",
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command<SynthArgs>({
        command: "synth",
        describe: "Generate a synthetic image-text dataset (AltText-like and visually enriched captions, seg masks, depth) as WebDataset shards",
        builder: (s) =>
          s
            .option("out", { type: "string", demandOption: true, describe: "output directory" })
            .option("train", { type: "number", describe: "training samples (default 2048)" })
            .option("val", { type: "number", describe: "held-out samples, in ceil(shards / 4) val shards (default 256)" })
            .option("shards", { type: "number", describe: "training shards (default 4)" })
            .option("seed", { type: "number", describe: "generator seed (default 0)" })
            .option("size", { type: "number", describe: "image size in pixels (default 64)" })
            .example("$0 data synth --out data/tiny --train 2048 --val 256 --shards 4 --size 32", "a tiny dataset"),
        handler: async (a) => {
          state.exitCode = await deps.runWorkerCli(typeof a.python === "string" ? a.python : null, synthArgs(a));
        },
      })
      .command<ConvertArgs>({
        command: "convert",
        describe:
          "Convert a folder of images with same-stem captions (name.txt, name.json) and/or segmentation masks and depth maps into WebDataset shards plus sizes.json",
        builder: (s) =>
          s
            .option("images", { type: "string", demandOption: true, describe: "folder of images (jpg/png/webp, searched recursively) with optional name.txt / name.json captions" })
            .option("masks", { type: "string", describe: "folder of class-id PNG masks, matched by relative file stem" })
            .option("depth", { type: "string", describe: "folder of 16-bit PNG depth maps in millimetres, matched by relative file stem" })
            .option("out", { type: "string", demandOption: true, describe: "output directory (created; an existing one gets the split's shards and a merged sizes.json)" })
            .option("shards", { type: "number", default: 1, describe: "shards to split the samples over" })
            .option("split", { type: "string", default: "train", describe: "shard name prefix: {split}-00000.tar, ..." })
            .option("reduce-zero-label", { type: "boolean", default: false, describe: "masks: 0 becomes 255 (ignore) and k becomes k-1 (ADE20k, NYUv2)" })
            .option("classes", { type: "string", describe: "class names (one a line, or a JSON list), written to classes.json" })
            .example("$0 data convert --images photos --out data/photos --shards 8", "image-caption pairs: photos/a.jpg + photos/a.txt")
            .example("$0 data convert --images ade/images --masks ade/annotations --reduce-zero-label --out data/ade --shards 8", "ADE20k-style data"),
        handler: async (a) => {
          state.exitCode = await deps.runWorkerCli(typeof a.python === "string" ? a.python : null, convertArgs(a));
        },
      })
      .command<IndexArgs>({
        command: "index <patterns..>",
        describe: "Read shards once (local, http(s)://, pipe:) and write their sample counts, sizes, sha256 digests and tar indices for data.index",
        builder: (s) =>
          s
            .positional("patterns", { type: "string", array: true, demandOption: true, describe: "shard patterns (brace ranges, :: lists); quote them" })
            .option("out", { type: "string", describe: "output directory (default: the shards' directory; required for remote shards)" })
            .option("jobs", { type: "number", default: 8, describe: "shards read at once" })
            .example('$0 data index "https://host/shards/{00000..00099}.tar" --out data/idx', "then set data.index: data/idx"),
        handler: async (a) => {
          const args = ["index", ...a.patterns, "--jobs", String(a.jobs)];
          if (a.out) args.push("--out", a.out);
          state.exitCode = await deps.runWorkerCli(typeof a.python === "string" ? a.python : null, args);
        },
      })
      .demandCommand(1, "name a data command: synth, convert or index")
      .example("$0 data synth --out data/tiny --train 2048 --val 256 --size 32", "a tiny synthetic dataset")
      .example("$0 data convert --images imgs --out data/captioned --shards 4", "shards from an image-caption folder"),
  handler: () => undefined,
});
