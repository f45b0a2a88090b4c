/**
 * The preemption signal's names, shared by the launchers that set
 * CLIPFLEET_PREEMPT_SIGNAL (an inventory field checks its value with
 * preemptSignalName) and the worker, which checks the same list
 * (worker-runtime/clipfleet_worker/preempt.py PREEMPT_SIGNALS; a unit test
 * keeps the two equal). docs/preemption.md.
 */

/** Catchable, not fatal by nature, not taken (TERM is the graceful stop, USR2 the stack dump). */
export const PREEMPT_SIGNALS = ["USR1", "HUP", "INT", "ALRM", "URG", "PWR", "XCPU"] as const;

/** What a rank takes for the preemption signal when CLIPFLEET_PREEMPT_SIGNAL is unset. */
export const DEFAULT_PREEMPT_SIGNAL = "USR1";

/** The bare name (`USR1`) of a preemption signal written `USR1`, `SIGUSR1` or `usr1`; null when it is none of PREEMPT_SIGNALS. */
export function preemptSignalName(value: string): (typeof PREEMPT_SIGNALS)[number] | null {
  const upper = value.trim().toUpperCase();
  const bare = upper.startsWith("SIG") ? upper.slice(3) : upper;
  return PREEMPT_SIGNALS.find((s) => s === bare) ?? null;
}
