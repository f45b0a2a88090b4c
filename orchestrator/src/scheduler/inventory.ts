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
 */
import { readdirSync } from "node:fs";
import { availableParallelism } from "node:os";
import { parseDocument } from "yaml";
import { InvalidArgumentError, type NodeSpec } from "../domain/index.js";

/** Host key policies nodes.yaml accepts (domain NodeSpec.host_key_policy). */
export const HOST_KEY_POLICIES: readonly NodeSpec["host_key_policy"][] = ["strict", "accept-new"];

/** Launchers nodes.yaml accepts (domain NodeSpec.launcher). */
export const LAUNCHER_KINDS: readonly NodeSpec["launcher"][] = ["local", "ssh"];

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
const TOP_FIELDS = ["nodes", "defaults"] as const;
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
        : v.oneOf(merged.launcher, from("launcher"), LAUNCHER_KINDS);
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
