/**
 * SSH launcher (ssh2): worker ranks on other hosts. Public-key
 * authentication only (the node's identity_file, else the SSH agent),
 * host keys checked against a known_hosts file, one connection per node
 * reused by every rank and command there and closed when idle.
 *
 * A rank is one exec channel running, in the node's workdir,
 * `exec env K=V ... PYTHON -c WRAPPER ADDRESS`: the wrapper makes itself a
 * session and process group leader (setsid), prints `CLIPFLEET_PID <pid>`,
 * and execs `python -m clipfleet_worker run` in the same process, so the pid
 * is the rank's process group and sshd reports the worker's own exit status.
 * The job token goes over the channel's stdin (CLIPFLEET_TOKEN_STDIN=1),
 * never onto the command line where `ps` would show it. The command lines
 * themselves are built in ssh-command.ts.
 *
 * Warm spares (spares.ts, docs/recovery.md) are the same wrapper running
 * `clipfleet_worker spare` in a channel whose stdin stays open: the rank's
 * environment and token are its hand-over line, written there when a later
 * attempt's rank starts in it.
 */
import assert from "node:assert/strict";
import { readFileSync, statSync } from "node:fs";
import { homedir, userInfo } from "node:os";
import ssh2 from "ssh2";
import type { AnyAuthMethod, ClientChannel, ConnectConfig } from "ssh2";
import { EnvironmentError, type NodeSpec } from "../domain/index.js";
import { defaultKnownHostsPath, fingerprintSha256, KnownHostsFile } from "./known-hosts.js";
import { forEachLine } from "./lines.js";
import { SparePool, type SpareProcess, type SpareRequest } from "./spares.js";
import { PID_LINE, freePortCommand, hostKeyAlgorithms, killCommand, spareCommand, workerCommand, workerStdin } from "./ssh-command.js";
import { trackLive, type ExitInfo, type LaunchedProcess, type LaunchRequest, type Launcher } from "./types.js";

const { Client, utils } = ssh2;
type SshClient = InstanceType<typeof Client>;

/** How the SSH launcher connects; every field has a default. */
export interface SshLauncherOptions {
  /** known_hosts file host keys are checked against (accept-new appends to it). Default ~/.ssh/known_hosts. */
  readonly knownHostsPath?: string;
  /** A connection with no channel open for this long is closed. Default 30 s. */
  readonly idleSeconds?: number;
  /** TCP connect plus SSH handshake and authentication. Default 20 s. */
  readonly connectTimeoutMs?: number;
  /** SSH keepalives: a connection is lost after keepaliveCountMax unanswered ones. Default 5 s x 3. */
  readonly keepaliveIntervalMs?: number;
  readonly keepaliveCountMax?: number;
  /**
   * Channels one connection carries at once; more open another connection
   * to the node. Default 10, OpenSSH's MaxSessions.
   */
  readonly maxChannelsPerConnection?: number;
  /** ssh-agent socket for nodes without identity_file. Default $SSH_AUTH_SOCK. */
  readonly agentSocket?: string | null;
  /** Notes worth telling the operator (a host key recorded under accept-new). */
  readonly onNote?: (line: string) => void;
}

/** What a finished remote command printed (for freePort, signals and preflight). */
export interface RemoteResult {
  readonly code: number | null;
  readonly signal: string | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** How the host key of a node was accepted. */
export interface HostKeyInfo {
  readonly status: "known" | "recorded";
  readonly fingerprint: string;
}

function expandHome(p: string): string {
  return p === "~" ? homedir() : p.startsWith("~/") ? homedir() + p.slice(1) : p;
}

function describe(node: NodeSpec): string {
  return `${node.user ?? userInfo().username}@${node.host}:${node.port}`;
}

/** One ssh2 connection to a node and the channels open on it. */
class Connection {
  readonly client: SshClient = new Client();
  channels = 0;
  /** Set once the connection is gone: why (shown as the reason of lost ranks). */
  gone: string | null = null;
  hostKey: HostKeyInfo | null = null;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(readonly node: NodeSpec) {}

  release(idleMs: number, onIdle: () => void): void {
    this.channels -= 1;
    assert(this.channels >= 0);
    if (this.channels > 0 || this.gone !== null) return;
    this.idleTimer = setTimeout(() => {
      if (this.channels === 0) onIdle();
    }, idleMs);
    this.idleTimer.unref();
  }

  reserve(): void {
    this.channels += 1;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  end(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.gone ??= "closed by the orchestrator";
    this.client.end();
  }
}

/** Starts ranks over SSH; see the module comment. */
export class SshLauncher implements Launcher {
  readonly kind = "ssh" as const;
  private readonly knownHosts: KnownHostsFile;
  private readonly pool = new Map<string, Connection[]>();
  private readonly pending = new Map<Connection, Promise<Connection>>();
  private readonly live = new Set<LaunchedProcess>();
  private closed = false;
  /** Warm spares: the spare command over an exec channel whose stdin stays open for the hand-over (spawnSpare). */
  readonly spares: SparePool;

  constructor(private readonly opts: SshLauncherOptions = {}) {
    this.knownHosts = new KnownHostsFile(opts.knownHostsPath ?? defaultKnownHostsPath());
    this.spares = new SparePool(Date.now, (req) => this.spawnSpare(req));
  }

  /** The known_hosts file in use. */
  get knownHostsPath(): string {
    return this.knownHosts.path;
  }

  async launch(req: LaunchRequest): Promise<LaunchedProcess> {
    const warm = this.spares.adopt(req);
    if (warm) return trackLive(this.live, warm, req.onExit);
    const { proc } = await this.startRemote(req.node, workerCommand(req), workerStdin(req), { keepStdin: false, what: `rank ${req.rank}`, onOutput: req.onOutput });
    return trackLive(this.live, proc, req.onExit);
  }

  /**
   * One spare: `clipfleet_worker spare` through the rank's wrapper, in its own
   * process group on the node, its environment (no token) the first line of
   * the channel's stdin, which then stays open for the hand-over line. The
   * channel is this launcher's alone and encrypted: the hand-over, token
   * included, never reaches a command line. A lost connection ends it.
   */
  private async spawnSpare(req: SpareRequest): Promise<SpareProcess> {
    const spec = { python: req.python, workdir: req.workdir, env: req.env, node: req.node };
    // Lines that come before this function returns (the pool routes them then) are dropped, as for local spares.
    let spare: SpareProcess | null = null;
    const remote = await this.startRemote(req.node, spareCommand(spec), workerStdin({ ...spec, secrets: {} }), {
      keepStdin: true,
      what: "a spare",
      onOutput: (stream, line) => spare?.onLine(stream, line),
    });
    spare = {
      pid: remote.proc.pid,
      exited: remote.proc.exited,
      signal: (sig) => remote.proc.signal(sig),
      onLine: () => undefined,
      become: (env) => remote.handOver(JSON.stringify({ env }) + "\n"),
    };
    return spare;
  }

  /**
   * Runs a wrapper command (ssh-command.ts) in an exec channel, `stdin`
   * written first (then ended, unless `keepStdin`), and resolves once its pid
   * line came: the process, whose group is signalled over another channel of
   * the connection, and `handOver`, which writes a last line on a kept stdin
   * and ends it (false once the process or its connection is gone). Output
   * after the pid line goes to `onOutput`; a channel that closes without an
   * exit status is a lost process (`lost`); one that closes before the pid
   * line rejects, with its last stderr lines.
   */
  private async startRemote(
    node: NodeSpec,
    command: string,
    stdin: string,
    opts: { keepStdin: boolean; what: string; onOutput: (stream: "stdout" | "stderr", line: string) => void },
  ): Promise<{ proc: LaunchedProcess; handOver: (line: string) => boolean }> {
    const { conn, ch } = await this.open(node, command);
    if (opts.keepStdin) ch.write(stdin);
    else ch.end(stdin);
    return new Promise((resolve, reject) => {
      let exit: ExitInfo | null = null;
      const tail: string[] = [];
      let resolveExited: (e: ExitInfo) => void = () => undefined;
      const exited = new Promise<ExitInfo>((r) => (resolveExited = r));
      let done = false;
      let stdinOpen = opts.keepStdin;
      let started = false;
      const handOver = (line: string): boolean => {
        if (done || conn.gone !== null || !stdinOpen) return false;
        stdinOpen = false;
        ch.end(line);
        return true;
      };
      const proc = (groupId: number): LaunchedProcess => ({
        pid: groupId,
        exited,
        signal: async (sig) => {
          // Gone, or its connection lost: nothing left to signal through it.
          if (done || conn.gone !== null) return;
          const r = await this.run(node, killCommand(groupId, sig));
          if (r.code !== 0 && !/No such process/i.test(r.stderr)) {
            throw new EnvironmentError(`node ${node.name}: ${killCommand(groupId, sig)} failed: ${r.stderr.trim() || `exit ${r.code}`}`);
          }
        },
      });
      forEachLine(ch, (line) => {
        if (!started) {
          const m = PID_LINE.exec(line);
          if (m) {
            started = true;
            resolve({ proc: proc(Number(m[1])), handOver });
            return;
          }
        }
        opts.onOutput("stdout", line);
      });
      forEachLine(ch.stderr, (line) => {
        tail.push(line);
        if (tail.length > 10) tail.shift();
        opts.onOutput("stderr", line);
      });
      ch.on("exit", (code: number | null, signal?: string) => {
        exit = { code: code ?? null, signal: signal ?? null };
      });
      ch.once("close", () => {
        // Let the last stdout/stderr lines and the connection's own close land first.
        setImmediate(() => {
          done = true;
          this.release(conn);
          const info: ExitInfo =
            exit ?? {
              code: null,
              signal: null,
              lost: `connection to ${node.name} (${describe(node)}) lost: ${conn.gone ?? "the channel closed without an exit status"}`,
            };
          if (!started) {
            const how = info.lost ?? (info.signal ? `killed by ${info.signal}` : `exit ${info.code}`);
            reject(new EnvironmentError(`node ${node.name}: ${opts.what} did not start (${how})${tail.length ? `: ${tail.slice(-3).join(" | ")}` : ""}`));
            return;
          }
          resolveExited(info);
        });
      });
    });
  }

  async freePort(node: NodeSpec): Promise<number> {
    const r = await this.run(node, freePortCommand(node));
    const port = Number(r.stdout.trim());
    if (r.code !== 0 || !Number.isInteger(port) || port <= 0) {
      throw new EnvironmentError(`node ${node.name}: could not find a free port (${r.stderr.trim() || `exit ${r.code}, output ${JSON.stringify(r.stdout)}`})`);
    }
    return port;
  }

  /** Runs `command` on the node and collects its output (`stdin` written first). */
  async run(node: NodeSpec, command: string, opts: { stdin?: string; timeoutMs?: number } = {}): Promise<RemoteResult> {
    const { conn, ch } = await this.open(node, command);
    ch.end(opts.stdin ?? "");
    return new Promise((resolve, reject) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let exit: { code: number | null; signal: string | null } | null = null;
      const timer = opts.timeoutMs
        ? setTimeout(() => {
            ch.close();
            reject(new EnvironmentError(`node ${node.name}: ${command.slice(0, 80)} did not finish within ${opts.timeoutMs} ms`));
          }, opts.timeoutMs)
        : null;
      ch.on("data", (b: Buffer) => out.push(b));
      ch.stderr.on("data", (b: Buffer) => err.push(b));
      ch.on("exit", (code: number | null, signal?: string) => {
        exit = { code: code ?? null, signal: signal ?? null };
      });
      ch.once("close", () => {
        setImmediate(() => {
          if (timer) clearTimeout(timer);
          this.release(conn);
          if (exit === null) {
            reject(new EnvironmentError(`node ${node.name}: connection to ${describe(node)} lost: ${conn.gone ?? "the channel closed without an exit status"}`));
            return;
          }
          resolve({ ...exit, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
        });
      });
    });
  }

  /** Connects (or reuses the connection) and says how the node's host key was accepted. */
  async hostKey(node: NodeSpec): Promise<HostKeyInfo> {
    const conn = await this.acquire(node);
    this.release(conn);
    assert(conn.hostKey !== null);
    return conn.hostKey;
  }

  /** Kills every spare and every rank still running, then closes every connection. */
  async close(): Promise<void> {
    await Promise.race([this.spares.close(), new Promise((r) => setTimeout(r, 5000).unref())]);
    const all = [...this.live];
    await Promise.all(all.map((p) => p.signal("SIGKILL").catch(() => undefined)));
    await Promise.all(all.map((p) => Promise.race([p.exited, new Promise((r) => setTimeout(r, 5000).unref())])));
    this.closed = true;
    for (const list of this.pool.values()) for (const c of list) c.end();
    this.pool.clear();
  }

  // ------------------------------------------------------------ connections

  /** A connection to the node with a channel reserved on it (release() it). */
  private async acquire(node: NodeSpec): Promise<Connection> {
    if (this.closed) throw new EnvironmentError(`node ${node.name}: the SSH launcher is closed`);
    const list = this.pool.get(node.name) ?? [];
    this.pool.set(node.name, list);
    const max = this.opts.maxChannelsPerConnection ?? 10;
    let conn = list.find((c) => c.gone === null && c.channels < max);
    if (!conn) {
      conn = new Connection(node);
      list.push(conn);
      this.pending.set(conn, this.connect(conn));
    }
    conn.reserve();
    try {
      return await (this.pending.get(conn) ?? Promise.resolve(conn));
    } catch (err) {
      conn.channels -= 1;
      throw err;
    }
  }

  private release(conn: Connection): void {
    conn.release((this.opts.idleSeconds ?? 30) * 1000, () => {
      this.drop(conn);
      conn.end();
    });
  }

  private drop(conn: Connection): void {
    const list = this.pool.get(conn.node.name);
    if (list) {
      const i = list.indexOf(conn);
      if (i >= 0) list.splice(i, 1);
    }
    this.pending.delete(conn);
  }

  /** An exec channel running `command` on the node; its connection is release()d when the channel closes. */
  private async open(node: NodeSpec, command: string): Promise<{ conn: Connection; ch: ClientChannel }> {
    const conn = await this.acquire(node);
    try {
      return { conn, ch: await this.exec(conn, command) };
    } catch (err) {
      this.release(conn);
      throw err;
    }
  }

  private exec(conn: Connection, command: string): Promise<ClientChannel> {
    return new Promise((resolve, reject) => {
      conn.client.exec(command, (err, ch) => {
        if (err) reject(new EnvironmentError(`node ${conn.node.name}: could not open a channel on ${describe(conn.node)}: ${err.message}`));
        else resolve(ch);
      });
    });
  }

  private connect(conn: Connection): Promise<Connection> {
    const node = conn.node;
    const username = node.user ?? userInfo().username;
    let auth: AnyAuthMethod;
    let how: string;
    if (node.identity_file !== null) {
      const file = expandHome(node.identity_file);
      let text: Buffer;
      try {
        // OpenSSH refuses a private key others can read ("UNPROTECTED PRIVATE KEY FILE"): so does this.
        const mode = statSync(file).mode & 0o777;
        if ((mode & 0o077) !== 0) {
          return Promise.reject(
            new EnvironmentError(`node ${node.name}: identity_file ${file}: permissions 0${mode.toString(8)} are too open (a private key must not be accessible by others, as OpenSSH requires); \`chmod 600 ${file}\``),
          );
        }
        text = readFileSync(file);
      } catch (err) {
        return Promise.reject(new EnvironmentError(`node ${node.name}: identity_file ${file}: ${(err as Error).message}`));
      }
      const key = utils.parseKey(text);
      if (key instanceof Error) {
        return Promise.reject(
          new EnvironmentError(`node ${node.name}: identity_file ${file} is not a usable private key (${key.message}); an encrypted key belongs in ssh-agent, with identity_file left out`),
        );
      }
      auth = { type: "publickey", username, key };
      how = `identity_file ${file}`;
    } else {
      const agent = this.opts.agentSocket !== undefined ? this.opts.agentSocket : (process.env.SSH_AUTH_SOCK ?? null);
      if (!agent) {
        return Promise.reject(new EnvironmentError(`node ${node.name}: no identity_file and no SSH agent (SSH_AUTH_SOCK is not set): give the node an identity_file or start ssh-agent`));
      }
      auth = { type: "agent", username, agent };
      how = `the keys of the SSH agent at ${agent}`;
    }
    const policy = node.host_key_policy;
    let hostKeyError: Error | null = null;
    const config: ConnectConfig = {
      host: node.host,
      port: node.port,
      username,
      // Public keys only: password and keyboard-interactive are never offered.
      authHandler: [auth],
      tryKeyboard: false,
      hostVerifier: (key: Buffer): boolean => {
        try {
          const status = this.knownHosts.check(node.host, node.port, key, policy, node.name);
          conn.hostKey = { status, fingerprint: fingerprintSha256(key) };
          if (status === "recorded") {
            this.opts.onNote?.(`node ${node.name}: recorded the host key of ${node.host} (${fingerprintSha256(key)}) in ${this.knownHosts.path} (host_key_policy: accept-new)`);
          }
          return true;
        } catch (err) {
          hostKeyError = err as Error;
          return false;
        }
      },
      algorithms: { serverHostKey: hostKeyAlgorithms(this.knownHosts.knownKeyTypes(node.host, node.port)) },
      readyTimeout: this.opts.connectTimeoutMs ?? 20_000,
      keepaliveInterval: this.opts.keepaliveIntervalMs ?? 5000,
      keepaliveCountMax: this.opts.keepaliveCountMax ?? 3,
    };
    return new Promise((resolve, reject) => {
      let ready = false;
      conn.client.on("ready", () => {
        ready = true;
        this.pending.delete(conn);
        resolve(conn);
      });
      conn.client.on("error", (err: Error & { level?: string }) => {
        if (ready) {
          conn.gone ??= err.message; // e.g. "Keepalive timeout", "read ECONNRESET"
          return;
        }
        const why = hostKeyError ?? translate(err, node, how);
        conn.gone = why.message;
        this.drop(conn);
        reject(why);
      });
      conn.client.on("close", () => {
        conn.gone ??= ready ? "the connection closed unexpectedly" : "the connection closed during the handshake";
        this.drop(conn);
        if (!ready) reject(hostKeyError ?? new EnvironmentError(`node ${node.name}: cannot connect to ${describe(node)}: ${conn.gone}`));
      });
      conn.client.connect(config);
    });
  }
}

/** ssh2's errors in the user's terms: who was refused, where, with which key. */
function translate(err: Error & { level?: string }, node: NodeSpec, how: string): Error {
  if (err.level === "client-authentication") {
    return new EnvironmentError(`node ${node.name}: ${describe(node)} refused public-key authentication with ${how} (is the public key in the user's authorized_keys?)`);
  }
  if (err.level === "client-timeout" || /Timed out/i.test(err.message)) {
    return new EnvironmentError(`node ${node.name}: no SSH handshake with ${describe(node)} within the connect timeout (${err.message})`);
  }
  return new EnvironmentError(`node ${node.name}: cannot connect to ${describe(node)}: ${err.message}`);
}

