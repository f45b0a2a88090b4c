/**
 * The orchestrator's manifest signing key: Ed25519 (node:crypto), made once
 * in the state dir and kept there. Every manifest the orchestrator commits
 * is signed with it, and a manifest is used (resumed from, an init
 * checkpoint, deleted by retention) only when its signature verifies, so
 * files on shared storage or records in an unauthenticated store cannot
 * make a rank load what the orchestrator never committed.
 *
 * Layout: <state-dir>/keys/ (0700) holds manifest-signing.key (PKCS#8 PEM,
 * 0600) and manifest-signing.pub (SPKI PEM, for admins who verify manifests
 * offline, e.g. with openssl).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from "node:crypto";
import { closeSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { EnvironmentError, InvalidArgumentError } from "../domain/index.js";
import { fsyncDir, writeFileAtomic } from "../util/index.js";

export const KEYS_DIR = "keys";
export const SIGNING_KEY_FILE = "manifest-signing.key";
export const PUBLIC_KEY_FILE = "manifest-signing.pub";

/** Checks signatures with a public key: the orchestrator's own, or one an admin has (offline). */
export class ManifestVerifier {
  /** SPKI PEM of the public key. */
  readonly publicKeyPem: string;
  /** `SHA256:` and the unpadded base64 of the sha256 of the key's SPKI DER (as ssh-keygen -l shows keys). */
  readonly fingerprint: string;

  constructor(protected readonly publicKey: KeyObject) {
    if (publicKey.asymmetricKeyType !== "ed25519") throw new InvalidArgumentError(`expected an Ed25519 public key, got ${publicKey.asymmetricKeyType ?? "a symmetric key"}`);
    this.publicKeyPem = publicKey.export({ type: "spki", format: "pem" }).toString();
    const der = publicKey.export({ type: "spki", format: "der" });
    this.fingerprint = `SHA256:${createHash("sha256").update(der).digest("base64").replace(/=+$/, "")}`;
  }

  /** Whether `signature` is this key's Ed25519 signature of exactly `data`. */
  verify(data: Uint8Array, signature: Uint8Array): boolean {
    return signature.length === 64 && verify(null, data, this.publicKey, signature);
  }
}

/** The orchestrator's key pair: signs what it commits, verifies what it reads back. */
export class ManifestSigner extends ManifestVerifier {
  constructor(private readonly privateKey: KeyObject) {
    super(createPublicKey(privateKey));
  }

  /** The 64-byte Ed25519 signature of `data`. */
  sign(data: Uint8Array): Buffer {
    return sign(null, data, this.privateKey);
  }
}

/**
 * The state dir's signing key, made on first use. Two servers starting at
 * once on one state dir make one key: each writes a complete key to a temp
 * file, and only the first hard link to the final name succeeds (link fails
 * when the name exists, and never exposes a half-written file); the loser
 * reads the winner's. A key or folder open to group or others is refused,
 * naming it, as OpenSSH refuses such a key.
 */
export async function loadOrCreateSigningKey(stateDir: string): Promise<ManifestSigner> {
  const dir = join(stateDir, KEYS_DIR);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  refuseOpen(dir, "folder", 0o700);
  const keyFile = join(dir, SIGNING_KEY_FILE);
  if (!exists(keyFile)) {
    const pem = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const tmp = join(dir, `.${SIGNING_KEY_FILE}.${process.pid}-${randomBytes(6).toString("hex")}.tmp`);
    const fd = openSync(tmp, "wx", 0o600);
    try {
      writeSync(fd, pem);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmp, keyFile);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    } finally {
      rmSync(tmp, { force: true });
    }
    await fsyncDir(dir);
  }
  const signer = new ManifestSigner(readPrivateKey(keyFile));
  const pubFile = join(dir, PUBLIC_KEY_FILE);
  if (!exists(pubFile) || readFileSync(pubFile, "utf8") !== signer.publicKeyPem) await writeFileAtomic(pubFile, signer.publicKeyPem, 0o644);
  return signer;
}

/** The signing key of a state dir that must already have one (admin commands: they never make a key). */
export function readSigningKey(stateDir: string): ManifestSigner {
  const keyFile = join(stateDir, KEYS_DIR, SIGNING_KEY_FILE);
  if (!exists(keyFile)) throw new InvalidArgumentError(`${keyFile} does not exist: start the orchestrator on --state-dir ${stateDir} once to make its key`, "state-dir");
  refuseOpen(join(stateDir, KEYS_DIR), "folder", 0o700);
  return new ManifestSigner(readPrivateKey(keyFile));
}

/** A public key file (SPKI PEM, as manifest-signing.pub holds it). */
export function readPublicKey(file: string): ManifestVerifier {
  let key: KeyObject;
  try {
    key = createPublicKey(readFileSync(file));
  } catch (err) {
    throw new InvalidArgumentError(`${file}: not a public key (${(err as Error).message})`, "public-key");
  }
  return new ManifestVerifier(key);
}

function readPrivateKey(file: string): KeyObject {
  refuseOpen(file, "file", 0o600);
  try {
    return createPrivateKey(readFileSync(file));
  } catch (err) {
    throw new EnvironmentError(`${file}: not a private key (${(err as Error).message}); move it away and the orchestrator makes a new one (manifests signed with the old key then need \`clipfleet manifests sign\`)`);
  }
}

/** A key or its folder readable by group or others (or a symbolic link, which could point anywhere) is refused. */
function refuseOpen(path: string, what: "file" | "folder", fix: number): void {
  const st = lstatSync(path);
  if (st.isSymbolicLink() || (what === "file" ? !st.isFile() : !st.isDirectory())) throw new EnvironmentError(`${path}: expected a plain ${what}, not a link or anything else`);
  const mode = st.mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new EnvironmentError(`${path}: the manifest signing key's ${what} is accessible by group or others (mode 0${mode.toString(8)}); \`chmod ${fix.toString(8)} ${path}\``);
  }
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
