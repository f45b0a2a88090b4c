/**
 * Job events on NATS for outside subscribers (dashboards, alerting, a second
 * tool): subject `clipfleet.jobs.<jobId>.events`, payload the JobEvent as
 * JSON (it carries schemaVersion). One connection publishes everything, and
 * NATS keeps a connection's publish order, so each job's events arrive in
 * order. Core NATS, not JetStream: events are a live feed; the full history
 * of state changes lives in the job record.
 *
 * nats.js discards what it buffered while disconnected, so this bus keeps
 * events published during a disconnect itself (up to maxBuffered) and sends
 * them, in order, once reconnected. Events already handed to a socket that
 * then died are lost; subscribers detect gaps by `seq`.
 */
import { Events, type NatsConnection, type Subscription } from "nats";
import { ClipfleetError, UnavailableError, type JobEvent } from "../domain/index.js";
import { connectNats, natsTarget, type NatsTarget } from "../nats/index.js";
import {
  decodeEvent,
  deliver,
  eventSubject,
  reportToStderr,
  type ErrorReporter,
  type EventBus,
  type EventHandler,
  type Unsubscribe,
} from "./bus.js";

/** Options of NatsEventBus.connect. */
export interface NatsEventBusOptions {
  /** Receives handler errors and undecodable messages. Default: one line on stderr. */
  onError?: ErrorReporter;
  /** How long close() waits for the server to confirm published events. Default 5000 ms. */
  closeTimeoutMs?: number;
  /** Events kept while disconnected; later ones are dropped and reported. Default 10000. */
  maxBuffered?: number;
}

/** EventBus over core NATS; construct with `NatsEventBus.connect`. */
export class NatsEventBus implements EventBus {
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder();
  private readonly subs = new Set<Subscription>();
  /** Non-null while disconnected: events waiting for the reconnect, in publish order. */
  private held: { subject: string; data: Uint8Array }[] | null = null;
  private dropped = 0;

  private constructor(
    readonly url: string,
    private readonly nc: NatsConnection,
    private readonly report: ErrorReporter,
    private readonly closeTimeoutMs: number,
    private readonly maxBuffered: number,
  ) {
    void this.trackConnection();
  }

  /**
   * Connects to `server` (a URL, one server or a comma-separated list, or a
   * target with TLS and credentials from nats/); rejects with
   * UnavailableError naming the URL (never its credentials), or
   * UnauthenticatedError when NATS refuses the credentials or TLS fails.
   */
  static async connect(server: string | NatsTarget, options: NatsEventBusOptions = {}): Promise<NatsEventBus> {
    const target = typeof server === "string" ? natsTarget(server, "nats") : server;
    // Publishes are buffered while reconnecting; never give up on a live server.
    const nc = await connectNats(target, "events", { name: "clipfleet-events", maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    return new NatsEventBus(
      target.url,
      nc,
      options.onError ?? reportToStderr,
      options.closeTimeoutMs ?? 5000,
      options.maxBuffered ?? 10_000,
    );
  }

  describe(): string {
    return `nats:${this.url}`;
  }

  /** Hands the event to the connection (or the reconnect buffer) synchronously, so call order is wire order. */
  publish(event: JobEvent): Promise<void> {
    try {
      const subject = eventSubject(event.jobId);
      const data = this.encoder.encode(JSON.stringify(event));
      if (this.held === null) this.nc.publish(subject, data);
      else if (this.held.length < this.maxBuffered) this.held.push({ subject, data });
      else this.dropped++;
      return Promise.resolve();
    } catch (err) {
      if (err instanceof ClipfleetError) return Promise.reject(err);
      return Promise.reject(
        new UnavailableError(`events: cannot publish to NATS at ${this.url}: ${(err as Error).message}`, {
          cause: err,
        }),
      );
    }
  }

  /**
   * Subscribes on `clipfleet.jobs.<jobId>.events` (or the `*` wildcard).
   * Events this bus publishes later are seen; for events from other
   * connections the server must first have processed the subscription.
   */
  subscribe(jobId: string, handler: EventHandler): Unsubscribe {
    const subject = eventSubject(jobId);
    const sub = this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err !== null) {
          this.report(err, `subscription ${subject}`);
          return;
        }
        let event: JobEvent;
        try {
          event = decodeEvent(JSON.parse(this.decoder.decode(msg.data)), `message on ${msg.subject}`);
        } catch (e) {
          this.report(e, `subscription ${subject}`);
          return;
        }
        deliver(handler, event, this.report);
      },
    });
    this.subs.add(sub);
    return () => {
      if (!this.subs.delete(sub)) return;
      if (!this.nc.isClosed()) sub.unsubscribe();
    };
  }

  /**
   * Drains: delivers messages already received, flushes published events and
   * waits for the server to confirm them, then closes. If NATS is unreachable
   * for closeTimeoutMs, closes anyway (events still buffered are lost).
   */
  async close(): Promise<void> {
    if (this.nc.isClosed()) return;
    this.subs.clear();
    if (this.held !== null && this.held.length + this.dropped > 0) {
      this.report(
        new Error(`${this.held.length + this.dropped} events published while disconnected were not sent`),
        `closing NATS ${this.url}`,
      );
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), this.closeTimeoutMs);
    });
    try {
      const late = await Promise.race([this.nc.drain().then(() => false), timedOut]);
      if (late) this.report(new Error(`no answer within ${this.closeTimeoutMs} ms`), `closing NATS ${this.url}`);
    } finally {
      clearTimeout(timer);
      if (!this.nc.isClosed()) await this.nc.close();
    }
  }

  /** Holds events while the client is disconnected and sends them, in order, once it is back. */
  private async trackConnection(): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type === Events.Disconnect && this.held === null) {
        this.held = [];
      } else if (status.type === Events.Reconnect && this.held !== null) {
        const held = this.held;
        this.held = null;
        for (const { subject, data } of held) this.nc.publish(subject, data);
        if (this.dropped > 0) {
          this.report(new Error(`${this.dropped} events dropped while disconnected`), `NATS ${this.url}`);
          this.dropped = 0;
        }
      }
    }
  }
}
