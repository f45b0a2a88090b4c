/**
 * `clipfleet delete` end to end, through the real CLI against a real
 * `clipfleet server` (and against a state dir with no orchestrator): an ended
 * job's files go (checkpoints, logs, record, metric series), --keep-checkpoints
 * keeps its checkpoints, a live job is refused and --force cancels then
 * deletes, a viewer is refused, an unknown job is not found, and a delete
 * interrupted by kill -9 of the server (after its tombstone, before any file
 * went) leaves a job that `list` hides and a second delete finishes.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { alive, fixtureTlsDir, runCli, startCli, startServer, tempDir, TEST_TLS, waitFor, writeTinySpec, type ServerHandle } from "../helpers/cli.js";
import { attemptPids, type ControlClient, stateName, waitEnd, waitJob } from "./control-helpers.js";

void describe("clipfleet delete", () => {
  const tmp = tempDir("clipfleet-delete-");
  const stateDir = join(tmp.dir, "state");
  // The server holds every delete after its tombstone until this file exists (CLIPFLEET_DELETE_GATE).
  const gate = join(tmp.dir, "delete-gate");
  const serverEnv = { CLIPFLEET_DELETE_GATE: gate };
  let server: ServerHandle;
  let client: ControlClient;
  let on: string[];

  const submit = async (name: string, steps: number): Promise<string> => {
    const r = await runCli(["submit", writeTinySpec(tmp.dir, { name, steps, workers: 1, batch: 16, everySteps: 5 }), ...on]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  const listed = async (): Promise<string[]> => {
    const r = await runCli(["list", "--json", ...on]);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { jobId?: string; id?: string }[]).map((j) => j.jobId ?? j.id ?? "");
  };
  const checkpointDirs = (id: string): string[] => {
    const root = join(stateDir, "checkpoints", id, "main");
    return existsSync(root) ? readdirSync(root).filter((n) => n.startsWith("step-")) : [];
  };
  const metricsText = async (): Promise<string> => {
    const info = await client.serverInfo();
    return (await fetch(`http://${info.metricsAddress}/metrics`)).text();
  };

  before(async () => {
    writeFileSync(gate, "");
    server = await startServer({ stateDir, env: serverEnv });
    client = server.client();
    on = ["--server", server.address];
  });
  after(async () => {
    client.close();
    await server.stop();
    tmp.cleanup();
  });

  void it("an ended job: its checkpoints, logs, record and metric series go; list and status no longer know it", { timeout: 120_000 }, async () => {
    const id = await submit("ended", 10);
    await waitEnd(client, id, "SUCCEEDED");
    assert.ok(checkpointDirs(id).length > 0, "the job committed checkpoints");
    assert.ok(existsSync(join(stateDir, "jobs", id, "logs.jsonl")));
    assert.match(await metricsText(), new RegExp(`job_id="${id}"`));
    // A symlink inside the job's folder to a file outside: deleting removes the link, never the file.
    const outside = join(tmp.dir, "precious.txt");
    writeFileSync(outside, "keep me");
    symlinkSync(outside, join(stateDir, "jobs", id, "link-out"));
    symlinkSync(tmp.dir, join(stateDir, "checkpoints", id, "main", "dir-link-out"));

    const r = await runCli(["delete", id, "--json", ...on]);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { deleted: string; freedBytes: number; checkpointsKept: boolean };
    assert.equal(out.deleted, id);
    assert.equal(out.checkpointsKept, false);
    assert.ok(out.freedBytes > 100_000, `freed ${out.freedBytes} bytes`);
    assert.equal(existsSync(join(stateDir, "checkpoints", id)), false, "checkpoints removed");
    assert.equal(existsSync(join(stateDir, "jobs", id)), false, "record and logs removed");
    assert.equal(readFileSync(outside, "utf8"), "keep me", "a symlink's target outside the job survives");
    assert.ok(existsSync(join(tmp.dir, "ended.yaml")), "a directory symlinked from the checkpoints survives");
    assert.ok(!(await listed()).includes(id));
    const status = await runCli(["status", id, ...on]);
    assert.equal(status.code, 3, status.stderr);
    assert.doesNotMatch(await metricsText(), new RegExp(`job_id="${id}"`), "no series of the deleted job remains");
    // Deleting it again: not found, exit 3.
    const again = await runCli(["delete", id, ...on]);
    assert.equal(again.code, 3, again.stderr);
    assert.match(again.stderr, new RegExp(`^clipfleet: job ${id} not found$`, "m"));
  });

  void it("--keep-checkpoints keeps the checkpoint directories, the rest goes", { timeout: 120_000 }, async () => {
    const id = await submit("kept", 10);
    await waitEnd(client, id, "SUCCEEDED");
    const before = checkpointDirs(id);
    assert.ok(before.length > 0);
    const r = await runCli(["delete", id, "--keep-checkpoints", ...on]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^deleted ${id}: freed .* \\(checkpoints kept\\)$`, "m"));
    assert.deepEqual(checkpointDirs(id), before);
    assert.equal(existsSync(join(stateDir, "jobs", id)), false);
    assert.ok(!(await listed()).includes(id));
  });

  void it("an unknown job: not found, exit 3", async () => {
    const r = await runCli(["delete", "j-20200101-000000-abcdef", ...on]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /^clipfleet: job j-20200101-000000-abcdef not found$/m);
  });

  void it("a live job is refused (exit 2, naming it and --force); a viewer is refused (exit 4); --force cancels, waits, deletes", { timeout: 180_000 }, async () => {
    const id = await submit("live", 100_000);
    const running = await waitJob(client, id, "running", (j) => stateName(j.state) === "RUNNING", 120_000);
    const refused = await runCli(["delete", id, ...on]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, new RegExp(`^clipfleet: job ${id} is RUNNING: cancel it first \\(\`clipfleet cancel ${id}\`\\) or pass --force`, "m"));
    if (TEST_TLS) {
      const issued = await runCli(["certs", "issue", "--dir", fixtureTlsDir(), "--name", "vicky", "--role", "viewer"]);
      assert.equal(issued.code, 0, issued.stderr);
      const viewer = await runCli(["delete", id, "--force", ...on, "--tls-dir", join(fixtureTlsDir(), "clients", "vicky")]);
      assert.equal(viewer.code, 4, viewer.stderr);
      assert.match(viewer.stderr, /needs role operator; vicky is a viewer/);
      assert.equal(stateName((await client.getJob(id)).state), "RUNNING", "the viewer changed nothing");
    }
    const pids = attemptPids(running);
    assert.ok(pids.length > 0);
    const forced = await runCli(["delete", id, "--force", "--json", ...on]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal((JSON.parse(forced.stdout) as { deleted: string }).deleted, id);
    for (const pid of pids) assert.equal(alive(pid), false, `rank ${pid} is gone`);
    assert.equal(existsSync(join(stateDir, "jobs", id)), false);
    assert.equal(existsSync(join(stateDir, "checkpoints", id)), false);
    assert.ok(!(await listed()).includes(id));
  });

  void it("kill -9 of the server mid-delete (after the tombstone): list hides the job, a second delete finishes it", { timeout: 180_000 }, async () => {
    const id = await submit("crashed", 10);
    await waitEnd(client, id, "SUCCEEDED");
    assert.ok(checkpointDirs(id).length > 0);
    rmSync(gate);
    const del = startCli(["delete", id, ...on]);
    const recordFile = join(stateDir, "jobs", id, "job.json");
    await waitFor("the tombstone in the job's record", () => readFileSync(recordFile, "utf8").includes('"deletingSinceMs"'), 60_000, 50);
    await server.kill9();
    await waitFor("the delete command to end with its server gone", () => del.exitCode !== null, 60_000);
    assert.notEqual(del.exitCode, 0);
    assert.ok(checkpointDirs(id).length > 0, "the crash came before any file went");

    writeFileSync(gate, "");
    client.close();
    server = await startServer({ stateDir, port: server.port, env: serverEnv });
    client = server.client();
    assert.ok(!(await listed()).includes(id), "list never shows a half-deleted job");
    const status = await runCli(["status", id, ...on]);
    assert.equal(status.code, 3, status.stderr);
    assert.match(status.stderr, /deletion was interrupted; `clipfleet delete .*` finishes it/);
    const r = await runCli(["delete", id, ...on]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(existsSync(join(stateDir, "checkpoints", id)), false);
    assert.equal(existsSync(join(stateDir, "jobs", id)), false);
  });

  void it("without a server: delete on a state dir works through an orchestrator opened on it", { timeout: 120_000 }, async () => {
    const local = join(tmp.dir, "local-state");
    mkdirSync(local);
    const run = await runCli(["run", writeTinySpec(tmp.dir, { name: "local", steps: 10, workers: 1, batch: 16, everySteps: 5 }), "--state-dir", local, "--json"]);
    assert.equal(run.code, 0, run.stderr);
    const id = readdirSync(join(local, "jobs"))[0] ?? "";
    assert.ok(existsSync(join(local, "checkpoints", id)));
    const r = await runCli(["delete", id, "--state-dir", local], { env: { CLIPFLEET_SERVER: "" } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^deleted ${id}: freed `, "m"));
    assert.equal(existsSync(join(local, "checkpoints", id)), false);
    assert.equal(existsSync(join(local, "jobs", id)), false);
    const list = await runCli(["list", "--json", "--state-dir", local], { env: { CLIPFLEET_SERVER: "" } });
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(JSON.parse(list.stdout), []);
  });
});
