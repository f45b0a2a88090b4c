/**
 * Test helper: a small fleet of real hosts on this machine. Each host is a
 * network namespace with its own address, joined to the others and to the
 * root namespace through veth pairs on one bridge, running a real OpenSSH
 * sshd with its own host key; every host trusts one user key made for the run.
 *
 *   const SKIP = netnsSkipReason() ?? false;   // each test reports it as skipped
 *   describe("x", () => {
 *     let fleet: Fleet;
 *     before(async () => { if (!SKIP) fleet = await startFleet(2); });
 *     after(() => fleet?.cleanup());
 *     it("y", { skip: SKIP }, async () => { ...ssh root@fleet.hosts[0].address with fleet.userKey... });
 *   });
 *
 * The bridge holds `<subnet>.254` in the root namespace, so processes there
 * (the orchestrator) reach the hosts and the hosts reach them. Namespaces,
 * links and sshd processes carry a per-run id and are removed by cleanup(),
 * and by an exit handler when a test dies before its after() hook runs.
 * Needs root, iproute2 and openssh-server.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";

const SSHD = "/usr/sbin/sshd";
const IP = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((p) => existsSync(p)) ?? "ip";

/** One host: a namespace running sshd on its own address. */
export interface SshHost {
  /** Network namespace name (`ip netns exec NAME ...`). */
  readonly ns: string;
  readonly address: string;
  readonly port: number;
  readonly dir: string;
  /** Public host key (`ssh-ed25519 AAAA...`, no comment) sshd offers now. */
  hostKeyPub(): string;
  /** SHA256 fingerprint of the current host key, as ssh-keygen prints it. */
  fingerprint(): string;
  /** A known_hosts line for the current key (`address type key`). */
  knownHostsLine(): string;
  /** New host key, sshd restarted with it (what a reinstalled host looks like). */
  rotateHostKey(): Promise<void>;
  /** SIGKILL every process in the namespace: sshd, its sessions, workers (the host dies). */
  killAll(): void;
  /** Starts sshd again, with the same host key (the host is back). */
  revive(): Promise<void>;
  /** Pids of the processes now in the namespace. */
  pids(): number[];
}

/** A started fleet. */
export interface Fleet {
  readonly id: string;
  readonly dir: string;
  readonly hosts: readonly SshHost[];
  /** The root namespace's address on the bridge (where the orchestrator is reachable from the hosts). */
  readonly bridgeAddress: string;
  /** Private key every host's authorized_keys trusts. */
  readonly userKey: string;
  /** A known_hosts file with every host's current key. */
  writeKnownHosts(path: string, hosts?: readonly SshHost[]): void;
  /** Name of the namespace a pid runs in, or null. */
  namespaceOf(pid: number): string | null;
  /** Stops every sshd, deletes namespaces and links. Idempotent. */
  cleanup(): void;
}

function run(cmd: string, args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

let cachedReason: string | null | undefined;

/** Why the fleet cannot be created here (not root, no sshd/iproute2, namespaces refused), or null. */
export function netnsSkipReason(): string | null {
  if (cachedReason !== undefined) return cachedReason;
  cachedReason = probe();
  return cachedReason;
}

function probe(): string | null {
  if (process.platform !== "linux") return "network namespaces need Linux";
  if (process.getuid?.() !== 0) return "network namespaces need root (run as root, as CI does)";
  if (!existsSync(SSHD)) return `${SSHD} not found (Debian package openssh-server)`;
  for (const tool of [IP, "ssh-keygen"]) {
    try {
      execFileSync(tool, tool === IP ? ["-V"] : ["-?"], { stdio: "ignore" });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return `${tool} not found (Debian packages iproute2, openssh-client)`;
    }
  }
  const name = `cfprobe-${process.pid}`;
  try {
    run(IP, ["netns", "add", name]);
    run(IP, ["netns", "del", name]);
  } catch (err) {
    return `\`ip netns add\` failed: ${((err as { stderr?: string }).stderr ?? String(err)).trim()}`;
  }
  return null;
}

/** A /24 under 10.77 that no interface of the root namespace uses yet. */
function freeSubnet(): string {
  const used = run(IP, ["-o", "-4", "addr"]);
  for (let i = 0; i < 50; i++) {
    const x = 1 + randomBytes(1)[0]! % 250;
    if (!used.includes(` 10.77.${x}.`)) return `10.77.${x}`;
  }
  throw new Error("no free 10.77.x.0/24 subnet for the test fleet");
}

const live = new Set<Fleet>();
let exitHook = false;

/** Creates `count` hosts (10.77.x.1, .2, ...) each running sshd on port 22. */
export async function startFleet(count: number): Promise<Fleet> {
  const id = randomBytes(3).toString("hex");
  const dir = mkdtempSync(join(tmpdir(), `cf-fleet-${id}-`));
  const subnet = freeSubnet();
  const bridge = `cfb${id}`;
  const namespaces: string[] = [];
  const sshdPids = new Map<string, number>();
  let cleaned = false;

  const cleanup = (): void => {
    if (cleaned) return;
    cleaned = true;
    live.delete(fleet);
    for (const ns of namespaces) {
      for (const pid of nsPids(ns)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      try {
        run(IP, ["netns", "del", ns]);
      } catch {
        // never created
      }
    }
    try {
      run(IP, ["link", "del", bridge]);
    } catch {
      // never created
    }
    rmSync(dir, { recursive: true, force: true });
  };

  const userKey = join(dir, "user_key");
  run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", `clipfleet-test-${id}`, "-f", userKey]);
  writeFileSync(join(dir, "authorized_keys"), readFileSync(`${userKey}.pub`));
  // sshd refuses to start without its privilege separation directory.
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });

  const hosts: SshHost[] = [];
  const fleet: Fleet = {
    id,
    dir,
    hosts,
    bridgeAddress: `${subnet}.254`,
    userKey,
    writeKnownHosts: (path, which = hosts) => writeFileSync(path, which.map((h) => h.knownHostsLine() + "\n").join("")),
    namespaceOf: (pid) => {
      try {
        return run(IP, ["netns", "identify", String(pid)]).trim() || null;
      } catch {
        return null;
      }
    },
    cleanup,
  };
  live.add(fleet);
  if (!exitHook) {
    exitHook = true;
    process.once("exit", () => {
      for (const f of [...live]) f.cleanup();
    });
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      process.once(sig, () => {
        for (const f of [...live]) f.cleanup();
        process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
      });
    }
  }

  try {
    run(IP, ["link", "add", bridge, "type", "bridge"]);
    run(IP, ["addr", "add", `${subnet}.254/24`, "dev", bridge]);
    run(IP, ["link", "set", bridge, "up"]);
    for (let i = 1; i <= count; i++) {
      const ns = `cf${id}-${i}`;
      const address = `${subnet}.${i}`;
      const veth = `cfv${id}${i}`;
      run(IP, ["netns", "add", ns]);
      namespaces.push(ns);
      // The inner end has the same name in every namespace, like eth0 on real hosts.
      run(IP, ["link", "add", veth, "type", "veth", "peer", "name", "cf0", "netns", ns]);
      run(IP, ["link", "set", veth, "master", bridge, "up"]);
      run(IP, ["-n", ns, "addr", "add", `${address}/24`, "dev", "cf0"]);
      run(IP, ["-n", ns, "link", "set", "cf0", "up"]);
      run(IP, ["-n", ns, "link", "set", "lo", "up"]);
      const hostDir = join(dir, `host${i}`);
      mkdirSync(hostDir);
      const host = makeHost(ns, address, hostDir, dir, sshdPids);
      await host.rotateHostKey();
      hosts.push(host);
    }
  } catch (err) {
    cleanup();
    throw err;
  }
  return fleet;
}

function nsPids(ns: string): number[] {
  try {
    return run(IP, ["netns", "pids", ns])
      .split(/\s+/)
      .filter((s) => s !== "")
      .map(Number);
  } catch {
    return [];
  }
}

function makeHost(ns: string, address: string, dir: string, fleetDir: string, sshdPids: Map<string, number>): SshHost {
  const hostKey = join(dir, "ssh_host_ed25519_key");
  const config = join(dir, "sshd_config");
  const log = join(dir, "sshd.log");
  let generation = 0;

  const stopSshd = async (): Promise<void> => {
    const pid = sshdPids.get(ns);
    if (pid === undefined) return;
    sshdPids.delete(ns);
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      return;
    }
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await sleep(20);
    }
  };

  const startSshd = async (): Promise<void> => {
    writeFileSync(
      config,
      [
        `ListenAddress ${address}:22`,
        `HostKey ${hostKey}`,
        `AuthorizedKeysFile ${join(fleetDir, "authorized_keys")}`,
        `PidFile ${join(dir, "sshd.pid")}`,
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        // Offered, so that a client falling back to them would show in the log.
        "PasswordAuthentication yes",
        "KbdInteractiveAuthentication yes",
        "LogLevel VERBOSE",
        "",
      ].join("\n"),
    );
    rmSync(log, { force: true });
    const child = spawn(IP, ["netns", "exec", ns, SSHD, "-D", "-f", config, "-E", log], { stdio: "ignore", detached: true });
    child.unref();
    if (child.pid === undefined) throw new Error(`could not start sshd in ${ns}`);
    // `ip netns exec` execs sshd in place: the child's pid is sshd's.
    sshdPids.set(ns, child.pid);
    for (let i = 0; i < 250; i++) {
      if (existsSync(log) && readFileSync(log, "utf8").includes("Server listening")) return;
      if (child.exitCode !== null) break;
      await sleep(20);
    }
    throw new Error(`sshd in ${ns} did not start: ${existsSync(log) ? readFileSync(log, "utf8") : "no log"}`);
  };

  const pub = (): string => readFileSync(`${hostKey}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
  return {
    ns,
    address,
    port: 22,
    dir,
    hostKeyPub: pub,
    fingerprint: () => run("ssh-keygen", ["-l", "-E", "sha256", "-f", `${hostKey}.pub`]).split(/\s+/)[1] ?? "",
    knownHostsLine: () => `${address} ${pub()}`,
    rotateHostKey: async () => {
      await stopSshd();
      generation += 1;
      rmSync(hostKey, { force: true });
      rmSync(`${hostKey}.pub`, { force: true });
      run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", `${ns}-${generation}`, "-f", hostKey]);
      await startSshd();
    },
    killAll: () => {
      for (const pid of nsPids(ns)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      sshdPids.delete(ns);
    },
    revive: async () => {
      await stopSshd();
      await startSshd();
    },
    pids: () => nsPids(ns),
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
