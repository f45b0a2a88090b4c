/**
 * NATS over TLS with credentials: the --nats-* flags compiled into access
 * (each bad input refused naming its flag), URLs with credentials taken out
 * of every message, and the job store and the event bus against real
 * nats-servers: TLS with users and passwords (and permissions), and mutual
 * TLS whose client certificate names the user. No credential, a wrong
 * password and a certificate from another CA are refused, saying why,
 * naming the URL and never the password.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { connect } from "nats";
import { EVENT_SCHEMA_VERSION, type JobEvent } from "../../src/domain/index.js";
import { openEventBus } from "../../src/events/index.js";
import { loadNatsAccess, natsTarget, redactNatsUrl, type NatsAccess } from "../../src/nats/index.js";
import { openStore } from "../../src/store/index.js";
import { clipfleetPermissions, natsPki, natsSkipReason, startNatsServer, writeSecretFile, type NatsPki, type NatsServer } from "../helpers/nats.js";

const PASSWORD = "pw-0f9c2e71";

/** Asserts `p` rejects with `code`, a message matching `re`, and no trace of a secret. */
async function refused(p: Promise<unknown>, code: string, re: RegExp, secrets: string[] = [PASSWORD]): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    const e = err as { code?: string; message: string };
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    for (const s of secrets) assert.ok(!e.message.includes(s), `the message shows a secret: ${e.message}`);
    return true;
  });
}

function event(jobId: string): JobEvent {
  return { schemaVersion: EVENT_SCHEMA_VERSION, jobId, seq: 1, stage: "", type: "state", state: "PENDING", reason: "test", tsMs: 1, attempt: 0, rank: -1, data: {} };
}

/** Opens a store and a bus with `access`, writes a record and publishes an event, closes both. */
async function storeAndBusWork(url: string, access: NatsAccess): Promise<void> {
  const store = await openStore(url, "/nonexistent", access);
  try {
    assert.match(store.describe(), new RegExp(`^nats-kv:${url.replace(/[.]/g, "\\.")} bucket=clipfleet-jobs`));
    const list = await store.list();
    assert.ok(Array.isArray(list));
  } finally {
    await store.close();
  }
  const bus = await openEventBus(url, access);
  try {
    assert.equal(bus.describe(), `in-process+nats:${url}`);
    await bus.publish(event("j-tls"));
  } finally {
    await bus.close();
  }
}

void describe("--nats-* flags and NATS URLs", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-nats-access-"));
  let pki: NatsPki;
  before(async () => {
    pki = await natsPki(dir);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it("compiles TLS files and one credential; nothing given is no access", () => {
    assert.deepEqual(loadNatsAccess({}, {}), { tls: null, credential: null, given: [] });
    const pw = writeSecretFile(path.join(dir, "pw"), `${PASSWORD}\n`);
    const a = loadNatsAccess({ ca: pki.ca, cert: pki.clientCert, key: pki.clientKey, user: "clipfleet", passwordFile: pw }, {});
    assert.ok(a.tls?.ca?.includes("BEGIN CERTIFICATE") && a.tls.key?.includes("PRIVATE KEY"));
    assert.deepEqual(a.credential, { kind: "password", user: "clipfleet", pass: PASSWORD, from: "--nats-user and --nats-password-file" });
    const fromEnv = loadNatsAccess({}, { CLIPFLEET_NATS_USER: "u", CLIPFLEET_NATS_PASSWORD: PASSWORD });
    assert.equal(fromEnv.credential?.kind, "password");
    assert.equal(loadNatsAccess({}, { CLIPFLEET_NATS_TOKEN: "t0k" }).credential?.kind, "token");
    assert.ok(Object.isFrozen(a));
  });

  void it("refuses bad input naming the flag", () => {
    const bad = (flags: Parameters<typeof loadNatsAccess>[0], flag: string, re: RegExp, env: NodeJS.ProcessEnv = {}): void => {
      assert.throws(() => loadNatsAccess(flags, env), (err: unknown) => {
        const e = err as { code?: string; path?: string; message: string };
        assert.equal(e.code, "INVALID_ARGUMENT");
        assert.equal(e.path, flag, e.message);
        assert.match(e.message, re);
        assert.ok(!e.message.includes(PASSWORD) && !e.message.includes("\n"), e.message);
        return true;
      });
    };
    bad({ ca: path.join(dir, "missing.crt") }, "nats-ca", /^--nats-ca .*missing\.crt: no such file$/);
    const openKey = path.join(dir, "open.key");
    writeFileSync(openKey, "x");
    chmodSync(openKey, 0o644);
    bad({ cert: pki.clientCert, key: openKey }, "nats-key", /accessible by group or others \(mode 0644\); `chmod 600 /);
    const junkKey = writeSecretFile(path.join(dir, "junk.key"), "not a key\n");
    bad({ cert: pki.clientCert, key: junkKey }, "nats-key", /^--nats-key .*junk\.key: not a PEM private key/);
    bad({ ca: junkKey }, "nats-ca", /not a PEM certificate/);
    bad({ cert: pki.clientCert }, "nats-key", /give --nats-key too/);
    bad({ user: "clipfleet" }, "nats-user", /needs a password: give --nats-password-file FILE or set CLIPFLEET_NATS_PASSWORD/);
    bad({}, "nats-user", /^CLIPFLEET_NATS_PASSWORD: a password needs a user/, { CLIPFLEET_NATS_PASSWORD: PASSWORD });
    const pw = writeSecretFile(path.join(dir, "pw-b"), PASSWORD);
    const creds = writeSecretFile(path.join(dir, "u.creds"), "-----BEGIN NATS USER JWT-----\neyJ\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\nSUA\n------END USER NKEY SEED------\n");
    bad({ creds, user: "u", passwordFile: pw }, "nats-user", /--nats-creds and --nats-user and --nats-password-file both given/);
    bad({ creds: pw }, "nats-creds", /not a NATS credentials file/);
    const openPw = path.join(dir, "open-pw");
    writeFileSync(openPw, PASSWORD, { mode: 0o640 });
    chmodSync(openPw, 0o640);
    bad({ user: "u", passwordFile: openPw }, "nats-password-file", /accessible by group or others/);
  });

  void it("takes credentials out of URLs and refuses unknown schemes, naming the flag", () => {
    const t = natsTarget(`nats://clipfleet:${PASSWORD}@10.0.0.5:4222,nats://clipfleet:${PASSWORD}@10.0.0.6`, "store");
    assert.equal(t.url, "nats://10.0.0.5:4222,nats://10.0.0.6");
    assert.deepEqual(t.servers, ["10.0.0.5:4222", "10.0.0.6:4222"]);
    assert.deepEqual([t.options.user, t.options.pass, t.tls], ["clipfleet", PASSWORD, false]);
    assert.equal(natsTarget("tls://h:4443", "nats").tls, true);
    assert.equal(natsTarget("nats://tok3n@h:1", "nats").options.token, "tok3n");
    assert.equal(redactNatsUrl(`tls://clipfleet:${PASSWORD}@h:1`), "tls://h:1");
    assert.equal(redactNatsUrl("nats://h:1"), "nats://h:1");
    assert.throws(() => natsTarget(`redis://u:${PASSWORD}@x`, "store"), (e: Error & { path?: string }) => {
      assert.equal(e.message, '--store: expected "file", nats://HOST:PORT or tls://HOST:PORT, got "redis://x"');
      return e.path === "store";
    });
    assert.throws(() => natsTarget("nats://a:1,tls://b:1", "nats"), /--nats: every server of a list must use the same scheme/);
    const flagged = loadNatsAccess({}, { CLIPFLEET_NATS_TOKEN: "t" });
    assert.throws(() => natsTarget(`nats://u:${PASSWORD}@h:1`, "nats", flagged), /^InvalidArgumentError: --nats: the URL carries a credential and CLIPFLEET_NATS_TOKEN gives another; use one$/);
  });
});

void describe("the job store and the event bus on a secured nats-server", { skip: natsSkipReason() }, () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-nats-tls-"));
  let pki: NatsPki;
  /** TLS (server certificate only) and users with passwords; clipfleet has only the permissions it needs. */
  let withPasswords: NatsServer;
  /** Mutual TLS: the client certificate names the user (verify_and_map), no password. */
  let withCerts: NatsServer;
  let passwordFile: string;

  before(async () => {
    pki = await natsPki(dir);
    passwordFile = writeSecretFile(path.join(dir, "password"), `${PASSWORD}\n`);
    withPasswords = await startNatsServer({
      jetstream: true,
      secure: { pki, verify: "none", users: [{ user: "clipfleet", password: PASSWORD, permissions: clipfleetPermissions() }, { user: "watcher", password: "watch-pw", permissions: "{ subscribe: { allow: [\"clipfleet.jobs.*.events\", \"_INBOX.>\"] }, publish: { deny: \">\" } }" }] },
    });
    withCerts = await startNatsServer({ jetstream: true, secure: { pki, verify: "map", users: [{ user: pki.clientSubject, permissions: clipfleetPermissions() }] } });
  });
  after(async () => {
    await withPasswords?.stop();
    await withCerts?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  void it("connects over TLS with a user and a password (flag and file, environment, URL)", async () => {
    await storeAndBusWork(withPasswords.tlsUrl, loadNatsAccess({ ca: pki.ca, user: "clipfleet", passwordFile }, {}));
    await storeAndBusWork(withPasswords.tlsUrl, loadNatsAccess({ ca: pki.ca }, { CLIPFLEET_NATS_USER: "clipfleet", CLIPFLEET_NATS_PASSWORD: PASSWORD }));
    // nats:// to a server that requires TLS upgrades to TLS, checked against --nats-ca.
    const store = await openStore(`nats://clipfleet:${PASSWORD}@127.0.0.1:${withPasswords.port}?bucket=clipfleet-jobs`, "/nonexistent", loadNatsAccess({ ca: pki.ca }, {}));
    assert.equal(store.describe(), `nats-kv:${withPasswords.url} bucket=clipfleet-jobs replicas=1`);
    await store.close();
  });

  void it("connects with a client certificate that names the user (mutual TLS)", async () => {
    await storeAndBusWork(withCerts.tlsUrl, loadNatsAccess({ ca: pki.ca, cert: pki.clientCert, key: pki.clientKey }, {}));
  });

  void it("is refused without credentials, with a wrong password, and with a certificate from another CA", async () => {
    const url = withPasswords.tlsUrl;
    await refused(openStore(url, "/nonexistent", loadNatsAccess({ ca: pki.ca }, {})), "UNAUTHENTICATED", new RegExp(`^job store: NATS at ${url} refused the credentials \\('?Authorization Violation'?\\)`));
    const wrong = loadNatsAccess({ ca: pki.ca, user: "clipfleet", passwordFile: writeSecretFile(path.join(dir, "wrong"), "wrong-pw") }, {});
    await refused(openEventBus(url, wrong), "UNAUTHENTICATED", new RegExp(`^events: NATS at ${url} refused the credentials`), ["wrong-pw"]);
    await refused(openStore(`tls://clipfleet:wrong-pw@127.0.0.1:${withPasswords.port}`, "/nonexistent", loadNatsAccess({ ca: pki.ca }, {})), "UNAUTHENTICATED", new RegExp(`NATS at ${url} refused`), ["wrong-pw"]);
    // Without --nats-ca the server's certificate (our own CA's) is not trusted.
    await refused(openStore(url, "/nonexistent", loadNatsAccess({ user: "clipfleet", passwordFile }, {})), "UNAUTHENTICATED", new RegExp(`^job store: TLS with NATS at ${url} failed \\(.*certificate.*\\); check --nats-ca`));
    const foreign = loadNatsAccess({ ca: pki.ca, cert: pki.foreignCert, key: pki.foreignKey }, {});
    await refused(openStore(withCerts.tlsUrl, "/nonexistent", foreign), "UNAVAILABLE", new RegExp(`^job store: NATS at ${withCerts.tlsUrl} closed or never answered the TLS connection .*client certificate signed by a CA it trusts`));
  });

  void it("a user without the permissions cannot read the bucket", async () => {
    const store = await openStore(withPasswords.tlsUrl, "/nonexistent", loadNatsAccess({ ca: pki.ca, user: "clipfleet", passwordFile }, {}));
    await store.close();
    const nc = await connect({ servers: `127.0.0.1:${withPasswords.port}`, tls: { caFile: pki.ca }, user: "watcher", pass: "watch-pw" });
    try {
      const kv = await nc.jetstream({ timeout: 2000 }).views.kv("clipfleet-jobs", { bindOnly: true }).catch((err: Error) => err);
      const read = kv instanceof Error ? kv : await kv.get("jobs.j-1").catch((err: Error) => err);
      assert.ok(read instanceof Error, "the watcher read the bucket");
      assert.match(read.message, /permission|timeout|no responders/i);
    } finally {
      await nc.close();
    }
  });
});
