import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError } from "../../src/domain/index.js";
import { localInventory, parseInventory } from "../../src/scheduler/index.js";
import { tempDir } from "./data-helpers.js";

void test("parses nodes with defaults applied", () => {
  const nodes = parseInventory(
    `
defaults: {user: train, identity_file: /keys/id, python: /opt/py/bin/python}
nodes:
  - name: n1
    host: 10.0.0.1
    gpus: 4
    labels: {gpu: a100, mem: 512, ib: true}
  - name: n2
    host: 10.0.0.2
    port: 2222
    slots: 16
    user: other
    address: 192.168.0.2
    host_key_policy: accept-new
  - {name: here, host: localhost, slots: 2, gpus: 0}
  - {name: me, launcher: local, gpus: 0}
`,
    "nodes.yaml",
  );
  assert.equal(nodes.length, 4);
  const [n1, n2, here, me] = nodes;
  assert.deepEqual(n1, {
    name: "n1",
    host: "10.0.0.1",
    port: 22,
    user: "train",
    identity_file: "/keys/id",
    address: "10.0.0.1",
    slots: 4,
    gpus: 4,
    devices: ["0", "1", "2", "3"],
    labels: { gpu: "a100", mem: "512", ib: "true" },
    python: "/opt/py/bin/python",
    workdir: null,
    host_key_policy: "strict",
    launcher: "ssh",
  });
  assert.deepEqual(
    [n2?.port, n2?.user, n2?.address, n2?.slots, n2?.gpus, n2?.host_key_policy, n2?.launcher],
    [2222, "other", "192.168.0.2", 16, 0, "accept-new", "ssh"],
  );
  assert.deepEqual([here?.launcher, here?.address, here?.slots, here?.gpus], ["local", "localhost", 2, 0]);
  // A local node without slots takes this machine's CPU count; without a host, the loopback.
  assert.deepEqual([me?.host, me?.address, me?.slots], ["localhost", "127.0.0.1", availableParallelism()]);
  assert.ok(Object.isFrozen(n1));
});

void test("house-style errors name the file, the field path and the bad value", () => {
  const cases: [string, string][] = [
    ["nodes:\n  - {name: a, host: h, slots: 1}\n  - {name: b, host: h, slots: -2}\n", "nodes.yaml: nodes[1].slots: expected an integer >= 1, got -2"],
    ["nodes:\n  - {name: a, host: h, slot: 4}\n", 'nodes.yaml: nodes[0].slot: unknown field (did you mean "slots"?)'],
    ["nodes:\n  - {name: a, host: h, slots: 1, zzz: 1}\n", "nodes.yaml: nodes[0].zzz: unknown field"],
    ["node: []\n", 'nodes.yaml: node: unknown field (did you mean "nodes"?)'],
    ["nodes: []\n", "nodes.yaml: nodes: expected a list of at least one node, got []"],
    ["nodes:\n  - {name: a, host: h, slots: 1}\n  - {name: a, host: g, slots: 1}\n", 'nodes.yaml: nodes[1].name: duplicate node name "a" (also nodes[0])'],
    ["nodes:\n  - {name: a, launcher: ssh, slots: 1}\n", "nodes.yaml: nodes[0].host: required for ssh nodes"],
    ["nodes:\n  - {name: a, host: 10.1.1.1}\n", "nodes.yaml: nodes[0].slots: required for ssh nodes without gpus (the number of ranks the node runs at once)"],
    ["nodes:\n  - {name: a, host: h, gpus: 2, slots: 4}\n", "nodes.yaml: nodes[0].slots: expected at most 2 (one slot per GPU on a node with gpus: 2), got 4"],
    ["nodes:\n  - {name: a, host: h, slots: 1, launcher: k8s}\n", 'nodes.yaml: nodes[0].launcher: expected one of local, ssh, got "k8s"'],
    ["nodes:\n  - {name: a, host: h, slots: 1, host_key_policy: off}\n", 'nodes.yaml: nodes[0].host_key_policy: expected one of strict, accept-new, got "off"'],
    ["nodes:\n  - {name: a, host: h, slots: 1, port: 70000}\n", "nodes.yaml: nodes[0].port: expected an integer in [1, 65535], got 70000"],
    ["nodes:\n  - {name: a, host: h, slots: 1, labels: {gpu: [1]}}\n", "nodes.yaml: nodes[0].labels.gpu: expected a string, got [1]"],
    ["nodes:\n  - {name: 'a b', host: h, slots: 1}\n", 'nodes.yaml: nodes[0].name: expected letters, digits, ".", "_" or "-" (starting with a letter or digit), got "a b"'],
    ["defaults: {slots: 0}\nnodes:\n  - {name: a, host: h}\n", "nodes.yaml: defaults.slots: expected an integer >= 1, got 0"],
    ["nodes:\n  - {name: a, host: h\n", "nodes.yaml: invalid YAML at line 3, column 1: Flow map in block collection must be sufficiently indented and end with a }"],
    ["a: 1\na: 2\n", "nodes.yaml: invalid YAML at line 2, column 1: Map keys must be unique"],
    ["", "nodes.yaml: expected a mapping, got null"],
  ];
  for (const [text, message] of cases) {
    assert.throws(
      () => parseInventory(text, "nodes.yaml"),
      (err: unknown) => {
        assert.ok(err instanceof InvalidArgumentError, String(err));
        assert.equal(err.message, message);
        return true;
      },
    );
  }
});

void test("localInventory: one slot per GPU when there are GPUs, else one per CPU", () => {
  const cpu = localInventory({ env: {}, nvidiaDir: "/nonexistent", cpus: 6 });
  assert.deepEqual(
    [cpu.name, cpu.host, cpu.address, cpu.launcher, cpu.slots, cpu.gpus, cpu.devices],
    ["local", "localhost", "127.0.0.1", "local", 6, 0, []],
  );
  // CUDA_VISIBLE_DEVICES wins, and slot i maps to the i-th visible physical device.
  const visible = localInventory({ env: { CUDA_VISIBLE_DEVICES: "4,5,7" }, cpus: 6 });
  assert.deepEqual([visible.slots, visible.gpus, visible.devices], [3, 3, ["4", "5", "7"]]);
  // CUDA stops at the first invalid id; an empty value hides every GPU.
  assert.equal(localInventory({ env: { CUDA_VISIBLE_DEVICES: "0,-1,2" }, cpus: 6 }).gpus, 1);
  assert.equal(localInventory({ env: { CUDA_VISIBLE_DEVICES: "" }, cpus: 6 }).slots, 6);

  const { dir, cleanup } = tempDir("clipfleet-gpus-");
  try {
    for (const bus of ["0000:01:00.0", "0000:02:00.0"]) mkdirSync(join(dir, bus));
    const detected = localInventory({ env: {}, nvidiaDir: dir, cpus: 6 });
    assert.deepEqual([detected.slots, detected.gpus, detected.devices], [2, 2, ["0", "1"]]);
  } finally {
    cleanup();
  }
  assert.ok(localInventory({ env: {}, nvidiaDir: "/nonexistent" }).slots >= 1);
});
