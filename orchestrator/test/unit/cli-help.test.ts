/**
 * Help text at 80 columns: every command's (and subcommand's) examples show
 * each example command whole on one line, never wrapped mid-command (a
 * `--rank` at the end of one line and its `0` on the next).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { continuationLines, renderHelp } from "../../src/cli/index.js";
import type { CliDeps } from "../../src/cli/context.js";

const WIDTH = 80;
/** The start of an example command: `clipfleet`, maybe after environment assignments. */
const COMMAND = /^([A-Z_][A-Z0-9_]*=\S* )*clipfleet /;
const deps = { version: "0.0.0-test" } as unknown as CliDeps;

/** The command paths a help text lists under "Commands:" (`clipfleet data synth ...` gives ["data", "synth"]). */
function subcommands(help: string, path: string[]): string[][] {
  const out: string[][] = [];
  let inCommands = false;
  for (const line of help.split("\n")) {
    if (/^Commands:/.test(line)) inCommands = true;
    else if (/^\S/.test(line)) inCommands = false;
    else if (inCommands) {
      const words = line.trim().split(/\s+/);
      if (words[0] !== "clipfleet") continue;
      const next = words.slice(1, path.length + 2);
      if (next.length === path.length + 1 && next.every((w) => /^[a-z][a-z-]*$/.test(w)) && next.slice(0, path.length).join(" ") === path.join(" ")) out.push(next);
    }
  }
  return out;
}

/** The lines under "Examples:" of a help text. */
function exampleLines(help: string): string[] {
  const lines = help.split("\n");
  const start = lines.findIndex((l) => l === "Examples:");
  if (start < 0) return [];
  const out: string[] = [];
  for (const l of lines.slice(start + 1)) {
    if (l.trim() === "") break;
    out.push(l);
  }
  return out;
}

void describe("help examples at 80 columns", () => {
  void it("every command's examples: a `# what` line, then the whole command on one line", async () => {
    const queue: string[][] = subcommands(await renderHelp([], deps, WIDTH), []);
    assert.ok(queue.length >= 20, `the root help lists ${queue.length} commands`);
    let commands = 0;
    let examples = 0;
    while (queue.length > 0) {
      const path = queue.shift() ?? [];
      const help = await renderHelp(path, deps, WIDTH);
      commands += 1;
      queue.push(...subcommands(help, path));
      const lines = exampleLines(help);
      // Each example: `# what` lines, then the command, continued only by a trailing ` \\` (a shell continuation).
      let continued = false;
      let previous = "";
      for (const line of lines) {
        assert.ok(line.length <= WIDTH, `clipfleet ${path.join(" ")} --help: a line longer than ${WIDTH} columns:\n${line}`);
        const text = line.trim();
        if (!continued) {
          assert.ok(text.startsWith("# ") || COMMAND.test(text), `clipfleet ${path.join(" ")} --help: an example line that is neither a comment nor a command (wrapped mid-command after "${previous}"):\n${lines.join("\n")}`);
        }
        if (!continued && COMMAND.test(text)) examples += 1;
        continued = !text.startsWith("# ") && text.endsWith(" \\");
        previous = text;
      }
      assert.equal(continued, false, `clipfleet ${path.join(" ")} --help: the examples end with a command`);
    }
    assert.ok(commands >= 20 && examples >= 30, `${commands} commands, ${examples} examples checked`);
  });

  void it("the example the issue saw broken (`--rank` then `0` on the next line) is whole", async () => {
    const help = await renderHelp(["logs"], deps, WIDTH);
    assert.match(help, /^  # follow rank 0\n  clipfleet logs j-20261123-101500-a1b2c3 -f --rank 0$/m);
  });

  void it("a long command breaks only before a flag, into continuation lines that fit and join back to it", () => {
    const cmd = "clipfleet server --store tls://10.0.0.5:4222 --nats tls://10.0.0.5:4222 --nats-ca nats/ca.crt --nats-cert nats/client.crt --tls-dir DIR -- python train.py --epochs 3";
    const lines = continuationLines(cmd, 60);
    assert.ok(lines.length > 1);
    for (const l of lines) assert.ok(l.length <= 60, l);
    for (const l of lines.slice(0, -1)) assert.ok(l.endsWith(" \\"), l);
    for (const l of lines.slice(1)) assert.match(l, /^--?[a-z]*/);
    assert.equal(lines.map((l) => l.replace(/ \\$/, "")).join(" "), cmd);
    assert.deepEqual(continuationLines("clipfleet list", 60), ["clipfleet list"]);
  });
});
