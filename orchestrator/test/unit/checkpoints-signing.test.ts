/**
 * Signed checkpoint manifests: the state dir's Ed25519 key (made once, even
 * by servers starting together; refused when open to others), manifests
 * signed at commit and refused when a byte, a digest or the signature
 * changed or another orchestrator signed them, imports hashed at submit,
 * and the offline check with openssl that docs/security.md shows.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  commitManifest,
  importCheckpoint,
  KEYS_DIR,
  loadOrCreateSigningKey,
  PUBLIC_KEY_FILE,
  readImportedManifest,
  readPublicKey,
  readRecordedManifest,
  readVerifiedManifest,
  recordedManifestProblem,
  sha256Hex,
  SIGNING_KEY_FILE,
  verifyCheckpoint,
  type CheckpointManifest,
} from "../../src/checkpoints/index.js";
import { EnvironmentError, UntrustedCheckpointError } from "../../src/domain/index.js";

const root = mkdtempSync(join(tmpdir(), "clipfleet-signing-"));
let n = 0;
const fresh = (name: string): string => {
  const d = join(root, `${name}-${++n}`);
  mkdirSync(d, { recursive: true, mode: 0o700 });
  return d;
};

/** A checkpoint directory with one file and a manifest (not yet committed). */
function checkpointDir(content = "weights"): { dir: string; manifest: CheckpointManifest } {
  const dir = fresh("ckpt");
  writeFileSync(join(dir, "model.pt"), content);
  const bytes = Buffer.from(content);
  const manifest: CheckpointManifest = {
    schemaVersion: 1,
    jobId: "j-20261123-101500-a1b2c3",
    stage: "main",
    task: "pretrain",
    step: 10,
    attempt: 1,
    worldSize: 1,
    configSha256: "c".repeat(64),
    cursor: { epoch: 0, sampleInEpoch: 320 },
    imageTower: { preset: "vit-tiny", family: "vit", image_size: 32, width: 64, depth: 2, heads: 2, patch: 8, mlp_ratio: 4, layers: [], widths: [] },
    files: [{ path: "model.pt", sha256: sha256Hex(bytes), size: bytes.length }],
    committedAtMs: 1,
  };
  return { dir, manifest };
}

function refused(fn: () => unknown, pattern: RegExp, dir: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof UntrustedCheckpointError, String(err));
    assert.equal(err.code, "FAILED_PRECONDITION");
    assert.equal(err.dir, dir);
    assert.ok(err.message.includes(dir), err.message);
    assert.match(err.message, pattern);
    return true;
  });
}

after(() => rmSync(root, { recursive: true, force: true }));

void describe("manifest signing key", () => {
  void it("is made once, 0600 in a 0700 folder, with its public key beside it; a restart reads the same key", async () => {
    const state = fresh("state");
    const a = await loadOrCreateSigningKey(state);
    const b = await loadOrCreateSigningKey(state);
    assert.equal(a.fingerprint, b.fingerprint);
    assert.match(a.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
    assert.equal(statSync(join(state, KEYS_DIR)).mode & 0o777, 0o700);
    assert.equal(statSync(join(state, KEYS_DIR, SIGNING_KEY_FILE)).mode & 0o777, 0o600);
    assert.equal(readFileSync(join(state, KEYS_DIR, PUBLIC_KEY_FILE), "utf8"), a.publicKeyPem);
    assert.equal(readPublicKey(join(state, KEYS_DIR, PUBLIC_KEY_FILE)).fingerprint, a.fingerprint);
  });

  void it("refuses a key file or folder readable by group or others, naming it and the chmod", async () => {
    const state = fresh("state");
    await loadOrCreateSigningKey(state);
    const keyFile = join(state, KEYS_DIR, SIGNING_KEY_FILE);
    chmodSync(keyFile, 0o640);
    await assert.rejects(loadOrCreateSigningKey(state), (err: unknown) => {
      assert.ok(err instanceof EnvironmentError);
      assert.match(err.message, new RegExp(`^${keyFile}: .*accessible by group or others \\(mode 0640\\); \`chmod 600 ${keyFile}\``));
      return true;
    });
    chmodSync(keyFile, 0o600);
    chmodSync(join(state, KEYS_DIR), 0o755);
    await assert.rejects(loadOrCreateSigningKey(state), /keys: the manifest signing key's folder is accessible by group or others \(mode 0755\); `chmod 700 /);
  });

  void it("two servers starting at once on one state dir make one key", async () => {
    const state = fresh("race");
    const module = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "checkpoints", "index.js");
    const script = `const m = await import(${JSON.stringify(module)}); const k = await m.loadOrCreateSigningKey(${JSON.stringify(state)}); process.stdout.write(k.fingerprint);`;
    const runs = Array.from({ length: 6 }, () =>
      new Promise<string>((resolveRun, reject) => {
        const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let errText = "";
        child.stdout.on("data", (d: Buffer) => (out += d.toString()));
        child.stderr.on("data", (d: Buffer) => (errText += d.toString()));
        child.on("error", reject);
        child.on("close", (code) => (code === 0 ? resolveRun(out) : reject(new Error(`exit ${code}: ${errText}`))));
      }),
    );
    const prints = await Promise.all(runs);
    assert.equal(new Set(prints).size, 1, prints.join(" "));
    assert.deepEqual(readdirSync(join(state, KEYS_DIR)).sort(), [PUBLIC_KEY_FILE, SIGNING_KEY_FILE].sort(), "no temp file left behind");
    assert.equal((await loadOrCreateSigningKey(state)).fingerprint, prints[0]);
  });
});

void describe("signed manifests", () => {
  void it("a committed manifest verifies, and its sha256 is that of the bytes signed", async () => {
    const key = await loadOrCreateSigningKey(fresh("state"));
    const { dir, manifest } = checkpointDir();
    const sha = await commitManifest(dir, manifest, key);
    const v = readVerifiedManifest(dir, key);
    assert.ok(v);
    assert.deepEqual(v.manifest, manifest);
    assert.equal(v.sha256, sha);
    assert.equal(sha, sha256Hex(readFileSync(join(dir, "manifest.json"))));
    assert.equal(readVerifiedManifest(fresh("empty"), key), null, "no manifest: not committed");
  });

  void it("a changed byte, an edited digest, a removed signature: refused, naming the directory", async () => {
    const key = await loadOrCreateSigningKey(fresh("state"));
    const { dir, manifest } = checkpointDir();
    await commitManifest(dir, manifest, key);
    const file = join(dir, "manifest.json");
    const good = readFileSync(file);

    const flipped = Buffer.from(good);
    const at = flipped.indexOf("320");
    flipped[at] = "4".charCodeAt(0);
    writeFileSync(file, flipped);
    refused(() => readVerifiedManifest(dir, key), /manifest\.sig does not verify with this orchestrator's key \(SHA256:/, dir);

    // A digest edited to match a swapped file: exactly what a signature is for.
    const swapped = "other weights";
    writeFileSync(join(dir, "model.pt"), swapped);
    const edited = JSON.stringify({ ...manifest, files: [{ path: "model.pt", sha256: sha256Hex(Buffer.from(swapped)), size: swapped.length }] }, null, 2) + "\n";
    writeFileSync(file, edited);
    refused(() => readVerifiedManifest(dir, key), /does not verify/, dir);

    writeFileSync(file, good);
    assert.ok(readVerifiedManifest(dir, key), "the original bytes verify again");
    rmSync(join(dir, "manifest.sig"));
    refused(() => readVerifiedManifest(dir, key), /manifest\.json has no manifest\.sig .*`clipfleet manifests sign /, dir);
  });

  void it("a manifest another orchestrator signed is refused; its public key verifies it", async () => {
    const other = fresh("other");
    const theirs = await loadOrCreateSigningKey(other);
    const ours = await loadOrCreateSigningKey(fresh("ours"));
    const { dir, manifest } = checkpointDir();
    await commitManifest(dir, manifest, theirs);
    refused(() => readVerifiedManifest(dir, ours), new RegExp(`does not verify with this orchestrator's key \\(${ours.fingerprint.replace(/[+/]/g, "\\$&")}\\)`), dir);
    assert.ok(readVerifiedManifest(dir, readPublicKey(join(other, KEYS_DIR, PUBLIC_KEY_FILE))));
  });

  void it("a record must say what its signed manifest says (job, stage, step)", async () => {
    const key = await loadOrCreateSigningKey(fresh("state"));
    const { dir, manifest } = checkpointDir();
    await commitManifest(dir, manifest, key);
    assert.ok(readRecordedManifest({ dir, step: 10 }, manifest.jobId, "main", key));
    refused(() => readRecordedManifest({ dir, step: 20 }, manifest.jobId, "main", key), /its signed manifest is job .* step 10, the record says .* step 20/, dir);
    assert.match(recordedManifestProblem({ dir, step: 10 }, "j-20991231-000000-ffffff", "main", key) ?? "", /the record says job j-20991231-000000-ffffff/);
    assert.equal(recordedManifestProblem({ dir, step: 10 }, manifest.jobId, "main", key), null);
  });

  void it("openssl verifies manifest.sig with the public key file (the offline check in docs/security.md)", async () => {
    const state = fresh("state");
    const key = await loadOrCreateSigningKey(state);
    const { dir, manifest } = checkpointDir();
    await commitManifest(dir, manifest, key);
    const args = ["pkeyutl", "-verify", "-pubin", "-inkey", join(state, KEYS_DIR, PUBLIC_KEY_FILE), "-rawin", "-in", join(dir, "manifest.json"), "-sigfile", join(dir, "manifest.sig")];
    assert.match(execFileSync("openssl", args, { encoding: "utf8" }), /Signature Verified Successfully/);
  });
});

void describe("imported checkpoints", () => {
  void it("hashes the files at import; the signed import verifies; a file swapped afterwards no longer matches", async () => {
    const key = await loadOrCreateSigningKey(fresh("state"));
    const elsewhere = await loadOrCreateSigningKey(fresh("elsewhere"));
    const { dir, manifest } = checkpointDir();
    await commitManifest(dir, manifest, elsewhere);
    const imported = await importCheckpoint(dir, key, 1234);
    const v = readImportedManifest(imported, dir, key);
    assert.deepEqual(v.manifest.files, manifest.files);
    assert.deepEqual(v.manifest.importedFrom, { dir, atMs: 1234 });
    refused(() => readImportedManifest({ ...imported, text: imported.text.replace(manifest.files[0]!.sha256, "0".repeat(64)) }, dir, key), /imported at submit does not verify/, dir);
    refused(() => readImportedManifest(imported, dir, elsewhere), /does not verify/, dir);
    writeFileSync(join(dir, "model.pt"), "swapped");
    assert.match((await verifyCheckpoint({ dir, files: v.manifest.files })) ?? "", /model\.pt sha256 [0-9a-f]{12} does not match manifest/);
  });

  void it("refuses a directory whose files do not match its manifest, or that names a file outside it", async () => {
    const key = await loadOrCreateSigningKey(fresh("state"));
    const { dir, manifest } = checkpointDir();
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ ...manifest, files: [{ ...manifest.files[0], size: 99 }] }));
    await assert.rejects(importCheckpoint(dir, key, 1), /init\.checkpoint: .*: its files do not match its manifest: model\.pt has 7 bytes, manifest says 99/);
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ ...manifest, files: [{ path: "../x", sha256: "0", size: 1 }] }));
    await assert.rejects(importCheckpoint(dir, key, 1), /names a file outside the directory: "\.\.\/x"/);
  });
});
