/**
 * A remote attempt's output, held back so that a retry elsewhere does not
 * print it twice.
 *
 * @module
 */
import type { JobIo } from "./master_types.ts";

/** Output of a remote attempt held back (so that a retry does not print it twice), at most. */
export const OUTPUT_HOLD_BYTES_MAX = 1 << 20;
/** While the job runs, output is held this long after its first byte at most. */
export const OUTPUT_HOLD_MS = 2_000;

/**
 * A remote attempt's output, held until the attempt succeeds so that a retry
 * elsewhere does not repeat it, unless it grows past a size or age: then it
 * is forwarded and the attempt is committed (a failure is no longer retried).
 */
export class OutputHold {
  #io: JobIo;
  #held: { fd: 1 | 2; data: Uint8Array }[] = [];
  #bytes = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timed = true;
  #chain: Promise<void> = Promise.resolve();
  committed = false;

  constructor(io: JobIo) {
    this.#io = io;
  }

  write(fd: 1 | 2, data: Uint8Array): Promise<void> {
    if (this.committed) return this.#then(() => this.#forward(fd, data));
    this.#held.push({ fd, data });
    this.#bytes += data.length;
    if (this.#bytes > OUTPUT_HOLD_BYTES_MAX) return this.flush();
    if (this.#timed && this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush().catch(() => {}), OUTPUT_HOLD_MS);
    }
    return Promise.resolve();
  }

  /** The job ended: hold what it printed until the result is applied. */
  stopTimer(): void {
    this.#timed = false;
    clearTimeout(this.#timer);
  }

  /** Forwards what is held; from now on the attempt's output goes straight through. */
  flush(): Promise<void> {
    clearTimeout(this.#timer);
    this.committed = true;
    const held = this.#held.splice(0);
    this.#bytes = 0;
    return this.#then(async () => {
      for (const { fd, data } of held) await this.#forward(fd, data);
    });
  }

  /** The attempt failed before anything was forwarded. */
  discard(): void {
    clearTimeout(this.#timer);
    this.#held = [];
    this.#bytes = 0;
  }

  #forward(fd: 1 | 2, data: Uint8Array): Promise<void> {
    return fd === 1 ? this.#io.stdout(data) : this.#io.stderr(data);
  }

  #then(fn: () => Promise<void>): Promise<void> {
    this.#chain = this.#chain.then(fn);
    return this.#chain;
  }
}
