/** `clipfleet data synth|convert|index`: make and index WebDataset shards (the worker runtime does the work). */
import type { Argv } from "yargs";
import type { Command } from "../command.js";
import type { GlobalArgs } from "../context.js";

interface SynthArgs {
  out: string;
  train: number;
  val: number;
  shards: number;
  seed: number;
  size: number;
}

interface ConvertArgs {
  images: string;
  masks?: string;
  depth?: string;
  out: string;
  shards: number;
  split: string;
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
            .option("train", { type: "number", default: 2048, describe: "training samples" })
            .option("val", { type: "number", default: 256, describe: "held-out samples" })
            .option("shards", { type: "number", default: 4, describe: "training shards" })
            .option("seed", { type: "number", default: 0 })
            .option("size", { type: "number", default: 64, describe: "image size in pixels" })
            .example("$0 data synth --out data/tiny --train 2048 --val 256 --shards 4 --size 32", "a tiny dataset"),
        handler: async (a) => {
          state.exitCode = await deps.runWorkerCli(typeof a.python === "string" ? a.python : null, [
            "synth",
            "--out",
            a.out,
            "--train",
            String(a.train),
            "--val",
            String(a.val),
            "--shards",
            String(a.shards),
            "--seed",
            String(a.seed),
            "--size",
            String(a.size),
          ]);
        },
      })
      .command<ConvertArgs>({
        command: "convert",
        describe: "Convert a folder of images with segmentation masks (and depth maps) into WebDataset shards",
        builder: (s) =>
          s
            .option("images", { type: "string", demandOption: true, describe: "folder of images (jpg/png)" })
            .option("masks", { type: "string", describe: "folder of class-id PNG masks, matched by file stem" })
            .option("depth", { type: "string", describe: "folder of 16-bit PNG depth maps in millimetres, matched by file stem" })
            .option("out", { type: "string", demandOption: true, describe: "output directory" })
            .option("shards", { type: "number", default: 1 })
            .option("split", { type: "string", default: "train" })
            .example("$0 data convert --images ade/images --masks ade/annotations --out data/ade --shards 8", "ADE20k-style data"),
        handler: async (a) => {
          const args = ["convert", "--images", a.images, "--out", a.out, "--shards", String(a.shards), "--split", a.split];
          if (a.masks) args.push("--masks", a.masks);
          if (a.depth) args.push("--depth", a.depth);
          state.exitCode = await deps.runWorkerCli(typeof a.python === "string" ? a.python : null, args);
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
      .example("$0 data convert --images imgs --masks masks --out data/seg", "shards from an image folder"),
  handler: () => undefined,
});
