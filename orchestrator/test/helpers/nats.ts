/**
 * Test helper: a real `nats-server` child process on 127.0.0.1.
 *
 *   import { natsSkipReason, startNatsServer } from "../helpers/nats.js";
 *   describe("x", { skip: natsSkipReason() }, () => {
 *     let nats: NatsServer;
 *     before(async () => { nats = await startNatsServer({ jetstream: true }); });
 *     after(() => nats.stop());
 *     ...connect to nats.url...
 *   });
 *
 * The server listens on a port the kernel picks (`-p -1`, read back from its
 * log), so parallel test files never race for a port. A server left running
 * does not keep the test process alive and is SIGKILLed when that process
 * exits or is terminated (SIGTERM/SIGINT/SIGHUP, e.g. a runner timeout).
 *
 * A secured server (TLS, client certificates, users with permissions):
 *
 *   const pki = await natsPki(dir);               // CAs and certificates, made by `clipfleet certs`' code
 *   nats = await startNatsServer({ jetstream: true, secure: { pki, verify: "verify", users: [...] } });
 *   ...connect to nats.tlsUrl with pki's files and a user's password...
 *
 * It is ready when a client with the first user's credentials connects and
 * (with JetStream) gets its account's JetStream info, not merely when the
 * server logs "ready".
 */
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { connect, type ConnectionOptions } from "nats";
import { initCerts, issueCert } from "../../src/auth/index.js";

/** The TLS material of a secured server's tests: one CA for the server and its clients, and a foreign one. */
export interface NatsPki {
  /** CA that signed the server's and the clients' certificates. */
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  /** A client certificate (CN=clipfleet, O=operator) and key (0600) signed by `ca`. */
  readonly clientCert: string;
  readonly clientKey: string;
  /** The subject nats-server maps that certificate to (verify_and_map). */
  readonly clientSubject: string;
  /** A client certificate and key from another CA, which the server must refuse. */
  readonly foreignCert: string;
  readonly foreignKey: string;
}

/** Makes the CAs and certificates under `dir` (openssl, through auth/'s `clipfleet certs` code). */
export async function natsPki(dir: string): Promise<NatsPki> {
  const ca = path.join(dir, "ca");
  const other = path.join(dir, "other-ca");
  await initCerts(ca, ["127.0.0.1", "localhost"]);
  await issueCert(ca, "clipfleet", "operator", path.join(dir, "clipfleet"));
  await initCerts(other, ["127.0.0.1"]);
  return {
    ca: path.join(ca, "ca.crt"),
    serverCert: path.join(ca, "server.crt"),
    serverKey: path.join(ca, "server.key"),
    clientCert: path.join(dir, "clipfleet", "client.crt"),
    clientKey: path.join(dir, "clipfleet", "client.key"),
    clientSubject: "CN=clipfleet,O=operator",
    foreignCert: path.join(other, "client.crt"),
    foreignKey: path.join(other, "client.key"),
  };
}

/** A user of a secured server: a password, or none when the client certificate names it (verify: "map"). */
export interface NatsUser {
  user: string;
  password?: string;
  /** nats-server permissions, as config text (`{ publish: ..., subscribe: ... }`); default: everything. */
  permissions?: string;
}

/** TLS and authorization of a secured server. */
export interface SecureNatsOptions {
  pki: NatsPki;
  /** "none": server TLS only; "verify": clients must show a certificate the CA signed; "map": and it names the user. */
  verify: "none" | "verify" | "map";
  users: NatsUser[];
}

/**
 * The permissions clipfleet's own user needs for the job store on `bucket`
 * and for publishing events, and nothing more (docs/security.md shows them).
 */
export function clipfleetPermissions(bucket = "clipfleet-jobs"): string {
  const stream = `KV_${bucket}`;
  return `{
    publish: { allow: [
      "$JS.API.INFO",
      "$JS.API.STREAM.INFO.${stream}", "$JS.API.STREAM.CREATE.${stream}", "$JS.API.STREAM.MSG.GET.${stream}",
      "$JS.API.CONSUMER.CREATE.${stream}", "$JS.API.CONSUMER.CREATE.${stream}.>", "$JS.API.CONSUMER.DELETE.${stream}.>",
      "$KV.${bucket}.>",
      "clipfleet.jobs.*.events"
    ] }
    subscribe: { allow: ["_INBOX.>"] }
  }`;
}

/** How to start the server. */
export interface NatsServerOptions {
  /** Enable JetStream (`-js`), storing under `storeDir`. */
  jetstream?: boolean;
  /** Client port; default: one the kernel picks. Pass a stopped server's port to restart it in place. */
  port?: number;
  /** JetStream store directory; default: a fresh temp dir that stop() removes. */
  storeDir?: string;
  /** Extra command-line arguments (e.g. `["-c", file]`); they come after the helper's own. */
  args?: string[];
  /** How long to wait until the server is ready. Default 10000 ms. */
  readyTimeoutMs?: number;
  /** TLS and users (a config file the helper writes); the first user's credentials probe readiness. */
  secure?: SecureNatsOptions;
}

/** A running nats-server. */
export interface NatsServer {
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  /** `tls://127.0.0.1:<port>` */
  readonly tlsUrl: string;
  readonly port: number;
  /** The JetStream store directory when started with `jetstream: true`, else null. */
  readonly storeDir: string | null;
  readonly pid: number;
  /** Graceful shutdown (SIGTERM; SIGKILL after 5 s), then removes the temp store dir it created. Idempotent. */
  stop(): Promise<void>;
  /** Simulates a crash: SIGKILL and wait for the exit. Keeps the store dir (restart on it, then stop()). */
  kill9(): Promise<void>;
  /** Resolves with the first log line (stderr) matching `re`, including lines already printed. */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  /** The log lines so far (the last 500), for failure messages. */
  log(): string[];
}

const CANDIDATES = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"];

/** Path of the nats-server binary ($NATS_SERVER_BIN, the usual places, then $PATH), or null. */
export function natsServerBinary(): string | null {
  const fromEnv = process.env["NATS_SERVER_BIN"];
  if (fromEnv !== undefined && fromEnv !== "") return existsSync(fromEnv) ? fromEnv : null;
  for (const c of CANDIDATES) if (existsSync(c)) return c;
  for (const dir of (process.env["PATH"] ?? "").split(path.delimiter)) {
    const c = path.join(dir, "nats-server");
    if (dir !== "" && existsSync(c)) return c;
  }
  return null;
}

/** For `{ skip: natsSkipReason() }`: a reason when nats-server is missing (the test shows as skipped), else false. */
export function natsSkipReason(): string | false {
  return natsServerBinary() === null
    ? "nats-server not found (install Debian's nats-server or set NATS_SERVER_BIN)"
    : false;
}

const live = new Set<ChildProcess>();
const ownedDirs = new Set<string>();
let exitHookInstalled = false;

function killAll(): void {
  for (const child of live) child.kill("SIGKILL");
  for (const dir of ownedDirs) rmSync(dir, { recursive: true, force: true });
}

/** No server outlives the test process: on exit, and when the runner terminates a timed-out file. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", killAll);
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    process.once(signal, () => {
      killAll();
      process.kill(process.pid, signal); // the listener is gone: default action (terminate)
    });
  }
}

/** Starts nats-server and resolves once it accepts clients; rejects with its log if it exits or stalls. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const bin = natsServerBinary();
  if (bin === null) throw new Error(`cannot start nats-server: ${String(natsSkipReason())}`);
  installExitHook();

  let storeDir: string | null = null;
  /** Temp dirs this server owns (its store, its config), removed by stop(). */
  const owned: string[] = [];
  const removeOwned = (): void => {
    for (const dir of owned.splice(0)) {
      rmSync(dir, { recursive: true, force: true });
      ownedDirs.delete(dir);
    }
  };
  const args = ["-a", "127.0.0.1", "-p", String(options.port ?? -1)];
  if (options.jetstream === true) {
    storeDir = options.storeDir ?? null;
    if (storeDir === null) {
      storeDir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-nats-"));
      owned.push(storeDir);
      ownedDirs.add(storeDir);
    }
    args.push("-js", "-sd", storeDir);
  }
  let probe: ConnectionOptions | null = null;
  if (options.secure !== undefined) {
    const confDir = mkdtempSync(path.join(os.tmpdir(), "clipfleet-nats-conf-"));
    owned.push(confDir);
    ownedDirs.add(confDir);
    const conf = path.join(confDir, "nats.conf");
    writeFileSync(conf, secureConfig(options.secure), { mode: 0o600 });
    args.push("-c", conf);
    probe = probeOptions(options.secure);
  }
  args.push(...(options.args ?? []));

  const child = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
  live.add(child);
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  let partial = "";
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      live.delete(child);
      resolve();
    });
  });
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    const parts = (partial + chunk).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      lines.push(line);
      if (lines.length > 500) lines.shift();
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i];
        if (w !== undefined && w.re.test(line)) {
          waiters.splice(i, 1);
          w.resolve(line);
        }
      }
    }
  });

  const waitForLog = (re: RegExp, timeoutMs = 10_000): Promise<string> => {
    const seen = lines.find((l) => re.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(new Error(`nats-server: no log line matching ${String(re)} within ${timeoutMs} ms:\n${lines.join("\n")}`));
      }, timeoutMs);
      const waiter = {
        re,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      waiters.push(waiter);
      void exited.then(() => {
        if (!waiters.includes(waiter)) return;
        waiters.splice(waiters.indexOf(waiter), 1);
        clearTimeout(timer);
        reject(new Error(`nats-server exited (code ${child.exitCode}) before logging ${String(re)}:\n${lines.join("\n")}`));
      });
    });
  };

  let port: number;
  try {
    const listening = await waitForLog(/Listening for client connections on /, options.readyTimeoutMs ?? 10_000);
    port = Number(/:(\d+)\s*$/.exec(listening)?.[1]);
    await waitForLog(/Server is ready/, options.readyTimeoutMs ?? 10_000);
    if (probe !== null) await probeReady(`127.0.0.1:${port}`, probe, options.jetstream === true, options.readyTimeoutMs ?? 10_000, lines);
  } catch (err) {
    child.kill("SIGKILL");
    await exited;
    removeOwned();
    throw err;
  }
  // From here on a forgotten server must not keep the test process alive.
  child.unref();
  (child.stderr as { unref?: () => void } | null)?.unref?.();

  const signalAndWait = async (signal: NodeJS.Signals, graceMs: number): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.ref(); // keep the event loop alive until the exit is seen
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
  };

  return {
    url: `nats://127.0.0.1:${port}`,
    tlsUrl: `tls://127.0.0.1:${port}`,
    port,
    storeDir,
    pid: child.pid ?? -1,
    async stop() {
      await signalAndWait("SIGTERM", 5000);
      removeOwned();
    },
    kill9: () => signalAndWait("SIGKILL", 5000),
    waitForLog,
    log: () => [...lines],
  };
}

/** The config file of a secured server: TLS (client certificates as `verify` says), users, their permissions. */
function secureConfig(o: SecureNatsOptions): string {
  const q = (v: string): string => JSON.stringify(v);
  const tls = [
    `cert_file: ${q(o.pki.serverCert)}`,
    `key_file: ${q(o.pki.serverKey)}`,
    `ca_file: ${q(o.pki.ca)}`,
    ...(o.verify === "verify" ? ["verify: true"] : o.verify === "map" ? ["verify_and_map: true"] : []),
    "timeout: 5",
  ];
  const users = o.users.map((u) => `    { user: ${q(u.user)}${u.password !== undefined ? `, password: ${q(u.password)}` : ""}${u.permissions !== undefined ? `, permissions: ${u.permissions}` : ""} }`);
  return `tls {\n  ${tls.join("\n  ")}\n}\nauthorization {\n  users: [\n${users.join("\n")}\n  ]\n}\n`;
}

/** How the readiness probe connects: as the first user, with the client certificate when the server wants one. */
function probeOptions(o: SecureNatsOptions): ConnectionOptions {
  const first = o.users[0];
  if (first === undefined) throw new Error("a secured nats-server needs at least one user");
  return {
    tls: {
      ca: readFileSync(o.pki.ca, "utf8"),
      ...(o.verify !== "none" ? { cert: readFileSync(o.pki.clientCert, "utf8"), key: readFileSync(o.pki.clientKey, "utf8") } : {}),
    },
    ...(first.password !== undefined ? { user: first.user, pass: first.password } : {}),
  };
}

/** Ready means usable: a client connects and, with JetStream, its account's JetStream answers. */
async function probeReady(server: string, probe: ConnectionOptions, jetstream: boolean, timeoutMs: number, log: string[]): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const nc = await connect({ ...probe, servers: server, reconnect: false, timeout: 2000 });
      try {
        if (jetstream) await (await nc.jetstreamManager({ timeout: 2000 })).getAccountInfo();
      } finally {
        await nc.close();
      }
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`nats-server at ${server} not usable within ${timeoutMs} ms: ${(err as Error).message}\n${log.join("\n")}`);
      await delay(100);
    }
  }
}

/** Writes `text` to `file` with mode 0600 (a password or token file for --nats-password-file). */
export function writeSecretFile(file: string, text: string): string {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text, { mode: 0o600 });
  chmodSync(file, 0o600);
  return file;
}
