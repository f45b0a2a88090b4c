/**
 * The orchestrator's own bus: synchronous fan-out to watchers in this process
 * (Watch streams, the CLI's embedded run, metrics). Always present; NATS is
 * optional and added with TeeEventBus.
 */
import { ClipfleetError, type JobEvent } from "../domain/index.js";
import { deliver, reportToStderr, type ErrorReporter, type EventBus, type EventHandler, type Unsubscribe } from "./bus.js";

interface Subscription {
  handler: EventHandler;
  active: boolean;
}

/** In-memory EventBus; see EventBus for the delivery guarantees. */
export class InProcessEventBus implements EventBus {
  private readonly subscriptions = new Map<string, Set<Subscription>>();
  private readonly queue: JobEvent[] = [];
  private dispatching = false;
  private closed = false;

  constructor(private readonly report: ErrorReporter = reportToStderr) {}

  describe(): string {
    return "in-process";
  }

  /**
   * Delivers to every subscriber before resolving. An event published from
   * inside a handler is delivered after the current event has reached every
   * subscriber, so all subscribers see one global order.
   */
  publish(event: JobEvent): Promise<void> {
    if (this.closed) return Promise.reject(new ClipfleetError("INTERNAL", "in-process event bus used after close"));
    this.queue.push(event);
    if (this.dispatching) return Promise.resolve();
    this.dispatching = true;
    try {
      for (let e = this.queue.shift(); e !== undefined; e = this.queue.shift()) this.dispatch(e);
    } finally {
      this.dispatching = false;
    }
    return Promise.resolve();
  }

  subscribe(jobId: string, handler: EventHandler): Unsubscribe {
    const sub: Subscription = { handler, active: true };
    let set = this.subscriptions.get(jobId);
    if (set === undefined) {
      set = new Set();
      this.subscriptions.set(jobId, set);
    }
    set.add(sub);
    return () => {
      sub.active = false;
      const current = this.subscriptions.get(jobId);
      current?.delete(sub);
      if (current?.size === 0) this.subscriptions.delete(jobId);
    };
  }

  /** Number of active subscriptions (for tests and leak checks). */
  subscriberCount(): number {
    let n = 0;
    for (const set of this.subscriptions.values()) n += set.size;
    return n;
  }

  close(): Promise<void> {
    this.closed = true;
    for (const set of this.subscriptions.values()) for (const sub of set) sub.active = false;
    this.subscriptions.clear();
    return Promise.resolve();
  }

  private dispatch(event: JobEvent): void {
    // Snapshot: a subscriber added during dispatch starts with the next event;
    // one removed during dispatch (active=false) gets nothing more.
    const targets = [...(this.subscriptions.get(event.jobId) ?? []), ...(this.subscriptions.get("*") ?? [])];
    for (const sub of targets) if (sub.active) deliver(sub.handler, event, this.report);
  }
}
