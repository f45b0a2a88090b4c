/**
 * The Slurm launcher against a real Slurm (tests/helpers/slurm.ts): munged,
 * slurmctld, and a slurmd on each of two hosts made of network namespaces,
 * in a generated partition. The orchestrator stays in the root namespace;
 * each attempt's ranks are Slurm steps on the nodes Slurm granted.
 *
 * A 2-node job to SUCCEEDED with the final parameters of the same spec run
 * locally; `scancel` of the allocation mid-run (detected, restarted from the
 * last committed checkpoint, same parameters, exact audit); a preemption
 * warning to the allocation (`scancel --signal=USR1`: every rank checkpoints
 * at one step and exits, the stage resumes on a new allocation, counted as a
 * preemption, not a failure); an allocation
 * that cannot be granted now (PENDING with Slurm's reason in `status`,
 * `cancel` leaves nothing in squeue). Skipped, with the reason, where Slurm
 * or namespaces are missing.
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli, startServer, tempDir, TEST_TLS, waitFor, writeTinySpec, type TinySpec } from "../helpers/cli.js";
import { assertExactlyOnce, audit, startRun, status, waitForStatus, type Summary } from "../helpers/jobs.js";
import { slurmSkipReason, startSlurm, type SlurmCluster } from "../helpers/slurm.js";

const SKIP = slurmSkipReason() ?? false;
/** 1024 samples, batch 32: 32 steps an epoch; 40 steps are one epoch and a quarter. */
const BASE: TinySpec = { steps: 40, batch: 32, everySteps: 10, audit: true, failure: { backoff_seconds: 0.2 } };

void describe("Slurm launcher on a real slurmctld and two slurmd hosts", () => {
  let cluster: SlurmCluster;
  const tmp = tempDir("cf-slurm-e2e-");
  let spec = "";
  let reference: Summary;
  /** SLURM_CONF, and the worker port's certificate for the bridge address the ranks dial. */
  let env: Record<string, string> = {};
  const t0 = Date.now();

  before(async () => {
    if (SKIP) return;
    const started = Date.now();
    cluster = await startSlurm(2);
    process.stderr.write(`slurm cluster up in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
    const tlsDir = join(tmp.dir, "tls");
    const certs = await runCli(["certs", "init", "--dir", tlsDir, "--host", cluster.fleet.bridgeAddress]);
    assert.equal(certs.code, 0, certs.stderr);
    env = { ...cluster.env, ...(TEST_TLS ? { CLIPFLEET_TLS_DIR: tlsDir } : {}) };
    spec = writeTinySpec(tmp.dir, { ...BASE, name: "slurm" });
    const r = await runCli(["run", spec, "--json", "--state-dir", join(tmp.dir, "local")]);
    assert.equal(r.code, 0, r.stderr);
    reference = JSON.parse(r.stdout) as Summary;
    assert.equal(reference.state, "SUCCEEDED");
  });
  after(() => {
    cluster?.cleanup();
    tmp.cleanup();
    process.stderr.write(`slurm e2e: ${((Date.now() - t0) / 1000).toFixed(1)} s in all\n`);
  });

  /** nodes.yaml for the test partition. */
  function inventory(name: string, extra = ""): string {
    const path = join(tmp.dir, `${name}-nodes.yaml`);
    writeFileSync(
      path,
      [
        "launcher: slurm",
        "slurm:",
        `  partition: ${cluster.partition}`,
        "  nodes: 2",
        "  ranks_per_node: 1",
        "  time: \"10:00\"",
        "  signal: USR1@60",
        "  poll_seconds: 0.2",
        `  python: ${process.env.CLIPFLEET_PYTHON ?? "/usr/bin/python3"}`,
        `  workdir: ${join(process.cwd(), "worker-runtime")}`,
        extra,
        "",
      ].join("\n"),
    );
    return path;
  }

  /** `run` arguments that reach the orchestrator from the namespaces. */
  function runArgs(name: string): string[] {
    return ["--json", "--inventory", inventory(name), "--listen", "0.0.0.0:0", "--advertise", cluster.fleet.bridgeAddress];
  }

  function clipfleetJobs(): { id: string; name: string; state: string }[] {
    return cluster.queue().filter((j) => j.name.startsWith("clipfleet-"));
  }

  void it("trains a 2-node job to SUCCEEDED through Slurm, with the parameters of the same spec run locally", { skip: SKIP, timeout: 120_000 }, async () => {
    const started = Date.now();
    const state = join(tmp.dir, "two-nodes");
    const run = await startRun(spec, state, runArgs("two-nodes"), env);
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 0);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "through Slurm as here");
    const v = await status(run.jobId, state);
    const attempt = v.job.stages[0]!.attempts[0]!;
    assert.deepEqual(
      attempt.ranks.map((x) => x.node).sort(),
      cluster.nodes.map((n) => n.name).sort(),
      "one rank on each Slurm node",
    );
    const logs = readFileSync(join(state, "jobs", run.jobId, "logs.jsonl"), "utf8");
    assert.match(logs, /Slurm job \d+ running on /);
    assertExactlyOnce(await audit(run.jobId, state), 2);
    await waitFor("the allocation gone from squeue", () => clipfleetJobs().length === 0, 30_000);
    process.stderr.write(`2-node job: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  });

  void it("nodes lists the partition from sinfo (through a server); nodes check preflights every node of it through srun", { skip: SKIP, timeout: 60_000 }, async () => {
    const r = await runCli(["nodes", "check", "--inventory", inventory("check"), "--json"], { env });
    assert.equal(r.code, 0, r.stderr);
    const checks = JSON.parse(r.stdout) as { node: string; host: string; launcher: string; ok: boolean; torchVersion: string | null; runtimeVersion: string | null }[];
    assert.deepEqual(
      checks.map((c) => [c.node, c.host, c.launcher, c.ok]),
      cluster.nodes.map((n) => [n.name, n.address, "slurm", true]),
    );
    assert.ok(checks.every((c) => c.torchVersion && c.runtimeVersion));
    // A server with the Slurm inventory: `clipfleet nodes` shows its positions and the partition's nodes from sinfo.
    const server = await startServer({ stateDir: join(tmp.dir, "server-state"), args: ["--inventory", inventory("server")], env: cluster.env });
    try {
      const list = await runCli(["nodes", "--json", "--server", server.address]);
      assert.equal(list.code, 0, list.stderr);
      const nodes = JSON.parse(list.stdout) as { name: string; launcher: string; slots: number; freeSlots: number; slurmState: string; slurmPartition: string; address: string }[];
      assert.deepEqual(
        nodes.map((n) => [n.name, n.launcher, n.slots, n.slurmState, n.slurmPartition, n.address]),
        [
          ["slurm-1", "slurm", 1, "", "", ""],
          ["slurm-2", "slurm", 1, "", "", ""],
          ...cluster.nodes.map((n) => [n.name, "slurm", 2, "idle", cluster.partition, n.address]),
        ],
      );
      const text = await runCli(["nodes", "--server", server.address]);
      assert.match(text.stdout, new RegExp(`^${cluster.nodes[0]!.name}\\s+${cluster.nodes[0]!.name}\\s+slurm\\s+2\\s+2\\s+0/0\\s+slurm:idle`, "m"), text.stdout);
    } finally {
      await server.stop();
    }
    // Without a server: `nodes --inventory` lists the same partition (nothing kept: no state dir is made).
    const cwd = join(tmp.dir, "nodes-cwd");
    mkdirSync(cwd);
    const local = await runCli(["nodes", "--json", "--inventory", inventory("server")], { env: cluster.env, cwd });
    assert.equal(local.code, 0, local.stderr);
    const partition = (JSON.parse(local.stdout) as { name: string; slurmState: string }[]).filter((n) => n.slurmState !== "");
    assert.deepEqual(partition.map((n) => [n.name, n.slurmState]), cluster.nodes.map((n) => [n.name, "idle"]));
    assert.deepEqual(readdirSync(cwd), []);
    // A node Slurm has taken out of service is reported, not waited for.
    cluster.cmd("scontrol", ["update", `nodename=${cluster.nodes[1]!.name}`, "state=drain", "reason=maintenance"]);
    try {
      const d = await runCli(["nodes", "check", "--inventory", inventory("check"), "--json"], { env });
      assert.equal(d.code, 1);
      const drained = (JSON.parse(d.stdout) as { node: string; ok: boolean; problems: string[] }[]).find((c) => c.node === cluster.nodes[1]!.name);
      assert.match(drained?.problems.join(" ") ?? "", /is drained \(maintenance\)/);
    } finally {
      cluster.cmd("scontrol", ["update", `nodename=${cluster.nodes[1]!.name}`, "state=resume"]);
    }
  });

  void it("scancel of the allocation mid-run: detected, restarted from the last committed checkpoint, same parameters, exact audit", { skip: SKIP, timeout: 150_000 }, async () => {
    const started = Date.now();
    const state = join(tmp.dir, "scancel");
    const run = await startRun(spec, state, runArgs("scancel"), env);
    await waitForStatus(run.jobId, state, "a committed checkpoint at step 10 and step 15", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 15 && x.job.stages[0]!.checkpoints.some((c) => c.status === "committed" && c.step >= 10));
    const [alloc] = clipfleetJobs().filter((j) => j.state === "RUNNING");
    assert.ok(alloc, `a running clipfleet allocation in squeue: ${JSON.stringify(cluster.queue())}`);
    cluster.cmd("scancel", [alloc.id]);
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run without the failure");
    const v = await status(run.jobId, state);
    const [first, second] = v.job.stages[0]!.attempts;
    assert.match(first!.reason, new RegExp(`Slurm job ${alloc.id} (CANCELLED|COMPLETING)`), "Slurm's account of the loss");
    const resumed = second!.resumedFromStep;
    assert.ok(resumed >= 10 && resumed % 10 === 0, `resumed from the last committed checkpoint, got ${resumed}`);
    assertExactlyOnce(await audit(run.jobId, state), 2);
    await waitFor("every allocation gone from squeue", () => clipfleetJobs().length === 0, 30_000);
    process.stderr.write(`scancel and recovery: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  });

  void it("a node Slurm marks down mid-run: the attempt ends blaming that node (whichever rank's step ended first), restarts when Slurm has the node back, same parameters", { skip: SKIP, timeout: 150_000 }, async () => {
    const started = Date.now();
    const state = join(tmp.dir, "node-down");
    const victim = cluster.nodes[1]!.name;
    const run = await startRun(spec, state, runArgs("node-down"), env);
    try {
      await waitForStatus(run.jobId, state, "a committed checkpoint and step 15", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 15 && x.job.stages[0]!.checkpoints.some((c) => c.status === "committed"));
      // What slurmctld does when a node stops answering, done at once: the node is DOWN and its jobs end (NODE_FAIL).
      cluster.cmd("scontrol", ["update", `nodename=${victim}`, "state=down", "reason=clipfleet-test"]);
      const failed = await waitForStatus(run.jobId, state, "the first attempt ended", (x) => (x.job.stages[0]?.attempts.length ?? 0) >= 2 || (x.job.stages[0]?.attempts[0]?.outcome ?? "running") !== "running");
      const first = failed.job.stages[0]!.attempts[0]!;
      assert.match(first.reason, new RegExp(`node ${victim} failed`), "the node Slurm marked down is blamed");
    } finally {
      // Slurm may have taken it back already (ReturnToService=2: a DOWN node returns when its slurmd registers).
      if (/down|drain|fail/i.test(cluster.cmd("sinfo", ["-h", "-n", victim, "-o", "%T"]))) cluster.cmd("scontrol", ["update", `nodename=${victim}`, "state=resume"]);
    }
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 1);
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run without the failure");
    assertExactlyOnce(await audit(run.jobId, state), 2);
    await waitFor("every allocation gone from squeue", () => clipfleetJobs().length === 0, 30_000);
    process.stderr.write(`node down and recovery: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  });

  void it("kill -9 of clipfleet run: resume cancels the allocation it left, continues from the last committed checkpoint, same parameters", { skip: SKIP, timeout: 150_000 }, async () => {
    const started = Date.now();
    const state = join(tmp.dir, "orphan");
    const run = await startRun(spec, state, runArgs("orphan"), env);
    await waitForStatus(run.jobId, state, "a committed checkpoint and step 15", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 15 && x.job.stages[0]!.checkpoints.some((c) => c.status === "committed"));
    run.child.kill("SIGKILL");
    await run.done;
    const [left] = clipfleetJobs();
    assert.ok(left, "the dead orchestrator's allocation is still in squeue");
    const r = await runCli(["resume", run.jobId, "--state-dir", state, ...runArgs("orphan")], { env });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run that was never interrupted");
    const logs = readFileSync(join(state, "jobs", run.jobId, "logs.jsonl"), "utf8");
    const slurmLines = logs.split("\n").filter((l) => /Slurm|squeue|allocation/.test(l));
    assert.match(logs, new RegExp(`cancelled Slurm job ${left.id}, left by an earlier attempt of this stage`), `left: ${JSON.stringify(left)}\n${slurmLines.join("\n")}`);
    assertExactlyOnce(await audit(run.jobId, state), 2);
    await waitFor("every allocation gone from squeue", () => clipfleetJobs().length === 0, 30_000);
    process.stderr.write(`kill -9 and resume: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  });

  void it("a preemption warning to the allocation (scancel --signal=USR1): one checkpoint step, exit, resume on a new allocation; a preemption, not a failure", { skip: SKIP, timeout: 150_000 }, async () => {
    const started = Date.now();
    const state = join(tmp.dir, "preempt");
    const run = await startRun(spec, state, runArgs("preempt"), env);
    await waitForStatus(run.jobId, state, "step 15 with a committed checkpoint", (x) => (x.job.stages[0]?.progress?.step ?? 0) >= 15 && x.job.stages[0]!.checkpoints.some((c) => c.status === "committed"));
    const [alloc] = clipfleetJobs().filter((j) => j.state === "RUNNING");
    assert.ok(alloc, `a running clipfleet allocation in squeue: ${JSON.stringify(cluster.queue())}`);
    // What an admin (or Slurm's own --signal before the time limit) does: USR1 to every step of the allocation.
    cluster.cmd("scancel", ["--signal=USR1", alloc.id]);
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Summary & { preemptions: number };
    assert.equal(s.state, "SUCCEEDED");
    assert.equal(s.restarts, 0, "a preemption spends no restart");
    assert.equal(s.preemptions, 1, "every rank asked; one preemption");
    assert.equal(s.finalParamsSha256, reference.finalParamsSha256, "bit-identical to the run that was never preempted");
    const v = await status(run.jobId, state);
    const [first, second] = v.job.stages[0]!.attempts;
    assert.equal(first!.outcome, "preempted");
    assert.match(first!.reason, /^preempted: SIGUSR1 on rank [01] /);
    assert.equal(second!.resumedFromStep, first!.lastStep, "resumed from the preemption's own checkpoint");
    // Committed at the preemption's step (retention may have deleted it since, once newer ones were committed).
    const own = v.job.stages[0]!.checkpoints.find((c) => c.step === first!.lastStep);
    assert.ok(own && (own.status === "committed" || own.status === "deleted"), `the preemption's checkpoint: ${JSON.stringify(v.job.stages[0]!.checkpoints.map((c) => [c.step, c.status]))}`);
    assertExactlyOnce(await audit(run.jobId, state), 2);
    await waitFor("every allocation gone from squeue", () => clipfleetJobs().length === 0, 30_000);
    process.stderr.write(`preemption and resume: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  });

  void it("an allocation Slurm cannot grant now is PENDING with Slurm's reason; cancel leaves nothing in squeue", { skip: SKIP, timeout: 90_000 }, async () => {
    const started = Date.now();
    // Another user's job holds one of the two nodes: the gang's 2 nodes are not free.
    let running: ChildProcess | undefined;
    const holder = cluster.cmd("sbatch", ["--parsable", "-N1", "--exclusive", "-p", cluster.partition, "--job-name=holder", "--output=/dev/null", "--wrap=exec sleep 600"]).trim();
    try {
      await waitFor("the holder running", () => cluster.queue().some((j) => j.id === holder && j.state === "RUNNING"), 30_000);
      const state = join(tmp.dir, "pending");
      const run = await startRun(spec, state, runArgs("pending"), env);
      running = run.child;
      const v = await waitForStatus(run.jobId, state, "PENDING with Slurm's reason", (x) => /Slurm job \d+ PENDING \((Resources|Priority)\)/.test(x.job.pendingReason ?? ""), 60_000);
      assert.equal(v.state, "PENDING");
      assert.match(v.job.pendingReason ?? "", /PENDING \((Resources|Priority|Nodes_required_for_job_are_DOWN\S*|ReqNodeNotAvail\S*)\)/);
      assert.match(v.job.stages[0]?.reason ?? "", /^Slurm job \d+ PENDING/, "the stage's reason is Slurm's too");
      const text = await runCli(["status", run.jobId, "--state-dir", state]);
      assert.match(text.stdout, /waiting: Slurm job \d+ PENDING \(Resources\)/, text.stdout);
      assert.equal(clipfleetJobs().length, 1, "the pending allocation is in squeue");
      const c = await runCli(["cancel", run.jobId, "--state-dir", state], { env });
      assert.equal(c.code, 0, c.stderr);
      assert.deepEqual(clipfleetJobs(), [], "nothing of the job left in squeue when cancel returns");
      const r = await run.done;
      assert.notEqual(r.code, 0);
      assert.equal((await status(run.jobId, state)).state, "CANCELLED");
    } finally {
      running?.kill("SIGKILL");
      cluster.cmd("scancel", [holder]);
    }
    process.stderr.write(`pending and cancel: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  });
});
