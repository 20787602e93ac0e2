/**
 * A concurrency limit with two priorities, for calls over the master link:
 * foreground work (a kernel request is waiting) goes before background work
 * (content prefetch), and background work may never take the last slots.
 *
 * @module
 */

interface Waiter {
  resolve(): void;
  reject(reason: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** Options of {@linkcode Limiter.run}. */
export interface LimiterRunOptions {
  /** Background work: queued behind foreground work, limited to `backgroundMax` slots. */
  background?: boolean;
  /** Gives up waiting for a slot (rejects with the signal's reason). */
  signal?: AbortSignal;
}

export class Limiter {
  readonly max: number;
  readonly backgroundMax: number;
  #active = 0;
  #backgroundActive = 0;
  readonly #foreground: Waiter[] = [];
  readonly #background: Waiter[] = [];

  /** At most `max` tasks at once, of which at most `backgroundMax` background ones. */
  constructor(options: { max: number; backgroundMax: number }) {
    if (!(options.max >= 1) || !(options.backgroundMax >= 0)) {
      throw new RangeError(`Cannot create limiter: bad limits: ${JSON.stringify(options)}`);
    }
    this.max = options.max;
    this.backgroundMax = Math.min(options.backgroundMax, options.max);
  }

  /** Tasks running now. */
  get active(): number {
    return this.#active;
  }

  /** Tasks waiting for a slot. */
  get waiting(): number {
    return this.#foreground.length + this.#background.length;
  }

  /** Runs `task` once a slot is free. */
  async run<T>(task: () => Promise<T>, options: LimiterRunOptions = {}): Promise<T> {
    const background = options.background === true;
    await this.#acquire(background, options.signal);
    try {
      return await task();
    } finally {
      this.#active--;
      if (background) this.#backgroundActive--;
      this.#dispatch();
    }
  }

  #canStart(background: boolean): boolean {
    if (this.#active >= this.max) return false;
    return !background || this.#backgroundActive < this.backgroundMax;
  }

  #acquire(background: boolean, signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted();
    const queue = background ? this.#background : this.#foreground;
    if (
      queue.length === 0 && this.#canStart(background) &&
      (background ? this.#foreground.length === 0 : true)
    ) {
      this.#active++;
      if (background) this.#backgroundActive++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const index = queue.indexOf(waiter);
          if (index >= 0) queue.splice(index, 1);
          reject(signal.reason);
        };
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      queue.push(waiter);
    });
  }

  #dispatch(): void {
    while (this.#foreground.length > 0 && this.#canStart(false)) {
      this.#start(this.#foreground.shift()!, false);
    }
    while (
      this.#foreground.length === 0 && this.#background.length > 0 && this.#canStart(true)
    ) {
      this.#start(this.#background.shift()!, true);
    }
  }

  #start(waiter: Waiter, background: boolean): void {
    if (waiter.onAbort) waiter.signal?.removeEventListener("abort", waiter.onAbort);
    this.#active++;
    if (background) this.#backgroundActive++;
    waiter.resolve();
  }
}
