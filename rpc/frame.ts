/**
 * Framing: every message is a u32 big-endian body length followed by a
 * msgpack body. The length is checked against a maximum before anything is
 * allocated; reads are exact (a frame is complete or the stream is broken).
 *
 * @module
 */

import { Decoder, Encoder } from "@msgpack/msgpack";
import { errorMessage } from "../common/errors.ts";
import { FrameError } from "./errors.ts";

/** Version spoken in the handshake; peers with another version are refused. */
export const PROTOCOL_VERSION = 1;
/** Default largest frame body, in bytes. */
export const FRAME_BYTES_MAX = 1 << 20;
/** Size of the chunks blobs are streamed in. */
export const CHUNK_BYTES = 256 * 1024;
/** Bytes of the frame length prefix. */
export const FRAME_HEADER_BYTES = 4;

/** Size of the reusable read buffer; larger frames get a buffer of their own. */
const READ_BUFFER_BYTES = 64 * 1024;

/** A byte stream: `Deno.Conn` or anything shaped like it (tests, fuzzing). */
export interface FrameConn {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/** Message kinds, the first element of every post-handshake message array. */
export const MessageType = {
  /** `[0, id, method, params]`; id 0 is a notification (no reply). */
  REQUEST: 0,
  /** `[1, id, result]` */
  RESPONSE: 1,
  /** `[2, id, code, message]` */
  ERROR: 2,
  /** `[3, id, chunk]`: a streamed chunk of the reply to call `id`. */
  CHUNK: 3,
  /** `[4, id]`: the caller gave up on call `id`. */
  CANCEL: 4,
} as const;

/** A validated post-handshake message. */
export type Message =
  | [typeof MessageType.REQUEST, number, string, unknown]
  | [typeof MessageType.RESPONSE, number, unknown]
  | [typeof MessageType.ERROR, number, string, string]
  | [typeof MessageType.CHUNK, number, unknown]
  | [typeof MessageType.CANCEL, number];

/** Longest method name accepted. */
export const METHOD_LENGTH_MAX = 256;
/** Longest error code accepted. */
export const CODE_LENGTH_MAX = 64;

const ID_MAX = 0xffff_ffff;

const encoder = new Encoder({ initialBufferSize: 4096 });
const decoder = new Decoder({
  // Each element takes at least one byte, so nothing legitimate is refused,
  // and a tiny frame cannot make the decoder allocate a huge array.
  maxArrayLength: FRAME_BYTES_MAX,
  maxMapLength: FRAME_BYTES_MAX,
});

/** Encodes `value` as one frame (length prefix plus msgpack body). */
export function encodeFrame(value: unknown, frameBytesMax: number = FRAME_BYTES_MAX): Uint8Array {
  const body = encoder.encodeSharedRef(value);
  if (body.length > frameBytesMax) {
    throw new FrameError(
      `Frame too large: ${body.length} bytes (max ${frameBytesMax})`,
    );
  }
  const frame = new Uint8Array(FRAME_HEADER_BYTES + body.length);
  writeU32(frame, 0, body.length);
  frame.set(body, FRAME_HEADER_BYTES);
  return frame;
}

/** Bytes in front of the payload in a frame made by {@link allocBytesChunkFrame}. */
export const BYTES_CHUNK_HEADER_BYTES = FRAME_HEADER_BYTES + 1 + 1 + 5 + 5;

/**
 * Allocates a `[CHUNK, id, <bin>]` frame with room for `payloadBytes`
 * bytes at offset {@link BYTES_CHUNK_HEADER_BYTES}; fill them in, then call
 * {@link finishBytesChunkFrame} with the length actually used.
 */
export function allocBytesChunkFrame(payloadBytes: number): Uint8Array {
  return new Uint8Array(BYTES_CHUNK_HEADER_BYTES + payloadBytes);
}

/** Writes the header of a frame made by {@link allocBytesChunkFrame}; returns the frame. */
export function finishBytesChunkFrame(
  frame: Uint8Array,
  id: number,
  payloadBytes: number,
): Uint8Array {
  const bodyBytes = BYTES_CHUNK_HEADER_BYTES - FRAME_HEADER_BYTES + payloadBytes;
  writeU32(frame, 0, bodyBytes);
  frame[4] = 0x93; // fixarray of 3
  frame[5] = MessageType.CHUNK; // positive fixint
  frame[6] = 0xce; // uint32
  writeU32(frame, 7, id);
  frame[11] = 0xc6; // bin32
  writeU32(frame, 12, payloadBytes);
  return frame.subarray(0, BYTES_CHUNK_HEADER_BYTES + payloadBytes);
}

/** Encodes a `[CHUNK, id, bytes]` frame, copying `bytes`. */
export function encodeBytesChunkFrame(id: number, bytes: Uint8Array): Uint8Array {
  const frame = allocBytesChunkFrame(bytes.length);
  frame.set(bytes, BYTES_CHUNK_HEADER_BYTES);
  return finishBytesChunkFrame(frame, id, bytes.length);
}

/** Decodes a frame body; any msgpack error becomes a {@link FrameError}. */
export function decodeBody(body: Uint8Array): unknown {
  try {
    return decoder.decode(body);
  } catch (error) {
    throw new FrameError(`Cannot decode frame: ${errorMessage(error)}`, { cause: error });
  }
}

/** Names an untrusted decoded value without calling anything on it. */
export function describe(value: unknown): string {
  switch (typeof value) {
    case "number":
    case "boolean":
      return String(value);
    case "string":
      return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
    default:
      if (value === null) return "null";
      if (value instanceof Uint8Array) return `${value.length} bytes`;
      return Array.isArray(value) ? "an array" : `a ${typeof value}`;
  }
}

function isId(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= ID_MAX;
}

/**
 * Decodes and checks the shape of a post-handshake message.
 * @throws {FrameError} on anything but a well-formed message.
 */
export function decodeMessage(body: Uint8Array): Message {
  const message = decodeBody(body);
  if (!Array.isArray(message) || message.length < 2) {
    throw new FrameError("Malformed message: not an array of at least two elements");
  }
  const [type, id] = message;
  if (!isId(id)) throw new FrameError(`Malformed message: bad id ${describe(id)}`);
  switch (type) {
    case MessageType.REQUEST: {
      const method = message[2];
      if (
        message.length !== 4 || typeof method !== "string" || method.length === 0 ||
        method.length > METHOD_LENGTH_MAX
      ) {
        throw new FrameError("Malformed request");
      }
      return message as Message;
    }
    case MessageType.RESPONSE:
    case MessageType.CHUNK:
      if (message.length !== 3 || id === 0) {
        throw new FrameError(`Malformed ${type === MessageType.CHUNK ? "chunk" : "response"}`);
      }
      return message as Message;
    case MessageType.ERROR:
      if (
        message.length !== 4 || id === 0 || typeof message[2] !== "string" ||
        message[2].length > CODE_LENGTH_MAX || typeof message[3] !== "string"
      ) {
        throw new FrameError("Malformed error reply");
      }
      return message as Message;
    case MessageType.CANCEL:
      if (message.length !== 2 || id === 0) throw new FrameError("Malformed cancel");
      return message as Message;
    default:
      throw new FrameError(`Malformed message: unknown type ${describe(type)}`);
  }
}

/**
 * Reads frames from a byte stream. Small frames are cut out of a shared
 * buffer (several per read); a frame larger than the buffer is read with
 * exact-length reads into a buffer of its own.
 *
 * Returned bodies stay valid: a buffer that bodies were handed out from is
 * never overwritten (a new one is allocated instead), so decoded binary
 * values may keep pointing into it.
 *
 * Use: `take()` until it returns `undefined`, then `await fill()`; `fill()`
 * returns false at a clean end of stream.
 */
export class FrameReader {
  /** Largest body accepted; may be raised after the handshake. */
  frameBytesMax: number;
  readonly #conn: FrameConn;
  #buf: Uint8Array = new Uint8Array(READ_BUFFER_BYTES);
  #start = 0;
  #end = 0;
  /** Whether bodies were handed out from `#buf`. */
  #shared = false;
  /** A complete large frame body read into its own buffer. */
  #large: Uint8Array | undefined;

  constructor(conn: FrameConn, options?: { frameBytesMax?: number }) {
    this.#conn = conn;
    this.frameBytesMax = options?.frameBytesMax ?? FRAME_BYTES_MAX;
  }

  /** Bytes received but not yet returned as frames. */
  get bufferedBytes(): number {
    return this.#end - this.#start;
  }

  /**
   * The next complete frame body already received, or `undefined`.
   * @throws {FrameError} if the next frame's length is above `frameBytesMax`.
   */
  take(): Uint8Array | undefined {
    const large = this.#large;
    if (large !== undefined) {
      this.#large = undefined;
      return large;
    }
    const available = this.#end - this.#start;
    if (available < FRAME_HEADER_BYTES) return undefined;
    const length = this.#checkedLength();
    if (available < FRAME_HEADER_BYTES + length) return undefined;
    const start = this.#start + FRAME_HEADER_BYTES;
    this.#start = start + length;
    this.#shared = true;
    return this.#buf.subarray(start, start + length);
  }

  /**
   * Reads more bytes; call when {@link take} returned `undefined`.
   * @returns false at a clean end of stream (no partial frame).
   * @throws {FrameError} if the stream ends inside a frame.
   */
  async fill(): Promise<boolean> {
    const available = this.#end - this.#start;
    if (available >= FRAME_HEADER_BYTES) {
      const length = this.#checkedLength();
      if (FRAME_HEADER_BYTES + length > this.#buf.length) {
        await this.#readLarge(length);
        return true;
      }
    }
    if (this.#end === this.#buf.length) this.#compact();
    const n = await this.#conn.read(this.#buf.subarray(this.#end));
    if (n === null) {
      if (this.#end > this.#start) {
        throw new FrameError(
          `Truncated frame: stream ended after ${this.#end - this.#start} bytes`,
        );
      }
      return false;
    }
    this.#end += n;
    return true;
  }

  #checkedLength(): number {
    const length = readU32(this.#buf, this.#start);
    if (length > this.frameBytesMax) {
      // A TLS record header (content type 20..23, version 3.x) read as a length.
      const tls = length >>> 24 >= 0x14 && length >>> 24 <= 0x17 && (length >>> 16 & 0xff) === 3;
      throw new FrameError(
        `Frame too large: ${length} bytes (max ${this.frameBytesMax})` +
          (tls ? ": the peer speaks TLS, this side plain TCP (--tls-ca on one side only?)" : ""),
      );
    }
    return length;
  }

  /** Moves the partial frame at `#start` to the front of a buffer. */
  #compact(): void {
    const available = this.#end - this.#start;
    if (this.#shared) {
      const buf = new Uint8Array(READ_BUFFER_BYTES);
      buf.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = buf;
      this.#shared = false;
    } else {
      this.#buf.copyWithin(0, this.#start, this.#end);
    }
    this.#start = 0;
    this.#end = available;
  }

  async #readLarge(length: number): Promise<void> {
    const body = new Uint8Array(length);
    const have = this.#end - this.#start - FRAME_HEADER_BYTES;
    body.set(this.#buf.subarray(this.#start + FRAME_HEADER_BYTES, this.#end));
    // Empty; the next fill() compacts (or replaces a shared buffer).
    this.#start = this.#end = this.#buf.length;
    let filled = have;
    while (filled < length) {
      const n = await this.#conn.read(body.subarray(filled));
      if (n === null) {
        throw new FrameError(
          `Truncated frame: stream ended after ${FRAME_HEADER_BYTES + filled} of ${
            FRAME_HEADER_BYTES + length
          } bytes`,
        );
      }
      filled += n;
    }
    this.#large = body;
  }
}

/** Writes all of `bytes` (a single `write` may be short). */
export async function writeAll(conn: FrameConn, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    done += await conn.write(done === 0 ? bytes : bytes.subarray(done));
  }
}

/** Closes `conn`, ignoring "already closed". */
export function closeQuietly(conn: { close(): void }): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

function readU32(buf: Uint8Array, offset: number): number {
  return (
    buf[offset] * 0x100_0000 + ((buf[offset + 1] << 16) | (buf[offset + 2] << 8) | buf[offset + 3])
  );
}

function writeU32(buf: Uint8Array, offset: number, value: number): void {
  buf[offset] = value >>> 24;
  buf[offset + 1] = (value >>> 16) & 0xff;
  buf[offset + 2] = (value >>> 8) & 0xff;
  buf[offset + 3] = value & 0xff;
}
