/**
 * The node inventory: which machines the scheduler may place ranks on, how
 * many slots each has, and how to reach them. Read from a nodes.yaml
 * (validated once, messages name the file, field path and bad value), or
 * detected for this machine when no inventory is given.
 *
 * ```yaml
 * defaults: {user: train, identity_file: ~/.ssh/id_ed25519}   # optional, any node field but name
 * nodes:
 *   - {name: n1, host: 10.0.0.1, gpus: 8, labels: {gpu: a100}}
 *   - {name: n2, host: 10.0.0.2, slots: 16}
 * ```
 *
 * A node with launcher `local` (the default for a loopback or absent host)
 * that gives neither slots nor gpus takes this machine's detected counts.
 *
 * A Slurm cluster is one section instead of a node list: Slurm picks the
 * nodes of each attempt, so the inventory only says how many a gang may span
 * and what to ask sbatch for (see parseSlurm).
 *
 * ```yaml
 * launcher: slurm
 * slurm: {partition: gpu, nodes: 4, gpus_per_node: 8, time: "24:00:00", signal: USR1@300,
 *         python: /shared/venv/bin/python, workdir: /shared/clipfleet/worker-runtime}
 * ```
 */
import { readdirSync } from "node:fs";
import { availableParallelism } from "node:os";
import { parseDocument } from "yaml";
import { InvalidArgumentError, type NodeSpec, type SlurmOptions } from "../domain/index.js";

/** Host key policies nodes.yaml accepts (domain NodeSpec.host_key_policy). */
export const HOST_KEY_POLICIES: readonly NodeSpec["host_key_policy"][] = ["strict", "accept-new"];

/** Launchers nodes.yaml accepts (domain NodeSpec.launcher). */
export const LAUNCHER_KINDS: readonly NodeSpec["launcher"][] = ["local", "ssh", "slurm"];

/**
 * A validated, frozen inventory entry: the domain's NodeSpec plus the
 * physical GPU ids its slots map to (slot i runs on devices[i]; 0..gpus-1
 * from nodes.yaml, the visible devices for the detected local node).
 */
export type Node = NodeSpec & { readonly devices: readonly string[] };

const NODE_FIELDS = [
  "name",
  "host",
  "port",
  "user",
  "identity_file",
  "address",
  "slots",
  "gpus",
  "labels",
  "python",
  "workdir",
  "host_key_policy",
  "launcher",
] as const;
/** Launchers of a node listed under `nodes:`. */
const NODE_LAUNCHERS = ["local", "ssh"] as const;
const TOP_FIELDS = ["nodes", "defaults", "launcher", "slurm"] as const;
const SLURM_FIELDS = [
  "partition",
  "account",
  "qos",
  "constraint",
  "gres",
  "gpus_per_node",
  "ranks_per_node",
  "cpus_per_rank",
  "time",
  "signal",
  "sbatch_options",
  "poll_seconds",
  "nodes",
  "python",
  "workdir",
  "labels",
] as const;
/** Slurm's time limit formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED. */
const SLURM_TIME = /^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|UNLIMITED|INFINITE)$/;
/** What sbatch takes in a partition, account, qos, constraint or gres value: no spaces, no shell or option syntax. */
const SLURM_WORD = /^[A-Za-z0-9_.:,@+=/|&()[\]*-]+$/;
/**
 * Warning signals an allocation may ask for: those the worker takes as the
 * preemption signal (CLIPFLEET_PREEMPT_SIGNAL, docs/preemption.md). TERM is
 * the graceful stop and USR2 the stack dump, so neither can be.
 */
const SLURM_SIGNALS = ["USR1", "HUP", "INT", "ALRM", "URG", "PWR", "XCPU"] as const;
/** sbatch options the launcher sets itself: given in sbatch_options they would contradict it. */
const OWN_SBATCH_OPTIONS = ["--nodes", "-N", "--ntasks", "-n", "--ntasks-per-node", "--job-name", "-J", "--output", "-o", "--error", "-e", "--wrap", "--export", "--parsable", "--signal", "--exclude", "-x", "--cpus-per-task", "-c"];
const LOOPBACK = new Set(["localhost", "127.0.0.1", "::1"]);
const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** What localInventory reads; tests pass their own. */
export interface LocalProbe {
  readonly env?: NodeJS.ProcessEnv;
  /** Directory with one entry per NVIDIA GPU. */
  readonly nvidiaDir?: string;
  readonly cpus?: number;
}

/**
 * This machine as a node named "local": one slot per GPU when there are GPUs
 * (CUDA_VISIBLE_DEVICES, else /proc/driver/nvidia/gpus), else one per CPU.
 */
export function localInventory(probe: LocalProbe = {}): Node {
  return localNode("local", probe);
}

function localNode(name: string, probe: LocalProbe): Node {
  const devices = detectGpus(probe);
  return Object.freeze({
    name,
    host: "localhost",
    port: 22,
    user: null,
    identity_file: null,
    // Numeric, so every rank binds and dials the same loopback (localhost may be ::1).
    address: "127.0.0.1",
    slots: devices.length > 0 ? devices.length : (probe.cpus ?? availableParallelism()),
    gpus: devices.length,
    devices: Object.freeze(devices),
    labels: Object.freeze({}),
    python: null,
    workdir: null,
    host_key_policy: "strict",
    launcher: "local",
  });
}

/** Physical GPU ids visible to this process: CUDA's rule is the listed ids up to the first invalid one. */
function detectGpus(probe: LocalProbe): string[] {
  const visible = (probe.env ?? process.env).CUDA_VISIBLE_DEVICES;
  if (visible !== undefined) {
    const out: string[] = [];
    for (const raw of visible.split(",")) {
      const id = raw.trim();
      if (!/^(\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+)$/.test(id)) break;
      out.push(id);
    }
    return out;
  }
  try {
    const count = readdirSync(probe.nvidiaDir ?? "/proc/driver/nvidia/gpus").length;
    return Array.from({ length: count }, (_, i) => String(i));
  } catch {
    return []; // no NVIDIA driver: a CPU machine
  }
}

/** Parses and validates a nodes.yaml; `path` prefixes every message. */
export function parseInventory(yamlText: string, path: string): Node[] {
  const doc = parseDocument(yamlText);
  const yamlError = doc.errors[0];
  if (yamlError !== undefined) {
    const pos = yamlError.linePos?.[0];
    const where = pos ? ` at line ${pos.line}, column ${pos.col}` : "";
    const what = yamlError.message.replace(/ at line \d+, column \d+:[\s\S]*$/, "");
    throw new InvalidArgumentError(`${path}: invalid YAML${where}: ${what}`);
  }
  const root: unknown = doc.toJS();
  const v: Validator = new Validator(path);
  const top = v.mapping(root, "", TOP_FIELDS);
  const topLauncher = top.launcher === undefined ? null : v.oneOf(top.launcher, "launcher", ["slurm"] as const);
  if (topLauncher === "slurm" || top.slurm !== undefined) {
    if (topLauncher === null) v.fail("launcher", "expected `launcher: slurm` beside a `slurm:` section");
    if (top.nodes !== undefined) v.fail("nodes", "not with launcher slurm: Slurm picks the nodes of each attempt (slurm.nodes says how many a gang may span)");
    if (top.defaults !== undefined) v.fail("defaults", "not with launcher slurm: its settings go under `slurm:`");
    return parseSlurm(top.slurm, v);
  }
  const defaults = top.defaults === undefined ? {} : v.mapping(top.defaults, "defaults", NODE_FIELDS);
  if ("name" in defaults) v.fail("defaults.name", "node names cannot have a default");
  if (!Array.isArray(top.nodes) || top.nodes.length === 0) {
    v.fail("nodes", `expected a list of at least one node, got ${show(top.nodes)}`);
  }
  const seen = new Map<string, number>();
  return (top.nodes as unknown[]).map((raw, i) => {
    const at = `nodes[${i}]`;
    const node = v.mapping(raw, at, NODE_FIELDS);
    const merged: Record<string, unknown> = { ...defaults, ...node };
    // A default given under `defaults` is reported at its own path.
    const from = (k: string): string => (k in node ? `${at}.${k}` : `defaults.${k}`);
    const name = v.str(merged.name, `${at}.name`);
    if (!NODE_NAME.test(name)) {
      v.fail(`${at}.name`, `expected letters, digits, ".", "_" or "-" (starting with a letter or digit), got ${show(name)}`);
    }
    const dup = seen.get(name);
    if (dup !== undefined) v.fail(`${at}.name`, `duplicate node name ${show(name)} (also nodes[${dup}])`);
    seen.set(name, i);

    const hostGiven = merged.host === undefined ? null : v.str(merged.host, from("host"));
    const launcher =
      merged.launcher === undefined
        ? hostGiven === null || LOOPBACK.has(hostGiven)
          ? "local"
          : "ssh"
        : merged.launcher === "slurm"
          ? v.fail(from("launcher"), "slurm is set for the whole inventory (`launcher: slurm` with a `slurm:` section), not per node")
          : v.oneOf(merged.launcher, from("launcher"), NODE_LAUNCHERS);
    if (hostGiven === null && launcher === "ssh") v.fail(`${at}.host`, "required for ssh nodes");
    const host = hostGiven ?? "localhost";
    const local = launcher === "local" ? localNode(name, {}) : null;

    const gpus = merged.gpus === undefined ? (local?.gpus ?? 0) : v.int(merged.gpus, from("gpus"), 0);
    const devices = merged.gpus === undefined && local ? [...local.devices] : range(gpus);
    let slots: number;
    if (merged.slots !== undefined) {
      slots = v.int(merged.slots, from("slots"), 1);
      if (gpus > 0 && slots > gpus) {
        v.fail(from("slots"), `expected at most ${gpus} (one slot per GPU on a node with gpus: ${gpus}), got ${slots}`);
      }
    } else if (gpus > 0) slots = gpus;
    else if (local) slots = availableParallelism();
    else v.fail(`${at}.slots`, "required for ssh nodes without gpus (the number of ranks the node runs at once)");

    const opt = (k: string): string | null => (merged[k] === undefined ? null : v.str(merged[k], from(k)));
    return Object.freeze({
      name,
      host,
      port: merged.port === undefined ? 22 : v.int(merged.port, from("port"), 1, 65535),
      user: opt("user"),
      identity_file: opt("identity_file"),
      address: opt("address") ?? (hostGiven === null ? "127.0.0.1" : host),
      slots,
      gpus,
      devices: Object.freeze(devices),
      labels: Object.freeze(merged.labels === undefined ? {} : v.labels(merged.labels, from("labels"))),
      python: opt("python"),
      workdir: opt("workdir"),
      host_key_policy:
        merged.host_key_policy === undefined
          ? "strict"
          : v.oneOf(merged.host_key_policy, from("host_key_policy"), HOST_KEY_POLICIES),
      launcher,
    } satisfies Node);
  });
}

/**
 * The node positions of a Slurm inventory: `slurm.nodes` of them (slurm-1..N),
 * each with ranks_per_node slots, carrying the sbatch options. They have no
 * host yet: each attempt's allocation binds position i to the i-th node
 * Slurm granted (jobs/launch.ts).
 */
function parseSlurm(raw: unknown, v: Validator): Node[] {
  const m = v.mapping(raw, "slurm", SLURM_FIELDS);
  const word = (k: string): string | null => {
    if (m[k] === undefined) return null;
    const s = v.str(m[k], `slurm.${k}`);
    if (!SLURM_WORD.test(s)) v.fail(`slurm.${k}`, `expected a Slurm name without spaces or quotes, got ${show(s)}`);
    return s;
  };
  const gpusPerNode = m.gpus_per_node === undefined ? 0 : v.int(m.gpus_per_node, "slurm.gpus_per_node", 0, 1024);
  const ranksPerNode = m.ranks_per_node === undefined ? Math.max(1, gpusPerNode) : v.int(m.ranks_per_node, "slurm.ranks_per_node", 1, 1024);
  if (gpusPerNode > 0 && ranksPerNode > gpusPerNode) {
    v.fail("slurm.ranks_per_node", `expected at most ${gpusPerNode} (one rank per GPU with gpus_per_node: ${gpusPerNode}), got ${ranksPerNode}`);
  }
  let time: string | null = null;
  if (m.time !== undefined) {
    time = typeof m.time === "number" && Number.isInteger(m.time) && m.time > 0 ? String(m.time) : v.str(m.time, "slurm.time");
    if (!SLURM_TIME.test(time)) v.fail("slurm.time", `expected a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS, UNLIMITED), got ${show(m.time)}`);
  }
  const signal = m.signal === undefined || m.signal === null || m.signal === false ? null : parseSlurmSignal(m.signal, v);
  let sbatch: string[] = [];
  if (m.sbatch_options !== undefined) {
    if (!Array.isArray(m.sbatch_options)) v.fail("slurm.sbatch_options", `expected a list of options, got ${show(m.sbatch_options)}`);
    sbatch = (m.sbatch_options as unknown[]).map((o, i) => {
      const s = v.str(o, `slurm.sbatch_options[${i}]`);
      if (!s.startsWith("-") || /[\s'"`$\\;]/.test(s)) v.fail(`slurm.sbatch_options[${i}]`, `expected one option such as "--reservation=r1" (no spaces or quotes), got ${show(s)}`);
      const name = s.split("=")[0] as string;
      if (OWN_SBATCH_OPTIONS.includes(name)) v.fail(`slurm.sbatch_options[${i}]`, `${name} is set by clipfleet itself (see the other slurm fields)`);
      return s;
    });
  }
  const gres = word("gres");
  if (gres !== null && gpusPerNode > 0) v.fail("slurm.gres", "give either gres or gpus_per_node, not both");
  const options: SlurmOptions = Object.freeze({
    partition: word("partition"),
    account: word("account"),
    qos: word("qos"),
    constraint: word("constraint"),
    gres,
    gpus_per_node: gpusPerNode,
    ranks_per_node: ranksPerNode,
    cpus_per_rank: m.cpus_per_rank === undefined ? 1 : v.int(m.cpus_per_rank, "slurm.cpus_per_rank", 1, 4096),
    time,
    signal,
    sbatch_options: Object.freeze(sbatch),
    poll_seconds: m.poll_seconds === undefined ? 2 : v.num(m.poll_seconds, "slurm.poll_seconds", 0.1, 600),
  });
  const count = m.nodes === undefined ? v.fail("slurm.nodes", "required: the most nodes one job's gang may span") : v.int(m.nodes, "slurm.nodes", 1, 100_000);
  const python = m.python === undefined ? null : v.str(m.python, "slurm.python");
  const workdir = m.workdir === undefined ? null : v.str(m.workdir, "slurm.workdir");
  const labels = Object.freeze(m.labels === undefined ? {} : v.labels(m.labels, "slurm.labels"));
  const gpus = gpusPerNode;
  return range(count).map((i) =>
    Object.freeze({
      name: `slurm-${Number(i) + 1}`,
      host: "slurm",
      port: 0,
      user: null,
      identity_file: null,
      address: "",
      slots: ranksPerNode,
      gpus,
      devices: Object.freeze(range(gpus)),
      labels,
      python,
      workdir,
      host_key_policy: "strict",
      launcher: "slurm",
      slurm: options,
    } satisfies Node),
  );
}

/** `USR1@120`, `SIGUSR1@120` or `{name: USR1, seconds: 120}`; Slurm's limit is 65535 s. */
function parseSlurmSignal(raw: unknown, v: Validator): { name: string; seconds: number } {
  const bad = (): never => v.fail("slurm.signal", `expected NAME@SECONDS such as "USR1@120" (NAME one of ${SLURM_SIGNALS.join(", ")}), got ${show(raw)}`);
  let name: string;
  let seconds: number;
  if (typeof raw === "string") {
    const m = /^(?:SIG)?([A-Z0-9]+)@(\d{1,5})$/.exec(raw.trim());
    if (!m) return bad();
    name = m[1] as string;
    seconds = Number(m[2]);
  } else if (typeof raw === "object" && raw !== null && !Array.isArray(raw)) {
    const o = v.mapping(raw, "slurm.signal", ["name", "seconds"]);
    name = v.str(o.name, "slurm.signal.name").replace(/^SIG/, "");
    seconds = v.int(o.seconds, "slurm.signal.seconds", 0, 65535);
  } else return bad();
  if (!(SLURM_SIGNALS as readonly string[]).includes(name) || seconds > 65535) return bad();
  return Object.freeze({ name, seconds });
}

function range(n: number): string[] {
  return Array.from({ length: n }, (_, i) => String(i));
}

function show(v: unknown): string {
  if (v === undefined) return "nothing";
  return JSON.stringify(v) ?? typeof v;
}

/** House-style field checks: `<file>: <path>: expected ..., got ...`. */
class Validator {
  constructor(private readonly file: string) {}

  fail(path: string, what: string): never {
    throw new InvalidArgumentError(`${this.file}: ${path === "" ? "" : `${path}: `}${what}`, path || null);
  }

  mapping(v: unknown, path: string, fields: readonly string[]): Record<string, unknown> {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      this.fail(path, `expected a mapping, got ${show(v)}`);
    }
    const obj = v as Record<string, unknown>;
    for (const key of Object.keys(obj)) {
      if (fields.includes(key)) continue;
      const near = didYouMean(key, fields);
      this.fail(path === "" ? key : `${path}.${key}`, `unknown field${near === null ? "" : ` (did you mean "${near}"?)`}`);
    }
    return obj;
  }

  str(v: unknown, path: string): string {
    if (typeof v !== "string" || v === "") this.fail(path, `expected a non-empty string, got ${show(v)}`);
    return v;
  }

  int(v: unknown, path: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      const bound = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
      this.fail(path, `expected an integer ${bound}, got ${show(v)}`);
    }
    return v;
  }

  num(v: unknown, path: string, min: number, max: number): number {
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) this.fail(path, `expected a number in [${min}, ${max}], got ${show(v)}`);
    return v;
  }

  oneOf<T extends string>(v: unknown, path: string, allowed: readonly T[]): T {
    if (typeof v !== "string" || !(allowed as readonly string[]).includes(v)) {
      this.fail(path, `expected one of ${allowed.join(", ")}, got ${show(v)}`);
    }
    return v as T;
  }

  /** Label values may be written as numbers or booleans (`mem: 64`); they are compared as strings. */
  labels(v: unknown, path: string): Record<string, string> {
    if (typeof v !== "object" || v === null || Array.isArray(v)) this.fail(path, `expected a mapping, got ${show(v)}`);
    const out: Record<string, string> = {};
    for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
      if (typeof val === "string" || typeof val === "number" || typeof val === "boolean") out[k] = String(val);
      else this.fail(`${path}.${k}`, `expected a string, got ${show(val)}`);
    }
    return out;
  }
}

/** The closest allowed name within edit distance 2 (or a third of the name), for "unknown field" messages. */
export function didYouMean(word: string, options: readonly string[]): string | null {
  let best: string | null = null;
  let bestDist = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const opt of options) {
    const d = editDistance(word.toLowerCase(), opt.toLowerCase());
    if (d < bestDist) {
      best = opt;
      bestDist = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const sub = (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      cur.push(Math.min(sub, (prev[j] as number) + 1, (cur[j - 1] as number) + 1));
    }
    prev = cur;
  }
  return prev[b.length] as number;
}
