/**
 * The remote command line of an SSH rank: quoting, the token kept off it,
 * and what it does when a POSIX shell runs it (here locally, with a stand-in
 * worker package): pid line first, own session and process group, token read
 * from stdin, environment as given.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import type { NodeSpec } from "../../src/domain/index.js";
import { PID_LINE, hostKeyAlgorithms, killCommand, shellQuote, spareCommand, workerCommand, workerStdin } from "../../src/launcher/index.js";

const PYTHON = "/usr/bin/python3";

/** Runs `cmd` with a POSIX shell (as sshd would), `stdin` on its standard input. */
async function shell(cmd: string, stdin: string): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn("/bin/sh", ["-c", cmd], { stdio: ["pipe", "pipe", "pipe"] });
  child.stdin.end(stdin);
  let out = "";
  let err = "";
  child.stdout.on("data", (b: Buffer) => (out += b.toString()));
  child.stderr.on("data", (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((r) => child.once("close", r));
  return { code, out, err };
}
const TOKEN = "3f9c2a7d-token-never-on-a-command-line";

/** A temporary directory holding a stand-in worker package whose `__main__` is `main` (it reports what the real one would receive). */
function standInRuntime(prefix: string, main: readonly string[]): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  mkdirSync(join(dir, "clipfleet_worker"));
  writeFileSync(join(dir, "clipfleet_worker", "__init__.py"), "");
  writeFileSync(join(dir, "clipfleet_worker", "__main__.py"), main.join("\n"));
  return dir;
}

function node(address: string): NodeSpec {
  return {
    name: "n1",
    host: "10.0.0.1",
    port: 22,
    user: "train",
    identity_file: null,
    address,
    slots: 1,
    gpus: 0,
    labels: {},
    python: PYTHON,
    workdir: "/opt/clipfleet/worker-runtime",
    host_key_policy: "strict",
    launcher: "ssh",
  };
}

/** What /bin/sh makes of `word` (one argument back, exactly). */
function throughShell(word: string): string {
  const r = spawnSync("/bin/sh", ["-c", `printf '%s' ${word}`], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

void describe("remote command line", () => {
  void it("quotes words so a POSIX shell gives them back unchanged", () => {
    for (const w of ["plain", "/a/b-c_d.e", "with space", "it's", "'", "$HOME", "`id`", "a\"b", "x;rm -rf /", "new\nline", "*", "", "~user"]) {
      assert.equal(throughShell(shellQuote(w)), w, JSON.stringify(w));
    }
    assert.equal(shellQuote("/usr/bin/python3"), "/usr/bin/python3", "simple words stay readable");
  });

  void it("names the workdir and interpreter, never the token nor the environment (they go to stdin)", () => {
    const req = {
      python: PYTHON,
      workdir: "/opt/clip fleet/worker-runtime",
      env: { RANK: "1", MASTER_ADDR: "10.0.0.1", PYTHONPATH: "/extra", WANDB_API_KEY: "wandb-secret-value" },
      secrets: { CLIPFLEET_TOKEN: TOKEN },
      node: node("10.0.0.1"),
    };
    const cmd = workerCommand(req);
    assert.ok(!cmd.includes(TOKEN));
    assert.ok(!cmd.includes("wandb-secret-value") && !cmd.includes("RANK="), cmd);
    assert.ok(cmd.startsWith("cd '/opt/clip fleet/worker-runtime' && exec env CLIPFLEET_TOKEN_STDIN=1 "), cmd);
    const [envLine, tokenLine, rest] = workerStdin(req).split("\n");
    assert.deepEqual(JSON.parse(envLine ?? ""), { RANK: "1", MASTER_ADDR: "10.0.0.1", PYTHONPATH: "/opt/clip fleet/worker-runtime:/extra", WANDB_API_KEY: "wandb-secret-value" });
    assert.equal(tokenLine, TOKEN);
    assert.equal(rest, "");
  });

  void it("refuses to build a command that would carry a secret, or an environment name a shell cannot take", () => {
    const base = { python: PYTHON, workdir: "/w", secrets: { CLIPFLEET_TOKEN: "s3cret-value" }, node: node("10.0.0.1") };
    assert.throws(() => workerCommand({ ...base, python: "/opt/s3cret-value/python3", env: {} }), /secret would appear on the remote command line/);
    assert.throws(() => workerCommand({ ...base, env: { "BAD-NAME": "x" } }), /worker\.env: "BAD-NAME" is not an environment variable name/);
    assert.throws(() => workerStdin({ workdir: "/w", env: {}, secrets: { CLIPFLEET_TOKEN: "t", OTHER: "x" } }), /only CLIPFLEET_TOKEN/);
  });

  void it("spells kill portably (dash rejects `kill -TERM --`), for a process group only", () => {
    assert.equal(killCommand(4242, "SIGTERM"), "kill -s TERM -- -4242");
    assert.equal(killCommand(4242, "SIGKILL"), "kill -s KILL -- -4242");
    assert.throws(() => killCommand(1, "SIGKILL"));
    const r = spawnSync("/bin/sh", ["-c", killCommand(2 ** 22 + 17, "SIGTERM")], { encoding: "utf8" });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /No such process/i, "the launcher tells a gone group from a failure by this message");
  });

  void it("asks for host key algorithms of the types already known first", () => {
    assert.deepEqual(hostKeyAlgorithms([]).slice(0, 2), ["ssh-ed25519", "ecdsa-sha2-nistp256"]);
    assert.deepEqual(hostKeyAlgorithms(["ssh-rsa"]).slice(0, 3), ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]);
    assert.deepEqual(hostKeyAlgorithms(["ecdsa-sha2-nistp256"])[0], "ecdsa-sha2-nistp256");
    assert.equal(hostKeyAlgorithms(["ssh-rsa"]).length, hostKeyAlgorithms([]).length, "every algorithm stays allowed");
  });
});

void describe("remote command run by a shell", () => {
  void it("prints the pid first, leads its own session and group, reads the token from stdin", async () => {
    const dir = standInRuntime("cf-sshcmd-", [
      "import json, os, sys",
      "print(json.dumps({'argv': sys.argv[1:], 'token': sys.stdin.readline().strip(), 'pid': os.getpid(), 'pgid': os.getpgid(0), 'sid': os.getsid(0),",
      "  'cwd': os.getcwd(), 'quoted': os.environ.get('QUOTED'), 'gloo': os.environ.get('GLOO_SOCKET_IFNAME'), 'pythonpath': os.environ.get('PYTHONPATH')}))",
    ]);
    try {
      // A non-loopback address of this machine, if it has one: gloo must bind to its interface.
      const nic = Object.entries(networkInterfaces()).flatMap(([name, addrs]) => (addrs ?? []).filter((a) => a.family === "IPv4" && !a.internal).map((a) => ({ name, address: a.address })))[0];
      const req = {
        python: PYTHON,
        workdir: dir,
        env: { QUOTED: "it's $HOME `x`\nand a second line" },
        secrets: { CLIPFLEET_TOKEN: TOKEN },
        node: node(nic?.address ?? "127.0.0.1"),
      };
      const { code, out, err } = await shell(workerCommand(req), workerStdin(req));
      assert.equal(code, 0, err);
      const [first, second] = out.trim().split("\n");
      const m = PID_LINE.exec(first ?? "");
      assert.ok(m, `first line is the pid line: ${first}`);
      const report = JSON.parse(second ?? "{}") as Record<string, unknown>;
      const pid = Number(m[1]);
      assert.equal(report.pid, pid, "the worker keeps the pid the line announced (exec, no fork)");
      assert.equal(report.pgid, pid, "and leads its process group");
      assert.equal(report.sid, pid, "and its session");
      assert.equal(report.token, TOKEN);
      assert.deepEqual(report.argv, ["run"]);
      assert.equal(report.cwd, dir);
      assert.equal(report.quoted, "it's $HOME `x`\nand a second line");
      assert.equal(report.pythonpath, dir);
      assert.equal(report.gloo, nic ? nic.name : null);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

void describe("SSH command line of a warm spare", () => {
  void it("runs `clipfleet_worker spare` in its own group, its environment first on stdin, the hand-over line left for it; no token anywhere before", async () => {
    const dir = standInRuntime("cf-sshcmd-spare-", [
      "import json, os, sys",
      "print(json.dumps({'argv': sys.argv[1:], 'pid': os.getpid(), 'pgid': os.getpgid(0), 'cwd': os.getcwd(), 'stage': os.environ.get('CLIPFLEET_STAGE'),",
      "  'stdin_flag': os.environ.get('CLIPFLEET_TOKEN_STDIN'), 'token': os.environ.get('CLIPFLEET_TOKEN'), 'handover': sys.stdin.readline()}))",
    ]);
    try {
      const spec = { python: PYTHON, workdir: dir, env: { CLIPFLEET_STAGE: "main", CLIPFLEET_SPARE: "1" }, node: node("127.0.0.1") };
      const cmd = spareCommand(spec);
      assert.ok(cmd.startsWith(`cd ${shellQuote(dir)} && exec ${PYTHON} -c `) && cmd.endsWith(" 127.0.0.1 spare"), cmd);
      assert.ok(!cmd.includes("CLIPFLEET_STAGE") && !cmd.includes("CLIPFLEET_TOKEN_STDIN=1"), cmd);
      const envLine = workerStdin({ ...spec, secrets: {} });
      assert.equal(envLine.split("\n").length, 2, "one line: the spare's environment, no token line");
      const handover = JSON.stringify({ env: { CLIPFLEET_TOKEN: TOKEN } });
      const { code, out, err } = await shell(cmd, `${envLine}${handover}\n`);
      assert.equal(code, 0, err);
      const [first, second] = out.trim().split("\n");
      const m = PID_LINE.exec(first ?? "");
      assert.ok(m, `first line is the pid line: ${first}`);
      const report = JSON.parse(second ?? "{}") as Record<string, unknown>;
      assert.deepEqual(report.argv, ["spare"]);
      assert.equal(report.pid, Number(m[1]));
      assert.equal(report.pgid, Number(m[1]), "the spare leads its process group");
      assert.equal(report.cwd, dir);
      assert.equal(report.stage, "main");
      assert.equal(report.stdin_flag, null);
      assert.equal(report.token, null, "a spare holds no token before its hand-over");
      assert.equal(report.handover, `${handover}\n`, "the wrapper leaves the hand-over line on stdin, intact");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

void describe("SSH command line of a task: command rank", () => {
  void it("runs the user's program in its directory, python as the node's interpreter, the token in its environment, nothing of it on the command line", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cf-sshcmd-byo-"));
    try {
      const script = "import json, os, sys; print(json.dumps({'exe': sys.executable, 'argv': sys.argv[1:], 'cwd': os.getcwd(), 'token': os.environ.get('CLIPFLEET_TOKEN'), 'stdin_flag': os.environ.get('CLIPFLEET_TOKEN_STDIN'), 'leaked': [k for k in os.environ if k.startswith('CLIPFLEET_COMMAND')], 'rank': os.environ.get('RANK'), 'pythonpath': os.environ.get('PYTHONPATH')}))";
      const req = {
        python: PYTHON,
        workdir: "/opt/clipfleet/worker-runtime",
        env: { RANK: "1" },
        secrets: { CLIPFLEET_TOKEN: TOKEN },
        node: node("127.0.0.1"),
        command: { argv: ["python", "-c", script, "--epochs", "3"], cwd: dir },
      };
      const cmd = workerCommand(req);
      assert.ok(!cmd.includes("--epochs") && !cmd.includes(dir), `the program and its directory travel on stdin: ${cmd}`);
      // The workdir of the worker runtime need not exist here: only PYTHONPATH names it for a command rank.
      const { code, out, err } = await shell(cmd.replace(/^cd \S+ && /, ""), workerStdin(req));
      assert.equal(code, 0, err);
      const [first, second] = out.trim().split("\n");
      assert.match(first ?? "", PID_LINE);
      const report = JSON.parse(second ?? "{}") as Record<string, unknown>;
      assert.equal(report.exe, PYTHON);
      assert.deepEqual(report.argv, ["--epochs", "3"]);
      assert.equal(report.cwd, dir);
      assert.equal(report.token, TOKEN);
      assert.equal(report.stdin_flag, null);
      assert.deepEqual(report.leaked, []);
      assert.equal(report.rank, "1");
      assert.equal(report.pythonpath, "/opt/clipfleet/worker-runtime");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it("a program that is not there: exit 127 with one line saying so", async () => {
    const req = { python: PYTHON, workdir: "/", env: {}, secrets: { CLIPFLEET_TOKEN: TOKEN }, node: node("127.0.0.1"), command: { argv: ["no-such-program-xyz"], cwd: "/" } };
    const { code, err } = await shell(workerCommand(req), workerStdin(req));
    assert.equal(code, 127);
    assert.match(err, /^clipfleet: cannot run no-such-program-xyz: /);
  });
});
