/**
 * The server on a secured nats-server: mutual TLS (every client shows a
 * certificate the fleet's CA signed) and users with passwords and
 * permissions. A real `clipfleet server --store tls://... --nats tls://...`
 * with --nats-ca/--nats-cert/--nats-key and --nats-user/--nats-password-file
 * runs a job to SUCCEEDED with its record in JetStream KV; an outside client
 * without credentials can read neither the bucket nor the events, nor can a
 * user whose permissions cover only the events. The password shows nowhere:
 * not in ServerInfo, not on stderr. Bad --nats-* input exits 2 in one line.
 */
import assert from "node:assert/strict";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect, type ConnectionOptions } from "nats";
import { clipfleetPermissions, natsPki, natsSkipReason, startNatsServer, writeSecretFile, type NatsPki, type NatsServer } from "../../orchestrator/test/helpers/nats.js";
import { runCli, startServer, tempDir, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { rankPidsOf, waitEnd } from "./control-helpers.js";

const PASSWORD = "e2e-pw-5b1d93";

void describe("clipfleet server with NATS over mutual TLS and passwords", { skip: natsSkipReason() }, () => {
  const tmp = tempDir("clipfleet-nats-tls-");
  let pki: NatsPki;
  let nats: NatsServer;
  let passwordFile: string;
  const servers: ServerHandle[] = [];
  const tlsOf = (): ConnectionOptions["tls"] => ({ ca: readFileSync(pki.ca, "utf8"), cert: readFileSync(pki.clientCert, "utf8"), key: readFileSync(pki.clientKey, "utf8") });

  before(async () => {
    pki = await natsPki(join(tmp.dir, "pki"));
    passwordFile = writeSecretFile(join(tmp.dir, "nats-password"), `${PASSWORD}\n`);
    nats = await startNatsServer({
      jetstream: true,
      secure: {
        pki,
        verify: "verify",
        users: [
          { user: "clipfleet", password: PASSWORD, permissions: clipfleetPermissions() },
          // A dashboard's user: it may watch events, nothing else.
          { user: "watcher", password: "watch-pw", permissions: '{ subscribe: { allow: ["clipfleet.jobs.*.events", "_INBOX.>"] }, publish: { deny: ">" } }' },
        ],
      },
    });
  });
  after(async () => {
    for (const s of servers) await s.stop();
    await nats?.stop();
    tmp.cleanup();
  });

  void it("runs a job with its record in KV; outsiders without credentials read nothing", { timeout: 180_000 }, async () => {
    const args = ["--store", nats.tlsUrl, "--nats", nats.tlsUrl, "--nats-ca", pki.ca, "--nats-cert", pki.clientCert, "--nats-key", pki.clientKey, "--nats-user", "clipfleet", "--nats-password-file", passwordFile];
    const server = await startServer({ stateDir: join(tmp.dir, "state"), args });
    servers.push(server);
    const client = server.client();
    const info = await client.serverInfo();
    client.close();
    assert.equal(info.store, `nats-kv:${nats.tlsUrl} bucket=clipfleet-jobs replicas=1`);
    assert.equal(info.events, nats.tlsUrl);

    const spec = writeTinySpec(tmp.dir, { name: "over-tls", steps: 6, batch: 16, everySteps: null });
    const sub = await runCli(["submit", spec, "--server", server.address]);
    assert.equal(sub.code, 0, sub.stderr);
    const id = sub.stdout.trim();
    const c = server.client();
    await waitEnd(c, id, "SUCCEEDED").finally(() => c.close());
    assert.deepEqual(rankPidsOf(id), []);

    // The record is in the bucket, for a client with clipfleet's credentials.
    const owner = await connect({ servers: `127.0.0.1:${nats.port}`, tls: tlsOf(), user: "clipfleet", pass: PASSWORD });
    try {
      const kv = await owner.jetstream().views.kv("clipfleet-jobs", { bindOnly: true });
      const entry = await kv.get(`jobs.${id}`);
      assert.ok(entry !== null, "no record in KV");
      assert.equal((JSON.parse(new TextDecoder().decode(entry.value)) as { state: string }).state, "SUCCEEDED");
    } finally {
      await owner.close();
    }

    // No certificate and no user: the connection itself fails (the TLS handshake wants a certificate).
    await assert.rejects(connect({ servers: `127.0.0.1:${nats.port}`, tls: { ca: readFileSync(pki.ca, "utf8") }, timeout: 3000, reconnect: false }));
    // The fleet's certificate but no user: Authorization Violation.
    await assert.rejects(connect({ servers: `127.0.0.1:${nats.port}`, tls: tlsOf(), timeout: 3000, reconnect: false }), /Authorization Violation/i);
    // A user allowed only events cannot read the bucket.
    const watcher = await connect({ servers: `127.0.0.1:${nats.port}`, tls: tlsOf(), user: "watcher", pass: "watch-pw" });
    try {
      const read = await watcher
        .jetstream({ timeout: 2000 })
        .views.kv("clipfleet-jobs", { bindOnly: true })
        .then((kv) => kv.get(`jobs.${id}`))
        .then(
          () => null,
          (err: Error) => err,
        );
      assert.ok(read instanceof Error, "the watcher read the bucket");
    } finally {
      await watcher.close();
    }

    const stopped = await server.stop();
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.ok(!stopped.stderr.includes(PASSWORD), `the password on stderr:\n${stopped.stderr}`);
    assert.doesNotMatch(stopped.stderr, /used after close/);
  });

  void it("bad --nats-* input and refused credentials exit 2 in one line, naming the flag or the URL", { timeout: 60_000 }, async () => {
    const openKey = join(tmp.dir, "open.key");
    writeFileSync(openKey, readFileSync(pki.clientKey));
    chmodSync(openKey, 0o644);
    const base = ["server", "--state-dir", join(tmp.dir, "state-bad"), "--listen", "127.0.0.1:0", "--store", nats.tlsUrl, "--nats-ca", pki.ca];
    const cases: { args: string[]; env?: Record<string, string>; re: RegExp }[] = [
      { args: ["--nats-cert", pki.clientCert, "--nats-key", openKey], re: /^clipfleet: --nats-key .*open\.key: accessible by group or others \(mode 0644\); `chmod 600 .*`$/ },
      { args: ["--nats-cert", pki.clientCert, "--nats-key", join(tmp.dir, "nope.key")], re: /^clipfleet: --nats-key .*nope\.key: no such file$/ },
      { args: ["--nats", "wss://127.0.0.1:1"], re: /^clipfleet: --nats: expected nats:\/\/HOST:PORT or tls:\/\/HOST:PORT, got "wss:\/\/127\.0\.0\.1:1"$/ },
      // The right certificate, a wrong password from the environment: NATS refuses it, and the message names the URL only.
      { args: ["--nats-cert", pki.clientCert, "--nats-key", pki.clientKey], env: { CLIPFLEET_NATS_USER: "clipfleet", CLIPFLEET_NATS_PASSWORD: "not-the-pw" }, re: new RegExp(`^clipfleet: job store: NATS at ${nats.tlsUrl} refused the credentials`) },
    ];
    for (const k of cases) {
      const r = await runCli([...base, ...k.args], { env: k.env, timeoutMs: 30_000 });
      assert.equal(r.code, 2, `${k.args.join(" ")}: exit ${r.code}\n${r.stderr}`);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0] ?? "", k.re);
      assert.ok(!r.stderr.includes("not-the-pw") && !r.stderr.includes(PASSWORD), r.stderr);
    }
  });
});
