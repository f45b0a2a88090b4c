/**
 * Server-Sent Events: the framing (pure) and one bounded channel per
 * connection. A client that reads slower than the dashboard writes is cut
 * off once MAX bytes wait in its socket's buffer; its EventSource reconnects
 * and starts again from a fresh snapshot, so nothing grows without bound.
 */
import type { ServerResponse } from "node:http";

/** Event names the dashboard sends: lowercase words. */
const EVENT_NAME = /^[a-z][a-z0-9-]{0,31}$/;

/**
 * One SSE message: `event:` then each line of `data` as its own `data:` line
 * (a CR, LF or CRLF inside data can never end the message early), then a
 * blank line.
 */
export function sseFrame(event: string, data: string): string {
  if (!EVENT_NAME.test(event)) throw new Error(`bad SSE event name ${JSON.stringify(event)}`);
  return `event: ${event}\n${data
    .split(/\r\n|\r|\n/)
    .map((l) => `data: ${l}\n`)
    .join("")}\n`;
}

/** A comment line: keeps proxies and the browser from timing the stream out. */
export const SSE_PING = ": ping\n\n";

/** An open event stream to one browser tab. */
export class SseChannel {
  private closed = false;
  private readonly ping: NodeJS.Timeout;
  private readonly onClose: (() => void)[] = [];

  constructor(
    private readonly res: ServerResponse,
    private readonly maxBufferedBytes: number,
    pingMs = 15_000,
  ) {
    res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", "x-accel-buffering": "no" });
    res.write("retry: 2000\n\n");
    this.ping = setInterval(() => this.write(SSE_PING), pingMs);
    this.ping.unref();
    res.on("close", () => this.close());
  }

  /** Whether the channel still sends. */
  get open(): boolean {
    return !this.closed;
  }

  /** Sends a JSON payload as event `event`; false when the channel is (or just got) closed. */
  send(event: string, payload: unknown): boolean {
    return this.write(sseFrame(event, JSON.stringify(payload)));
  }

  /** Runs `fn` when the channel closes (client gone, or cut off). */
  whenClosed(fn: () => void): void {
    if (this.closed) fn();
    else this.onClose.push(fn);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.ping);
    this.res.end();
    for (const fn of this.onClose.splice(0)) fn();
  }

  private write(frame: string): boolean {
    if (this.closed) return false;
    if (this.res.writableLength + Buffer.byteLength(frame) > this.maxBufferedBytes) {
      // A reader this far behind gets a fresh snapshot when it reconnects instead of an ever-growing backlog.
      this.close();
      return false;
    }
    this.res.write(frame);
    return true;
  }
}
