/**
 * auth/: the role table, identities from certificate subjects, the access
 * log, TLS material checks, and the fleet CA made with the real openssl
 * (certificates checked with Node's X509Certificate).
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import {
  AccessLog,
  allows,
  authorize,
  changesState,
  identityFromSubject,
  initCerts,
  issueCert,
  loadClientTls,
  loadServerTls,
  METHOD_ROLES,
  subjectAltName,
  type ControlMethod,
} from "../../src/auth/index.js";
import { InvalidArgumentError, PermissionDeniedError, UnauthenticatedError } from "../../src/domain/index.js";

const METHODS = Object.keys(METHOD_ROLES) as ControlMethod[];

void describe("roles", () => {
  void it("viewers read, operators also run jobs, admins also change the fleet", () => {
    const writes: ControlMethod[] = ["submit", "cancelJob", "deleteJob", "resumeJob", "requestCheckpoint"];
    for (const m of METHODS) {
      const isWrite = writes.includes(m);
      const isFleet = m === "setNodeSchedulable";
      // The dry run of submit tells what submit tells (paths on the server, data counts), so it needs submit's role, but changes nothing.
      const isDryRun = m === "validateJob";
      assert.equal(allows("viewer", m), !isWrite && !isFleet && !isDryRun, `viewer ${m}`);
      assert.equal(allows("operator", m), !isFleet, `operator ${m}`);
      assert.equal(allows("admin", m), true, `admin ${m}`);
      assert.equal(changesState(m), isWrite || isFleet, `changesState ${m}`);
    }
    assert.equal(METHODS.length, 16, "every ControlService method has a role");
  });

  void it("authorize: no identity is UNAUTHENTICATED; a low role is PERMISSION_DENIED naming the role needed", () => {
    assert.throws(() => authorize(null, "listJobs"), UnauthenticatedError);
    const viewer = { name: "ann", role: "viewer", via: "certificate" } as const;
    assert.equal(authorize(viewer, "listJobs"), viewer);
    assert.throws(() => authorize(viewer, "submit"), (err: unknown) => err instanceof PermissionDeniedError && /submit needs role operator; ann is a viewer/.test(err.message));
    const op = { name: "bob", role: "operator", via: "certificate" } as const;
    assert.throws(() => authorize(op, "setNodeSchedulable"), /setNodeSchedulable needs role admin; bob is an operator/);
  });
});

void describe("identities from certificate subjects", () => {
  void it("CN is the name, O the role; anything else is no identity", () => {
    assert.deepEqual(identityFromSubject({ CN: "alice", O: "operator" }), { name: "alice", role: "operator", via: "certificate" });
    assert.equal(identityFromSubject({ CN: "alice" }), null);
    assert.equal(identityFromSubject({ CN: "alice", O: "root" }), null);
    assert.equal(identityFromSubject({ CN: "al ice", O: "viewer" }), null);
    assert.equal(identityFromSubject({ CN: ["a", "b"], O: "admin" }), null, "two names are none");
    assert.equal(identityFromSubject({ CN: "x", O: ["viewer", "admin"] }), null, "two roles are none");
    assert.equal(identityFromSubject(undefined), null);
  });
});

void describe("TLS files and the fleet CA (openssl)", () => {
  const dir = mkdtempSync(join(tmpdir(), "clipfleet-certs-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const ca = join(dir, "ca");

  void it("subjectAltName names addresses and host names; refuses anything else", () => {
    assert.equal(subjectAltName(["127.0.0.1", "head.example.org", "::1"]), "IP:127.0.0.1,DNS:head.example.org,IP:::1");
    assert.throws(() => subjectAltName([]), InvalidArgumentError);
    assert.throws(() => subjectAltName(["a b"]), /not a host name/);
    assert.throws(() => subjectAltName(["x,DNS:evil"]), /not a host name/);
  });

  void it("init makes a CA, a server certificate for the hosts, and an admin identity; issue a user's; keys are 0600", async () => {
    await initCerts(ca, ["127.0.0.1", "head.example.org"]);
    const caCert = new X509Certificate(readFileSync(join(ca, "ca.crt")));
    const server = new X509Certificate(readFileSync(join(ca, "server.crt")));
    assert.ok(caCert.ca);
    assert.ok(server.verify(caCert.publicKey), "the CA signed the server certificate");
    assert.ok(server.checkIP("127.0.0.1"));
    assert.equal(server.checkHost("head.example.org"), "head.example.org");
    const admin = new X509Certificate(readFileSync(join(ca, "client.crt")));
    assert.deepEqual(identityFromSubject(Object.fromEntries(admin.subject.split("\n").map((l) => l.split("=") as [string, string]))), { name: "admin", role: "admin", via: "certificate" });
    for (const key of ["ca.key", "server.key", "client.key"]) assert.equal(statSync(join(ca, key)).mode & 0o777, 0o600, key);
    assert.equal(statSync(ca).mode & 0o777, 0o700);
    await assert.rejects(initCerts(ca, ["127.0.0.1"]), /already holds a CA/);

    const out = join(dir, "alice");
    await issueCert(ca, "alice", "viewer", out);
    const alice = new X509Certificate(readFileSync(join(out, "client.crt")));
    assert.ok(alice.verify(caCert.publicKey));
    assert.match(alice.subject, /O=viewer/);
    assert.match(alice.subject, /CN=alice/);
    assert.equal(loadClientTls(out).ca.toString(), readFileSync(join(ca, "ca.crt"), "utf8"));
    await assert.rejects(issueCert(ca, "alice", "viewer", out), /already holds an identity/);
    await assert.rejects(issueCert(ca, "bad name", "viewer", join(dir, "x")), /not a valid identity name/);
    await assert.rejects(issueCert(join(dir, "nope"), "bob", "viewer", join(dir, "y")), /holds no CA/);
  });

  void it("a missing file or a key others can read is refused, naming the file", () => {
    assert.throws(() => loadServerTls(join(dir, "empty")), /ca\.crt is missing.*certs init/);
    chmodSync(join(ca, "server.key"), 0o644);
    assert.throws(() => loadServerTls(ca), /server\.key is accessible by group or others \(mode 0644\); `chmod 600/);
    chmodSync(join(ca, "server.key"), 0o600);
    assert.equal(loadServerTls(ca).dir, ca);
  });
});

void describe("access log", () => {
  void it("one JSON line per record, the file only its owner can read", () => {
    const dir = mkdtempSync(join(tmpdir(), "clipfleet-access-"));
    try {
      const path = join(dir, "access.log");
      const log = new AccessLog(path);
      log.record({ name: "alice", role: "viewer", via: "certificate" }, "submit", "spec.yaml", "PERMISSION_DENIED", 1000);
      log.record(null, "listJobs", "", "UNAUTHENTICATED", 2000);
      const lines = readFileSync(path, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.deepEqual(lines[0], { tsMs: 1000, identity: "alice", role: "viewer", method: "submit", target: "spec.yaml", outcome: "PERMISSION_DENIED" });
      assert.equal(lines[1]?.identity, "(none)");
      assert.equal(statSync(path).mode & 0o777, 0o600);
      new AccessLog(null).record(null, "submit", "", "ok", 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
