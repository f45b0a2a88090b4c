/**
 * A server on a network, attacked while a job trains on it: a real
 * `clipfleet server --tls-dir` with the fleet CA made by `clipfleet certs`,
 * the real CLI as each kind of caller, real ranks over the TLS worker
 * gateway, and a rogue rank (tests/fixtures/rogue_rank.py, holding a real
 * rank token) probing the worker port. Each attack gets its refusal, and the
 * job training meanwhile ends SUCCEEDED with the same final parameters as
 * the same spec run alone. A server on a non-loopback address without TLS
 * refuses to start unless told --insecure. An embedded orchestrator's control
 * API is a socket only its user can open.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { credentials, Metadata, status } from "@grpc/grpc-js";
import { ControlClient } from "../../orchestrator/src/client/index.js";
import { loadClientTls } from "../../orchestrator/src/auth/index.js";
import type { ClipfleetError } from "../../orchestrator/src/domain/index.js";
import type { Job } from "../../orchestrator/src/gen/clipfleet/v1/control.js";
import { RegisterRequest, WorkerGatewayClient } from "../../orchestrator/src/gen/clipfleet/v1/worker.js";
import { finished, PYTHON, ROOT, runCli, startCli, startServer, tempDir, waitFor, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { waitEnd, waitJob } from "./control-helpers.js";

void describe("a server with TLS, identities and roles, attacked while a job trains on it", () => {
  const tmp = tempDir("clipfleet-security-");
  const tls = join(tmp.dir, "tls");
  const other = join(tmp.dir, "other-ca");
  const otto = join(tls, "clients", "otto");
  const vera = join(tls, "clients", "vera");
  const rogueWrapper = join(tmp.dir, "rogue-python");
  let server: ServerHandle;
  let victimId = "";
  let ottoClient: ControlClient;
  const as = (who: string): string[] => ["--server", server.address, "--tls-dir", who];
  // It checkpoints meanwhile, and waits before its step 590 until the attacks are over (the gate file),
  // so they surely hit a training job however slow the machine. The job alone has no gate.
  const gate = join(tmp.dir, "attacks-over");
  const victimSpec = (name: string, env?: Record<string, string>): string => writeTinySpec(tmp.dir, { name, steps: 600, workers: 1, batch: 16, everySteps: 200, ...(env ? { env } : {}) });
  // The same spec on a server of its own, run meanwhile: the parameters the victim must end with.
  let alone: ServerHandle;
  let aloneId = "";

  before(async () => {
    for (const args of [
      ["certs", "init", "--dir", tls, "--host", "127.0.0.1", "--host", "localhost"],
      ["certs", "issue", "--dir", tls, "--name", "vera", "--role", "viewer"],
      ["certs", "issue", "--dir", tls, "--name", "otto", "--role", "operator"],
      ["certs", "init", "--dir", other, "--host", "127.0.0.1"],
    ]) {
      const r = await runCli(args);
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    }
    // The rogue's "interpreter": passes the launcher's torch probe, then runs the rogue instead of the worker.
    writeFileSync(rogueWrapper, `#!/bin/sh\nif [ "$1" = "-m" ]; then exec ${PYTHON} ${join(ROOT, "tests", "fixtures", "rogue_rank.py")}; fi\nexec ${PYTHON} "$@"\n`, { mode: 0o755 });
    const policy = ["--allow-python", rogueWrapper, ...["ROGUE_MODE", "ROGUE_OUT", "ROGUE_VICTIM", "CLIPFLEET_FAULT"].flatMap((n) => ["--allow-env", n])];
    server = await startServer({ stateDir: join(tmp.dir, "state"), args: ["--tls-dir", tls, "--worker-listen", "127.0.0.1:0", ...policy] });
    ottoClient = new ControlClient(server.address, undefined, loadClientTls(otto));
    const sub = await runCli(["submit", victimSpec("victim", { CLIPFLEET_FAULT: `gate@590:file=${gate}` }), ...as(otto)]);
    assert.equal(sub.code, 0, sub.stderr);
    victimId = sub.stdout.trim();
    alone = await startServer({ stateDir: join(tmp.dir, "alone") });
    const solo = await runCli(["submit", victimSpec("victim"), "--server", alone.address], { env: { CLIPFLEET_TLS_DIR: alone.tlsDir } });
    assert.equal(solo.code, 0, solo.stderr);
    aloneId = solo.stdout.trim();
    await waitJob(ottoClient, victimId, "the victim training", (j) => (j.stages[0]?.progress?.step ?? 0) >= 1, 120_000);
  });
  after(async () => {
    ottoClient.close();
    await alone.stop();
    const r = await server.stop();
    tmp.cleanup();
    assert.equal(r.code, 0, `the server did not shut down cleanly:\n${r.stderr}`);
  });

  void it("no client certificate, or one from another CA: refused (exit 3, saying why)", async () => {
    const none = await runCli(["list", "--server", server.address], { env: { CLIPFLEET_TLS_DIR: "" } });
    assert.equal(none.code, 3, none.stderr);
    assert.match(none.stderr, /needs --tls-dir or CLIPFLEET_TLS_DIR/);
    const foreign = await runCli(["list", ...as(other)]);
    assert.equal(foreign.code, 3, foreign.stderr);
    assert.match(foreign.stderr, /trust this client certificate's CA/);
  });

  void it("a viewer reads but cannot submit or cancel; an operator cannot cordon: exit 4 naming the role", async () => {
    const list = await runCli(["list", ...as(vera)]);
    assert.equal(list.code, 0, list.stderr);
    const spec = writeTinySpec(tmp.dir, { name: "refused", steps: 4, everySteps: null });
    const submit = await runCli(["submit", spec, ...as(vera)]);
    assert.equal(submit.code, 4, submit.stderr);
    assert.match(submit.stderr, /^clipfleet: permission denied: submit needs role operator; vera is a viewer$/m);
    const cancel = await runCli(["cancel", victimId, ...as(vera)]);
    assert.equal(cancel.code, 4, cancel.stderr);
    const cordon = await runCli(["cordon", "local", ...as(otto)]);
    assert.equal(cordon.code, 4, cordon.stderr);
    assert.match(cordon.stderr, /setNodeSchedulable needs role admin; otto is an operator/);
  });

  void it("specs reaching past the server's policy or limits are refused at submit, naming the field; nothing is persisted", async () => {
    const before = await runCli(["list", "--json", ...as(otto)]);
    const attack = writeTinySpec(tmp.dir, { name: "attack", steps: 4, everySteps: null, env: { PYTHONWARNINGS: "all:0:antigravity.x:0:0", BROWSER: "/bin/sh -c 'id > F' #%s" } });
    const r = await runCli(["submit", attack, ...as(otto)]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^clipfleet: .*attack\.yaml: worker\.env\.PYTHONWARNINGS: not allowed by this server's policy/m);
    const bench = writeTinySpec(tmp.dir, { name: "bench", steps: 4, everySteps: null, failure: { quarantine_after: 1, quarantine_seconds: 1e308 } });
    const q = await runCli(["submit", bench, ...as(otto)]);
    assert.equal(q.code, 2, q.stderr);
    assert.match(q.stderr, /failure\.quarantine_(seconds|after)/);
    const bomb = writeTinySpec(tmp.dir, { name: "bomb", steps: 4, everySteps: null });
    writeFileSync(bomb, readFileSync(bomb, "utf8").replace(/train: .*\n/, `train: "/x/${"{0..9}".repeat(9)}.tar"\n`));
    const b = await runCli(["submit", bomb, ...as(otto)]);
    assert.equal(b.code, 2, b.stderr);
    assert.match(b.stderr, /data\.train: the patterns stand for 1,000,000,000 shards, more than the limit of 1,000,000/);
    const labels = writeTinySpec(tmp.dir, { name: "labels", steps: 4, everySteps: null, extra: `labels: {${Array.from({ length: 100 }, (_, i) => `k${i}: v`).join(", ")}}\n` });
    const l = await runCli(["submit", labels, ...as(otto)]);
    assert.equal(l.code, 2, l.stderr);
    assert.match(l.stderr, /labels\.yaml:\d+:\d+: labels: expected at most 64 entries, got 100/);
    // Past the CLI, straight over gRPC: 30 MB of labels, and a 2 MiB spec.
    const huge = JSON.stringify({ task: "pretrain", labels: Object.fromEntries(Array.from({ length: 2_000_000 }, (_, i) => [`k${i}`, "v".repeat(4)])) });
    assert.ok(huge.length > 30e6);
    // grpc-js answers RESOURCE_EXHAUSTED, or resets the stream when the client is still sending (over TLS, often).
    const tooLarge = (err: ClipfleetError): boolean => (err.code === "INVALID_ARGUMENT" && /Received message larger than max/.test(err.message)) || (err.code === "UNAVAILABLE" && /Stream refused/.test(err.message));
    await assert.rejects(ottoClient.submit(huge, join(tmp.dir, "huge.json"), tmp.dir), tooLarge);
    const big = JSON.stringify({ task: "pretrain", labels: { pad: "p".repeat(2 * 1024 * 1024) } });
    await assert.rejects(ottoClient.submit(big, join(tmp.dir, "big.json"), tmp.dir), (err: ClipfleetError) => err.code === "INVALID_ARGUMENT" && /the spec is 2\.0 MiB, more than the limit of 1 MiB/.test(err.message));
    const after = await runCli(["list", "--json", ...as(otto)]);
    const ids = (r: { stdout: string }): string[] => (JSON.parse(r.stdout) as { jobId: string }[]).map((j) => j.jobId);
    assert.deepEqual(ids(after), ids(before), "nothing was persisted");
  });

  /** Runs the rogue rank in `mode` as otto's job; returns its probes' outcomes and the job once it ended. */
  async function rogue(mode: string): Promise<{ results: Record<string, string>; job: Job }> {
    const out = join(tmp.dir, `rogue-${mode}.json`);
    const spec = writeTinySpec(tmp.dir, {
      name: `rogue-${mode}`,
      steps: 4,
      workers: 1,
      batch: 16,
      everySteps: null,
      env: { ROGUE_MODE: mode, ROGUE_OUT: out, ROGUE_VICTIM: victimId },
      failure: { max_restarts: 0 },
    });
    // worker.python joins the env block writeTinySpec wrote.
    writeFileSync(spec, readFileSync(spec, "utf8").replace("worker:\n  env:\n", `worker:\n  python: ${rogueWrapper}\n  env:\n`));
    const sub = await runCli(["submit", spec, ...as(otto)]);
    assert.equal(sub.code, 0, sub.stderr);
    const job = await waitEnd(ottoClient, sub.stdout.trim(), "FAILED", 120_000);
    const results = JSON.parse(readFileSync(out, "utf8")) as Record<string, string>;
    return { results, job };
  }

  void it("a rank gone rogue: a forged token, its token against another job, a second registration, a session takeover and a path-traversing checkpoint are all refused; its token dies with its attempt", { timeout: 180_000 }, async () => {
    const { results, job } = await rogue("probe");
    assert.equal(results.forged_token, "UNAUTHENTICATED");
    assert.equal(results.other_job, "UNAUTHENTICATED", "a rank's token is bound to its job");
    assert.equal(results.register, "OK");
    assert.equal(results.register_again, "FAILED_PRECONDITION");
    assert.notEqual(results.takeover, "OK", "a second session for a rank is refused");
    assert.equal(results.own_session_alive, "yes", "the takeover did not break the rank's own session");
    assert.match(job.reason + job.stages[0]!.reason, /checkpoint file outside its directory: "\.\.\/\.\.\//);
    assert.deepEqual(job.stages[0]!.checkpoints, [], "nothing committed");
    // The stolen token, now that its attempt is over.
    const stale = await probeRegister(server, tls, results.token!, job.id);
    assert.ok(["UNAUTHENTICATED", "FAILED_PRECONDITION"].includes(stale), `a stale token got ${stale}`);
  });

  void it("a rogue rank's 20 MiB request is refused by the worker port's limit; its 12 MiB failure message is cut to 4 KiB, its traceback to the last 16 KiB; list and status keep working", { timeout: 180_000 }, async () => {
    const { results, job } = await rogue("huge");
    assert.equal(results.request_20MiB, "RESOURCE_EXHAUSTED");
    const stage = job.stages[0]!;
    assert.ok(Buffer.byteLength(stage.error) <= 16 * 1024 + 1024, `error of ${stage.error.length} chars`);
    assert.match(stage.error, /ValueError: the end$/);
    assert.ok(Buffer.byteLength(job.reason) <= 8 * 1024, `reason of ${job.reason.length} chars`);
    const record = statSync(join(server.stateDir, "jobs", job.id, "job.json"));
    assert.ok(record.size < 1024 * 1024, `job.json of ${record.size} bytes`);
    const list = await runCli(["list", ...as(vera)]);
    assert.equal(list.code, 0, list.stderr);
    const status = await runCli(["status", job.id, ...as(vera)]);
    assert.equal(status.code, 0, status.stderr);
  });

  void it("the job that trained through it all SUCCEEDED with the same parameters as when run alone; the access log has every change and refusal", { timeout: 300_000 }, async () => {
    const attacksOver = Date.now();
    writeFileSync(gate, "");
    const victim = await waitEnd(ottoClient, victimId, "SUCCEEDED", 240_000);
    assert.ok(Number(victim.stages[0]!.endedAtMs) > attacksOver, "the victim was still training when the attacks ended");
    assert.equal(victim.submittedBy, "otto");
    assert.equal(victim.stages[0]!.restarts, 0);
    const status = await runCli(["status", victimId, ...as(vera)]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /submitted by otto/);
    const logs = await runCli(["logs", victimId, ...as(otto)]);
    assert.doesNotMatch(logs.stdout, /BEGIN CERTIFICATE/, "the CA handed to ranks is not logged");

    const soloClient = alone.client();
    const solo = await waitEnd(soloClient, aloneId, "SUCCEEDED", 240_000).finally(() => soloClient.close());
    assert.match(solo.stages[0]!.finalParamsSha256, /^[0-9a-f]{64}$/);
    assert.equal(victim.stages[0]!.finalParamsSha256, solo.stages[0]!.finalParamsSha256, "the attacks changed nothing of the victim's training");

    const access = readFileSync(join(server.stateDir, "access.log"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { identity: string; method: string; outcome: string; target: string });
    const seen = access.map((a) => `${a.identity} ${a.method} ${a.outcome}`);
    for (const want of ["vera submit PERMISSION_DENIED", "vera cancelJob PERMISSION_DENIED", "otto setNodeSchedulable PERMISSION_DENIED", "otto submit ok"]) {
      assert.ok(seen.includes(want), `access.log lacks "${want}": ${seen.join("; ")}`);
    }
    assert.ok(!seen.some((s) => s.includes(" listJobs ")), "reads are not logged");
    assert.equal(statSync(join(server.stateDir, "access.log")).mode & 0o777, 0o600);
  });
});

/** A Register call with `token` for rank 0 of `jobId`'s attempt 1, over the worker port; the status name it got. */
async function probeRegister(server: ServerHandle, tls: string, token: string, jobId: string): Promise<string> {
  const info = JSON.parse(readFileSync(join(server.stateDir, "orchestrator.json"), "utf8")) as { workerAddress: string };
  const client = new WorkerGatewayClient(info.workerAddress, credentials.createSsl(readFileSync(join(tls, "ca.crt"))));
  const md = new Metadata();
  md.set("authorization", `Bearer ${token}`);
  try {
    return await new Promise<string>((resolve) => {
      client.register(RegisterRequest.fromPartial({ jobId, stage: "main", attempt: 1, rank: 0, runtimeVersion: "0.1.0" }), md, (err) => resolve(err ? (Object.entries(status).find(([, v]) => v === err.code)?.[0] ?? String(err.code)) : "OK"));
    });
  } finally {
    client.close();
  }
}

void describe("secure by default", () => {
  const tmp = tempDir("clipfleet-insecure-");
  after(() => tmp.cleanup());

  void it("a server on a non-loopback address without --tls-dir refuses to start, saying how; --insecure starts it with a warning and a metric", { timeout: 60_000 }, async () => {
    const plain = { env: { CLIPFLEET_TLS_DIR: "" } };
    const refused = await runCli(["server", "--state-dir", join(tmp.dir, "a"), "--listen", "0.0.0.0:0"], plain);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /^clipfleet: --listen: 0\.0\.0\.0:0 is reachable from other machines, and no --tls-dir was given: make certificates with `clipfleet certs init/m);
    assert.equal(refused.stderr.trim().split("\n").length, 1);
    assert.ok(!existsSync(join(tmp.dir, "a", "jobs")), "nothing written");

    const child = startCli(["server", "--state-dir", join(tmp.dir, "b"), "--listen", "0.0.0.0:0", "--insecure", "--metrics-listen", "127.0.0.1:0"], plain);
    const done = finished(child, 60_000);
    const metrics = await waitFor("the insecure server to listen", () => /metrics on (http:\/\/\S+\/metrics)/.exec(child.output.stderr)?.[1], 30_000);
    assert.match(child.output.stderr, /WARNING: --insecure/);
    const body = await (await fetch(metrics)).text();
    assert.match(body, /^clipfleet_server_insecure 1$/m);
    child.kill("SIGTERM");
    assert.equal((await done).code, 0);
  });

  void it("clipfleet run serves its control API on a socket in the state dir that only its user can open", { timeout: 180_000 }, async () => {
    const state = join(tmp.dir, "run");
    const spec = writeTinySpec(tmp.dir, { name: "local", steps: 200, everySteps: null });
    const child = startCli(["run", spec, "--json", "--state-dir", state]);
    const done = finished(child, 170_000);
    const info = await waitFor("orchestrator.json", () => {
      try {
        return JSON.parse(readFileSync(join(state, "orchestrator.json"), "utf8")) as { address: string; workerAddress: string };
      } catch {
        return null;
      }
    });
    assert.match(info.address, /^unix:\//);
    const socket = info.address.slice("unix:".length);
    assert.ok(statSync(socket).isSocket());
    assert.equal(statSync(socket).mode & 0o777, 0o600);
    assert.equal(statSync(join(state, "orchestrator.json")).mode & 0o777, 0o600);
    assert.match(info.workerAddress, /^127\.0\.0\.1:\d+$/);
    const id = await waitFor("the job id", () => /job (j-[0-9a-f-]+) \(/.exec(child.output.stderr)?.[1]);
    const status = await runCli(["status", id, "--state-dir", state, "--json"]);
    assert.equal(status.code, 0, status.stderr);
    assert.match((JSON.parse(status.stdout) as { submittedBy: string }).submittedBy, /^local:/);
    const cancel = await runCli(["cancel", id, "--state-dir", state]);
    assert.equal(cancel.code, 0, cancel.stderr);
    await done;
    assert.ok(!existsSync(socket), "the socket is removed when the orchestrator ends");
  });
});
