/** InProcessEventBus: fan-out, unsubscribe, error isolation, ordering of nested publishes. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { EVENT_SCHEMA_VERSION, type JobEvent } from "../../src/domain/index.js";
import { eventSubject, InProcessEventBus, openEventBus } from "../../src/events/index.js";

function event(jobId: string, seq: number): JobEvent {
  return {
    schemaVersion: EVENT_SCHEMA_VERSION,
    seq,
    jobId,
    stage: "main",
    type: "state",
    state: "RUNNING",
    reason: `e${seq}`,
    tsMs: 1_700_000_000_000 + seq,
    attempt: 1,
    rank: -1,
    data: {},
  };
}

/** A bus whose reported errors are collected instead of printed. */
function bus(): { bus: InProcessEventBus; errors: string[] } {
  const errors: string[] = [];
  return { bus: new InProcessEventBus((err, context) => errors.push(`${context}: ${(err as Error).message}`)), errors };
}

void describe("InProcessEventBus", () => {
  void it("fans out to the job's subscribers and to '*', synchronously", async () => {
    const { bus: b } = bus();
    const a: string[] = [];
    const c: string[] = [];
    const all: string[] = [];
    b.subscribe("j-a", (e) => a.push(`${e.jobId}/${e.seq}`));
    b.subscribe("j-a", (e) => c.push(`${e.jobId}/${e.seq}`));
    b.subscribe("*", (e) => all.push(`${e.jobId}/${e.seq}`));
    void b.publish(event("j-a", 1));
    void b.publish(event("j-b", 1));
    void b.publish(event("j-a", 2));
    // Delivered before publish returned, without awaiting.
    assert.deepEqual(a, ["j-a/1", "j-a/2"]);
    assert.deepEqual(c, ["j-a/1", "j-a/2"]);
    assert.deepEqual(all, ["j-a/1", "j-b/1", "j-a/2"]);
    await b.close();
  });

  void it("stops delivering after unsubscribe, which is idempotent", async () => {
    const { bus: b } = bus();
    const got: number[] = [];
    const unsubscribe = b.subscribe("j-a", (e) => got.push(e.seq));
    const keep = b.subscribe("*", () => undefined);
    await b.publish(event("j-a", 1));
    unsubscribe();
    unsubscribe();
    await b.publish(event("j-a", 2));
    assert.deepEqual(got, [1]);
    assert.equal(b.subscriberCount(), 1);
    keep();
    assert.equal(b.subscriberCount(), 0);
  });

  void it("isolates throwing and rejecting handlers and reports them", async () => {
    const { bus: b, errors } = bus();
    const got: number[] = [];
    b.subscribe("j-a", () => {
      throw new Error("boom");
    });
    b.subscribe("j-a", () => Promise.reject(new Error("async boom")));
    b.subscribe("j-a", (e) => void got.push(e.seq));
    await b.publish(event("j-a", 1));
    await b.publish(event("j-a", 2));
    await new Promise<void>((resolve) => setImmediate(resolve)); // let the rejections be observed
    assert.deepEqual(got, [1, 2]);
    assert.deepEqual(errors.sort(), [
      "handler for job j-a event 1: async boom",
      "handler for job j-a event 1: boom",
      "handler for job j-a event 2: async boom",
      "handler for job j-a event 2: boom",
    ]);
  });

  void it("delivers an event published by a handler after the current one reached everybody", async () => {
    const { bus: b } = bus();
    const first: number[] = [];
    const second: number[] = [];
    b.subscribe("j-a", (e) => {
      first.push(e.seq);
      if (e.seq === 1) void b.publish(event("j-a", 2));
    });
    b.subscribe("j-a", (e) => second.push(e.seq));
    await b.publish(event("j-a", 1));
    assert.deepEqual(first, [1, 2]);
    assert.deepEqual(second, [1, 2]);
  });

  void it("snapshots subscribers per event: added ones start with the next, removed ones get nothing more", async () => {
    const { bus: b } = bus();
    const late: number[] = [];
    const victim: number[] = [];
    let unsubscribeVictim = (): void => undefined;
    b.subscribe("j-a", (e) => {
      if (e.seq === 1) {
        b.subscribe("j-a", (x) => late.push(x.seq));
        unsubscribeVictim();
      }
    });
    unsubscribeVictim = b.subscribe("j-a", (e) => victim.push(e.seq));
    await b.publish(event("j-a", 1));
    await b.publish(event("j-a", 2));
    assert.deepEqual(late, [2]);
    assert.deepEqual(victim, []);
  });

  void it("refuses publishing after close", async () => {
    const { bus: b } = bus();
    const got: number[] = [];
    b.subscribe("*", (e) => got.push(e.seq));
    await b.close();
    await assert.rejects(b.publish(event("j-a", 1)), /used after close/);
    assert.deepEqual(got, []);
  });
});

void describe("events helpers", () => {
  void it("maps job ids to subjects and refuses ids that would split one", () => {
    assert.equal(eventSubject("j-20261123-155955-a1b2c3"), "clipfleet.jobs.j-20261123-155955-a1b2c3.events");
    assert.equal(eventSubject("*"), "clipfleet.jobs.*.events");
    assert.throws(() => eventSubject("a.b"), { code: "INVALID_ARGUMENT" });
    assert.throws(() => eventSubject(">"), /job id ">" is not a valid id/);
  });

  void it("opens an in-process bus without a NATS URL and refuses a bad one", async () => {
    const b = await openEventBus(null);
    assert.ok(b instanceof InProcessEventBus);
    assert.equal(b.describe(), "in-process");
    await b.close();
    await assert.rejects(openEventBus("http://x:4222"), {
      code: "INVALID_ARGUMENT",
      message: '--nats: expected nats://HOST:PORT or tls://HOST:PORT, got "http://x:4222"',
    });
  });
});
