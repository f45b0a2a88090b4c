/**
 * A server's spec policy (spec/policy.ts): worker.env names that load code
 * are refused whatever the patterns, an admin's exact --allow-env lets one
 * through, worker.python only from the allowed list, and failure settings
 * only milder than the fleet's.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { checkSpecPolicy, DEFAULT_SPEC_POLICY, envAllowed, loadPresets, parseSpec } from "../../src/spec/index.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const presets = loadPresets(join(ROOT, "worker-runtime/clipfleet_worker/models/presets.json"));

function spec(extra: Record<string, unknown>) {
  return parseSpec(
    { task: "pretrain", data: { train: "s/{0..3}.tar" }, train: { steps: 2, batch_size: 8 }, cluster: { workers: 2 }, ...extra },
    { specPath: "/specs/p.yaml", baseDir: "/specs", presets },
  );
}

void describe("spec policy", () => {
  void it("environment: library knobs pass; what loads code is refused, even under an allowed prefix; an exact --allow-env wins", () => {
    for (const ok of ["NCCL_DEBUG", "OMP_NUM_THREADS", "HF_HOME", "WANDB_API_KEY", "TZ", "LC_ALL"]) assert.ok(envAllowed(ok, DEFAULT_SPEC_POLICY), ok);
    for (const bad of ["LD_PRELOAD", "PYTHONWARNINGS", "PYTHONSTARTUP", "PYTHONPATH", "BROWSER", "PATH", "BASH_ENV", "NCCL_NET_PLUGIN", "MY_VAR", "CLIPFLEET_FAULT"]) {
      assert.ok(!envAllowed(bad, DEFAULT_SPEC_POLICY), bad);
    }
    const admin = { ...DEFAULT_SPEC_POLICY, allowEnv: ["PYTHONPATH", "MYLAB_*", "LD_*"] };
    assert.ok(envAllowed("PYTHONPATH", admin), "an exact name the admin allowed");
    assert.ok(envAllowed("MYLAB_DATA", admin));
    assert.ok(!envAllowed("LD_PRELOAD", admin), "a pattern never opens a denied name");
  });

  void it("refusals name the field: the issue's BROWSER injection, an interpreter, quarantine forever or at the first failure", () => {
    const attack = spec({ worker: { env: { PYTHONWARNINGS: "all:0:antigravity.x:0:0", BROWSER: "/bin/sh -c 'id > F' #%s" } } });
    assert.throws(() => checkSpecPolicy(attack, DEFAULT_SPEC_POLICY, "p.yaml"), /^InvalidArgumentError: p\.yaml: worker\.env\.PYTHONWARNINGS: not allowed by this server's policy/);
    assert.throws(() => checkSpecPolicy(spec({ worker: { python: "/tmp/evil" } }), DEFAULT_SPEC_POLICY, "p.yaml"), /worker\.python: "\/tmp\/evil" is not an interpreter this server allows/);
    checkSpecPolicy(spec({ worker: { python: "/usr/bin/python3" } }), { ...DEFAULT_SPEC_POLICY, allowPython: ["/usr/bin/python3"] }, "p.yaml");
    assert.throws(() => checkSpecPolicy(spec({ failure: { quarantine_seconds: 1e308 } }), DEFAULT_SPEC_POLICY, "p.yaml"), /failure\.quarantine_seconds: 1e\+308 is longer than this server allows \(600 s\)/);
    assert.throws(() => checkSpecPolicy(spec({ failure: { quarantine_after: 1 } }), DEFAULT_SPEC_POLICY, "p.yaml"), /failure\.quarantine_after: 1 failures is fewer/);
    checkSpecPolicy(spec({ failure: { quarantine_after: 0, quarantine_seconds: 60 } }), DEFAULT_SPEC_POLICY, "p.yaml");
    checkSpecPolicy(spec({ worker: { env: { NCCL_DEBUG: "INFO" } } }), DEFAULT_SPEC_POLICY, "p.yaml");
  });

  void it("in a pipeline the field is the stage's", () => {
    const pipe = parseSpec(
      { data: { train: "s/{0..3}.tar" }, train: { steps: 2, batch_size: 8 }, cluster: { workers: 2 }, stages: [{ name: "pre", task: "pretrain", worker: { env: { LD_PRELOAD: "x.so" } } }] },
      { specPath: "/specs/p.yaml", baseDir: "/specs", presets },
    );
    assert.throws(() => checkSpecPolicy(pipe, DEFAULT_SPEC_POLICY, "p.yaml"), /p\.yaml: stages\.pre\.worker\.env\.LD_PRELOAD: not allowed/);
  });
});
