/**
 * Messages between the scale benchmark's orchestrator process and its load
 * generators (Node IPC): the simulated launcher hands each launch request's
 * environment to a generator, which runs the rank as a gRPC client and
 * reports its "exit"; the orchestrator process also opens and closes the
 * measurement window and collects the clients' side of the figures.
 */

/** Orchestrator process -> load generator. */
export type ToLoadgen =
  | { readonly type: "launch"; readonly key: string; readonly env: Readonly<Record<string, string>>; readonly token: string }
  | { readonly type: "signal"; readonly key: string; readonly signal: string }
  /** Start counting (reports sent, GetPlan round trips) afresh. */
  | { readonly type: "window" }
  /** Reply with a LoadgenStats of what was counted since "window". */
  | { readonly type: "stats" };

/** Load generator -> orchestrator process. */
export type FromLoadgen =
  | { readonly type: "exit"; readonly key: string; readonly code: number | null; readonly signal: string | null }
  | { readonly type: "stats"; readonly stats: LoadgenStats };

/** The client side of a measurement window. */
export interface LoadgenStats {
  readonly ranks: number;
  readonly reportsSent: number;
  readonly heartbeatsSent: number;
  /** Client-measured round trips of GetPlan calls (ms), in the window. */
  readonly planRttMs: number[];
  /** Client-measured round trips of Register calls (ms), since the start. */
  readonly registerRttMs: number[];
  readonly errors: string[];
  /** CPU seconds of the generator process in the window (it shares the machine with the orchestrator). */
  readonly cpuSeconds: number;
  readonly windowSeconds: number;
}

/** The extra field of a simulated step report carrying its send time (ms since the epoch, sub-ms precision). */
export const SENT_AT_KEY = "bench_sent_at_ms";

/** The extra field marking a step report of a probe rank (hosted by the lightly loaded probe generator). */
export const PROBE_KEY = "bench_probe";

/** Wall-clock time with sub-millisecond precision, comparable across processes of one machine. */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}
