/**
 * OpenSSH known_hosts files: parsing (plain and hashed `|1|` host names,
 * `[host]:port` forms, wildcards and negations, `@revoked` markers), host
 * key checks, SHA256 fingerprints as `ssh` prints them, and recording a new
 * key the way OpenSSH's `StrictHostKeyChecking accept-new` does.
 */
import { createHash, createHmac } from "node:crypto";
import { appendFileSync, mkdirSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { EnvironmentError } from "../domain/index.js";

/** One key line of a known_hosts file. */
export interface KnownHostEntry {
  /** `@revoked` keys are refused; `@cert-authority` lines are kept but never match a plain host key. */
  readonly marker: "revoked" | "cert-authority" | null;
  /** The comma-separated host patterns as written (or one `|1|salt|hash`). */
  readonly hosts: string;
  readonly keyType: string;
  /** The public key blob (SSH wire format), as the server sends it. */
  readonly key: Buffer;
  /** 1-based line number, for messages. */
  readonly line: number;
}

/** What a host key is, compared with a known_hosts file. */
export type HostKeyVerdict =
  | { readonly status: "known"; readonly entry: KnownHostEntry }
  /** No key of the host is known. */
  | { readonly status: "unknown" }
  /** Keys of the host are known, none equals this one: someone may be intercepting the connection. */
  | { readonly status: "changed"; readonly known: readonly KnownHostEntry[] }
  | { readonly status: "revoked"; readonly entry: KnownHostEntry };

/** ~/.ssh/known_hosts, the file `--known-hosts` defaults to. */
export function defaultKnownHostsPath(): string {
  return join(homedir(), ".ssh", "known_hosts");
}

/** Parses known_hosts text; comments, blank and malformed lines are skipped as OpenSSH does. */
export function parseKnownHosts(text: string): KnownHostEntry[] {
  const out: KnownHostEntry[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const fields = line.split(/\s+/);
    let marker: KnownHostEntry["marker"] = null;
    if (fields[0]?.startsWith("@")) {
      const m = fields.shift();
      if (m === "@revoked") marker = "revoked";
      else if (m === "@cert-authority") marker = "cert-authority";
      else return;
    }
    const [hosts, keyType, b64] = fields;
    if (hosts === undefined || keyType === undefined || b64 === undefined) return;
    const key = Buffer.from(b64, "base64");
    // A blob starts with its own type; anything else is a damaged line.
    if (key.length === 0 || keyTypeOf(key) !== keyType) return;
    out.push({ marker, hosts, keyType, key, line: i + 1 });
  });
  return out;
}

/** The name a host is looked up under: `host` on port 22, `[host]:port` otherwise (as OpenSSH writes it). */
export function knownHostName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/** Whether an entry's host field names `host` on `port` (hashed names, wildcards, `!negations`). */
export function entryMatches(entry: Pick<KnownHostEntry, "hosts">, host: string, port: number): boolean {
  const name = knownHostName(host, port).toLowerCase();
  if (entry.hosts.startsWith("|1|")) return hashedMatches(entry.hosts, name);
  let matched = false;
  for (const pattern of entry.hosts.split(",")) {
    const negated = pattern.startsWith("!");
    const p = (negated ? pattern.slice(1) : pattern).toLowerCase();
    if (!wildcardMatch(name, p)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

/** `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`. */
function hashedMatches(field: string, name: string): boolean {
  const [, , salt, hash] = field.split("|");
  if (salt === undefined || hash === undefined) return false;
  const mac = createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64");
  return mac === hash;
}

/** OpenSSH's match_pattern: `*` any run, `?` one character, everything else literal. */
function wildcardMatch(s: string, pattern: string): boolean {
  const re = new RegExp(
    "^" +
      pattern
        .split("")
        .map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
        .join("") +
      "$",
  );
  return re.test(s);
}

/** Compares the key a server offers with the entries for that host. */
export function verifyHostKey(entries: readonly KnownHostEntry[], host: string, port: number, key: Buffer): HostKeyVerdict {
  const forHost = entries.filter((e) => e.marker !== "cert-authority" && entryMatches(e, host, port));
  const revoked = entries.find((e) => e.marker === "revoked" && e.key.equals(key));
  if (revoked) return { status: "revoked", entry: revoked };
  const plain = forHost.filter((e) => e.marker === null);
  const same = plain.find((e) => e.key.equals(key));
  if (same) return { status: "known", entry: same };
  return plain.length === 0 ? { status: "unknown" } : { status: "changed", known: plain };
}

/** The key type at the start of a public key blob (`ssh-ed25519`, `ssh-rsa`, ...). */
export function keyTypeOf(key: Buffer): string {
  if (key.length < 4) return "";
  const n = key.readUInt32BE(0);
  return key.length < 4 + n ? "" : key.subarray(4, 4 + n).toString("latin1");
}

/** `SHA256:<base64 without padding>`, the fingerprint `ssh` and `ssh-keygen -l` print. */
export function fingerprintSha256(key: Buffer): string {
  return "SHA256:" + createHash("sha256").update(key).digest("base64").replace(/=+$/, "");
}

/** The short key type name OpenSSH prints in messages (ED25519, ECDSA, RSA). */
export function keyTypeLabel(keyType: string): string {
  if (keyType === "ssh-ed25519") return "ED25519";
  if (keyType.startsWith("ecdsa-")) return "ECDSA";
  if (keyType === "ssh-rsa") return "RSA";
  return keyType;
}

/** A known_hosts line recording `key` for `host` on `port` (unhashed, so people can read and edit it). */
export function knownHostLine(host: string, port: number, key: Buffer): string {
  return `${knownHostName(host, port)} ${keyTypeOf(key)} ${key.toString("base64")}`;
}

/** Why a host was refused, with what `ssh` would show (the host and the key's fingerprint). */
export class HostKeyError extends EnvironmentError {
  constructor(
    message: string,
    readonly host: string,
    readonly port: number,
    readonly fingerprint: string,
    readonly verdict: "unknown" | "changed" | "revoked",
  ) {
    super(message);
  }
}

/**
 * A known_hosts file, read on every check (another process, or the user,
 * may have edited it since) and appended to by accept-new.
 */
export class KnownHostsFile {
  constructor(readonly path: string) {}

  /** The entries now in the file; a missing file holds none. */
  entries(): KnownHostEntry[] {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw new EnvironmentError(`cannot read known_hosts file ${this.path}: ${(err as Error).message}`);
    }
    return parseKnownHosts(text);
  }

  /** Key types the file knows for the host (so the handshake can ask for one of them first). */
  knownKeyTypes(host: string, port: number): string[] {
    const types = this.entries()
      .filter((e) => e.marker === null && entryMatches(e, host, port))
      .map((e) => e.keyType);
    return [...new Set(types)];
  }

  /**
   * Checks `key` for `host`: resolves to "known" or, under accept-new with
   * no key of the host known yet, "recorded" (the key is appended to the
   * file). Throws a HostKeyError naming the host and fingerprint otherwise.
   */
  check(host: string, port: number, key: Buffer, policy: "strict" | "accept-new", nodeName: string): "known" | "recorded" {
    const verdict = verifyHostKey(this.entries(), host, port, key);
    const fp = fingerprintSha256(key);
    const label = keyTypeLabel(keyTypeOf(key));
    const where = knownHostName(host, port);
    switch (verdict.status) {
      case "known":
        return "known";
      case "unknown":
        if (policy === "accept-new") {
          this.append(knownHostLine(host, port, key));
          return "recorded";
        }
        throw new HostKeyError(
          `node ${nodeName}: host key of ${where} is not known (${label} key fingerprint ${fp}) in ${this.path}; ` +
            `check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and add it (ssh-keyscan ${port === 22 ? "" : `-p ${port} `}${host} >> ${this.path}), ` +
            "or set host_key_policy: accept-new for this node",
          host,
          port,
          fp,
          "unknown",
        );
      case "changed": {
        const lines = verdict.known.map((e) => `${this.path}:${e.line}`).join(", ");
        throw new HostKeyError(
          `node ${nodeName}: REMOTE HOST IDENTIFICATION HAS CHANGED for ${where}: it offers the ${label} key ${fp}, ` +
            `which is not the key recorded at ${lines}; refusing to connect (someone may be intercepting the connection, or the host was reinstalled: ` +
            `after checking, remove the old key with ssh-keygen -R '${where}' -f ${this.path})`,
          host,
          port,
          fp,
          "changed",
        );
      }
      case "revoked":
        throw new HostKeyError(
          `node ${nodeName}: the ${label} host key ${fp} of ${where} is marked @revoked at ${this.path}:${verdict.entry.line}; refusing to connect`,
          host,
          port,
          fp,
          "revoked",
        );
    }
  }

  private append(line: string): void {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    let prefix = "";
    try {
      const existing = readFileSync(this.path, "utf8");
      if (existing.length > 0 && !existing.endsWith("\n")) prefix = "\n";
    } catch {
      // a missing file is created by the append below
    }
    // One O_APPEND write: concurrent writers (another orchestrator, ssh) do not interleave.
    appendFileSync(this.path, `${prefix}${line}\n`, { mode: 0o600 });
  }
}
