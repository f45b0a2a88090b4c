/** Time as a dependency, so that pure logic can be tested with a fake clock and no sleeps. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };
