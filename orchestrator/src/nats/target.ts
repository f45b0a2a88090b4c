/**
 * A NATS URL as users write it (`nats://host:port`, `tls://host:port`, a
 * comma-separated list of either, `nats://user:pass@host:port` or
 * `nats://token@host:port` as nats.js users know them), turned into the
 * servers nats.js dials and the options it connects with. Credentials in the
 * URL are taken out of it: nats.js never sees them in a server name, and the
 * URL this module hands back for messages, logs and ServerInfo has none.
 */
import { connect, credsAuthenticator, type ConnectionOptions, type NatsConnection } from "nats";
import { InvalidArgumentError, UnauthenticatedError, UnavailableError } from "../domain/index.js";
import { NO_NATS_ACCESS, type NatsAccess, type NatsCredential } from "./access.js";

/** Where one connection goes and how; build with `natsTarget`. */
export interface NatsTarget {
  /** The URL without credentials: for messages, `describe()` and ServerInfo. */
  readonly url: string;
  /** host:port of each server, as nats.js dials them. */
  readonly servers: readonly string[];
  /** TLS required (a tls:// URL, or TLS files given). */
  readonly tls: boolean;
  /** TLS and credentials for nats.js; no name, no reconnect policy (the caller's). */
  readonly options: Readonly<ConnectionOptions>;
}

const DEFAULT_PORT = 4222;
/** How long the first connect (TCP, TLS, CONNECT and its answer) may take. */
const CONNECT_TIMEOUT_MS = 5000;

/**
 * Parses `spec` (no query: the store takes its own off first) for the
 * connection of `flag` ("store" or "nats", the flag messages name). A URL
 * carrying a credential and a --nats-* credential at once is refused, as are
 * lists that mix schemes or credentials.
 */
export function natsTarget(spec: string, flag: string, access: NatsAccess = NO_NATS_ACCESS): NatsTarget {
  const parts = spec.split(",").map((s) => s.trim());
  const parsed = parts.map((part) => parseOne(part, flag));
  const first = parsed[0];
  if (first === undefined || parsed.some((p) => p.scheme !== first.scheme)) {
    throw new InvalidArgumentError(`--${flag}: every server of a list must use the same scheme (nats:// or tls://), got ${JSON.stringify(redactList(parts))}`, flag);
  }
  if (parsed.some((p) => p.userinfo !== first.userinfo)) {
    throw new InvalidArgumentError(`--${flag}: the servers of a list carry different credentials; give one credential (see --nats-user)`, flag);
  }
  let credential = access.credential;
  if (first.userinfo !== null) {
    if (credential !== null) {
      throw new InvalidArgumentError(`--${flag}: the URL carries a credential and ${credential.from} gives another; use one`, flag);
    }
    credential = fromUserinfo(first.userinfo, flag);
  }
  const tls = first.scheme === "tls:" || access.tls !== null;
  const options: ConnectionOptions = {
    servers: parsed.map((p) => p.hostPort),
    ...(tls ? { tls: { ...access.tls } } : {}),
    ...credentialOptions(credential),
  };
  return Object.freeze({ url: parsed.map((p) => p.display).join(","), servers: Object.freeze(parsed.map((p) => p.hostPort)), tls, options: Object.freeze(options) });
}

/** `spec` with any credential taken out (for ServerInfo and logs); unparsable parts become "<invalid>". */
export function redactNatsUrl(spec: string): string {
  return redactList(spec.split(",").map((s) => s.trim())).join(",");
}

/**
 * Connects (nats.js's first connect: each server once). Refused credentials
 * and failed TLS handshakes are UNAUTHENTICATED, saying which flags to check;
 * anything else UNAVAILABLE. `what` starts the message ("job store", "events").
 */
export async function connectNats(target: NatsTarget, what: string, options: ConnectionOptions): Promise<NatsConnection> {
  try {
    // nats.js waits 20 s by default; a server that rejected our client certificate after the
    // TLS 1.3 handshake just never answers, and a user should not wait that long to hear it.
    return await connect({ timeout: CONNECT_TIMEOUT_MS, ...target.options, ...options, servers: [...target.servers] });
  } catch (err) {
    throw connectError(err, what, target);
  }
}

/** The error a failed first connect stands for; never carries a secret (the URL has none, nats.js echoes none). */
export function connectError(err: unknown, what: string, target: NatsTarget): Error {
  const message = (err as Error | null)?.message ?? String(err);
  const code = codeOf(err);
  const causeCode = codeOf((err as { cause?: unknown } | null)?.cause);
  if (code === "AUTHORIZATION_VIOLATION" || /authorization violation|authentication/i.test(message)) {
    return new UnauthenticatedError(`${what}: NATS at ${target.url} refused the credentials (${message}); check --nats-user and its password, --nats-token-file or --nats-creds`);
  }
  const tlsCodes = /^(TLS|ERR_TLS_|ERR_SSL_|DEPTH_ZERO|SELF_SIGNED|UNABLE_TO_|CERT_|HOSTNAME_MISMATCH|ERR_OSSL)/;
  if (tlsCodes.test(code) || tlsCodes.test(causeCode) || /certificate|tls|ssl|alert/i.test(message)) {
    return new UnauthenticatedError(`${what}: TLS with NATS at ${target.url} failed (${message}); check --nats-ca, --nats-cert and --nats-key`);
  }
  if (target.tls && (code === "TIMEOUT" || /disconnected before secure TLS|ECONNRESET|socket hang up/i.test(message))) {
    // A server that refuses a client certificate (none, or one its CA did not sign) closes the
    // connection after the handshake without a word nats.js passes on: say what it most likely means.
    return new UnavailableError(
      `${what}: NATS at ${target.url} closed or never answered the TLS connection (${message}): it may require a client certificate signed by a CA it trusts (--nats-cert, --nats-key)`,
      { cause: err },
    );
  }
  return new UnavailableError(`${what}: cannot connect to NATS at ${target.url}: ${message}`, { cause: err });
}

/** A string `code` of an error (nats.js codes, Node's ERR_* and OpenSSL's), else "". */
function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === "string" ? code : "";
}

interface Parsed {
  scheme: "nats:" | "tls:";
  hostPort: string;
  display: string;
  /** The raw userinfo ("user:pass" or "token"), or null. */
  userinfo: string | null;
}

function parseOne(part: string, flag: string): Parsed {
  let u: URL;
  try {
    u = new URL(part);
  } catch {
    throw badUrl(flag, part);
  }
  if (u.protocol !== "nats:" && u.protocol !== "tls:") throw badUrl(flag, part);
  if (u.hostname === "" || (u.pathname !== "" && u.pathname !== "/") || u.search !== "" || u.hash !== "") throw badUrl(flag, part);
  const port = u.port === "" ? DEFAULT_PORT : Number(u.port);
  const userinfo = u.username === "" && u.password === "" ? null : u.password === "" ? u.username : `${u.username}:${u.password}`;
  return { scheme: u.protocol, hostPort: `${u.hostname}:${port}`, display: `${u.protocol}//${u.host}`, userinfo };
}

function badUrl(flag: string, part: string): InvalidArgumentError {
  const expected = flag === "store" ? `"file", nats://HOST:PORT or tls://HOST:PORT` : "nats://HOST:PORT or tls://HOST:PORT";
  return new InvalidArgumentError(`--${flag}: expected ${expected}, got ${JSON.stringify(redactList([part])[0])}`, flag);
}

/** URL userinfo as nats.js reads it: user:password, or a lone token. */
function fromUserinfo(userinfo: string, flag: string): NatsCredential {
  const colon = userinfo.indexOf(":");
  const from = `the --${flag} URL`;
  if (colon < 0) return { kind: "token", token: decodeURIComponent(userinfo), from };
  const user = decodeURIComponent(userinfo.slice(0, colon));
  const pass = decodeURIComponent(userinfo.slice(colon + 1));
  if (user === "" || pass === "") throw new InvalidArgumentError(`--${flag}: the URL's credential needs both a user and a password (nats://USER:PASSWORD@HOST:PORT)`, flag);
  return { kind: "password", user, pass, from };
}

function credentialOptions(c: NatsCredential | null): ConnectionOptions {
  if (c === null) return {};
  if (c.kind === "password") return { user: c.user, pass: c.pass };
  if (c.kind === "token") return { token: c.token };
  return { authenticator: credsAuthenticator(c.creds) };
}

/** Each part without its userinfo; a part that does not parse is not echoed (it may hold a secret). */
function redactList(parts: readonly string[]): string[] {
  return parts.map((p) => {
    try {
      const u = new URL(p);
      if (u.username === "" && u.password === "") return p;
      u.username = "";
      u.password = "";
      return u.toString();
    } catch {
      return /@/.test(p) ? "<invalid URL>" : p;
    }
  });
}
