/**
 * The sending half of a connection: a queue of encoded frames written by one
 * loop, small frames coalesced into one `write`.
 *
 * @module
 */

import { RpcError } from "./errors.ts";
import { type FrameConn, writeAll } from "./frame.ts";

/** Above this many queued bytes, senders that can wait do (backpressure). */
export const WRITE_HIGH_WATER_BYTES = 1 << 20;
/** Waiting senders resume when the queue is down to this. */
export const WRITE_LOW_WATER_BYTES = 256 * 1024;
/** Size of the buffer small frames are coalesced in. */
const WRITE_BATCH_BYTES = 64 * 1024;
/** Frames this large are written as they are, not copied into the batch. */
const WRITE_DIRECT_BYTES = 16 * 1024;

interface WrittenWaiter {
  seq: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** Writes frames in order; see the module documentation. */
export class FrameWriter {
  readonly #conn: FrameConn;
  readonly #onError: (error: unknown) => void;
  #queue: Uint8Array[] = [];
  #spare: Uint8Array[] = [];
  #queuedBytes = 0;
  #queuedSeq = 0;
  #writtenSeq = 0;
  #writing = false;
  #closed: RpcError | undefined;
  #batch: Uint8Array | undefined;
  #drain: PromiseWithResolvers<void> | undefined;
  #idle: PromiseWithResolvers<void> | undefined;
  #writtenWaiters: WrittenWaiter[] = [];

  /** `onError` is called once if a write fails. */
  constructor(conn: FrameConn, onError: (error: unknown) => void) {
    this.#conn = conn;
    this.#onError = onError;
  }

  /** Bytes queued but not yet written. */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** True when nothing is queued or being written. */
  get idle(): boolean {
    return !this.#writing && this.#queue.length === 0;
  }

  /**
   * Queues a frame; it is written after every frame queued before it.
   * The frame must not be modified afterwards.
   * @returns its sequence number, for {@link written}.
   * @throws {RpcError} `CLOSED` once {@link close} was called.
   */
  enqueue(frame: Uint8Array): number {
    if (this.#closed !== undefined) throw this.#closed;
    this.#queue.push(frame);
    this.#queuedBytes += frame.length;
    if (!this.#writing) {
      this.#writing = true;
      this.#flush();
    }
    return ++this.#queuedSeq;
  }

  /**
   * A promise to wait on when more than {@link WRITE_HIGH_WATER_BYTES} are
   * queued, else `undefined`. It resolves when the queue drained to
   * {@link WRITE_LOW_WATER_BYTES} or the writer closed.
   */
  backpressure(): Promise<void> | undefined {
    if (this.#queuedBytes <= WRITE_HIGH_WATER_BYTES || this.#closed !== undefined) {
      return undefined;
    }
    this.#drain ??= Promise.withResolvers<void>();
    return this.#drain.promise;
  }

  /** Resolves once the frame with sequence number `seq` was written. */
  written(seq: number): Promise<void> {
    if (seq <= this.#writtenSeq) return Promise.resolve();
    if (this.#closed !== undefined) return Promise.reject(this.#closed);
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.#writtenWaiters.push({ seq, resolve, reject });
    return promise;
  }

  /** Resolves when nothing is queued or being written. */
  whenIdle(): Promise<void> {
    if (this.idle) return Promise.resolve();
    this.#idle ??= Promise.withResolvers<void>();
    return this.#idle.promise;
  }

  /**
   * Refuses further frames; frames already queued are still written unless
   * the connection is closed under them.
   */
  close(error: RpcError): void {
    if (this.#closed !== undefined) return;
    this.#closed = error;
    this.#releaseDrain();
  }

  async #flush(): Promise<void> {
    // Let frames queued in the same tick join the first write.
    await undefined;
    try {
      while (this.#queue.length > 0) {
        const frames = this.#queue;
        this.#queue = this.#spare;
        let bytes = 0;
        if (frames.length === 1) {
          bytes = frames[0].length;
          await writeAll(this.#conn, frames[0]);
        } else {
          const batch = this.#batch ??= new Uint8Array(WRITE_BATCH_BYTES);
          let used = 0;
          for (const frame of frames) {
            bytes += frame.length;
            if (frame.length >= WRITE_DIRECT_BYTES) {
              if (used > 0) await writeAll(this.#conn, batch.subarray(0, used));
              used = 0;
              await writeAll(this.#conn, frame);
              continue;
            }
            if (used + frame.length > batch.length) {
              await writeAll(this.#conn, batch.subarray(0, used));
              used = 0;
            }
            batch.set(frame, used);
            used += frame.length;
          }
          if (used > 0) await writeAll(this.#conn, batch.subarray(0, used));
        }
        frames.length = 0;
        this.#spare = frames;
        this.#queuedBytes -= bytes;
        this.#writtenSeq = this.#queuedSeq - this.#queue.length;
        this.#releaseWritten();
        if (this.#queuedBytes <= WRITE_LOW_WATER_BYTES) this.#releaseDrain();
      }
    } catch (error) {
      this.#queue = [];
      this.#queuedBytes = 0;
      const closed = new RpcError("CLOSED", "Connection closed while writing", { cause: error });
      this.close(closed);
      for (const waiter of this.#writtenWaiters.splice(0)) waiter.reject(closed);
      this.#onError(error);
    } finally {
      this.#writing = false;
      const idle = this.#idle;
      this.#idle = undefined;
      idle?.resolve();
    }
  }

  #releaseWritten(): void {
    const waiters = this.#writtenWaiters;
    let i = 0;
    while (i < waiters.length && waiters[i].seq <= this.#writtenSeq) waiters[i++].resolve();
    if (i > 0) waiters.splice(0, i);
  }

  #releaseDrain(): void {
    const drain = this.#drain;
    this.#drain = undefined;
    drain?.resolve();
  }
}
