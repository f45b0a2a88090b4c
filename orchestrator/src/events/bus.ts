/**
 * The EventBus contract: job events fan out to watchers in this process and,
 * when configured, to outside subscribers over NATS. Events of one job are
 * delivered in the order they were published.
 */
import {
  ClipfleetError,
  EVENT_SCHEMA_VERSION,
  InvalidArgumentError,
  isValidJobId,
  type JobEvent,
} from "../domain/index.js";

/** Stops a subscription; calling it again is a no-op. */
export type Unsubscribe = () => void;

/**
 * Receives one event. Handlers are called synchronously and never awaited
 * (an async function is fine); a handler that throws or returns a rejected
 * promise is reported to the bus's error reporter and does not affect other
 * handlers or the publisher.
 */
export type EventHandler = (event: JobEvent) => void;

/** Where a bus reports failures that have no caller to throw to (handler errors, undecodable messages). */
export type ErrorReporter = (err: unknown, context: string) => void;

/** Publishes and fans out job events. */
export interface EventBus {
  /**
   * Publishes one event. The event is handed on before the returned promise
   * settles (and, for NATS, before `publish` returns), so callers that do not
   * await still keep per-job order.
   */
  publish(event: JobEvent): Promise<void>;
  /**
   * Calls `handler` for every later event of `jobId` ("*": of every job).
   * Synchronous: the subscription is active when it returns, for events this
   * bus publishes.
   */
  subscribe(jobId: string, handler: EventHandler): Unsubscribe;
  /** Delivers or flushes what was published, then stops every subscription. */
  close(): Promise<void>;
  /** One line for logs and ServerInfo.events. */
  describe(): string;
}

/** The default ErrorReporter: one line on stderr (there is no caller to return the error to). */
export const reportToStderr: ErrorReporter = (err, context) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`clipfleet events: ${context}: ${message}\n`);
};

/** The NATS subject of a job's events; "*" gives the wildcard over every job. */
export function eventSubject(jobId: string): string {
  if (jobId !== "*" && !isValidJobId(jobId)) {
    // A '.' or a space would split the subject into different tokens.
    throw new InvalidArgumentError(`job id ${JSON.stringify(jobId)} is not a valid id`, "jobId");
  }
  return `clipfleet.jobs.${jobId}.events`;
}

/** Checks a received event; newer schema versions are refused rather than half-understood. */
export function decodeEvent(value: unknown, where: string): JobEvent {
  const e = value as Partial<JobEvent> | null;
  if (typeof e !== "object" || e === null || typeof e.jobId !== "string" || typeof e.seq !== "number") {
    throw new ClipfleetError("INTERNAL", `${where}: not a job event`);
  }
  if (typeof e.schemaVersion !== "number" || e.schemaVersion > EVENT_SCHEMA_VERSION) {
    throw new ClipfleetError(
      "FAILED_PRECONDITION",
      `${where}: event schemaVersion ${String(e.schemaVersion)} is not supported ` +
        `(this clipfleet reads up to ${EVENT_SCHEMA_VERSION}); upgrade clipfleet`,
    );
  }
  return e as JobEvent;
}

/** Calls a handler with error isolation (synchronous throws and rejected promises). */
export function deliver(handler: EventHandler, event: JobEvent, report: ErrorReporter): void {
  const context = `handler for job ${event.jobId} event ${event.seq}`;
  try {
    const result: unknown = handler(event);
    if (result instanceof Promise) result.catch((err: unknown) => report(err, context));
  } catch (err) {
    report(err, context);
  }
}
