/**
 * What the Slurm launcher reads from Slurm's commands, as pure functions:
 * hostlists (`n[1-3,7]`), squeue's line for an allocation, sinfo's node
 * table, srun's account of how a task ended. Slurm's output is input from
 * outside: anything that does not parse is null or an error naming it,
 * never a guess.
 */
import type { SlurmNode } from "../domain/index.js";

/** Most names one hostlist may expand to: a bracket range such as `n[0-99999999]` is refused, not expanded. */
export const MAX_HOSTLIST = 100_000;

/**
 * Expands a Slurm hostlist (`n[1-3,07],gpu01`, as squeue %N and sinfo print
 * it) into node names, in order; null when it is not a hostlist.
 * Ranges keep their zero padding (`[08-10]` -> 08, 09, 10).
 */
export function expandHostlist(list: string): string[] | null {
  const out: string[] = [];
  let i = 0;
  const s = list.trim();
  if (s === "" || s === "(null)") return [];
  while (i < s.length) {
    // One comma-separated item, which may hold bracket groups.
    let item = "";
    let depth = 0;
    while (i < s.length && (s[i] !== "," || depth > 0)) {
      const c = s[i] as string;
      if (c === "[") depth += 1;
      if (c === "]") depth -= 1;
      if (depth < 0 || depth > 1) return null;
      item += c;
      i += 1;
    }
    if (depth !== 0 || item === "") return null;
    const names = expandItem(item);
    if (names === null || out.length + names.length > MAX_HOSTLIST) return null;
    out.push(...names);
    i += 1; // the comma
    if (i === s.length && s.endsWith(",")) return null;
  }
  return out;
}

const NAME_PART = /^[A-Za-z0-9._-]*$/;

function expandItem(item: string): string[] | null {
  const open = item.indexOf("[");
  if (open < 0) return NAME_PART.test(item) && item !== "" ? [item] : null;
  const close = item.indexOf("]", open);
  if (close < 0) return null;
  const prefix = item.slice(0, open);
  if (!NAME_PART.test(prefix)) return null;
  const tail = item.slice(close + 1);
  const suffixes = tail === "" ? [""] : expandItem(tail);
  if (suffixes === null) return null;
  const out: string[] = [];
  for (const part of item.slice(open + 1, close).split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return null;
    const lo = m[1] as string;
    const hi = m[2] ?? lo;
    const a = Number(lo);
    const b = Number(hi);
    if (b < a || b - a + 1 > MAX_HOSTLIST) return null;
    const width = lo.length > 1 && lo.startsWith("0") ? lo.length : 0;
    for (let n = a; n <= b; n++) {
      if (out.length + suffixes.length > MAX_HOSTLIST) return null;
      for (const suf of suffixes) out.push(`${prefix}${String(n).padStart(width, "0")}${suf}`);
    }
  }
  return out;
}

/** squeue's format for one allocation: id, state, reason, nodes. */
export const SQUEUE_FORMAT = "%i|%T|%r|%N";

/** One allocation as squeue shows it. */
export interface SqueueJob {
  readonly jobId: string;
  /** PENDING, CONFIGURING, RUNNING, COMPLETING, CANCELLED, NODE_FAIL, PREEMPTED, TIMEOUT, ... */
  readonly state: string;
  /** Why it pends (Resources, Priority, ReqNodeNotAvail...), "None" when it does not. */
  readonly reason: string;
  /** Its nodes, in Slurm's order (empty while pending). */
  readonly nodes: readonly string[];
}

const JOB_ID = /^\d+$/;
const STATE = /^[A-Z_]+$/;

/** Parses squeue's SQUEUE_FORMAT lines; the line of `jobId`, or null when squeue does not list it. Throws on a malformed line. */
export function parseSqueue(text: string, jobId: string): SqueueJob | null {
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    const parts = line.split("|");
    if (parts.length !== 4) throw new Error(`unexpected squeue line ${JSON.stringify(line.slice(0, 200))}`);
    const [id, state, reason, nodes] = parts as [string, string, string, string];
    if (!JOB_ID.test(id) || !STATE.test(state)) throw new Error(`unexpected squeue line ${JSON.stringify(line.slice(0, 200))}`);
    if (id !== jobId) continue;
    const expanded = expandHostlist(nodes);
    if (expanded === null) throw new Error(`squeue: job ${id}: unexpected node list ${JSON.stringify(nodes.slice(0, 200))}`);
    return { jobId: id, state, reason, nodes: expanded };
  }
  return null;
}

/** sbatch --parsable prints `JOBID` or `JOBID;CLUSTER`; the id, or null. */
export function parseSbatch(text: string): string | null {
  const m = /^(\d+)(?:;[A-Za-z0-9_.-]+)?$/.exec(text.trim());
  return m ? (m[1] as string) : null;
}

/** sinfo's per-node format (`sinfo -N -h -O SINFO_FIELDS`). */
export const SINFO_FIELDS = "NodeList:0|,NodeAddr:0|,StateLong:0|,CPUsState:0|,Gres:0|,GresUsed:0|,Partition:0|,FreeMem:0|,Reason:0";

/** GPUs in a gres string: `gpu:8`, `gpu:a100:4(S:0-1)`, `gpu:a100:4(IDX:0-3),shard:8`; 0 for `(null)`. */
export function gresGpus(gres: string): number | null {
  const s = gres.trim();
  if (s === "" || s === "(null)") return 0;
  let total = 0;
  for (const item of s.split(/,(?![^(]*\))/)) {
    const m = /^([A-Za-z0-9_]+)(?::[A-Za-z0-9_.-]+)?:(\d+)(?:\([^()]*\))?$/.exec(item.trim());
    if (!m) return null;
    if (m[1] === "gpu") total += Number(m[2]);
  }
  return total;
}

/** Parses `sinfo -N -h -O SINFO_FIELDS`; a node listed in several partitions appears once per partition. */
export function parseSinfo(text: string): SlurmNode[] {
  const out: SlurmNode[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    const p = line.split("|");
    const bad = (): Error => new Error(`unexpected sinfo line ${JSON.stringify(line.slice(0, 200))}`);
    if (p.length < 9) throw bad();
    const [name, address, state, cpus, gres, gresUsed, partition, freeMem] = p as [string, string, string, string, string, string, string, string];
    const reason = p.slice(8).join("|");
    const c = /^(\d+)\/(\d+)\/(\d+)\/(\d+)$/.exec(cpus);
    if (!c || !/^[A-Za-z0-9._-]+$/.test(name) || !/^[a-z_+*~#!%$@^-]+$/i.test(state)) throw bad();
    const gpusTotal = gresGpus(gres);
    const gpusUsed = gresGpus(gresUsed.replace(/\(IDX:[^)]*\)/g, ""));
    if (gpusTotal === null || gpusUsed === null) throw bad();
    out.push({
      name,
      address,
      state,
      partition: partition.replace(/\*$/, ""),
      cpusTotal: Number(c[4]),
      cpusIdle: Number(c[2]),
      gpusTotal,
      gpusUsed,
      freeMemMiB: /^\d+$/.test(freeMem) ? Number(freeMem) : null,
      reason,
    });
  }
  return out;
}

/** How srun said its one task ended: the signal that killed it (`task 0: Killed`), when it was one. */
export function srunTaskSignal(stderrTail: readonly string[]): NodeJS.Signals | null {
  const names: Record<string, NodeJS.Signals> = {
    Killed: "SIGKILL",
    Terminated: "SIGTERM",
    Aborted: "SIGABRT",
    "Segmentation fault": "SIGSEGV",
    Interrupt: "SIGINT",
    Hangup: "SIGHUP",
    "User defined signal 1": "SIGUSR1",
    "User defined signal 2": "SIGUSR2",
    "Bus error": "SIGBUS",
  };
  for (const line of [...stderrTail].reverse()) {
    const m = /srun: error: \S+: task \d+: (.+?)(?: \(core dumped\))?$/.exec(line);
    if (m) return names[m[1] as string] ?? null;
  }
  return null;
}

/**
 * A node Slurm holds to have failed (sinfo's state): down, failing or not
 * responding (a `*` suffix). A drain is an admin's decision that lets
 * running jobs finish, not a failure.
 */
export function nodeFailed(state: string): boolean {
  return /^(down|fail|failing|no_respond|unk)/i.test(state) || state.endsWith("*");
}

/**
 * The node to blame when an allocation ended under a rank: its own node if
 * Slurm holds it failed, else the first of the allocation's nodes that is,
 * else null (nothing failed: the allocation was cancelled or timed out).
 */
export function blameNode(rankNode: string, nodes: readonly Pick<SlurmNode, "name" | "state">[]): string | null {
  const failed = nodes.filter((n) => nodeFailed(n.state)).map((n) => n.name);
  return failed.includes(rankNode) ? rankNode : (failed[0] ?? null);
}

/** States in which an allocation still runs its steps (COMPLETING: it is ending). */
export function allocationLive(state: string): boolean {
  return state === "RUNNING" || state === "CONFIGURING" || state === "SUSPENDED";
}

/** A job's state and reason from `scontrol show job -o JOBID` (one line of KEY=VALUE); null when the line has neither. */
export function parseScontrolJob(text: string): { state: string; reason: string } | null {
  const state = /(?:^|\s)JobState=([A-Z_]+)(?=\s|$)/.exec(text);
  const reason = /(?:^|\s)Reason=(\S+)(?=\s|$)/.exec(text);
  if (!state) return null;
  return { state: state[1] as string, reason: reason?.[1] ?? "None" };
}
