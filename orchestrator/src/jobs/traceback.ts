/**
 * The last Python traceback a rank printed on stderr. A `task: command`
 * script that does not use clipfleet's API reports nothing: when it dies of
 * an exception, its stderr is all there is. The traceback gives the failure
 * its message and a fingerprint (the exception type and the frames, not the
 * message, which may hold addresses or values that change between runs), so
 * the repeated-user-error rule stops a script that fails the same way twice.
 */
import { createHash } from "node:crypto";
import { MAX_TRACEBACK_BYTES, truncateTail } from "../domain/index.js";
import type { ReportedFailure } from "./policy.js";

/** The last line of a traceback raised by a collective whose peer went away (gloo, NCCL, the TCP store). */
const COLLECTIVE = /gloo|nccl|ProcessGroup|Connection (closed|reset) by peer|Broken pipe|DistBackendError|DistNetworkError/i;

/** Lines kept of one traceback (a deep recursion prints thousands). */
const MAX_LINES = 400;

export class TracebackCatcher {
  private current: string[] | null = null;
  private last: string[] | null = null;

  /** One line of the rank's stderr. */
  line(text: string): void {
    if (text.startsWith("Traceback (most recent call last):")) {
      this.current = [text];
      return;
    }
    if (this.current === null) return;
    // The traceback ends at its first unindented line after the header: "ValueError: ..." (kept past the cap).
    const ends = text.length > 0 && !/^\s/.test(text);
    if (this.current.length < MAX_LINES || ends) this.current.push(text);
    if (ends) {
      this.last = this.current;
      this.current = null;
    }
  }

  /** The failure the last complete traceback stands for, or null when there was none. */
  failure(step: number): ReportedFailure | null {
    const tb = this.last;
    if (tb === null) return null;
    const last = tb.at(-1) ?? "";
    const type = /^([A-Za-z_][\w.]*)(:|$)/.exec(last)?.[1] ?? last.slice(0, 64);
    const frames = tb.filter((l) => /^\s+File "/.test(l)).map((l) => l.trim());
    const fingerprint = createHash("sha256").update([type, ...frames].join("\n")).digest("hex").slice(0, 16);
    // A collective that broke because a peer died is a consequence, not the cause: it waits for the peer's exit.
    const kind = COLLECTIVE.test(last) ? "collective" : "exception";
    return { kind, message: last, traceback: truncateTail(tb.join("\n"), MAX_TRACEBACK_BYTES), step, fingerprint };
  }
}
