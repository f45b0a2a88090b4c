/**
 * Multi-node over SSH on real hosts with their own addresses: network
 * namespaces joined by a bridge, each running OpenSSH's sshd (see
 * tests/helpers/netns.ts). The orchestrator stays in the root namespace,
 * listening on 0.0.0.0 and advertising the bridge address to the workers.
 *
 * Host keys, user keys, the launcher's contract (process group, token over
 * stdin, connection reuse), `nodes check`, a 2-host job whose gloo group
 * spans two namespaces, recovery from a host dying mid-run, and the runtime
 * version check at registration. Skipped, with the reason, where namespaces
 * cannot be created.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { NodeCheck, NodeSpec } from "../../orchestrator/src/domain/index.js";
import { HostKeyError, SshLauncher, type ExitInfo, type LaunchRequest } from "../../orchestrator/src/launcher/index.js";
import { alive, finished, PYTHON, ROOT, runCli, startCli, tempDir, TEST_TLS, waitFor, writeTinySpec, type CliResult, type TinySpec } from "../helpers/cli.js";
import { netnsSkipReason, startFleet, type Fleet, type SshHost } from "../helpers/netns.js";

const WORKER_RUNTIME = join(ROOT, "worker-runtime");
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

function node(host: SshHost, name: string, extra: Partial<NodeSpec> = {}): NodeSpec {
  return {
    name,
    host: host.address,
    port: host.port,
    user: "root",
    identity_file: null,
    address: host.address,
    slots: 1,
    gpus: 0,
    labels: {},
    python: PYTHON,
    workdir: WORKER_RUNTIME,
    host_key_policy: "strict",
    launcher: "ssh",
    ...extra,
  };
}

/** nodes.yaml for `hosts`, named a, b, c...; `extra` adds fields per node name. */
function inventory(fleet: Fleet, hosts: readonly SshHost[], extra: Record<string, string> = {}): string {
  const lines = [
    `defaults: {user: root, identity_file: ${fleet.userKey}, python: ${PYTHON}, workdir: ${WORKER_RUNTIME}, slots: 1}`,
    "nodes:",
    ...hosts.map((h, i) => {
      const name = String.fromCharCode(97 + i);
      return `  - {name: ${name}, host: ${h.address}${extra[name] ? `, ${extra[name]}` : ""}}`;
    }),
  ];
  return lines.join("\n") + "\n";
}

interface StoredJob {
  id: string;
  state: string;
  stages: {
    state: string;
    restarts: number;
    reason: string;
    checkpoints: { status: string; step: number }[];
    attempts: { number: number; reason: string; masterAddr: string; resumedFromStep: number; worldSize: number; ranks: { rank: number; node: string; pid: number | null }[] }[];
  }[];
}

/** The one job of a state dir, as the file store last wrote it (null before it exists). */
function storedJob(stateDir: string): StoredJob | null {
  const jobs = join(stateDir, "jobs");
  if (!existsSync(jobs)) return null;
  const id = readdirSync(jobs)[0];
  if (id === undefined || !existsSync(join(jobs, id, "job.json"))) return null;
  try {
    return (JSON.parse(readFileSync(join(jobs, id, "job.json"), "utf8")) as { job: StoredJob }).job;
  } catch {
    return null; // caught between writes
  }
}

function jobLog(stateDir: string, id: string): string[] {
  return readFileSync(join(stateDir, "jobs", id, "logs.jsonl"), "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => (JSON.parse(l) as { line: string }).line);
}

/** The job's log so far, skipping a last line caught half-written (for polling a running job). */
function jobLogSoFar(stateDir: string): string[] {
  const job = storedJob(stateDir);
  const file = job ? join(stateDir, "jobs", job.id, "logs.jsonl") : "";
  if (!job || !existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .flatMap((l) => {
      try {
        return l === "" ? [] : [(JSON.parse(l) as { line: string }).line];
      } catch {
        return [];
      }
    });
}

/** Each test reports this reason as skipped (the summary counts them) where namespaces cannot be made. */
const SKIP = netnsSkipReason() ?? false;

void describe("SSH fleet on network namespaces", () => {
  let fleet: Fleet;
  let work: string;
  let tlsDir = "";
  let removeWork: () => void = () => undefined;

  before(async () => {
    if (SKIP) return;
    fleet = await startFleet(3);
    ({ dir: work, cleanup: removeWork } = tempDir("cf-ssh-e2e-"));
    // Ranks on the fleet reach the worker port at the bridge address, over TLS: a certificate for it.
    tlsDir = join(work, "tls");
    const certs = await runCli(["certs", "init", "--dir", tlsDir, "--host", fleet.bridgeAddress]);
    assert.equal(certs.code, 0, certs.stderr);
  });

  after(() => {
    fleet?.cleanup();
    removeWork();
  });

  /**
   * `clipfleet run` of a tiny spec (over the shared synthetic dataset: the
   * namespaces share this file system) on `inventoryText`, from a fresh state dir.
   */
  function runJob(name: string, spec: TinySpec | string, inventoryText: string, timeoutMs: number): { done: Promise<CliResult>; stateDir: string } {
    const dir = join(work, name);
    mkdirSync(dir);
    // A string is the spec's text (a task: command stage); a TinySpec, the tiny pretraining job.
    const specFile = typeof spec === "string" ? join(dir, `${name}.yaml`) : writeTinySpec(dir, { name, ...spec });
    if (typeof spec === "string") writeFileSync(specFile, spec);
    writeFileSync(join(dir, "nodes.yaml"), inventoryText);
    fleet.writeKnownHosts(join(dir, "known_hosts"));
    const stateDir = join(dir, "state");
    const child = startCli(
      ["run", specFile, "--json", "--inventory", "nodes.yaml", "--known-hosts", "known_hosts", "--listen", "0.0.0.0:0", "--advertise", fleet.bridgeAddress, "--state-dir", stateDir],
      { cwd: dir, env: TEST_TLS ? { CLIPFLEET_TLS_DIR: tlsDir } : {} },
    );
    return { done: finished(child, timeoutMs), stateDir };
  }

  void describe("host keys and user keys", () => {
    void it("refuses an unknown host key, naming the host and its fingerprint", { skip: SKIP }, async () => {
      const kh = join(work, "kh-empty");
      writeFileSync(kh, "");
      const ssh = new SshLauncher({ knownHostsPath: kh });
      const h = fleet.hosts[0]!;
      try {
        const err = await ssh.hostKey(node(h, "a", { identity_file: fleet.userKey })).then(
          () => assert.fail("connected to a host whose key is not known"),
          (e: unknown) => e,
        );
        assert.ok(err instanceof HostKeyError, String(err));
        assert.equal(err.verdict, "unknown");
        assert.equal(err.fingerprint, h.fingerprint());
        assert.match(err.message, new RegExp(`${h.address.replace(/\./g, "\\.")}.*${h.fingerprint().replace(/[+/]/g, "\\$&")}`));
        assert.equal(readFileSync(kh, "utf8"), "", "strict must not record anything");
      } finally {
        await ssh.close();
      }
    });

    void it("accept-new records the key like OpenSSH, and the recorded key is then known", { skip: SKIP }, async () => {
      const kh = join(work, "kh-accept-new", "known_hosts"); // the directory does not exist yet either
      const h = fleet.hosts[1]!;
      const notes: string[] = [];
      const first = new SshLauncher({ knownHostsPath: kh, onNote: (l) => notes.push(l) });
      try {
        const info = await first.hostKey(node(h, "b", { identity_file: fleet.userKey, host_key_policy: "accept-new" }));
        assert.deepEqual(info, { status: "recorded", fingerprint: h.fingerprint() });
      } finally {
        await first.close();
      }
      assert.equal(readFileSync(kh, "utf8"), `${h.knownHostsLine()}\n`);
      assert.match(notes.join("\n"), /recorded the host key/);
      // OpenSSH itself accepts what was recorded.
      const out = execFileSync("ssh", ["-i", fleet.userKey, "-o", `UserKnownHostsFile=${kh}`, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", `root@${h.address}`, "echo ok"], { encoding: "utf8" });
      assert.equal(out.trim(), "ok");
      const second = new SshLauncher({ knownHostsPath: kh });
      try {
        assert.equal((await second.hostKey(node(h, "b", { identity_file: fleet.userKey }))).status, "known");
      } finally {
        await second.close();
      }
    });

    void it("accepts a hashed known_hosts entry (ssh-keygen -H)", { skip: SKIP }, async () => {
      const kh = join(work, "kh-hashed");
      const h = fleet.hosts[0]!;
      writeFileSync(kh, `${h.knownHostsLine()}\n`);
      execFileSync("ssh-keygen", ["-H", "-f", kh], { stdio: "ignore" });
      assert.match(readFileSync(kh, "utf8"), /^\|1\|/);
      const ssh = new SshLauncher({ knownHostsPath: kh });
      try {
        assert.equal((await ssh.hostKey(node(h, "a", { identity_file: fleet.userKey }))).status, "known");
      } finally {
        await ssh.close();
      }
    });

    void it("refuses a changed host key, even under accept-new", { skip: SKIP }, async () => {
      const h = fleet.hosts[2]!;
      const kh = join(work, "kh-changed");
      writeFileSync(kh, `${h.knownHostsLine()}\n`);
      await h.rotateHostKey(); // the host was reinstalled, or someone is in the middle
      for (const policy of ["strict", "accept-new"] as const) {
        const ssh = new SshLauncher({ knownHostsPath: kh });
        try {
          const err = await ssh.hostKey(node(h, "c", { identity_file: fleet.userKey, host_key_policy: policy })).then(
            () => assert.fail(`connected to a host whose key changed (${policy})`),
            (e: unknown) => e,
          );
          assert.ok(err instanceof HostKeyError, String(err));
          assert.equal(err.verdict, "changed");
          assert.equal(err.fingerprint, h.fingerprint());
          assert.match(err.message, /REMOTE HOST IDENTIFICATION HAS CHANGED/);
          assert.ok(err.message.includes(h.address) && err.message.includes(h.fingerprint()) && err.message.includes(`${kh}:1`), err.message);
        } finally {
          await ssh.close();
        }
      }
      assert.equal(readFileSync(kh, "utf8").split("\n").filter((l) => l !== "").length, 1, "a changed key is never recorded");
    });

    void it("refuses a user key the host does not trust, and never falls back to passwords", { skip: SKIP }, async () => {
      const h = fleet.hosts[0]!;
      const kh = join(work, "kh-userkey");
      fleet.writeKnownHosts(kh);
      const stranger = join(work, "stranger_key");
      execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", stranger]);
      const ssh = new SshLauncher({ knownHostsPath: kh, agentSocket: null });
      try {
        await assert.rejects(ssh.hostKey(node(h, "a", { identity_file: stranger })), (e: Error) => {
          assert.match(e.message, new RegExp(`node a: root@${h.address.replace(/\./g, "\\.")}:22 refused public-key authentication with identity_file ${stranger}`));
          return true;
        });
        await assert.rejects(ssh.hostKey(node(h, "a")), /no identity_file and no SSH agent/);
      } finally {
        await ssh.close();
      }
      // The host offers password and keyboard-interactive (see netns.ts): only the key was tried.
      const log = readFileSync(join(h.dir, "sshd.log"), "utf8");
      const strangerFp = execFileSync("ssh-keygen", ["-l", "-f", `${stranger}.pub`], { encoding: "utf8" }).split(" ")[1] ?? "?";
      assert.ok(log.includes(`Failed publickey for root from ${fleet.bridgeAddress}`) && log.includes(strangerFp), log);
      assert.doesNotMatch(log, /password|keyboard-interactive/i);
    });
  });

  void it("launches in its own process group, passes the token over stdin, signals the group, reuses one connection", { skip: SKIP }, async () => {
    const h = fleet.hosts[1]!;
    const kh = join(work, "kh-launch");
    fleet.writeKnownHosts(kh);
    // A stand-in worker package: reports what it received and starts a child in its group.
    const fake = join(work, "fake-runtime");
    mkdirSync(join(fake, "clipfleet_worker"), { recursive: true });
    writeFileSync(join(fake, "clipfleet_worker", "__init__.py"), "");
    writeFileSync(
      join(fake, "clipfleet_worker", "__main__.py"),
      [
        "import json, os, subprocess, sys, time",
        "token = sys.stdin.readline().strip()",
        "child = subprocess.Popen(['sleep', '300'])",
        "print(json.dumps({'token': token, 'child': child.pid, 'pgid': os.getpgid(0), 'sid': os.getsid(0), 'rank': os.environ.get('RANK'), 'gloo': os.environ.get('GLOO_SOCKET_IFNAME'), 'stdin_flag': os.environ.get('CLIPFLEET_TOKEN_STDIN')}), flush=True)",
        "print('to stderr', file=sys.stderr, flush=True)",
        "time.sleep(300)",
      ].join("\n"),
    );
    const token = "tok-" + fleet.id + "-secret";
    const sshdLog = join(h.dir, "sshd.log");
    const logStart = readFileSync(sshdLog, "utf8").length;
    const newLog = (): string => readFileSync(sshdLog, "utf8").slice(logStart);
    const ssh = new SshLauncher({ knownHostsPath: kh, idleSeconds: 0.5 });
    const lines: { stream: string; line: string }[] = [];
    const exits: ExitInfo[] = [];
    const req = (rank: number): LaunchRequest => ({
      jobId: "j-test",
      stage: "main",
      attempt: 1,
      rank,
      node: node(h, "b", { identity_file: fleet.userKey, workdir: fake }),
      python: PYTHON,
      workdir: fake,
      env: { RANK: String(rank), SPACEY: "it's a 'quoted' $VALUE" },
      secrets: { CLIPFLEET_TOKEN: token },
      onOutput: (stream, line) => lines.push({ stream, line }),
      onExit: (e) => exits.push(e),
    });
    try {
      const procs = [await ssh.launch(req(0)), await ssh.launch(req(1))];
      const reports = await waitFor(
        "both stand-ins to report",
        () => {
          const json = lines.filter((l) => l.stream === "stdout" && l.line.startsWith("{"));
          return json.length === 2 ? json.map((l) => JSON.parse(l.line) as Record<string, unknown>) : null;
        },
        10_000,
        50,
      );
      for (const [i, p] of procs.entries()) {
        const r = reports.find((x) => x.rank === String(i))!;
        assert.equal(r.token, token, "the token arrives on stdin");
        assert.equal(r.stdin_flag, "1");
        assert.equal(r.pgid, p.pid, "the reported pid leads the rank's process group");
        assert.equal(r.sid, p.pid, "and its session (setsid)");
        assert.equal(r.gloo, "cf0", "gloo is bound to the interface holding the node's address");
        assert.equal(fleet.namespaceOf(p.pid), h.ns, "the rank runs on the remote host");
        for (const f of ["cmdline", "environ"]) {
          assert.ok(!readFileSync(`/proc/${p.pid}/${f}`).toString().includes(token), `the token is not in /proc/${p.pid}/${f}`);
        }
      }
      assert.ok(lines.some((l) => l.stream === "stderr" && l.line === "to stderr"));
      assert.equal((newLog().match(/Accepted publickey/g) ?? []).length, 1, "two ranks, one connection");

      const child0 = reports.find((x) => x.rank === "0")!.child as number;
      await procs[0]!.signal("SIGTERM");
      assert.deepEqual(await procs[0]!.exited, { code: null, signal: "SIGTERM" });
      await waitFor("the rank's child to die with its group", () => !alive(child0), 5000, 50);
      assert.ok(alive(procs[1]!.pid), "the other rank is untouched");
      await procs[1]!.signal("SIGKILL");
      assert.equal((await procs[1]!.exited).signal, "SIGKILL");
      assert.equal(exits.length, 2);
      // Idle for longer than idleSeconds: the connection is closed.
      await waitFor("the idle connection to close", () => /Received disconnect from|Disconnected from user root/.test(newLog()), 5000, 50);
      assert.equal((newLog().match(/Accepted publickey/g) ?? []).length, 1, "the kill commands used the same connection");
    } finally {
      await ssh.close();
    }
  });

  void it("nodes check --json: one node OK, one with an unknown host key", { skip: SKIP }, async () => {
    const dir = join(work, "check");
    mkdirSync(dir);
    writeFileSync(join(dir, "nodes.yaml"), inventory(fleet, fleet.hosts.slice(0, 2)));
    fleet.writeKnownHosts(join(dir, "known_hosts"), [fleet.hosts[0]!]);
    const r = await runCli(["nodes", "check", "--inventory", "nodes.yaml", "--known-hosts", "known_hosts", "--json"], { cwd: dir, timeoutMs: 60_000 });
    assert.equal(r.code, 1, r.stderr);
    const checks = JSON.parse(r.stdout) as NodeCheck[];
    const [a, b] = checks;
    assert.ok(a && b);
    assert.equal(a.ok, true, a.problems.join("; "));
    assert.equal(a.reachable, true);
    assert.equal(a.hostKey, "known");
    assert.equal(a.runtimeVersion, VERSION);
    assert.match(a.pythonVersion ?? "", /^3\./);
    assert.ok(a.torchVersion, "torch version reported");
    assert.equal(a.cudaDevices, 0);
    assert.ok((a.freeBytes ?? 0) > 0);
    assert.equal(b.ok, false);
    assert.equal(b.hostKey, "unknown");
    assert.equal(b.fingerprint, fleet.hosts[1]!.fingerprint());
    assert.ok(b.problems[0]?.includes(fleet.hosts[1]!.address) && b.problems[0].includes(b.fingerprint ?? "?"), b.problems.join("; "));
  });

  /** Waits for the first attempt's ranks to start, checks rank i ran on hosts[i], and returns the run's result (exit 0). */
  async function ranOnHosts(job: { done: Promise<CliResult>; stateDir: string }, hosts: readonly SshHost[]): Promise<CliResult> {
    // While it runs: where do the ranks' processes live?
    const where = await waitFor(
      "both ranks to start",
      () => {
        const pids = storedJob(job.stateDir)?.stages[0]?.attempts[0]?.ranks.map((r) => r.pid);
        return pids && pids.every((p) => p) ? pids.map((p) => fleet.namespaceOf(p!)) : null;
      },
      60_000,
      50,
    );
    const r = await job.done;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.deepEqual(where, hosts.map((h) => h.ns), "rank i ran on hosts[i]");
    return r;
  }

  void it("runs a 2-host x 1-rank job whose gloo group spans two namespaces", { skip: SKIP, timeout: 90_000 }, async () => {
    const [ha, hb] = [fleet.hosts[0]!, fleet.hosts[1]!];
    const job = runJob("two-hosts", { steps: 20, workers: 2, everySteps: 10 }, inventory(fleet, [ha, hb]), 80_000);
    const r = await ranOnHosts(job, [ha, hb]);
    const summary = JSON.parse(r.stdout) as { state: string; steps: number; restarts: number };
    assert.equal(summary.state, "SUCCEEDED");
    assert.equal(summary.steps, 20);
    const stored = storedJob(job.stateDir)!;
    const attempt = stored.stages[0]!.attempts[0]!;
    assert.equal(attempt.masterAddr, ha.address, "rendezvous on rank 0's node address");
    assert.deepEqual(attempt.ranks.map((x) => x.node), ["a", "b"]);
    assert.equal(attempt.worldSize, 2);
    const log = jobLog(job.stateDir, stored.id);
    for (const rank of [0, 1]) assert.ok(log.some((l) => l.startsWith(`rank ${rank} registered`)), `rank ${rank} registered`);
    for (const h of [ha, hb]) assert.match(readFileSync(join(h.dir, "sshd.log"), "utf8"), new RegExp(`Accepted publickey for root from ${fleet.bridgeAddress.replace(/\./g, "\\.")}`));
  });

  void it("runs a task: command stage across two hosts: the user's script over SSH with torchrun's environment and the API, the parameters of a local run", { skip: SKIP, timeout: 120_000 }, async () => {
    const [ha, hb] = [fleet.hosts[0]!, fleet.hosts[1]!];
    const text = [
      "name: byo-ssh",
      "task: command",
      "command: [python, train_ddp.py]",
      `workdir: ${JSON.stringify(join(ROOT, "examples", "byo"))}`,
      "train: {steps: 30, batch_size: 16}",
      "data: {num_samples: 320}",
      "cluster: {workers: 2}",
      "checkpoint: {every_steps: 10}",
      "",
    ].join("\n");
    const job = runJob("byo-ssh", text, inventory(fleet, [ha, hb]), 110_000);
    const r = await ranOnHosts(job, [ha, hb]);
    const summary = JSON.parse(r.stdout) as { state: string; steps: number; finalParamsSha256: string };
    assert.equal(summary.steps, 30);
    const stored = storedJob(job.stateDir)!;
    assert.equal(stored.stages[0]!.checkpoints.filter((c) => c.status === "committed").length, 3, "the API's checkpoints committed from both hosts");
    const local = join(work, "byo-ssh", "local.yaml");
    writeFileSync(local, text);
    const here = await runCli(["run", local, "--json", "--state-dir", join(work, "byo-ssh", "local-state")]);
    assert.equal(here.code, 0, here.stderr);
    assert.equal(summary.finalParamsSha256, (JSON.parse(here.stdout) as { finalParamsSha256: string }).finalParamsSha256, "over SSH as here");
  });

  void it("recovers when a host's sshd and worker are killed mid-run", { skip: SKIP, timeout: 120_000 }, async () => {
    const STEPS = 100;
    const spec: TinySpec = {
      steps: STEPS,
      workers: 2,
      minWorkers: 1, // the global batch (32) divides by 1 and 2
      everySteps: 20,
      failure: { quarantine_after: 1, backoff_seconds: 0.2, max_restarts: 4 },
    };
    // Three hosts: whichever node the failure is blamed on, the job can go on without it.
    const job = runJob("host-dies", spec, inventory(fleet, fleet.hosts), 110_000);
    const first = await waitFor(
      "a committed checkpoint of attempt 1",
      () => {
        const s = storedJob(job.stateDir)?.stages[0];
        const a = s?.attempts[0];
        return a && a.ranks.every((x) => x.pid) && s.checkpoints.some((c) => c.status === "committed") ? a : null;
      },
      60_000,
      50,
    );
    const victimName = first.ranks[1]!.node;
    const victim = fleet.hosts[victimName.charCodeAt(0) - 97]!;
    assert.ok(victim.pids().length >= 3, "sshd, its session and the worker run in the victim's namespace");
    victim.killAll();
    const r = await job.done;
    await victim.revive(); // for the tests after this one
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    const summary = JSON.parse(r.stdout) as { state: string; steps: number; restarts: number };
    assert.equal(summary.state, "SUCCEEDED");
    assert.equal(summary.steps, STEPS);
    assert.ok(summary.restarts >= 1, `restarts: ${summary.restarts}`);
    const stored = storedJob(job.stateDir)!;
    const attempts = stored.stages[0]!.attempts;
    const last = attempts[attempts.length - 1]!;
    assert.ok(!last.ranks.some((x) => x.node === victimName), `the last attempt avoids the dead host ${victimName}`);
    assert.ok(last.resumedFromStep >= 20, `resumed from a committed checkpoint, not step ${last.resumedFromStep}`);
    const log = jobLog(job.stateDir, stored.id);
    assert.ok(
      log.some((l) => l.includes(`was lost: connection to ${victimName}`)),
      "the lost connection is reported:\n" + log.filter((l) => !l.startsWith("step")).join("\n"),
    );
  });

  void it("warm spares on SSH nodes: after a kill -9 of a rank the next attempt's ranks run in them, same parameters, no spare left", { skip: SKIP, timeout: 300_000 }, async () => {
    const [ha, hb] = [fleet.hosts[0]!, fleet.hosts[1]!];
    const base: TinySpec = { steps: 40, workers: 2, everySteps: 10, failure: { heartbeat_timeout: 5 } };
    // The uninterrupted reference, here (the parameters over SSH equal a local run's, see the task: command test).
    mkdirSync(join(work, "spares-ref"));
    const ref = await runCli(["run", writeTinySpec(join(work, "spares-ref"), { ...base, name: "spares-ref", spares: 0 }), "--json", "--state-dir", join(work, "spares-ref", "state")]);
    assert.equal(ref.code, 0, ref.stderr.slice(-3000));
    const reference = JSON.parse(ref.stdout) as { finalParamsSha256: string };
    // Attempt 1 waits before step 25 until the test has acted, so a fast machine cannot finish first.
    const go = join(work, "spares-ssh.go");
    const job = runJob("spares-ssh", { ...base, spares: 1, env: { CLIPFLEET_FAULT: `gate@25:file=${go}:attempt=1` } }, inventory(fleet, [ha, hb]), 280_000);
    const ready = await waitFor(
      "a ready spare on each host, and attempt 1's ranks running",
      () => {
        const log = jobLogSoFar(job.stateDir);
        const started = new Map(log.flatMap((l) => [...l.matchAll(/^spare pid (\d+) started on (\w+)$/g)].map((m) => [Number(m[1]), m[2]!] as const)));
        const pids = [...new Set(log.flatMap((l) => [...l.matchAll(/^spare pid (\d+) ready$/g)].map((m) => Number(m[1]))))];
        const ranks = storedJob(job.stateDir)?.stages[0]?.attempts[0]?.ranks;
        const nodes = new Set(pids.map((p) => started.get(p)));
        return nodes.has("a") && nodes.has("b") && ranks?.every((r) => r.pid) ? { pids, started, ranks } : null;
      },
      240_000,
      100,
    );
    for (const pid of ready.pids) {
      const host = ready.started.get(pid) === "a" ? ha : hb;
      assert.equal(fleet.namespaceOf(pid), host.ns, `spare ${pid} runs on its host`);
      // Its stage's environment only: no token until the hand-over.
      assert.doesNotMatch(readFileSync(`/proc/${pid}/environ`).toString(), /CLIPFLEET_TOKEN=/);
      assert.ok(readFileSync(`/proc/${pid}/cmdline`).toString().split("\0").includes("spare"), "the spare command");
    }
    const victim = ready.ranks.find((r) => r.rank === 1)!;
    process.kill(victim.pid!, "SIGKILL");
    writeFileSync(go, "");
    const r = await job.done;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    const summary = JSON.parse(r.stdout) as { state: string; restarts: number; finalParamsSha256: string };
    assert.equal(summary.state, "SUCCEEDED");
    assert.equal(summary.restarts, 1);
    assert.equal(summary.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run without the failure");

    const stored = storedJob(job.stateDir)!;
    const second = stored.stages[0]!.attempts[1]!;
    const log = jobLog(job.stateDir, stored.id);
    const warm = second.ranks.map((x) => x.pid);
    assert.deepEqual([...warm].sort(), [...ready.pids].sort(), "attempt 2's ranks are the spares' processes");
    for (const x of second.ranks) {
      assert.ok(log.includes(`rank ${x.rank} runs in warm spare pid ${x.pid} on ${x.node}`), `rank ${x.rank} warm on ${x.node}:\n${log.filter((l) => /spare/.test(l)).join("\n")}`);
      assert.equal(ready.started.get(x.pid!), x.node, "a spare becomes a rank of its own node");
    }
    assert.ok(log.some((l) => /^clipfleet worker: spare pid \d+ becomes rank [01] of attempt 2$/.test(l)), "the rank's own log says so");
    // Every spare (the replacements started once attempt 2 trained too) and every rank is gone from the hosts.
    const everyPid = new Set([...stored.stages[0]!.attempts.flatMap((a) => a.ranks.map((x) => x.pid!)), ...log.flatMap((l) => [...l.matchAll(/^spare pid (\d+) started/g)].map((m) => Number(m[1])))]);
    assert.ok(everyPid.size >= 4, `the ranks of both attempts, the spares and their replacements: ${[...everyPid].join(", ")}`);
    for (const pid of everyPid) assert.equal(alive(pid), false, `process ${pid} outlived the job:\n${log.filter((l) => l.includes(String(pid))).join("\n")}`);
    for (const h of [ha, hb]) {
      const left = h.pids().filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`).toString().includes("clipfleet_worker");
        } catch {
          return false; // gone meanwhile
        }
      });
      assert.deepEqual(left, [], `no worker process left on ${h.ns}`);
    }
  });

  void it("refuses a worker runtime of another version at registration, naming both versions", { skip: SKIP, timeout: 60_000 }, async () => {
    const other = join(work, "runtime-0.0.0-old");
    cpSync(join(WORKER_RUNTIME, "clipfleet_worker"), join(other, "clipfleet_worker"), { recursive: true, filter: (src) => !src.includes("__pycache__") });
    const init = join(other, "clipfleet_worker", "__init__.py");
    writeFileSync(init, readFileSync(init, "utf8").replace(/__version__ = "[^"]*"/, '__version__ = "0.0.0-old"'));
    const [ha, hb] = [fleet.hosts[0]!, fleet.hosts[1]!];
    const job = runJob("old-runtime", { steps: 5, workers: 2 }, inventory(fleet, [ha, hb], { b: `workdir: ${other}` }), 50_000);
    const r = await job.done;
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    const summary = JSON.parse(r.stdout) as { state: string; reason: string; restarts: number };
    assert.equal(summary.state, "FAILED");
    assert.match(summary.reason, new RegExp(`worker runtime 0\\.0\\.0-old on .* does not match orchestrator ${VERSION.replace(/\./g, "\\.")}`));
    assert.equal(summary.restarts, 0, "a version mismatch is not retried");
  });
});
