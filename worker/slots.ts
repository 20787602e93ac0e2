/**
 * A worker's job slots, shared fairly by the masters that use it: a slot is
 * taken per job and given back when the job ends (an idle master holds
 * none); when all are busy, jobs wait in one queue per master and the next
 * free slot goes to the masters in turn, so two builds on one farm split it
 * evenly whatever their `-j`.
 */

export class SlotsFullError extends Error {
  override name = "SlotsFullError";
}

export interface FairSlotsOptions {
  slots: number;
  /** Jobs waiting for a slot, over all masters, at most. */
  waitingMax: number;
}

interface Waiter {
  grant: () => void;
  reject: (err: Error) => void;
}

export class FairSlots {
  #slots: number;
  readonly #waitingMax: number;
  #busy = 0;
  /** Per master, its waiting jobs in order; the map's order is the turn order. */
  readonly #queues = new Map<string, Waiter[]>();
  #waiting = 0;
  /** Running jobs per master. */
  readonly #running = new Map<string, number>();

  constructor(options: FairSlotsOptions) {
    this.#slots = options.slots;
    this.#waitingMax = options.waitingMax;
  }

  get busy(): number {
    return this.#busy;
  }

  get waiting(): number {
    return this.#waiting;
  }

  /** Running jobs by master. */
  get running(): ReadonlyMap<string, number> {
    return this.#running;
  }

  /** Changes the number of slots (a drained worker has none for new jobs). */
  resize(slots: number): void {
    this.#slots = slots;
    this.#grant();
  }

  /**
   * Waits for a slot for one of `master`'s jobs; resolves with the function
   * that gives it back (call it once). Rejects when `signal` aborts first, or
   * at once with {@linkcode SlotsFullError} when too many jobs wait.
   */
  acquire(master: string, signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#busy < this.#slots && this.#waiting === 0) {
      return Promise.resolve(this.#take(master));
    }
    if (this.#waiting >= this.#waitingMax) {
      return Promise.reject(
        new SlotsFullError(`Cannot queue the job: ${this.#waitingMax} jobs wait for a slot`),
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve(this.#take(master));
        },
        reject: (err) => {
          signal?.removeEventListener("abort", onAbort);
          reject(err);
        },
      };
      const onAbort = () => {
        const queue = this.#queues.get(master);
        const i = queue?.indexOf(waiter) ?? -1;
        if (queue === undefined || i < 0) return;
        queue.splice(i, 1);
        if (queue.length === 0) this.#queues.delete(master);
        this.#waiting--;
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const queue = this.#queues.get(master);
      if (queue) queue.push(waiter);
      else this.#queues.set(master, [waiter]);
      this.#waiting++;
    });
  }

  /**
   * Rejects every waiting job with the error `reason` makes (a draining
   * worker); running ones keep their slots.
   */
  rejectWaiting(reason: () => Error): void {
    const queues = [...this.#queues.values()];
    this.#queues.clear();
    this.#waiting = 0;
    for (const queue of queues) for (const waiter of queue) waiter.reject(reason());
  }

  #take(master: string): () => void {
    this.#busy++;
    this.#running.set(master, (this.#running.get(master) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#busy--;
      const n = (this.#running.get(master) ?? 1) - 1;
      if (n === 0) this.#running.delete(master);
      else this.#running.set(master, n);
      this.#grant();
    };
  }

  /** Free slots go to the waiting masters in turn. */
  #grant(): void {
    while (this.#busy < this.#slots && this.#waiting > 0) {
      const [master, queue] = this.#queues.entries().next().value!;
      const waiter = queue.shift()!;
      this.#queues.delete(master);
      // Its turn is used: to the back of the line, if it has more.
      if (queue.length > 0) this.#queues.set(master, queue);
      this.#waiting--;
      waiter.grant();
    }
  }
}
