/**
 * A server on a network: a real `clipfleet server --tls-dir` with the fleet
 * CA made by `clipfleet certs`, the real CLI as each kind of caller, real
 * ranks over the TLS worker gateway. Callers without a certificate, or with
 * one from another CA, are refused at the handshake; a viewer cannot submit
 * and an operator cannot cordon (exit 4, naming the role); an operator's job
 * trains to SUCCEEDED over TLS and records who submitted it; the access log
 * has every change and every refusal. A server on a non-loopback address
 * without TLS refuses to start unless told --insecure. An embedded
 * orchestrator's control API is a socket only its user can open.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ControlClient } from "../../orchestrator/src/client/index.js";
import { loadClientTls } from "../../orchestrator/src/auth/index.js";
import { finished, runCli, startCli, startServer, tempDir, waitFor, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { stateName, waitEnd } from "./control-helpers.js";

void describe("a server with TLS, identities and roles", () => {
  const tmp = tempDir("clipfleet-security-");
  const tls = join(tmp.dir, "tls");
  const other = join(tmp.dir, "other-ca");
  let server: ServerHandle;
  const as = (who: string): string[] => ["--server", server.address, "--tls-dir", who];

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
    server = await startServer({ stateDir: join(tmp.dir, "state"), args: ["--tls-dir", tls, "--worker-listen", "127.0.0.1:0"] });
  });
  after(async () => {
    const r = await server.stop();
    tmp.cleanup();
    assert.equal(r.code, 0, `the server did not shut down cleanly:\n${r.stderr}`);
  });

  void it("no client certificate, or one from another CA: refused (exit 3, saying why)", async () => {
    const none = await runCli(["list", "--server", server.address]);
    assert.equal(none.code, 3, none.stderr);
    assert.match(none.stderr, /needs --tls-dir or CLIPFLEET_TLS_DIR/);
    const foreign = await runCli(["list", ...as(other)]);
    assert.equal(foreign.code, 3, foreign.stderr);
    assert.match(foreign.stderr, /trust this client certificate's CA/);
  });

  void it("a viewer reads but cannot submit; an operator cannot cordon: exit 4 naming the role", async () => {
    const vera = join(tls, "clients", "vera");
    const list = await runCli(["list", ...as(vera)]);
    assert.equal(list.code, 0, list.stderr);
    const spec = writeTinySpec(tmp.dir, { name: "refused", steps: 4, everySteps: null });
    const submit = await runCli(["submit", spec, ...as(vera)]);
    assert.equal(submit.code, 4, submit.stderr);
    assert.match(submit.stderr, /^clipfleet: permission denied: submit needs role operator; vera is a viewer$/m);
    const cordon = await runCli(["cordon", "local", ...as(join(tls, "clients", "otto"))]);
    assert.equal(cordon.code, 4, cordon.stderr);
    assert.match(cordon.stderr, /setNodeSchedulable needs role admin; otto is an operator/);
    const viaEnv = await runCli(["cordon", "local", "--server", server.address], { env: { CLIPFLEET_TLS_DIR: tls } });
    assert.equal(viaEnv.code, 0, `the admin identity (CLIPFLEET_TLS_DIR) cordons: ${viaEnv.stderr}`);
    const back = await runCli(["uncordon", "local", ...as(tls)]);
    assert.equal(back.code, 0, back.stderr);
  });

  void it("a spec reaching past the server's policy is refused at submit, naming the field; nothing is persisted", async () => {
    const otto = join(tls, "clients", "otto");
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
    const after = await runCli(["list", "--json", ...as(otto)]);
    assert.equal(after.stdout, before.stdout, "nothing was persisted");
  });

  void it("an operator's job trains over the TLS worker gateway to SUCCEEDED and records its submitter; the access log has every change and refusal", { timeout: 180_000 }, async () => {
    const otto = join(tls, "clients", "otto");
    const spec = writeTinySpec(tmp.dir, { name: "over-tls", steps: 12, everySteps: 6 });
    const sub = await runCli(["submit", spec, ...as(otto)]);
    assert.equal(sub.code, 0, sub.stderr);
    const id = sub.stdout.trim();
    const client = new ControlClient(server.address, undefined, loadClientTls(otto));
    try {
      const job = await waitEnd(client, id, "SUCCEEDED", 150_000);
      assert.equal(job.submittedBy, "otto");
      assert.equal(stateName(job.state), "SUCCEEDED");
    } finally {
      client.close();
    }
    const status = await runCli(["status", id, ...as(join(tls, "clients", "vera"))]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /submitted by otto/);
    const logs = await runCli(["logs", id, ...as(otto)]);
    assert.doesNotMatch(logs.stdout, /BEGIN CERTIFICATE/, "the CA handed to ranks is not logged");

    const access = readFileSync(join(server.stateDir, "access.log"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { identity: string; method: string; outcome: string; target: string });
    const seen = access.map((a) => `${a.identity} ${a.method} ${a.outcome}`);
    for (const want of ["vera submit PERMISSION_DENIED", "otto setNodeSchedulable PERMISSION_DENIED", "admin setNodeSchedulable ok", "otto submit ok"]) {
      assert.ok(seen.includes(want), `access.log lacks "${want}": ${seen.join("; ")}`);
    }
    assert.ok(!seen.some((s) => s.includes(" listJobs ")), "reads are not logged");
    assert.equal(statSync(join(server.stateDir, "access.log")).mode & 0o777, 0o600);
  });
});

void describe("secure by default", () => {
  const tmp = tempDir("clipfleet-insecure-");
  after(() => tmp.cleanup());

  void it("a server on a non-loopback address without --tls-dir refuses to start, saying how; --insecure starts it with a warning and a metric", { timeout: 60_000 }, async () => {
    const refused = await runCli(["server", "--state-dir", join(tmp.dir, "a"), "--listen", "0.0.0.0:0"]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /^clipfleet: --listen: 0\.0\.0\.0:0 is reachable from other machines, and no --tls-dir was given: make certificates with `clipfleet certs init/m);
    assert.equal(refused.stderr.trim().split("\n").length, 1);
    assert.ok(!existsSync(join(tmp.dir, "a", "jobs")), "nothing written");

    const child = startCli(["server", "--state-dir", join(tmp.dir, "b"), "--listen", "0.0.0.0:0", "--insecure", "--metrics-listen", "127.0.0.1:0"]);
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
