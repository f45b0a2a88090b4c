/**
 * Warm spares (`cluster.spares`, docs/recovery.md): worker processes started
 * beside a stage's ranks that import torch and the runtime, then wait on
 * their stdin. When a later attempt of the same stage launches a rank on
 * that node, the launcher hands the rank's environment and token to a spare
 * over that pipe instead of starting a new process, saving the interpreter
 * start and the imports. The pipe is the spare's credential: only the
 * process the launcher started for this stage can read it, and a spare
 * holds no token until it becomes a rank.
 *
 * `SpareBook` is the bookkeeping, pure (a clock passed in): which spares an
 * owner (a job's stage) has per node, which to hand out, how many to start,
 * and when to give up on a node whose spares keep dying before they are
 * ready. `SparePool` carries it out with a launcher's way of starting one.
 */
import { MAX_SPARES_PER_NODE, type NodeSpec } from "../domain/index.js";
import type { ExitInfo, LaunchedProcess, LaunchRequest } from "./types.js";

/** A spare's lifecycle: importing -> ready -> used (a rank now) | dead. */
export type SpareState = "starting" | "ready" | "used" | "dead";

/** One spare as the book knows it. */
export interface SpareEntry {
  readonly id: number;
  readonly owner: string;
  readonly node: string;
  readonly startedMs: number;
  state: SpareState;
  readyMs: number | null;
}

/** Spares that die before they are ready this many times within `CRASH_WINDOW_MS` stop being started for that owner and node. */
export const MAX_SPARE_CRASHES = 3;
export const CRASH_WINDOW_MS = 10 * 60_000;

/** The spare-side protocol line that says the imports are done (the rest of a spare's output is only logged). */
const READY_RE = /^clipfleet worker: spare ready at ([0-9]{1,12}(?:\.[0-9]{1,6})?)$/;

/** Parses a spare's stdout line: its readiness (seconds since the epoch, as it printed), else null. Hostile input: never throws. */
export function parseSpareLine(line: string): { ready: true; atS: number } | null {
  if (line.length > 200) return null;
  const m = READY_RE.exec(line);
  if (!m) return null;
  const atS = Number(m[1]);
  return Number.isFinite(atS) ? { ready: true, atS } : null;
}

/** Pure bookkeeping of every owner's spares. */
export class SpareBook {
  private readonly entries = new Map<number, SpareEntry>();
  private readonly crashes = new Map<string, number[]>();
  private nextId = 1;

  /** How many spares to start now so that `owner` has `count` live ones on `node` (bounded; 0 once its spares keep crashing). */
  toStart(owner: string, node: string, count: number, now: number): number {
    if (this.disabled(owner, node, now)) return 0;
    const want = Math.max(0, Math.min(MAX_SPARES_PER_NODE, Math.floor(count)));
    return Math.max(0, want - this.live(owner, node).length);
  }

  /** Records a spare being started; returns its id. */
  started(owner: string, node: string, now: number): number {
    const id = this.nextId++;
    this.entries.set(id, { id, owner, node, startedMs: now, state: "starting", readyMs: null });
    return id;
  }

  /** The spare said its imports are done. */
  ready(id: number, now: number): void {
    const e = this.entries.get(id);
    if (e?.state === "starting") {
      e.state = "ready";
      e.readyMs = now;
    }
  }

  /**
   * A spare's process is gone. An unused one is forgotten (never handed out);
   * one that died before it was ready counts towards giving up on its node.
   * Returns whether it was still waiting (so worth replacing).
   */
  died(id: number, now: number): boolean {
    const e = this.entries.get(id);
    if (!e) return false;
    this.entries.delete(id);
    if (e.state === "used" || e.state === "dead") return false;
    if (e.state === "starting") {
      const key = `${e.owner}\n${e.node}`;
      const recent = (this.crashes.get(key) ?? []).filter((t) => now - t < CRASH_WINDOW_MS);
      recent.push(now);
      this.crashes.set(key, recent);
    }
    return true;
  }

  /** Hands out a live spare of `owner` on `node` (a ready one first, else the oldest still importing), or null. */
  take(owner: string, node: string): number | null {
    const live = this.live(owner, node);
    const pick = live.find((e) => e.state === "ready") ?? live[0];
    if (!pick) return null;
    pick.state = "used";
    this.entries.delete(pick.id);
    return pick.id;
  }

  /** Every live spare of `owner` (to kill: its stage is over); they are forgotten. */
  drop(owner: string): number[] {
    const ids = [...this.entries.values()].filter((e) => e.owner === owner && (e.state === "starting" || e.state === "ready")).map((e) => e.id);
    for (const id of ids) this.entries.delete(id);
    for (const key of [...this.crashes.keys()]) if (key.startsWith(`${owner}\n`)) this.crashes.delete(key);
    return ids;
  }

  /** Spares of `owner` on `node` not yet used nor dead, oldest first. */
  live(owner: string, node: string): SpareEntry[] {
    return [...this.entries.values()].filter((e) => e.owner === owner && e.node === node && (e.state === "starting" || e.state === "ready")).sort((a, b) => a.id - b.id);
  }

  /** Owners with live spares. */
  owners(): string[] {
    return [...new Set([...this.entries.values()].map((e) => e.owner))];
  }

  /** True once `owner`'s spares on `node` died before being ready MAX_SPARE_CRASHES times within the window. */
  disabled(owner: string, node: string, now: number): boolean {
    return (this.crashes.get(`${owner}\n${node}`) ?? []).filter((t) => now - t < CRASH_WINDOW_MS).length >= MAX_SPARE_CRASHES;
  }
}

/** What a launcher needs to start one spare. */
export interface SpareRequest {
  /** Whose spare it is: `${jobId}/${stage}`; only a rank of that owner is ever handed to it. */
  readonly owner: string;
  /** The node (an SSH spare connects to it; the pool knows it by name). */
  readonly node: NodeSpec;
  /** Interpreter with torch on that node, and the directory holding clipfleet_worker (as for a rank). */
  readonly python: string;
  readonly workdir: string;
  /** The environment of a rank of the stage on that node, without secrets (threads, job, stage). */
  readonly env: Readonly<Record<string, string>>;
  /** Spare-side lines and the pool's own notes (started, ready, died, replaced), for the job's log. */
  readonly log: (line: string) => void;
}

/** A started spare process, before and after it becomes a rank. */
export interface SpareProcess {
  readonly pid: number;
  readonly exited: Promise<ExitInfo>;
  signal(sig: NodeJS.Signals): Promise<void>;
  /** Routes its output lines (before: to `onLine`; after `become`: to the rank's). */
  onLine: (stream: "stdout" | "stderr", line: string) => void;
  /** Sends the rank's environment (one JSON line) and closes the pipe; false when the process is gone. */
  become(env: Readonly<Record<string, string>>): boolean;
}

/** The pool of one launcher: starts spares through `spawnSpare`, hands them out, kills them. */
export class SparePool {
  private readonly book = new SpareBook();
  private readonly procs = new Map<number, SpareProcess>();
  /** The latest request per owner and node: how to replace a spare that died. */
  private readonly templates = new Map<string, { req: SpareRequest; count: number }>();
  private closed = false;
  /** Spares being started: close() waits for them (each is killed once it runs). */
  private readonly starting = new Set<Promise<void>>();

  constructor(
    private readonly now: () => number,
    private readonly spawnSpare: (req: SpareRequest) => Promise<SpareProcess>,
  ) {}

  /** Starts what is missing for `req.owner` to have `count` live spares on its node. */
  async keep(req: SpareRequest, count: number): Promise<void> {
    if (this.closed) return;
    const key = `${req.owner}\n${req.node.name}`;
    this.templates.set(key, { req, count });
    // Counted afresh before each start: a replacement started meanwhile (a spare died) counts, so
    // the node never gets more than `count`; a spawn that fails counts as a crash, so this ends.
    // It also ends once the owner is dropped (its stage is over) or a later request took over.
    while (!this.closed && this.templates.get(key)?.req === req && this.book.toStart(req.owner, req.node.name, count, this.now()) > 0) await this.startOne(req);
    if (count > 0 && this.book.disabled(req.owner, req.node.name, this.now())) {
      req.log(`spares on ${req.node.name} not started: ${MAX_SPARE_CRASHES} died before they were ready`);
    }
  }

  private async startOne(req: SpareRequest): Promise<void> {
    const p = this.startOneNow(req);
    this.starting.add(p);
    try {
      await p;
    } finally {
      this.starting.delete(p);
    }
  }

  private async startOneNow(req: SpareRequest): Promise<void> {
    const id = this.book.started(req.owner, req.node.name, this.now());
    let p: SpareProcess;
    try {
      p = await this.spawnSpare(req);
    } catch (err) {
      this.book.died(id, this.now());
      req.log(`spare not started on ${req.node.name}: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    this.procs.set(id, p);
    req.log(`spare pid ${p.pid} started on ${req.node.name}`);
    p.onLine = (stream, line) => {
      if (stream === "stdout" && parseSpareLine(line)) {
        this.book.ready(id, this.now());
        req.log(`spare pid ${p.pid} ready`);
      } else {
        req.log(`spare pid ${p.pid} ${stream}: ${line}`);
      }
    };
    void p.exited.then((e) => {
      if (!this.procs.has(id)) return; // handed out, or dropped
      this.procs.delete(id);
      const waiting = this.book.died(id, this.now());
      req.log(`spare pid ${p.pid} died (${e.lost ?? e.signal ?? `code ${e.code}`}); not used`);
      const t = this.templates.get(`${req.owner}\n${req.node.name}`);
      if (waiting && t && !this.closed) void this.keep(t.req, t.count);
    });
    if (this.closed || !this.book.live(req.owner, req.node.name).some((e) => e.id === id)) {
      // The pool is closing, its stage was dropped, or its entry was handed out while the process
      // was being started (an SSH spare takes a connection and a channel): nobody will use it.
      this.procs.delete(id);
      req.log(`spare pid ${p.pid} not needed any more; killed`);
      await p.signal("SIGKILL").catch(() => undefined);
    }
  }

  /** A live spare of `owner` on `node`, now the caller's (its process is no longer the pool's), or null. */
  take(owner: string, node: string): SpareProcess | null {
    for (;;) {
      const id = this.book.take(owner, node);
      if (id === null) return null;
      const p = this.procs.get(id);
      this.procs.delete(id);
      if (p) return p;
    }
  }

  /**
   * `req`'s rank in a live spare of its stage on its node (its output now the
   * rank's, the hand-over line sent), or null: the request names no spare
   * owner, is a user's command, or every spare there died as it was handed
   * over. The caller tracks the process as it does the ones it starts.
   */
  adopt(req: LaunchRequest): LaunchedProcess | null {
    if (!req.spareOwner || req.command) return null;
    for (;;) {
      const spare = this.take(req.spareOwner, req.node.name);
      if (!spare) return null;
      spare.onLine = req.onOutput;
      if (!spare.become({ ...req.env, ...req.secrets })) continue;
      return { pid: spare.pid, exited: spare.exited, signal: (sig) => spare.signal(sig), warm: true };
    }
  }

  /** Kills every spare of `owner` (its stage is over); resolves once they are gone. */
  async drop(owner: string): Promise<void> {
    for (const key of [...this.templates.keys()]) if (key.startsWith(`${owner}\n`)) this.templates.delete(key);
    const ps = this.book.drop(owner).flatMap((id) => {
      const p = this.procs.get(id);
      this.procs.delete(id);
      return p ? [p] : [];
    });
    // A signal that cannot be sent (an SSH node whose connection just went) leaves the exit to come by itself.
    await Promise.all(ps.map(async (p) => (await p.signal("SIGKILL").catch(() => undefined), await p.exited)));
  }

  /** Owners that still have spares (the job service drops those whose stage is over). */
  owners(): string[] {
    return this.book.owners();
  }

  /** Kills every spare (the orchestrator is going away). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.owners().map((o) => this.drop(o)), ...this.starting]);
  }
}
