/**
 * known_hosts parsing and host key checks. The hashed lines and the
 * fingerprint below were produced by OpenSSH 9.2 (ssh with HashKnownHosts,
 * `ssh-keygen -H`, `ssh-keygen -lf`) for one ed25519 host key.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  HostKeyError,
  KnownHostsFile,
  entryMatches,
  fingerprintSha256,
  keyTypeOf,
  knownHostLine,
  knownHostName,
  parseKnownHosts,
  verifyHostKey,
} from "../../src/launcher/index.js";

const KEY_B64 = "AAAAC3NzaC1lZDI1NTE5AAAAIKRWIRMtpVfIaCMR1Ns4MNlhl9Xbw+STjdZWml6W5tIG";
const KEY = Buffer.from(KEY_B64, "base64");
/** `ssh-keygen -lf` of that key. */
const KEY_FP = "SHA256:gGzfNKhxvHXg4bHiXjh073vNp7iafQS8YXGD1OQ43aU";
/** Written by ssh for 10.77.200.1 (port 22). */
const HASHED_22 = `|1|G56/RH9X2msQSUDpV+0ypeeNwFQ=|GvwXLQTRF8rfF0fKzosuQ9ePs5E= ssh-ed25519 ${KEY_B64}`;
/** `ssh-keygen -H` of "[10.77.200.1]:2222 ssh-ed25519 ...". */
const HASHED_2222 = `|1|rHLuepB2XtbVE2fz6a6qbF2g2+E=|j2AKBwBbaYC97/SOV/3EO+v3AJk= ssh-ed25519 ${KEY_B64}`;

/** A syntactically valid ed25519 blob that is not KEY. */
function otherKey(): Buffer {
  const k = Buffer.from(KEY);
  k[k.length - 1] = (k[k.length - 1]! + 1) % 256;
  return k;
}

/** A known_hosts path in a fresh directory: with `content`, or (null) not existing, in a directory not existing either. */
function tempFile(content: string | null): { path: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "cf-kh-"));
  const path = content === null ? join(dir, "sub", "known_hosts") : join(dir, "known_hosts");
  if (content !== null) writeFileSync(path, content);
  return { path, done: () => rmSync(dir, { recursive: true, force: true }) };
}

void describe("known_hosts parsing", () => {
  void it("reads plain, hashed, bracketed, marked lines and skips comments and damaged ones", () => {
    const entries = parseKnownHosts(
      [
        "# a comment",
        "",
        `n1.example,10.0.0.1 ssh-ed25519 ${KEY_B64} comment words`,
        HASHED_22,
        `@revoked * ssh-ed25519 ${KEY_B64}`,
        `@cert-authority *.example ssh-ed25519 ${KEY_B64}`,
        `@bogus host ssh-ed25519 ${KEY_B64}`,
        "host-without-key ssh-ed25519",
        `mismatch ssh-rsa ${KEY_B64}`,
        "   ",
      ].join("\n"),
    );
    assert.deepEqual(
      entries.map((e) => [e.marker, e.hosts, e.keyType, e.line]),
      [
        [null, "n1.example,10.0.0.1", "ssh-ed25519", 3],
        [null, HASHED_22.split(" ")[0], "ssh-ed25519", 4],
        ["revoked", "*", "ssh-ed25519", 5],
        ["cert-authority", "*.example", "ssh-ed25519", 6],
      ],
    );
    assert.ok(entries[0]!.key.equals(KEY));
  });

  void it("matches hashed names as OpenSSH writes them, with the port in brackets when it is not 22", () => {
    const [h22] = parseKnownHosts(HASHED_22);
    const [h2222] = parseKnownHosts(HASHED_2222);
    assert.ok(h22 && h2222);
    assert.equal(entryMatches(h22, "10.77.200.1", 22), true);
    assert.equal(entryMatches(h22, "10.77.200.1", 2222), false);
    assert.equal(entryMatches(h22, "10.77.200.2", 22), false);
    assert.equal(entryMatches(h2222, "10.77.200.1", 2222), true);
    assert.equal(entryMatches(h2222, "10.77.200.1", 22), false);
  });

  void it("matches patterns: lists, wildcards, negations, case and [host]:port", () => {
    const m = (hosts: string, host: string, port = 22): boolean => entryMatches({ hosts }, host, port);
    assert.equal(m("a.example,b.example", "b.example"), true);
    assert.equal(m("*.example", "GPU1.Example"), true);
    assert.equal(m("gpu?.example", "gpu1.example"), true);
    assert.equal(m("gpu?.example", "gpu12.example"), false);
    assert.equal(m("*.example,!bad.example", "bad.example"), false);
    assert.equal(m("*.example,!bad.example", "good.example"), true);
    assert.equal(m("10.0.0.*", "10.0.0.7"), true);
    assert.equal(m("10.0.0.1", "10.0.0.10"), false, "dots are literal");
    assert.equal(m("[10.0.0.1]:2222", "10.0.0.1", 2222), true);
    assert.equal(m("10.0.0.1", "10.0.0.1", 2222), false, "a plain name is port 22 only");
    assert.equal(knownHostName("h", 22), "h");
    assert.equal(knownHostName("h", 2200), "[h]:2200");
  });
});

void describe("host key checks", () => {
  void it("formats fingerprints like ssh-keygen -l, and key types from the blob", () => {
    assert.equal(fingerprintSha256(KEY), KEY_FP);
    assert.equal(keyTypeOf(KEY), "ssh-ed25519");
    assert.equal(keyTypeOf(Buffer.alloc(2)), "");
    assert.equal(knownHostLine("10.0.0.1", 22, KEY), `10.0.0.1 ssh-ed25519 ${KEY_B64}`);
    assert.equal(knownHostLine("10.0.0.1", 2222, KEY), `[10.0.0.1]:2222 ssh-ed25519 ${KEY_B64}`);
  });

  void it("says known, unknown, changed or revoked", () => {
    const entries = parseKnownHosts([HASHED_22, `other.example ssh-ed25519 ${KEY_B64}`].join("\n"));
    assert.equal(verifyHostKey(entries, "10.77.200.1", 22, KEY).status, "known");
    assert.equal(verifyHostKey(entries, "10.77.200.9", 22, KEY).status, "unknown");
    const changed = verifyHostKey(entries, "10.77.200.1", 22, otherKey());
    assert.equal(changed.status, "changed");
    assert.deepEqual(changed.status === "changed" ? changed.known.map((e) => e.line) : [], [1]);
    const revoked = parseKnownHosts([HASHED_22, `@revoked * ssh-ed25519 ${KEY_B64}`].join("\n"));
    assert.equal(verifyHostKey(revoked, "10.77.200.1", 22, KEY).status, "revoked");
    const ca = parseKnownHosts(`@cert-authority * ssh-ed25519 ${KEY_B64}`);
    assert.equal(verifyHostKey(ca, "10.77.200.1", 22, KEY).status, "unknown", "a CA key is not a host key");
  });

  void it("strict refuses an unknown key naming host and fingerprint, and writes nothing", () => {
    const f = tempFile("");
    try {
      const kh = new KnownHostsFile(f.path);
      assert.throws(
        () => kh.check("10.0.0.1", 2222, KEY, "strict", "n1"),
        (e: unknown) =>
          e instanceof HostKeyError &&
          e.verdict === "unknown" &&
          e.fingerprint === KEY_FP &&
          e.message.includes("node n1") &&
          e.message.includes("[10.0.0.1]:2222") &&
          e.message.includes(KEY_FP) &&
          e.message.includes("accept-new"),
      );
      assert.equal(readFileSync(f.path, "utf8"), "");
    } finally {
      f.done();
    }
  });

  void it("accept-new records an unknown key (creating the file) and then knows it", () => {
    const f = tempFile(null);
    try {
      const kh = new KnownHostsFile(f.path);
      assert.equal(kh.check("10.0.0.1", 22, KEY, "accept-new", "n1"), "recorded");
      assert.equal(readFileSync(f.path, "utf8"), `10.0.0.1 ssh-ed25519 ${KEY_B64}\n`);
      assert.equal(kh.check("10.0.0.1", 22, KEY, "strict", "n1"), "known");
      assert.deepEqual(kh.knownKeyTypes("10.0.0.1", 22), ["ssh-ed25519"]);
      assert.deepEqual(kh.knownKeyTypes("10.0.0.2", 22), []);
    } finally {
      f.done();
    }
  });

  void it("accept-new appends on a line of its own when the file lacks a final newline", () => {
    const f = tempFile(`other ssh-ed25519 ${KEY_B64}`);
    try {
      new KnownHostsFile(f.path).check("10.0.0.1", 2222, KEY, "accept-new", "n1");
      assert.equal(readFileSync(f.path, "utf8"), `other ssh-ed25519 ${KEY_B64}\n[10.0.0.1]:2222 ssh-ed25519 ${KEY_B64}\n`);
    } finally {
      f.done();
    }
  });

  void it("refuses a changed key under accept-new too, naming the file and line, and records nothing", () => {
    const content = `# fleet\n${HASHED_22}\n`;
    const f = tempFile(content);
    try {
      const kh = new KnownHostsFile(f.path);
      const other = otherKey();
      assert.throws(
        () => kh.check("10.77.200.1", 22, other, "accept-new", "n1"),
        (e: unknown) =>
          e instanceof HostKeyError &&
          e.verdict === "changed" &&
          e.fingerprint === fingerprintSha256(other) &&
          /REMOTE HOST IDENTIFICATION HAS CHANGED for 10\.77\.200\.1/.test(e.message) &&
          e.message.includes(`${f.path}:2`) &&
          e.message.includes(fingerprintSha256(other)),
      );
      assert.equal(readFileSync(f.path, "utf8"), content);
    } finally {
      f.done();
    }
  });
});
