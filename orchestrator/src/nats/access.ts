/**
 * How the orchestrator proves itself to NATS: TLS files (a CA to check the
 * server, a client certificate and key for mutual TLS) and one credential
 * (user and password, a token, or a `.creds` file), read once at start from
 * the --nats-* flags and CLIPFLEET_NATS_* variables. The same access serves
 * the job store and the event bus. Secrets are never put in a message: an
 * error names the flag or the file, not what is in it.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { InvalidArgumentError } from "../domain/index.js";

/** The --nats-* flags as given (file paths, not contents); absent or null: not given. */
export interface NatsAccessFlags {
  /** --nats-ca: PEM CA bundle that signed the NATS server's certificate (TLS is then required). */
  ca?: string | null;
  /** --nats-cert: PEM client certificate for mutual TLS (with --nats-key). */
  cert?: string | null;
  /** --nats-key: its PEM private key (0600). */
  key?: string | null;
  /** --nats-creds: a NATS .creds file (user JWT and nkey seed, 0600). */
  creds?: string | null;
  /** --nats-user (else CLIPFLEET_NATS_USER): the password comes from --nats-password-file or CLIPFLEET_NATS_PASSWORD. */
  user?: string | null;
  /** --nats-password-file: a file (0600) holding the password, so it never shows in `ps`. */
  passwordFile?: string | null;
  /** --nats-token-file (else CLIPFLEET_NATS_TOKEN): a file (0600) holding an authorization token. */
  tokenFile?: string | null;
}

/** The one credential a connection presents; `from` names where it came from, for messages. */
export type NatsCredential =
  | { readonly kind: "password"; readonly user: string; readonly pass: string; readonly from: string }
  | { readonly kind: "token"; readonly token: string; readonly from: string }
  | { readonly kind: "creds"; readonly creds: Uint8Array; readonly from: string };

/** PEM contents of the TLS files given; null when none was. */
export interface NatsTlsFiles {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

/** Compiled, frozen access: what every NATS connection of this process presents. */
export interface NatsAccess {
  readonly tls: NatsTlsFiles | null;
  readonly credential: NatsCredential | null;
  /** The flags that were given (for "has no effect" warnings when no NATS URL is configured). */
  readonly given: readonly string[];
}

/** No TLS files, no credential: a plain connection (or one whose URL carries its credential). */
export const NO_NATS_ACCESS: NatsAccess = Object.freeze({ tls: null, credential: null, given: Object.freeze([]) });

/**
 * Reads and checks the TLS files and the credential. Each problem is an
 * InvalidArgumentError naming the flag: a missing or unreadable file, a PEM
 * that does not parse, a certificate without its key, a secret file readable
 * by group or others (as OpenSSH refuses such a key), two credentials at once.
 */
export function loadNatsAccess(flags: NatsAccessFlags, env: NodeJS.ProcessEnv = process.env): NatsAccess {
  const given = Object.entries(FLAG_NAMES)
    .filter(([k]) => nonEmpty(flags[k as keyof NatsAccessFlags]) !== null)
    .map(([, flag]) => `--${flag}`);

  const ca = nonEmpty(flags.ca);
  const cert = nonEmpty(flags.cert);
  const key = nonEmpty(flags.key);
  if ((cert === null) !== (key === null)) {
    const [has, missing] = cert === null ? ["nats-key", "nats-cert"] : ["nats-cert", "nats-key"];
    throw new InvalidArgumentError(`--${has}: a client certificate needs its key and the key its certificate: give --${missing} too`, missing);
  }
  let tls: NatsTlsFiles | null = null;
  if (ca !== null || cert !== null) {
    tls = Object.freeze({
      ...(ca !== null ? { ca: readPem(ca, "nats-ca", "certificate") } : {}),
      ...(cert !== null ? { cert: readPem(cert, "nats-cert", "certificate") } : {}),
      ...(key !== null ? { key: readPem(key, "nats-key", "key") } : {}),
    });
  }

  const candidates: NatsCredential[] = [];
  const creds = nonEmpty(flags.creds);
  if (creds !== null) {
    const text = readSecret(creds, "nats-creds");
    if (!/-----BEGIN NATS USER JWT-----/.test(text) || !/-----BEGIN USER NKEY SEED-----/.test(text)) {
      throw new InvalidArgumentError(`--nats-creds ${creds}: not a NATS credentials file (expected a user JWT and an nkey seed, as \`nsc generate creds\` writes)`, "nats-creds");
    }
    candidates.push({ kind: "creds", creds: new TextEncoder().encode(text), from: "--nats-creds" });
  }
  const user = nonEmpty(flags.user) ?? nonEmpty(env.CLIPFLEET_NATS_USER);
  const userFrom = nonEmpty(flags.user) !== null ? "--nats-user" : "CLIPFLEET_NATS_USER";
  const passwordFile = nonEmpty(flags.passwordFile);
  const password = passwordFile !== null ? firstLine(readSecret(passwordFile, "nats-password-file")) : nonEmpty(env.CLIPFLEET_NATS_PASSWORD);
  const passwordFrom = passwordFile !== null ? "--nats-password-file" : "CLIPFLEET_NATS_PASSWORD";
  if (user !== null && password === null) {
    const flag = userFrom === "--nats-user" ? "nats-user" : "nats-password-file";
    throw new InvalidArgumentError(`${userFrom}: a NATS user needs a password: give --nats-password-file FILE or set CLIPFLEET_NATS_PASSWORD`, flag);
  }
  if (user === null && password !== null) {
    throw new InvalidArgumentError(`${passwordFrom}: a password needs a user: give --nats-user NAME or set CLIPFLEET_NATS_USER`, passwordFile !== null ? "nats-password-file" : "nats-user");
  }
  if (user !== null && password !== null) {
    if (password === "") throw new InvalidArgumentError(`${passwordFrom}: the password is empty`, "nats-password-file");
    candidates.push({ kind: "password", user, pass: password, from: `${userFrom} and ${passwordFrom}` });
  }
  const tokenFile = nonEmpty(flags.tokenFile);
  const token = tokenFile !== null ? firstLine(readSecret(tokenFile, "nats-token-file")) : nonEmpty(env.CLIPFLEET_NATS_TOKEN);
  if (token !== null) {
    const from = tokenFile !== null ? "--nats-token-file" : "CLIPFLEET_NATS_TOKEN";
    if (token === "") throw new InvalidArgumentError(`${from}: the token is empty`, "nats-token-file");
    candidates.push({ kind: "token", token, from });
  }
  if (candidates.length > 1) {
    throw new InvalidArgumentError(`NATS credentials: ${candidates.map((c) => c.from).join(" and ")} both given; a connection presents one (a .creds file, a user and password, or a token)`, flagOf(candidates[1]));
  }
  return Object.freeze({ tls, credential: candidates[0] ?? null, given: Object.freeze(given) });
}

const FLAG_NAMES: Record<keyof NatsAccessFlags, string> = {
  ca: "nats-ca",
  cert: "nats-cert",
  key: "nats-key",
  creds: "nats-creds",
  user: "nats-user",
  passwordFile: "nats-password-file",
  tokenFile: "nats-token-file",
};

function flagOf(c: NatsCredential | undefined): string {
  if (c?.kind === "creds") return "nats-creds";
  if (c?.kind === "token") return "nats-token-file";
  return "nats-user";
}

function nonEmpty(v: string | null | undefined): string | null {
  return v === undefined || v === null || v === "" ? null : v;
}

/** The first line of a secret file (a trailing newline is not part of a password). */
function firstLine(text: string): string {
  return text.replace(/\r?\n[\s\S]*$/, "");
}

function read(path: string, flag: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InvalidArgumentError(`--${flag} ${path}: ${code === "ENOENT" ? "no such file" : `cannot be read (${code ?? "error"})`}`, flag);
  }
}

/** A file holding a secret: refused when group or others may read it. */
function readSecret(path: string, flag: string): string {
  const text = read(path, flag);
  const mode = statSync(path).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new InvalidArgumentError(`--${flag} ${path}: accessible by group or others (mode 0${mode.toString(8)}); \`chmod 600 ${path}\``, flag);
  }
  return text;
}

/** A PEM certificate (bundle) or private key, parsed now so a bad file is said at start, not at the first connect. */
function readPem(path: string, flag: string, what: "certificate" | "key"): string {
  const text = what === "key" ? readSecret(path, flag) : read(path, flag);
  try {
    if (what === "key") createPrivateKey(text);
    else new X509Certificate(text);
  } catch (err) {
    throw new InvalidArgumentError(`--${flag} ${path}: not a PEM ${what === "key" ? "private key" : "certificate"} (${(err as Error).message})`, flag);
  }
  return text;
}
