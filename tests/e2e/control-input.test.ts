/**
 * Bad input against a real `clipfleet server`: malformed specs through
 * `submit` exit 2 with one line naming the file and field, and nothing is
 * persisted; an unreachable server or an unknown job exits 3; ControlService
 * requests with missing or out-of-range fields get INVALID_ARGUMENT and the
 * server keeps serving. Also: `clipfleet completion` prints a script, and
 * every command's --help has examples.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { loadClientTls } from "../../orchestrator/src/auth/index.js";
import { alive, freePort, ROOT, runCli, startServer, tempDir, writeTinySpec, type CliResult, type ServerHandle } from "../helpers/cli.js";

/** A ControlService client built from the .proto at run time, independent of the generated code. */
type Callback = (err: grpc.ServiceError | null, res: Record<string, unknown>) => void;
interface DynamicControl extends grpc.Client {
  Submit(req: object, cb: Callback): void;
  GetJob(req: object, cb: Callback): void;
  ListJobs(req: object, cb: Callback): void;
  CancelJob(req: object, cb: Callback): void;
  ResumeJob(req: object, cb: Callback): void;
  ListCheckpoints(req: object, cb: Callback): void;
  GetServerInfo(req: object, cb: Callback): void;
  StreamLogs(req: object): grpc.ClientReadableStream<unknown>;
  Watch(req: object): grpc.ClientReadableStream<unknown>;
}

function dynamicControlClient(address: string, tlsDir: string): DynamicControl {
  const def = protoLoader.loadSync(join(ROOT, "proto/clipfleet/v1/control.proto"), { includeDirs: [join(ROOT, "proto")], keepCase: true, longs: Number, enums: Number });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { clipfleet: { v1: { ControlService: grpc.ServiceClientConstructor } } };
  const tls = tlsDir ? loadClientTls(tlsDir) : null;
  const creds = tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert) : grpc.credentials.createInsecure();
  return new pkg.clipfleet.v1.ControlService(address, creds) as unknown as DynamicControl;
}

function unary(fn: (req: object, cb: Callback) => void, req: object): Promise<{ err: grpc.ServiceError | null; res: Record<string, unknown> | null }> {
  return new Promise((resolve) => fn(req, (err, res) => resolve({ err, res: err ? null : res })));
}

/** The status a server stream ends with (OK when it ends normally). */
function streamEnd(stream: grpc.ClientReadableStream<unknown>): Promise<grpc.ServiceError | null> {
  return new Promise((resolve) => {
    stream.on("data", () => undefined);
    stream.on("error", (err: grpc.ServiceError) => resolve(err));
    stream.on("end", () => resolve(null));
  });
}

/** Exit code 2, one line on stderr matching every pattern, no stack trace. */
function assertExit2(r: CliResult, what: string, ...patterns: RegExp[]): void {
  assert.equal(r.code, 2, `${what}: exit ${r.code}\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `${what}: one line expected, got:\n${r.stderr}`);
  for (const p of patterns) assert.match(lines[0] ?? "", p, what);
  assert.doesNotMatch(r.stderr, /\n\s+at /, `${what}: no stack trace without --verbose`);
}

void describe("bad input against a real server", () => {
  const tmp = tempDir("clipfleet-input-");
  const state = join(tmp.dir, "state");
  let server: ServerHandle;
  let rpc: DynamicControl;

  /** Job directories in the server's state dir (the file store keeps one per job). */
  const jobDirs = (): string[] => (existsSync(join(state, "jobs")) ? readdirSync(join(state, "jobs")) : []);
  const listJobs = async (): Promise<unknown[]> => {
    const r = await runCli(["list", "--json", "--server", server.address]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as unknown[];
  };
  const serving = async (what: string): Promise<void> => {
    const info = await unary(rpc.GetServerInfo.bind(rpc), {});
    assert.equal(info.err, null, `${what}: GetServerInfo failed afterwards: ${info.err?.message}`);
    assert.equal(info.res?.version, "0.1.0");
    assert.ok(alive(server.child.pid ?? -1), `${what}: the server died`);
  };

  before(async () => {
    server = await startServer({ stateDir: state });
    rpc = dynamicControlClient(server.address, server.tlsDir);
  });
  after(async () => {
    rpc.close();
    await server.stop();
    tmp.cleanup();
  });

  void it("malformed specs through submit: exit 2, one line naming the file and the field, nothing persisted", { timeout: 120_000 }, async () => {
    assert.deepEqual(await listJobs(), []);
    const good = readFileSync(writeTinySpec(tmp.dir, { name: "good", steps: 10, batch: 16 }), "utf8");
    const write = (name: string, content: string | Buffer): string => {
      const p = join(tmp.dir, name);
      writeFileSync(p, content);
      return p;
    };
    const edit = (from: string, to: string): string => {
      assert.ok(good.includes(from), from);
      return good.replace(from, to);
    };
    const cases: [string, string | Buffer, RegExp[]][] = [
      ["wrong-type.yaml", edit("lr: 1.0e-3", 'lr: "fast"'), [/wrong-type\.yaml:\d+:\d+: train\.lr: expected a positive number, got "fast"/]],
      ["negative-workers.yaml", edit("  workers: 2\n", "  workers: -2\n"), [/negative-workers\.yaml:\d+:\d+: cluster\.workers: expected an integer >= 1, got -2/]],
      ["fraction-steps.yaml", edit("steps: 10", "steps: 10.5"), [/fraction-steps\.yaml.*train\.steps: expected an integer >= 1 or null, got 10\.5/]],
      ["unknown-preset.yaml", edit("image: vit-tiny", "image: vit-nope"), [/unknown-preset\.yaml.*model\.image: unknown image preset "vit-nope" \(known: vit-tiny/]],
      ["no-task.yaml", edit("task: pretrain\n", ""), [/no-task\.yaml: task: missing \(expected one of "pretrain"/]],
      ["unknown-field.yaml", good + "cluster_size: 4\n", [/unknown-field\.yaml.*cluster_size/]],
      ["a-list.yaml", "- name: x\n- task: pretrain\n", [/a-list\.yaml: top level must be a mapping of spec fields, got a list/]],
      ["a-string.yaml", "pretrain please\n", [/a-string\.yaml: top level must be a mapping of spec fields, got the string "pretrain please"/]],
      ["empty.yaml", "", [/empty\.yaml: top level must be a mapping of spec fields, got an empty document/]],
      ["broken.yaml", "name: x\ntrain: {steps: 3\n", [/broken\.yaml:\d+:\d+: invalid YAML/]],
      ["huge.yaml", Buffer.alloc(10 * 1024 * 1024, "a"), [/huge\.yaml: too large \(10\.0 MiB; the limit is 1\.0 MiB\)/]],
      ["garbage.yaml", Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0x94]), randomBytes(4096)]), [/garbage\.yaml: not UTF-8 text \(invalid byte 0x[0-9a-f]{2} at line 1, column 1\)/]],
      ["bad.json", '{"name": "x", "task": "pretrain",}', [/bad\.json.*invalid JSON/]],
      // Valid as a document, refused by the server: more ranks than this machine has slots, data that is not there.
      ["too-many-workers.yaml", edit("  workers: 2\n  min_workers: 2\n", "  workers: 4\n  min_workers: 4\n"), [/too-many-workers\.yaml: cluster\.workers: needs 4 slots, the inventory's 1 such node\(s\) have 2$/]],
      ["missing-train.yaml", good.replace(/\S+\/train-/, `${join(tmp.dir, "nowhere")}/train-`), [/missing-train\.yaml: data\.train: no shard matches ".*nowhere\/train-\{00000\.\.00003\}\.tar" \(directory .*nowhere does not exist\)$/]],
      ["missing-val.yaml", good.replace(/\S+\/val-/, `${join(tmp.dir, "nowhere")}/val-`), [/missing-val\.yaml: data\.val: no shard matches ".*nowhere\/val-/]],
    ];
    const results = await Promise.all(
      cases.map(async ([name, content, patterns]) => {
        const file = write(name, content);
        return { name, patterns, r: await runCli(["submit", file, "--server", server.address], { cwd: tmp.dir, timeoutMs: 60_000 }) };
      }),
    );
    for (const { name, patterns, r } of results) assertExit2(r, name, ...patterns);
    assert.deepEqual(await listJobs(), [], "the server's list did not grow");
    assert.deepEqual(jobDirs(), [], "no job directory in the state dir");
    await serving("after the bad submits");
  });

  void it("Submit with a bad spec_json straight over gRPC: INVALID_ARGUMENT naming the field, nothing persisted", async () => {
    const cases: [object, RegExp][] = [
      [{}, /spec_json: required/],
      [{ spec_json: "{not json", spec_path: "x.yaml" }, /x\.yaml: not valid JSON/],
      [{ spec_json: "[1, 2]", spec_path: "x.yaml" }, /x\.yaml: top level must be a mapping/],
      [{ spec_json: JSON.stringify({ task: "pretrain", data: { train: "a/{0..1}.tar" }, train: { steps: -1, batch_size: 8 }, cluster: { workers: 1 } }), spec_path: "y.json" }, /y\.json: train\.steps: expected an integer >= 1/],
      [{ spec_json: JSON.stringify({ task: "pretrian" }), spec_path: "z.json" }, /z\.json: task: .*"pretrian"/],
    ];
    for (const [req, pattern] of cases) {
      const { err } = await unary(rpc.Submit.bind(rpc), req);
      assert.equal(err?.code, grpc.status.INVALID_ARGUMENT, `${JSON.stringify(req)}: ${err?.message}`);
      assert.match(err?.details ?? "", pattern);
    }
    assert.deepEqual(jobDirs(), []);
    await serving("after bad Submit calls");
  });

  void it("ControlService requests with missing or out-of-range fields: INVALID_ARGUMENT, and the server keeps serving", async () => {
    const validButUnknown = "j-20260101-000000-abcdef";
    const cases: [string, () => Promise<grpc.ServiceError | null>, RegExp][] = [
      ["GetJob without job_id", async () => (await unary(rpc.GetJob.bind(rpc), {})).err, /job_id: required/],
      ["GetJob with a '/' in job_id", async () => (await unary(rpc.GetJob.bind(rpc), { job_id: "../../etc/passwd" })).err, /job_id: not a job id/],
      ["GetJob with a 500-character job_id", async () => (await unary(rpc.GetJob.bind(rpc), { job_id: "j".repeat(500) })).err, /job_id: not a job id/],
      ["CancelJob with grace_seconds -1", async () => (await unary(rpc.CancelJob.bind(rpc), { job_id: validButUnknown, grace_seconds: -1 })).err, /grace_seconds: expected 0\.\.86400, got -1/],
      ["CancelJob with grace_seconds 1e9", async () => (await unary(rpc.CancelJob.bind(rpc), { job_id: validButUnknown, grace_seconds: 1e9 })).err, /grace_seconds/],
      ["CancelJob without job_id", async () => (await unary(rpc.CancelJob.bind(rpc), {})).err, /job_id: required/],
      ["ResumeJob with a space in job_id", async () => (await unary(rpc.ResumeJob.bind(rpc), { job_id: "j 1" })).err, /job_id: not a job id/],
      ["ListCheckpoints without job_id", async () => (await unary(rpc.ListCheckpoints.bind(rpc), {})).err, /job_id: required/],
      ["ListJobs with an unknown state", async () => (await unary(rpc.ListJobs.bind(rpc), { states: [99] })).err, /states: unknown job state/],
      ["ListJobs with JOB_STATE_UNSPECIFIED", async () => (await unary(rpc.ListJobs.bind(rpc), { states: [1, 0] })).err, /states: unknown job state/],
      ["StreamLogs without job_id", () => streamEnd(rpc.StreamLogs({ follow: true })), /job_id: required/],
      ["StreamLogs with rank -2", () => streamEnd(rpc.StreamLogs({ job_id: validButUnknown, rank: -2 })), /rank: expected -1 \(all ranks\) or a rank >= 0, got -2/],
      ["Watch with a '/' in job_id", () => streamEnd(rpc.Watch({ job_id: "a/b" })), /job_id: not a job id/],
    ];
    for (const [what, call, pattern] of cases) {
      const err = await call();
      assert.equal(err?.code, grpc.status.INVALID_ARGUMENT, `${what}: ${err?.code} ${err?.message}`);
      assert.match(err?.details ?? "", pattern, what);
      await serving(what);
    }
    // A well-formed id of no job is NOT_FOUND, not INVALID_ARGUMENT.
    const missing = await unary(rpc.GetJob.bind(rpc), { job_id: validButUnknown });
    assert.equal(missing.err?.code, grpc.status.NOT_FOUND);
    const watchMissing = await streamEnd(rpc.Watch({ job_id: validButUnknown }));
    assert.equal(watchMissing?.code, grpc.status.NOT_FOUND);
    // A valid filter still works.
    const listed = await unary(rpc.ListJobs.bind(rpc), { states: [1, 6] });
    assert.equal(listed.err, null);
  });

  void it("an unknown job id: exit 3 from every command that takes one", { timeout: 60_000 }, async () => {
    const id = "j-20260101-000000-abcdef";
    const env = { CLIPFLEET_SERVER: server.address };
    const commands = [["status", id], ["logs", id], ["watch", id], ["checkpoints", id], ["cancel", id], ["resume", id], ["checkpoint", id], ["delete", id], ["delete", id, "--force"]];
    const results = await Promise.all(commands.map((c) => runCli(c, { env })));
    results.forEach((r, i) => {
      assert.equal(r.code, 3, `${commands[i]!.join(" ")}: exit ${r.code}\n${r.stderr}`);
      assert.match(r.stderr.trim(), new RegExp(`^clipfleet: job ${id} not found$`), commands[i]!.join(" "));
    });
    // A malformed id is invalid input (exit 2), not a missing job.
    assertExit2(await runCli(["status", "a/b"], { env }), "status a/b", /job_id: not a job id: "a\/b"/);
  });

  void it("a submit to an unreachable server: exit 3 naming the address", { timeout: 60_000 }, async () => {
    const port = await freePort(); // nothing listens there
    const spec = writeTinySpec(tmp.dir, { name: "unreachable", steps: 10, batch: 16 });
    const [byFlag, byEnv, none] = await Promise.all([
      runCli(["submit", spec, "--server", `127.0.0.1:${port}`], { timeoutMs: 30_000 }),
      runCli(["submit", spec], { env: { CLIPFLEET_SERVER: `127.0.0.1:${port}` }, timeoutMs: 30_000 }),
      runCli(["submit", spec], { env: { CLIPFLEET_SERVER: "" } }),
    ]);
    for (const r of [byFlag, byEnv]) {
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr.trim(), new RegExp(`^clipfleet: cannot reach the orchestrator at 127\\.0\\.0\\.1:${port}`));
    }
    // No server named at all: exit 3 saying how to name one.
    assert.equal(none.code, 3, none.stderr);
    assert.match(none.stderr, /pass --server HOST:PORT or set CLIPFLEET_SERVER/);
  });
});

void describe("CLI help and completion", () => {
  void it("`clipfleet completion` prints a bash completion script that asks clipfleet for completions", async () => {
    const r = await runCli(["completion"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^###-begin-clipfleet-completions-###$/m);
    assert.match(r.stdout, /clipfleet --get-yargs-completions/);
    assert.match(r.stdout, /^complete .* clipfleet$/m);
    assert.match(r.stdout, /Installation: clipfleet completion >> ~\/\.bashrc/);
    // What the script runs on <TAB>: the commands, then a command's subcommands.
    const top = await runCli(["--get-yargs-completions", "clipfleet", ""]);
    for (const c of ["submit", "status", "cancel", "resume", "watch", "completion"]) assert.match(top.stdout, new RegExp(`^${c}$`, "m"));
    const nodes = await runCli(["--get-yargs-completions", "clipfleet", "nodes", ""]);
    assert.match(nodes.stdout, /^check$/m);
  });

  void it("every command's --help has an Examples section", { timeout: 120_000 }, async () => {
    /** Command names listed under "Commands:" in a help text (e.g. "clipfleet nodes check" -> "check"). */
    const commandsOf = (help: string, prefix: string[]): string[] => {
      const section = help.split(/^Commands:$/m)[1]?.split(/^\S/m)[0] ?? "";
      const re = new RegExp(`^  clipfleet ${prefix.map((p) => `${p} `).join("")}([a-z-]+)`, "gm");
      return [...section.matchAll(re)].map((m) => m[1]!);
    };
    const top = await runCli(["--help"]);
    assert.equal(top.code, 0, top.stderr);
    const commands = commandsOf(top.stdout, []).map((c) => [c]);
    for (const c of ["run", "server", "submit", "status", "list", "logs", "watch", "cancel", "resume", "checkpoints", "nodes", "validate", "schema", "data", "completion"]) {
      assert.ok(commands.some((x) => x[0] === c), `${c} is not in clipfleet --help`);
    }
    const helps = await Promise.all(commands.map(async (c) => ({ c, r: await runCli([...c, "--help"]) })));
    const subcommands: string[][] = [];
    for (const { c, r } of helps) subcommands.push(...commandsOf(r.stdout, c).map((s) => [...c, s]));
    assert.ok(subcommands.some((s) => s.join(" ") === "data synth") && subcommands.some((s) => s.join(" ") === "nodes check"), JSON.stringify(subcommands));
    const subHelps = await Promise.all(subcommands.map(async (c) => ({ c, r: await runCli([...c, "--help"]) })));
    const missing: string[] = [];
    for (const { c, r } of [...helps, ...subHelps]) {
      assert.equal(r.code, 0, `${c.join(" ")} --help: ${r.stderr}`);
      const examples = r.stdout.split(/^Examples:$/m)[1];
      if (!examples || !new RegExp(`^  clipfleet ${c[0]}`, "m").test(examples)) missing.push(c.join(" "));
    }
    assert.deepEqual(missing, [], "commands whose --help has no example");
  });
});
