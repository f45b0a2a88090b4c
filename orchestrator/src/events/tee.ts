/**
 * The orchestrator's bus when NATS is configured: every event goes to the
 * in-process bus (its own watchers) and to NATS (everyone else). Subscribing
 * goes to the local bus only, so a watcher in this process sees each event
 * once, without a round trip through the server.
 */
import type { JobEvent } from "../domain/index.js";
import type { EventBus, EventHandler, Unsubscribe } from "./bus.js";

/** Publishes to `local` then `remote`; subscribes on `local`. */
export class TeeEventBus implements EventBus {
  constructor(
    readonly local: EventBus,
    readonly remote: EventBus,
  ) {}

  describe(): string {
    return `${this.local.describe()}+${this.remote.describe()}`;
  }

  /** Local watchers see the event even when the remote publish fails (the rejection still reaches the caller). */
  async publish(event: JobEvent): Promise<void> {
    const local = this.local.publish(event);
    const remote = this.remote.publish(event);
    await Promise.all([local, remote]);
  }

  subscribe(jobId: string, handler: EventHandler): Unsubscribe {
    return this.local.subscribe(jobId, handler);
  }

  /** Flushes the remote first, then stops local watchers. */
  async close(): Promise<void> {
    try {
      await this.remote.close();
    } finally {
      await this.local.close();
    }
  }
}
