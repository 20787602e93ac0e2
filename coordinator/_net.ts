/**
 * Small helpers shared by the coordinator's client side: reconnect backoff,
 * an abortable sleep, error messages. Addresses are parsed by common/address.ts.
 *
 * @module
 */

/** Exponential backoff with jitter, for reconnect loops. */
export class Backoff {
  readonly #minMs: number;
  readonly #maxMs: number;
  #nextMs: number;

  constructor(minMs: number, maxMs: number) {
    this.#minMs = Math.max(1, minMs);
    this.#maxMs = Math.max(this.#minMs, maxMs);
    this.#nextMs = this.#minMs;
  }

  /** The delay before the next attempt; each call doubles the following one. */
  next(): number {
    const baseMs = this.#nextMs;
    this.#nextMs = Math.min(this.#maxMs, this.#nextMs * 2);
    // ±20 % jitter so that many clients do not reconnect in lockstep.
    return Math.round(baseMs * (0.8 + 0.4 * Math.random()));
  }

  /** Starts over from the shortest delay, after a success. */
  reset(): void {
    this.#nextMs = this.#minMs;
  }
}

/**
 * Resolves after `ms`, or at once when `signal` aborts. Never rejects, and
 * leaves no timer behind.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A message for an unknown thrown value. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === "string" ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
