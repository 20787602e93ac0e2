/**
 * A job's stdin as it arrives from the wrapper: kept (bounded) so that a job
 * retried on another worker, or run locally at last, gets all of it again.
 */
export class StdinBuffer {
  #chunks: Uint8Array[] = [];
  #bytes = 0;
  #ended = false;
  #listeners = new Set<(chunk: Uint8Array) => void>();
  #bytesMax: number;

  constructor(bytesMax = 64 * 1024 * 1024) {
    this.#bytesMax = bytesMax;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Adds a chunk; an empty chunk ends the input. False when over the limit. */
  push(chunk: Uint8Array): boolean {
    if (this.#ended) return true;
    if (chunk.length === 0) this.#ended = true;
    else {
      this.#bytes += chunk.length;
      if (this.#bytes > this.#bytesMax) return false;
      this.#chunks.push(chunk);
    }
    for (const listener of this.#listeners) listener(chunk);
    return true;
  }

  /** Replays what came so far, then follows; returns an unsubscribe function. */
  follow(listener: (chunk: Uint8Array) => void): () => void {
    for (const chunk of this.#chunks) listener(chunk);
    if (this.#ended) listener(new Uint8Array());
    else this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
