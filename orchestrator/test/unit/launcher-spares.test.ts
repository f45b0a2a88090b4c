/**
 * Warm spares' bookkeeping (launcher/spares.ts), pure with a fake clock: how
 * many to start, which to hand out (ready first, never a dead or used one),
 * giving up on a node whose spares die before they are ready, dropping an
 * owner's; the spare's readiness line as hostile input; and the pool over
 * in-memory spare processes (a dead spare is replaced and never handed out).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { MAX_SPARES_PER_NODE, type NodeSpec } from "../../src/domain/index.js";
import { CRASH_WINDOW_MS, MAX_SPARE_CRASHES, parseSpareLine, SpareBook, SparePool, type ExitInfo, type LaunchRequest, type SpareProcess, type SpareRequest } from "../../src/launcher/index.js";

const A = "j-1/main";
const B = "j-2/main";
const N1: NodeSpec = {
  name: "n1",
  host: "10.0.0.1",
  port: 22,
  user: null,
  identity_file: null,
  address: "10.0.0.1",
  slots: 1,
  gpus: 0,
  labels: {},
  python: null,
  workdir: null,
  host_key_policy: "strict",
  launcher: "ssh",
};

void describe("SpareBook", () => {
  void it("starts what is missing, bounded per node, and counts starting and ready spares as live", () => {
    const book = new SpareBook();
    assert.equal(book.toStart(A, "n1", 2, 0), 2);
    const s1 = book.started(A, "n1", 0);
    assert.equal(book.toStart(A, "n1", 2, 0), 1);
    book.ready(s1, 10);
    book.started(A, "n1", 10);
    assert.equal(book.toStart(A, "n1", 2, 20), 0);
    assert.equal(book.toStart(A, "n2", 2, 20), 2, "per node");
    assert.equal(book.toStart(B, "n1", 2, 20), 2, "per owner");
    assert.equal(book.toStart(A, "n3", 10_000, 0), MAX_SPARES_PER_NODE);
    assert.equal(book.toStart(A, "n3", 0, 0), 0);
  });

  void it("hands out a ready spare first, each once, and only to its own owner and node", () => {
    const book = new SpareBook();
    const importing = book.started(A, "n1", 0);
    const ready = book.started(A, "n1", 1);
    book.ready(ready, 5);
    assert.equal(book.take(B, "n1"), null, "another job's stage never gets it");
    assert.equal(book.take(A, "n2"), null, "nor another node");
    assert.equal(book.take(A, "n1"), ready);
    assert.equal(book.take(A, "n1"), importing, "one still importing is better than a cold start");
    assert.equal(book.take(A, "n1"), null);
    assert.equal(book.died(ready, 50), false, "a used spare's exit is its rank's, not the pool's");
  });

  void it("forgets a dead spare (never handed out) and says it is worth replacing", () => {
    const book = new SpareBook();
    const s = book.started(A, "n1", 0);
    book.ready(s, 5);
    assert.equal(book.died(s, 100), true);
    assert.equal(book.take(A, "n1"), null);
    assert.equal(book.toStart(A, "n1", 1, 100), 1);
    assert.equal(book.died(s, 101), false, "twice is nothing");
  });

  void it("gives up on a node after spares die before they are ready, for the crash window", () => {
    const book = new SpareBook();
    let t = 0;
    for (let i = 0; i < MAX_SPARE_CRASHES; i++) {
      assert.equal(book.toStart(A, "n1", 1, t), 1);
      book.died(book.started(A, "n1", t), (t += 1000));
    }
    assert.equal(book.disabled(A, "n1", t), true);
    assert.equal(book.toStart(A, "n1", 1, t), 0);
    assert.equal(book.toStart(A, "n2", 1, t), 1, "other nodes go on");
    assert.equal(book.toStart(A, "n1", 1, t + CRASH_WINDOW_MS), 1, "tried again once the crashes are old");
  });

  void it("a ready spare killed later does not count as a crash", () => {
    const book = new SpareBook();
    for (let i = 0; i < MAX_SPARE_CRASHES + 2; i++) {
      const s = book.started(A, "n1", i);
      book.ready(s, i);
      book.died(s, i);
    }
    assert.equal(book.toStart(A, "n1", 1, 10), 1);
  });

  void it("drop returns an owner's live spares and forgets them; other owners keep theirs", () => {
    const book = new SpareBook();
    const a1 = book.started(A, "n1", 0);
    const a2 = book.started(A, "n2", 0);
    const used = book.started(A, "n1", 0);
    const b1 = book.started(B, "n1", 0);
    assert.equal(book.take(A, "n1"), a1);
    void used;
    assert.deepEqual(book.drop(A).sort(), [a2, used].sort());
    assert.deepEqual(book.owners(), [B]);
    assert.equal(book.take(B, "n1"), b1);
  });

  void it("holds its invariants under any sequence of operations", () => {
    const op = fc.oneof(
      fc.record({ k: fc.constant("start" as const), owner: fc.constantFrom(A, B), node: fc.constantFrom("n1", "n2") }),
      fc.record({ k: fc.constant("ready" as const), i: fc.nat(20) }),
      fc.record({ k: fc.constant("die" as const), i: fc.nat(20) }),
      fc.record({ k: fc.constant("take" as const), owner: fc.constantFrom(A, B), node: fc.constantFrom("n1", "n2") }),
      fc.record({ k: fc.constant("drop" as const), owner: fc.constantFrom(A, B) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const book = new SpareBook();
        const ids: number[] = [];
        const handed = new Set<number>();
        const gone = new Set<number>();
        let t = 0;
        for (const o of ops) {
          t += 100;
          if (o.k === "start") ids.push(book.started(o.owner, o.node, t));
          else if (o.k === "ready") book.ready(ids[o.i % Math.max(1, ids.length)] ?? -1, t);
          else if (o.k === "die") {
            const id = ids[o.i % Math.max(1, ids.length)] ?? -1;
            if (!handed.has(id)) gone.add(id);
            book.died(id, t);
          } else if (o.k === "take") {
            const id = book.take(o.owner, o.node);
            if (id !== null) {
              assert.ok(!handed.has(id), "handed out twice");
              assert.ok(!gone.has(id), "a dead or dropped spare handed out");
              handed.add(id);
            }
          } else for (const id of book.drop(o.owner)) gone.add(id);
          for (const owner of [A, B]) for (const node of ["n1", "n2"]) assert.ok(book.live(owner, node).every((e) => e.owner === owner && e.node === node && !handed.has(e.id) && !gone.has(e.id)));
        }
      }),
    );
  });
});

void describe("parseSpareLine", () => {
  void it("reads the readiness line and nothing else", () => {
    assert.deepEqual(parseSpareLine("clipfleet worker: spare ready at 1796557543.819"), { ready: true, atS: 1796557543.819 });
    for (const bad of ["", "clipfleet worker: spare ready at", "clipfleet worker: spare ready at NaN", "clipfleet worker: spare ready at 1e309", " clipfleet worker: spare ready at 1", "clipfleet worker: spare ready at 1\nx", `clipfleet worker: spare ready at ${"9".repeat(300)}`]) {
      assert.equal(parseSpareLine(bad), null, JSON.stringify(bad));
    }
  });

  void it("never throws and only ever returns a finite time, whatever a process prints", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 400 }), fc.string().map((s) => `clipfleet worker: spare ready at ${s}`)), (line) => {
        const r = parseSpareLine(line);
        assert.ok(r === null || (r.ready && Number.isFinite(r.atS) && r.atS >= 0));
      }),
    );
  });
});

/** An in-memory spare process: exits when told, records what it was handed. */
class FakeSpare implements SpareProcess {
  static nextPid = 1000;
  readonly pid = FakeSpare.nextPid++;
  readonly exited: Promise<ExitInfo>;
  handed: Readonly<Record<string, string>> | null = null;
  onLine: (stream: "stdout" | "stderr", line: string) => void = () => undefined;
  private end: (e: ExitInfo) => void = () => undefined;
  private gone = false;
  constructor() {
    this.exited = new Promise((r) => (this.end = r));
  }
  signal(sig: NodeJS.Signals): Promise<void> {
    if (sig === "SIGKILL") this.die("SIGKILL");
    return Promise.resolve();
  }
  die(signal: string): void {
    if (this.gone) return;
    this.gone = true;
    this.end({ code: null, signal });
  }
  lose(why: string): void {
    this.gone = true;
    this.end({ code: null, signal: null, lost: why });
  }
  become(env: Readonly<Record<string, string>>): boolean {
    if (this.gone) return false;
    this.handed = env;
    return true;
  }
}

void describe("SparePool", () => {
  const request = (owner: string, log: string[]): SpareRequest => ({ owner, node: N1, python: "python3", workdir: ".", env: {}, log: (l) => log.push(l) });

  void it("replaces a spare killed before it was needed and never hands out the dead one; drop kills the rest", async () => {
    const started: FakeSpare[] = [];
    let now = 0;
    const pool = new SparePool(
      () => now,
      () => {
        const s = new FakeSpare();
        started.push(s);
        return Promise.resolve(s);
      },
    );
    const log: string[] = [];
    await pool.keep(request(A, log), 1);
    assert.equal(started.length, 1);
    const first = started[0]!;
    first.onLine("stdout", "clipfleet worker: spare ready at 1.0");
    now = 1000;
    first.die("SIGKILL");
    await first.exited;
    await new Promise((r) => setImmediate(r));
    assert.equal(started.length, 2, "replaced");
    const second = started[1]!;
    assert.equal(pool.take(B, "n1"), null);
    assert.equal(pool.take(A, "n1"), second);
    assert.equal(pool.take(A, "n1"), null);
    assert.ok(log.some((l) => l.includes(`spare pid ${first.pid} died`)));
    await pool.keep(request(A, log), 1);
    const third = started[2]!;
    await pool.drop(A);
    assert.equal(await third.exited.then((e) => e.signal), "SIGKILL");
    assert.deepEqual(pool.owners(), []);
  });
});

void describe("SparePool start failures", () => {
  void it("a launcher that cannot start spares is tried MAX_SPARE_CRASHES times, then the node is given up (logged)", async () => {
    let tries = 0;
    const pool = new SparePool(
      () => 0,
      () => {
        tries++;
        return Promise.reject(new Error("no python"));
      },
    );
    const log: string[] = [];
    await pool.keep({ owner: A, node: N1, python: "python3", workdir: ".", env: {}, log: (l) => log.push(l) }, 2);
    assert.equal(tries, MAX_SPARE_CRASHES);
    assert.ok(log.some((l) => l.includes("spares on n1 not started")));
    assert.deepEqual(pool.owners(), []);
  });
});

void describe("SparePool.adopt", () => {
  /** A pool whose spares are FakeSpares (started ones in `started`), `count` of owner A on n1 kept. */
  async function poolWith(count: number, log: string[] = []): Promise<{ pool: SparePool; started: FakeSpare[] }> {
    const started: FakeSpare[] = [];
    const pool = new SparePool(
      () => 0,
      () => {
        const s = new FakeSpare();
        started.push(s);
        return Promise.resolve(s);
      },
    );
    await pool.keep({ owner: A, node: N1, python: "python3", workdir: ".", env: {}, log: (l) => log.push(l) }, count);
    return { pool, started };
  }
  const rank = (over: Partial<LaunchRequest>, out: string[] = []): LaunchRequest => ({
    jobId: "j-1",
    stage: "main",
    attempt: 2,
    rank: 1,
    node: N1,
    python: "python3",
    workdir: ".",
    env: { CLIPFLEET_RANK: "1" },
    secrets: { CLIPFLEET_TOKEN: "tok" },
    spareOwner: A,
    onOutput: (stream, line) => out.push(`${stream}: ${line}`),
    onExit: () => undefined,
    ...over,
  });

  void it("hands the rank's environment and secrets to a spare of its owner, whose output is then the rank's", async () => {
    const { pool, started } = await poolWith(1);
    const out: string[] = [];
    const proc = pool.adopt(rank({}, out));
    assert.ok(proc);
    const spare = started[0]!;
    assert.equal(proc.pid, spare.pid);
    assert.equal(proc.warm, true);
    assert.deepEqual(spare.handed, { CLIPFLEET_RANK: "1", CLIPFLEET_TOKEN: "tok" });
    spare.onLine("stdout", "hello");
    assert.deepEqual(out, ["stdout: hello"]);
    await proc.signal("SIGKILL");
    assert.equal((await proc.exited).signal, "SIGKILL");
    assert.equal(pool.adopt(rank({})), null, "used: never handed out again");
  });

  void it("starts nothing warm without an owner, for a user's command, or for another owner or node", async () => {
    const { pool, started } = await poolWith(1);
    assert.equal(pool.adopt(rank({ spareOwner: undefined })), null);
    assert.equal(pool.adopt(rank({ command: { argv: ["python", "x.py"], cwd: "." } })), null);
    assert.equal(pool.adopt(rank({ spareOwner: B })), null);
    assert.equal(pool.adopt(rank({ node: { ...N1, name: "n2" } })), null);
    assert.equal(started[0]!.handed, null, "nothing was handed over");
    assert.ok(pool.adopt(rank({})), "the spare is still there for its own rank");
  });

  void it("skips a spare that died as it was handed over, and takes the next one", async () => {
    const { pool, started } = await poolWith(2);
    const [first, second] = started;
    assert.ok(first && second);
    // Gone, though its exit has not been seen yet (the pool still counts it).
    first.become = () => false;
    const proc = pool.adopt(rank({}));
    assert.equal(proc?.pid, second.pid);
    assert.equal(pool.adopt(rank({})), null);
  });

  void it("logs a spare lost with its connection by the reason, and replaces it", async () => {
    const log: string[] = [];
    const { started } = await poolWith(1, log);
    const first = started[0]!;
    first.lose("connection to n1 (root@10.0.0.1:22) lost: read ECONNRESET");
    await first.exited;
    await new Promise((r) => setImmediate(r));
    assert.ok(log.includes(`spare pid ${first.pid} died (connection to n1 (root@10.0.0.1:22) lost: read ECONNRESET); not used`), log.join("\n"));
    assert.equal(started.length, 2, "replaced");
  });
});

void describe("SparePool, a spare still being started", () => {
  void it("is killed once started when its stage was dropped meanwhile, and never handed out", async () => {
    const spawned: ((s: FakeSpare) => void)[] = [];
    const pool = new SparePool(
      () => 0,
      () => new Promise<SpareProcess>((resolve) => spawned.push(resolve)),
    );
    const log: string[] = [];
    const keeping = pool.keep({ owner: A, node: N1, python: "python3", workdir: ".", env: {}, log: (l) => log.push(l) }, 1);
    assert.equal(spawned.length, 1, "being started");
    await pool.drop(A);
    const late = new FakeSpare();
    spawned[0]!(late);
    await keeping;
    assert.equal((await late.exited).signal, "SIGKILL");
    assert.ok(log.includes(`spare pid ${late.pid} not needed any more; killed`), log.join("\n"));
    assert.equal(pool.take(A, "n1"), null);
    assert.deepEqual(pool.owners(), []);
  });
});
