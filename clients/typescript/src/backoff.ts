/** How long to wait between reconnect attempts. */
export interface BackoffOptions {
  /** The ceiling of the first wait, in ms. Default 250. */
  baseDelay?: number;
  /** The largest ceiling, in ms. Default 10 000. */
  maxDelay?: number;
}

/**
 * Exponential backoff with full jitter: attempt `n` (from 0) waits a uniformly random time in
 * `[0, min(maxDelay, baseDelay * 2^n))`. Clients that lost the same server at the same moment
 * spread out instead of coming back together.
 *
 * `random` returns a number in [0, 1), as `Math.random` does.
 */
export function fullJitterDelay(
  attempt: number,
  { baseDelay = 250, maxDelay = 10_000 }: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(maxDelay, baseDelay * 2 ** Math.min(attempt, 52));
  return Math.floor(random() * ceiling);
}
