/**
 * The Slurm launcher's pure parts: hostlists, squeue, sinfo, scontrol and
 * srun output (examples as Slurm 22.05 prints them, then fast-check: any
 * input gives a value or a plain Error, never a hang or a wrong shape), the
 * sbatch and srun arguments (no secret, no rank environment on them), the
 * inventory's `slurm:` section and its messages, and the binding of node
 * positions to the nodes of an allocation.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { InvalidArgumentError } from "../../src/domain/index.js";
import {
  allocationLive,
  blameNode,
  expandHostlist,
  gresGpus,
  parseSbatch,
  parseScontrolJob,
  parseSinfo,
  parseSqueue,
  sbatchArgs,
  srunArgs,
  srunTaskSignal,
  workerStdin,
  type Allocation,
} from "../../src/launcher/index.js";
import { boundPlacement } from "../../src/jobs/launch.js";
import { parseInventory, Scheduler } from "../../src/scheduler/index.js";

const SLURM_INVENTORY = `
launcher: slurm
slurm:
  partition: gpu
  account: vision
  qos: high
  constraint: a100
  gpus_per_node: 4
  time: "1-00:00:00"
  signal: USR1@300
  sbatch_options: ["--reservation=r1", "--mem=0"]
  nodes: 3
  python: /shared/venv/bin/python
  workdir: /shared/clipfleet/worker-runtime
  labels: {gpu: a100}
`;

void describe("hostlists", () => {
  void it("expands Slurm's compressed lists, keeping zero padding and order", () => {
    assert.deepEqual(expandHostlist("n[1-3,7]"), ["n1", "n2", "n3", "n7"]);
    assert.deepEqual(expandHostlist("gpu[08-10],login1"), ["gpu08", "gpu09", "gpu10", "login1"]);
    assert.deepEqual(expandHostlist("rack[1-2]-n[1-2]"), ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]);
    assert.deepEqual(expandHostlist("single"), ["single"]);
    assert.deepEqual(expandHostlist(""), []);
    assert.deepEqual(expandHostlist("(null)"), []);
  });

  void it("refuses what is not a hostlist, and ranges past the limit before expanding them", () => {
    for (const bad of ["n[1-", "n[3-1]", "n[a-b]", "n]1[", "a,,b", "a,", "n[[1]]", "bad name", "n[0-99999999]"]) {
      assert.equal(expandHostlist(bad), null, bad);
    }
  });

  void it("fuzz: any string gives null or names without separators, quickly", () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(..."n[]-,0123a."), { maxLength: 30 }).map((a) => a.join("")), (s) => {
        const r = expandHostlist(s);
        if (r !== null) for (const name of r) assert.ok(/^[A-Za-z0-9._-]+$/.test(name), `${JSON.stringify(s)} -> ${JSON.stringify(name)}`);
      }),
      { numRuns: 3000 },
    );
  });

  void it("fuzz: a list of names and ranges expands to the names it describes", () => {
    const item = fc.oneof(
      fc.stringMatching(/^[a-z][a-z0-9]{0,5}$/).map((n) => ({ text: n, names: [n] })),
      fc.tuple(fc.stringMatching(/^[a-z]{1,4}$/), fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: 5 })).map(([p, lo, len]) => ({
        text: `${p}[${lo}-${lo + len}]`,
        names: Array.from({ length: len + 1 }, (_, i) => `${p}${lo + i}`),
      })),
    );
    fc.assert(
      fc.property(fc.array(item, { minLength: 1, maxLength: 5 }), (items) => {
        assert.deepEqual(expandHostlist(items.map((i) => i.text).join(",")), items.flatMap((i) => i.names));
      }),
    );
  });
});

void describe("squeue, sbatch, scontrol, sinfo, srun", () => {
  void it("reads an allocation's state, reason and nodes", () => {
    const text = "41|PENDING|Resources|\n42|RUNNING|None|cfn[1-2]\n";
    assert.deepEqual(parseSqueue(text, "41"), { jobId: "41", state: "PENDING", reason: "Resources", nodes: [] });
    assert.deepEqual(parseSqueue(text, "42"), { jobId: "42", state: "RUNNING", reason: "None", nodes: ["cfn1", "cfn2"] });
    assert.equal(parseSqueue(text, "43"), null);
    assert.equal(parseSqueue("", "1"), null);
    assert.throws(() => parseSqueue("garbage\n", "1"), /unexpected squeue line/);
    assert.throws(() => parseSqueue("1|RUNNING|None|n[1-\n", "1"), /unexpected node list/);
  });

  void it("fuzz: squeue output gives a job, null or an Error, never anything else", () => {
    const field = fc.array(fc.constantFrom(..."0123|ABn[]-,_ \n"), { maxLength: 40 }).map((a) => a.join(""));
    fc.assert(
      fc.property(field, fc.constantFrom("1", "12", "0"), (text, id) => {
        try {
          const r = parseSqueue(text, id);
          if (r !== null) {
            assert.equal(r.jobId, id);
            assert.match(r.state, /^[A-Z_]+$/);
          }
        } catch (err) {
          assert.ok(err instanceof Error);
        }
      }),
      { numRuns: 3000 },
    );
  });

  void it("reads sbatch --parsable, scontrol show job -o and allocation states", () => {
    assert.equal(parseSbatch("17\n"), "17");
    assert.equal(parseSbatch("17;cluster1"), "17");
    assert.equal(parseSbatch("sbatch: error: invalid partition"), null);
    assert.equal(parseSbatch(""), null);
    assert.deepEqual(parseScontrolJob("JobId=5 JobName=wrap UserId=root(0) JobState=CANCELLED Reason=None Dependency=(null)"), { state: "CANCELLED", reason: "None" });
    assert.deepEqual(parseScontrolJob("JobId=6 JobState=NODE_FAIL Reason=NodeDown"), { state: "NODE_FAIL", reason: "NodeDown" });
    assert.equal(parseScontrolJob("slurm_load_jobs error: Invalid job id specified"), null);
    assert.ok(allocationLive("RUNNING"));
    for (const s of ["COMPLETING", "CANCELLED", "NODE_FAIL", "PREEMPTED", "TIMEOUT", "PENDING"]) assert.ok(!allocationLive(s), s);
  });

  void it("fuzz: sbatch and scontrol parsers take anything", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (s) => {
        const id = parseSbatch(s);
        if (id !== null) assert.match(id, /^\d+$/);
        const j = parseScontrolJob(s);
        if (j !== null) assert.match(j.state, /^[A-Z_]+$/);
      }),
      { numRuns: 2000 },
    );
  });

  void it("reads sinfo's node table: state, CPUs idle of total, GPUs used of total, partition", () => {
    const text = [
      "n1|10.0.0.1|idle|0/2/0/2|(null)|(null)|test*|19801|none",
      "g1|10.0.0.9|mixed|16/48/0/64|gpu:a100:8(S:0-1)|gpu:a100:3(IDX:0-2)|gpu|500000|none",
      "g2|g2|drained|0/0/64/64|gpu:8|gpu:0|gpu|N/A|Kill task failed|x",
    ].join("\n");
    const nodes = parseSinfo(text);
    assert.deepEqual(nodes[0], { name: "n1", address: "10.0.0.1", state: "idle", partition: "test", cpusTotal: 2, cpusIdle: 2, gpusTotal: 0, gpusUsed: 0, freeMemMiB: 19801, reason: "none" });
    assert.equal(nodes[1]?.gpusTotal, 8);
    assert.equal(nodes[1]?.gpusUsed, 3);
    assert.equal(nodes[1]?.cpusIdle, 48);
    assert.equal(nodes[2]?.freeMemMiB, null);
    assert.equal(nodes[2]?.reason, "Kill task failed|x");
    assert.throws(() => parseSinfo("n1|only|three"), /unexpected sinfo line/);
    assert.equal(gresGpus("gpu:a100:4,shard:8"), 4);
    assert.equal(gresGpus("gpu:2(S:0),gpu:v100:1"), 3);
    assert.equal(gresGpus("nonsense"), null);
  });

  void it("fuzz: sinfo output gives nodes with sane counts, or an Error", () => {
    const text = fc.array(fc.constantFrom(..."n1|/0289:gpu()S-,*idle \n"), { maxLength: 80 }).map((a) => a.join(""));
    fc.assert(
      fc.property(text, (s) => {
        try {
          for (const n of parseSinfo(s)) {
            assert.ok(Number.isInteger(n.cpusTotal) && n.cpusTotal >= 0 && n.cpusIdle >= 0);
            assert.ok(n.gpusTotal >= 0 && n.gpusUsed >= 0);
          }
        } catch (err) {
          assert.ok(err instanceof Error);
        }
      }),
      { numRuns: 3000 },
    );
  });

  void it("reads how srun says its task ended", () => {
    assert.equal(srunTaskSignal(["srun: error: n2: task 0: Killed"]), "SIGKILL");
    assert.equal(srunTaskSignal(["x", "srun: error: n1: task 0: Terminated"]), "SIGTERM");
    assert.equal(srunTaskSignal(["srun: error: n1: task 0: Exited with exit code 3"]), null);
    assert.equal(srunTaskSignal([]), null);
  });

  void it("blames the node Slurm holds failed, not the healthy node of the rank whose step ended first", () => {
    const nodes = [
      { name: "n1", state: "allocated" },
      { name: "n2", state: "down*" },
    ];
    assert.equal(blameNode("n1", nodes), "n2");
    assert.equal(blameNode("n2", nodes), "n2");
    assert.equal(blameNode("n1", [{ name: "n1", state: "fail" }, { name: "n2", state: "down" }]), "n1");
    assert.equal(blameNode("n1", [{ name: "n1", state: "idle*" }]), "n1", "not responding");
    // Cancelled or timed out with every node healthy (a drain lets jobs finish): nobody to blame.
    assert.equal(blameNode("n1", [{ name: "n1", state: "allocated" }, { name: "n2", state: "draining" }]), null);
    assert.equal(blameNode("n1", []), null);
  });
});

void describe("inventory launcher: slurm", () => {
  void it("makes one node position per slurm.nodes, ranks_per_node slots each, carrying the sbatch options", () => {
    const nodes = parseInventory(SLURM_INVENTORY, "nodes.yaml");
    assert.deepEqual(
      nodes.map((n) => [n.name, n.launcher, n.slots, n.gpus]),
      [
        ["slurm-1", "slurm", 4, 4],
        ["slurm-2", "slurm", 4, 4],
        ["slurm-3", "slurm", 4, 4],
      ],
    );
    const o = nodes[0]!.slurm!;
    assert.equal(o.partition, "gpu");
    assert.deepEqual(o.signal, { name: "USR1", seconds: 300 });
    assert.equal(o.time, "1-00:00:00");
    assert.equal(nodes[0]!.python, "/shared/venv/bin/python");
    assert.deepEqual(nodes[0]!.labels, { gpu: "a100" });
    assert.ok(Object.isFrozen(nodes[0]) && Object.isFrozen(o));
  });

  void it("refuses bad slurm sections with the field path and the bad value", () => {
    const cases: [string, RegExp][] = [
      ["launcher: slurm\nslurm: {partition: p}\n", /nodes\.yaml: slurm\.nodes: required/],
      ["launcher: slurm\nslurm: {nodes: 0}\n", /slurm\.nodes: expected an integer in \[1, 100000\], got 0/],
      ["launcher: slurm\nslurm: {nodes: 1, partiton: p}\n", /slurm\.partiton: unknown field \(did you mean "partition"\?\)/],
      ["launcher: slurm\nslurm: {nodes: 1, partition: 'a b'}\n", /slurm\.partition: expected a Slurm name without spaces/],
      ["launcher: slurm\nslurm: {nodes: 1, time: soon}\n", /slurm\.time: expected a Slurm time limit/],
      ["launcher: slurm\nslurm: {nodes: 1, signal: KILL@10}\n", /slurm\.signal: expected NAME@SECONDS/],
      ["launcher: slurm\nslurm: {nodes: 1, signal: USR1@99999}\n", /slurm\.signal: expected NAME@SECONDS/],
      ["launcher: slurm\nslurm: {nodes: 1, sbatch_options: [--nodes=3]}\n", /slurm\.sbatch_options\[0\]: --nodes is set by clipfleet itself/],
      ["launcher: slurm\nslurm: {nodes: 1, sbatch_options: ['--comment=$(id)']}\n", /slurm\.sbatch_options\[0\]: expected one option/],
      ["launcher: slurm\nslurm: {nodes: 1, gpus_per_node: 2, ranks_per_node: 4}\n", /slurm\.ranks_per_node: expected at most 2/],
      ["launcher: slurm\nslurm: {nodes: 1, gpus_per_node: 2, gres: 'gpu:2'}\n", /slurm\.gres: give either gres or gpus_per_node/],
      ["slurm: {nodes: 1}\n", /nodes\.yaml: launcher: expected `launcher: slurm`/],
      ["launcher: slurm\nslurm: {nodes: 1}\nnodes: [{name: a}]\n", /nodes\.yaml: nodes: not with launcher slurm/],
      ["launcher: pbs\n", /nodes\.yaml: launcher: expected one of slurm, got "pbs"/],
      ["nodes: [{name: a, launcher: slurm}]\n", /nodes\[0\]\.launcher: slurm is set for the whole inventory/],
    ];
    for (const [text, re] of cases) {
      assert.throws(() => parseInventory(text, "nodes.yaml"), (err: unknown) => err instanceof InvalidArgumentError && re.test(err.message), text);
    }
  });

  void it("fuzz: any slurm section is a frozen inventory or a typed INVALID_ARGUMENT", () => {
    const value = fc.oneof(fc.integer({ min: -2, max: 70000 }), fc.string({ maxLength: 12 }), fc.constant(null), fc.array(fc.string({ maxLength: 8 }), { maxLength: 3 }));
    const keys = fc.constantFrom("partition", "nodes", "ranks_per_node", "gpus_per_node", "time", "signal", "sbatch_options", "cpus_per_rank", "gres", "poll_seconds", "bogus");
    fc.assert(
      fc.property(fc.dictionary(keys, value), (section) => {
        const text = `launcher: slurm\nslurm: ${JSON.stringify(section)}\n`;
        try {
          const nodes = parseInventory(text, "n.yaml");
          assert.ok(nodes.length >= 1 && nodes.every((n) => n.launcher === "slurm" && n.slots >= 1));
        } catch (err) {
          assert.ok(err instanceof InvalidArgumentError, String(err));
        }
      }),
      { numRuns: 1500 },
    );
  });
});

void describe("sbatch and srun arguments", () => {
  const [node] = parseInventory(SLURM_INVENTORY, "nodes.yaml");

  void it("ask for the gang's shape, the partition's settings, the warning signal for every step, and the exclusions", () => {
    const args = sbatchArgs({ name: "clipfleet-j1-main-a3", nodes: 2, options: node!.slurm!, exclude: ["g7", "g9"] });
    for (const a of [
      "--parsable",
      "--job-name=clipfleet-j1-main-a3",
      "--nodes=2",
      "--ntasks-per-node=4",
      "--cpus-per-task=1",
      "--export=NONE",
      "--no-requeue",
      "--partition=gpu",
      "--account=vision",
      "--qos=high",
      "--constraint=a100",
      "--gpus-per-node=4",
      "--time=1-00:00:00",
      "--signal=USR1@300",
      "--exclude=g7,g9",
      "--reservation=r1",
      "--mem=0",
    ]) {
      assert.ok(args.includes(a), `${a} in ${args.join(" ")}`);
    }
    assert.equal(args.at(-1), "--wrap=exec sleep infinity");
  });

  void it("keep the rank's environment and token off srun's command line: they go to its stdin", () => {
    const token = "f".repeat(64);
    const req = { workdir: "/shared/w", env: { RANK: "1", CLIPFLEET_ADDR: "10.0.0.254:7071" }, secrets: { CLIPFLEET_TOKEN: token }, command: null };
    const args = srunArgs("41", { ...node!, name: "g1", address: "10.0.0.1" }, "/shared/venv/bin/python", "/shared/w", "clipfleet-j-main-a1-r1");
    const line = args.join(" ");
    assert.ok(!line.includes(token) && !line.includes("CLIPFLEET_ADDR"));
    assert.ok(args.includes("--jobid=41") && args.includes("--nodelist=g1") && args.includes("--overlap") && args.includes("--chdir=/shared/w"));
    assert.equal(args.at(-1), "10.0.0.1");
    const stdin = workerStdin(req);
    assert.ok(stdin.endsWith(`${token}\n`));
    assert.equal((JSON.parse(stdin.split("\n")[0]!) as Record<string, string>).RANK, "1");
  });
});

void describe("binding node positions to an allocation", () => {
  void it("position i runs on the i-th node Slurm granted; rank 0's node address is MASTER_ADDR; quarantined Slurm nodes are excluded", () => {
    const nodes = parseInventory("launcher: slurm\nslurm: {nodes: 2, ranks_per_node: 2}\n", "n.yaml");
    const sched = new Scheduler(nodes, { now: () => 0 });
    sched.enqueue({ jobId: "j", stage: "main", workers: 4, minWorkers: 4, gpusPerWorker: 0, nodeSelector: {}, priority: 0, enqueuedAtMs: 0 });
    const [p] = sched.schedule(0).placements;
    assert.ok(p);
    const alloc: Allocation = { jobId: "9", nodes: [{ name: "cfn2", address: "10.1.0.2" }, { name: "cfn5", address: "10.1.0.5" }], freePort: () => Promise.resolve(1), release: () => Promise.resolve(), state: () => Promise.resolve({ state: "RUNNING", reason: "None" }) };
    const b = boundPlacement(p, alloc);
    assert.deepEqual(b.ranks.map((r) => [r.rank, r.node.name, r.localRank, r.groupRank]), [
      [0, "cfn2", 0, 0],
      [1, "cfn2", 1, 0],
      [2, "cfn5", 0, 1],
      [3, "cfn5", 1, 1],
    ]);
    assert.equal(b.masterAddress, "10.1.0.2");
    assert.deepEqual(b.nodes, ["cfn2", "cfn5"]);
    // A Slurm node failing as often as the policy allows is quarantined: the next allocation excludes it.
    const policy = { after: 2, seconds: 60, windowSeconds: 60 };
    assert.equal(sched.recordFailure("cfn5", 1000, policy), false);
    assert.deepEqual(sched.excludedClusterNodes(1000), []);
    assert.equal(sched.recordFailure("cfn5", 2000, policy), true);
    assert.deepEqual(sched.excludedClusterNodes(2000), ["cfn5"]);
    assert.deepEqual(sched.excludedClusterNodes(62_001), [], "the quarantine ends");
  });
});
