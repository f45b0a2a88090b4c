/**
 * `clipfleet data synth|convert|index` hand their flags to the worker runtime's
 * CLI: every flag the Python side has is reachable, and synth passes only
 * the flags given so its defaults live in one place (synth.py).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import yargs, { type Argv } from "yargs";
import { dataCommand } from "../../src/cli/commands/data.js";
import type { CliDeps, GlobalArgs } from "../../src/cli/context.js";

/** Parses a `clipfleet data ...` command line; returns the worker CLI arguments it ran. */
async function workerArgs(argv: string[]): Promise<readonly string[]> {
  const calls: (readonly string[])[] = [];
  const deps = { runWorkerCli: (_python: string | null, args: readonly string[]) => (calls.push(args), Promise.resolve(0)) } as unknown as CliDeps;
  const state = { exitCode: -1 };
  // The global flags (--python, --json, ...) are the root parser's; only the data command is under test.
  const parser = yargs(argv) as unknown as Argv<GlobalArgs>;
  await parser
    .command(dataCommand(deps, state))
    .strict()
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    })
    .parseAsync();
  assert.equal(calls.length, 1);
  assert.equal(state.exitCode, 0);
  return calls[0] ?? [];
}

void describe("clipfleet data: flag wiring", () => {
  void it("convert passes every flag, --reduce-zero-label and --classes included", async () => {
    const args = await workerArgs(["data", "convert", "--images", "in", "--masks", "m", "--depth", "d", "--out", "o", "--shards", "3", "--split", "val", "--reduce-zero-label", "--classes", "names.txt"]);
    assert.deepEqual(args, ["convert", "--images", "in", "--out", "o", "--shards", "3", "--split", "val", "--masks", "m", "--depth", "d", "--reduce-zero-label", "--classes", "names.txt"]);
  });

  void it("convert of an image-caption folder needs only --images and --out", async () => {
    assert.deepEqual(await workerArgs(["data", "convert", "--images", "in", "--out", "o"]), ["convert", "--images", "in", "--out", "o", "--shards", "1", "--split", "train"]);
  });

  void it("index passes its patterns (one argument each, commands with spaces intact), --out and --jobs", async () => {
    assert.deepEqual(await workerArgs(["data", "index", "pipe:aws s3 cp s3://b/{0..9}.tar -", "https://h/x-{0..1}.tar", "--out", "idx", "--jobs", "4"]), [
      "index",
      "pipe:aws s3 cp s3://b/{0..9}.tar -",
      "https://h/x-{0..1}.tar",
      "--jobs",
      "4",
      "--out",
      "idx",
    ]);
    assert.deepEqual(await workerArgs(["data", "index", "shards/{0..3}.tar"]), ["index", "shards/{0..3}.tar", "--jobs", "8"]);
  });

  void it("synth passes only the flags given (the defaults are the worker's)", async () => {
    assert.deepEqual(await workerArgs(["data", "synth", "--out", "o"]), ["synth", "--out", "o"]);
    assert.deepEqual(await workerArgs(["data", "synth", "--out", "o", "--val", "0", "--size", "32"]), ["synth", "--out", "o", "--val", "0", "--size", "32"]);
  });
});
