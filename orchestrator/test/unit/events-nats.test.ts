/** NatsEventBus and the tee against a real nats-server, with outside subscribers on raw connections. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection } from "nats";
import { EVENT_SCHEMA_VERSION, type JobEvent } from "../../src/domain/index.js";
import { eventSubject, InProcessEventBus, NatsEventBus, openEventBus, TeeEventBus } from "../../src/events/index.js";
import { natsSkipReason, startNatsServer, type NatsServer } from "../helpers/nats.js";

function event(jobId: string, seq: number): JobEvent {
  return {
    schemaVersion: EVENT_SCHEMA_VERSION,
    seq,
    jobId,
    stage: "main",
    type: "step",
    state: "RUNNING",
    reason: `e${seq}`,
    tsMs: 1_700_000_000_000 + seq,
    attempt: 1,
    rank: 0,
    data: { loss: 1 / seq },
  };
}

/**
 * Collects events on `subject` from an outside connection (skipping what is
 * not JSON); `until(n)` resolves once n have arrived; `stop()` unsubscribes.
 */
async function outsideSubscriber(nc: NatsConnection, subject: string) {
  const got: JobEvent[] = [];
  let wanted = Infinity;
  let done = (): void => undefined;
  const sub = nc.subscribe(subject, {
    callback: (_err, msg) => {
      try {
        got.push(JSON.parse(msg.string()) as JobEvent);
      } catch {
        return;
      }
      if (got.length >= wanted) done();
    },
  });
  await nc.flush(); // the server has the subscription before anyone publishes
  return {
    got,
    until: (n: number) =>
      new Promise<void>((resolve) => {
        wanted = n;
        done = resolve;
        if (got.length >= n) resolve();
      }),
    stop: () => sub.unsubscribe(),
  };
}

let barriers = 0;
/**
 * Resolves once a marker event published now has come back to `bus`: the
 * server delivers to one connection in the order it processed the messages,
 * so everything published (and flushed) before has been delivered too.
 */
async function barrier(bus: NatsEventBus): Promise<void> {
  const jobId = `j-barrier-${++barriers}`;
  let unsubscribe = (): void => undefined;
  await new Promise<void>((resolve) => {
    unsubscribe = bus.subscribe(jobId, () => resolve());
    void bus.publish(event(jobId, 1));
  });
  unsubscribe();
}

void describe("NatsEventBus", { skip: natsSkipReason() }, () => {
  let nats: NatsServer;
  let outside: NatsConnection;

  before(async () => {
    nats = await startNatsServer({ jetstream: false });
    outside = await connect({ servers: nats.url });
  });
  after(async () => {
    await outside.close();
    await nats.stop();
  });

  void it("delivers every event of a job to an outside subscriber in order, flushing on close", async () => {
    const perJob = await outsideSubscriber(outside, eventSubject("j-order"));
    const wildcard = await outsideSubscriber(outside, eventSubject("*"));
    const bus = await NatsEventBus.connect(nats.url);
    for (let seq = 1; seq <= 200; seq++) {
      void bus.publish(event("j-order", seq));
      if (seq % 50 === 0) void bus.publish(event("j-other", seq));
    }
    await bus.close(); // must not lose what is still buffered
    await Promise.all([perJob.until(200), wildcard.until(204)]);
    assert.deepEqual(
      perJob.got.map((e) => e.seq),
      Array.from({ length: 200 }, (_, i) => i + 1),
    );
    assert.deepEqual(perJob.got[41], event("j-order", 42)); // the payload is the JobEvent itself
    assert.deepEqual(
      wildcard.got.filter((e) => e.jobId === "j-other").map((e) => e.seq),
      [50, 100, 150, 200],
    );
    assert.equal(bus.describe(), `nats:${nats.url}`);
    perJob.stop();
    wildcard.stop();
  });

  void it("subscribes per job and with '*', and unsubscribes", async () => {
    const bus = await NatsEventBus.connect(nats.url);
    try {
      const a: string[] = [];
      const all: string[] = [];
      const unsubscribeA = bus.subscribe("j-a", (e) => void a.push(`${e.jobId}/${e.seq}`));
      bus.subscribe("*", (e) => void all.push(`${e.jobId}/${e.seq}`));
      await bus.publish(event("j-a", 1));
      await bus.publish(event("j-b", 1));
      // Two connections are not ordered against each other: let the bus's own events arrive first.
      await barrier(bus);
      outside.publish(eventSubject("j-a"), JSON.stringify(event("j-a", 2))); // from another process
      await outside.flush();
      await barrier(bus);
      assert.deepEqual(a, ["j-a/1", "j-a/2"]);
      unsubscribeA();
      unsubscribeA();
      await bus.publish(event("j-a", 3));
      await barrier(bus);
      assert.deepEqual(a, ["j-a/1", "j-a/2"]);
      assert.deepEqual(
        all.filter((s) => !s.startsWith("j-barrier")),
        ["j-a/1", "j-b/1", "j-a/2", "j-a/3"],
      );
    } finally {
      await bus.close();
    }
  });

  void it("reports handler errors and undecodable or too-new messages, and keeps delivering", async () => {
    const errors: string[] = [];
    const bus = await NatsEventBus.connect(nats.url, {
      onError: (err, context) => errors.push(`${context}: ${(err as Error).message}`),
    });
    try {
      const got: number[] = [];
      bus.subscribe("j-e", () => {
        throw new Error("handler boom");
      });
      bus.subscribe("j-e", (e) => void got.push(e.seq));
      await bus.publish(event("j-e", 1));
      await barrier(bus); // the server has the subscriptions before the outside publishes
      outside.publish(eventSubject("j-e"), "not json");
      outside.publish(eventSubject("j-e"), JSON.stringify({ ...event("j-e", 99), schemaVersion: EVENT_SCHEMA_VERSION + 1 }));
      outside.publish(eventSubject("j-e"), JSON.stringify(event("j-e", 2)));
      await outside.flush();
      await barrier(bus);
      assert.deepEqual(got, [1, 2]);
      assert.ok(errors.includes("handler for job j-e event 1: handler boom"), errors.join("\n"));
      assert.ok(
        errors.some((e) => /^subscription clipfleet\.jobs\.j-e\.events: .*JSON/.test(e)),
        errors.join("\n"),
      );
      assert.ok(
        errors.some((e) => e.includes("event schemaVersion 2 is not supported (this clipfleet reads up to 1)")),
        errors.join("\n"),
      );
    } finally {
      await bus.close();
    }
  });

  void it("says UNAVAILABLE, naming the URL, when NATS cannot be reached", async () => {
    const down = await startNatsServer({ jetstream: false });
    await down.stop();
    await assert.rejects(NatsEventBus.connect(down.url), (err: unknown) => {
      assert.equal((err as { code?: string }).code, "UNAVAILABLE");
      assert.ok((err as Error).message.startsWith(`events: cannot connect to NATS at ${down.url}: `));
      return true;
    });
  });

  void it("holds events published while NATS is down and sends them in order after the reconnect", async () => {
    const own = await startNatsServer({ jetstream: false });
    let restarted: NatsServer | null = null;
    const bus = await NatsEventBus.connect(own.url);
    try {
      const got: number[] = [];
      const waiters = new Map<number, () => void>();
      const seen = (seq: number) => new Promise<void>((resolve) => waiters.set(seq, resolve));
      // A subscription on the bus's own connection is restored before held events are sent.
      bus.subscribe("j-r", (e) => {
        got.push(e.seq);
        waiters.get(e.seq)?.();
      });
      const firstTen = seen(10);
      for (let seq = 1; seq <= 10; seq++) await bus.publish(event("j-r", seq));
      await firstTen; // nothing in flight when the server dies
      await own.kill9();
      restarted = await startNatsServer({ jetstream: false, port: own.port });
      const all = seen(60);
      for (let seq = 11; seq <= 60; seq++) await bus.publish(event("j-r", seq));
      await all;
      assert.deepEqual(
        got,
        Array.from({ length: 60 }, (_, i) => i + 1),
      );
    } finally {
      await bus.close();
      await restarted?.stop();
      await own.stop();
    }
  });
});

void describe("TeeEventBus", { skip: natsSkipReason() }, () => {
  let nats: NatsServer;
  before(async () => {
    nats = await startNatsServer({ jetstream: false });
  });
  after(() => nats.stop());

  void it("shows every event to local watchers at once and to NATS subscribers", async () => {
    const outside = await connect({ servers: nats.url });
    const remote = await outsideSubscriber(outside, eventSubject("*"));
    const bus = await openEventBus(nats.url);
    assert.ok(bus instanceof TeeEventBus);
    assert.ok(bus.local instanceof InProcessEventBus);
    assert.equal(bus.describe(), `in-process+nats:${nats.url}`);
    const local: number[] = [];
    bus.subscribe("j-t", (e) => void local.push(e.seq));
    for (let seq = 1; seq <= 20; seq++) void bus.publish(event("j-t", seq));
    assert.equal(local.length, 20); // synchronous, no round trip
    await bus.close();
    await remote.until(20);
    await outside.close();
    const expected = Array.from({ length: 20 }, (_, i) => i + 1);
    assert.deepEqual(local, expected);
    assert.deepEqual(
      remote.got.map((e) => e.seq),
      expected,
    );
  });

  void it("says UNAVAILABLE when the configured NATS is down", async () => {
    const down = await startNatsServer({ jetstream: false });
    await down.stop();
    await assert.rejects(openEventBus(down.url), { code: "UNAVAILABLE" });
  });
});
