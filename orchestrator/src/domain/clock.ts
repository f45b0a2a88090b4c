/** Time as a dependency, so that pure logic can be tested with a fake clock and no sleeps. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** An armed timer; only `cancel` is needed (the machinery never re-arms one). */
export interface TimerHandle {
  cancel(): void;
}

/**
 * Timers as a dependency, beside the Clock: the job machinery arms every
 * timeout and interval through this, so a unit test with a fake clock fires
 * them by advancing time instead of sleeping.
 */
export interface Timers {
  /** Runs `fn` once after `ms`. */
  after(ms: number, fn: () => void): TimerHandle;
  /** Runs `fn` every `ms` until cancelled. */
  every(ms: number, fn: () => void): TimerHandle;
}

/** Node's timers. */
export const systemTimers: Timers = {
  after(ms, fn) {
    const t = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(t) };
  },
  every(ms, fn) {
    const t = setInterval(fn, ms);
    return { cancel: () => clearInterval(t) };
  },
};

/** Resolves true when `p` settles within `ms`, false when the time runs out first. */
export function settlesWithin(timers: Timers, p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = timers.after(ms, () => resolve(false));
    void p.then(
      () => {
        timer.cancel();
        resolve(true);
      },
      () => {
        timer.cancel();
        resolve(true);
      },
    );
  });
}

/** A promise that resolves after `ms` on `timers` (a fake clock's advance resolves it). */
export function sleepOn(timers: Timers, ms: number): Promise<void> {
  return new Promise((resolve) => timers.after(ms, resolve));
}
