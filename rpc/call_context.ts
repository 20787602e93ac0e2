/**
 * What a handler gets besides its parameters: its call's cancellation, and
 * chunks streamed back to the caller (values, bytes, a file).
 *
 * @module
 */

import { errorMessage } from "../common/errors.ts";
import { FrameError, RpcError } from "./errors.ts";
import {
  allocBytesChunkFrame,
  BYTES_CHUNK_HEADER_BYTES,
  CHUNK_BYTES,
  encodeBytesChunkFrame,
  encodeFrame,
  finishBytesChunkFrame,
  MessageType,
} from "./frame.ts";
import type { RpcPeer } from "./peer.ts";
import type { FrameWriter } from "./writer.ts";

/** What a handler gets besides its parameters. */
export interface CallContext {
  /** Aborted when the caller cancels, the deadline passes, or the connection closes. */
  readonly signal: AbortSignal;
  readonly peer: RpcPeer;
  /**
   * Streams a chunk (a msgpack value, or a `Uint8Array` of at most
   * {@link CHUNK_BYTES}, which is copied) to the caller's `onChunk`.
   * Waits while the connection's send queue is full.
   * @throws {RpcError} `CANCELLED` or `CLOSED` once the caller is gone.
   */
  sendChunk(chunk: unknown): Promise<void>;
  /** Streams `bytes` in chunks of {@link CHUNK_BYTES}. */
  sendBytes(bytes: Uint8Array): Promise<void>;
  /**
   * Streams a file in chunks of {@link CHUNK_BYTES}; returns the bytes sent.
   * @throws {RpcError} `ENOENT`, `EACCES`, `EISDIR` if it cannot be opened.
   */
  sendFile(path: string): Promise<number>;
}

/** The context of one running handler. */
export class Context implements CallContext {
  readonly peer: RpcPeer;
  readonly id: number;
  readonly method: string;
  done = false;
  readonly #writer: FrameWriter;
  #controller: AbortController | undefined;
  #reason: unknown;
  #cancelled = false;

  constructor(peer: RpcPeer, writer: FrameWriter, id: number, method: string) {
    this.peer = peer;
    this.#writer = writer;
    this.id = id;
    this.method = method;
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#cancelled) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  cancel(reason: unknown): void {
    if (this.#cancelled) return;
    this.#cancelled = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }

  async sendChunk(chunk: unknown): Promise<void> {
    this.#check();
    let frame: Uint8Array;
    if (chunk instanceof Uint8Array) {
      if (chunk.length > CHUNK_BYTES) {
        throw new RpcError("LIMIT", `Chunk too large: ${chunk.length} bytes (max ${CHUNK_BYTES})`);
      }
      frame = encodeBytesChunkFrame(this.id, chunk);
    } else {
      try {
        frame = encodeFrame([MessageType.CHUNK, this.id, chunk]);
      } catch (error) {
        const code = error instanceof FrameError ? "LIMIT" : "INTERNAL";
        throw new RpcError(code, `Cannot send chunk: ${errorMessage(error)}`, { cause: error });
      }
    }
    await this.#send(frame);
  }

  async sendBytes(bytes: Uint8Array): Promise<void> {
    for (let offset = 0; offset < bytes.length; offset += CHUNK_BYTES) {
      await this.sendChunk(bytes.subarray(offset, offset + CHUNK_BYTES));
    }
  }

  async sendFile(path: string): Promise<number> {
    this.#check();
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (error) {
      throw fileError(path, error);
    }
    try {
      let total = 0;
      // The first chunk sized to the file, one byte more to see its end in the
      // same chunk: a header takes no 256 KiB frame (allocated, zeroed, and
      // held until written). A file that grew goes on in whole chunks.
      let chunkBytes = CHUNK_BYTES;
      try {
        chunkBytes = Math.min(CHUNK_BYTES, file.statSync().size + 1);
      } catch {
        // (The whole chunk, then.)
      }
      for (;;) {
        const frame = allocBytesChunkFrame(chunkBytes);
        const payload = frame.subarray(BYTES_CHUNK_HEADER_BYTES);
        chunkBytes = CHUNK_BYTES;
        let filled = 0;
        let eof = false;
        while (filled < payload.length) {
          let n: number | null;
          try {
            n = await file.read(payload.subarray(filled));
          } catch (error) {
            throw fileError(path, error);
          }
          if (n === null) {
            eof = true;
            break;
          }
          filled += n;
        }
        if (filled > 0) {
          await this.#send(finishBytesChunkFrame(frame, this.id, filled));
          total += filled;
        }
        if (eof) return total;
      }
    } finally {
      file.close();
    }
  }

  async #send(frame: Uint8Array): Promise<void> {
    this.#check();
    this.#writer.enqueue(frame);
    const backpressure = this.#writer.backpressure();
    if (backpressure !== undefined) {
      await backpressure;
      this.#check();
    }
  }

  #check(): void {
    if (this.#cancelled) {
      throw this.#reason instanceof RpcError
        ? this.#reason
        : new RpcError("CANCELLED", `Call ${this.method} was cancelled`);
    }
    if (this.peer.isClosing) {
      throw new RpcError("CLOSED", `Connection to ${this.peer.remoteAddr} is closed`);
    }
    if (this.done) throw new RpcError("INTERNAL", `Call ${this.method} has already returned`);
    if (this.id === 0) throw new RpcError("INTERNAL", "A notification cannot stream chunks");
  }
}

function fileError(path: string, error: unknown): RpcError {
  if (error instanceof RpcError) return error;
  const reason = errorMessage(error);
  if (error instanceof Deno.errors.NotFound) {
    return new RpcError("ENOENT", `Cannot read ${path}: no such file`, { cause: error });
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return new RpcError("EACCES", `Cannot read ${path}: permission denied`, { cause: error });
  }
  if (error instanceof Deno.errors.IsADirectory) {
    return new RpcError("EISDIR", `Cannot read ${path}: is a directory`, { cause: error });
  }
  return new RpcError("EIO", `Cannot read ${path}: ${reason}`, { cause: error });
}
