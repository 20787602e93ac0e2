/**
 * A rate from samples of a cumulative count: jobs per second over the last
 * few seconds, for the status pages.
 *
 * @module
 */

/** Samples of a count that only grows, kept for `windowMs`. */
export class RateWindow {
  readonly #windowMs: number;
  readonly #samples: { atMs: number; total: number }[] = [];

  constructor(windowMs = 10_000) {
    this.#windowMs = windowMs;
  }

  /** Records `total` at `atMs`; a total below the last one (a restart) starts over. */
  add(atMs: number, total: number): void {
    const last = this.#samples.at(-1);
    if (last !== undefined && (total < last.total || atMs < last.atMs)) this.#samples.length = 0;
    this.#samples.push({ atMs, total });
    // Keep one sample at or before the window's start, to span all of it.
    while (this.#samples.length > 2 && this.#samples[1].atMs <= atMs - this.#windowMs) {
      this.#samples.shift();
    }
  }

  /**
   * Per second over the window, up to the last sample, or up to `nowMs`
   * once the last sample is older than `staleMs` (samples stopped: the rate
   * decays); 0 with fewer than two samples.
   */
  perSecond(nowMs: number, staleMs = 2500): number {
    const first = this.#samples[0];
    const last = this.#samples.at(-1);
    if (first === undefined || last === undefined || last === first) return 0;
    const endMs = nowMs - last.atMs > staleMs ? nowMs : last.atMs;
    const spanMs = endMs - first.atMs;
    return spanMs <= 0 ? 0 : ((last.total - first.total) * 1000) / spanMs;
  }
}
