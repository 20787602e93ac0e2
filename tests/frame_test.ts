import assert from "node:assert/strict";
import { encode } from "@msgpack/msgpack";
import {
  decodeMessage,
  encodeBytesChunkFrame,
  encodeFrame,
  FRAME_BYTES_MAX,
  type FrameConn,
  FrameError,
  FrameReader,
  MessageType,
} from "../rpc/mod.ts";

/** A conn that hands out `bytes` in pieces of the given sizes (cycled), then EOF. */
class ScriptedConn implements FrameConn {
  readonly reads: number[] = [];
  #bytes: Uint8Array;
  #offset = 0;
  #sizes: number[];
  #turn = 0;

  constructor(bytes: Uint8Array, sizes: number[] = [Infinity]) {
    this.#bytes = bytes;
    this.#sizes = sizes;
  }

  read(p: Uint8Array): Promise<number | null> {
    if (this.#offset >= this.#bytes.length) return Promise.resolve(null);
    const size = this.#sizes[this.#turn++ % this.#sizes.length];
    const n = Math.min(p.length, size, this.#bytes.length - this.#offset);
    p.set(this.#bytes.subarray(this.#offset, this.#offset + n));
    this.#offset += n;
    this.reads.push(n);
    return Promise.resolve(n);
  }

  write(p: Uint8Array): Promise<number> {
    return Promise.resolve(p.length);
  }

  close(): void {}

  get consumed(): number {
    return this.#offset;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

async function readAll(reader: FrameReader): Promise<Uint8Array[]> {
  const bodies: Uint8Array[] = [];
  for (;;) {
    let body: Uint8Array | undefined;
    while ((body = reader.take()) !== undefined) bodies.push(body);
    if (!(await reader.fill())) return bodies;
  }
}

function lengthPrefix(length: number): Uint8Array {
  const header = new Uint8Array(4);
  new DataView(header.buffer).setUint32(0, length);
  return header;
}

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

const messages: unknown[] = [
  [MessageType.REQUEST, 1, "ping", null],
  [MessageType.REQUEST, 0, "note", { a: [1, 2, 3], s: "x".repeat(300) }],
  [MessageType.RESPONSE, 7, { ok: true }],
  [MessageType.ERROR, 9, "ENOENT", "No such file: /x"],
  [MessageType.CHUNK, 3, new Uint8Array([1, 2, 3])],
  [MessageType.CANCEL, 4],
];

Deno.test("encodeFrame() and decodeMessage() round-trip every message type", () => {
  for (const message of messages) {
    const frame = encodeFrame(message);
    assert.equal(new DataView(frame.buffer).getUint32(0), frame.length - 4);
    assert.deepEqual(decodeMessage(frame.subarray(4)), message);
  }
});

Deno.test("FrameReader reads frames split into one-byte reads", async () => {
  const stream = concat(messages.map((m) => encodeFrame(m)));
  const reader = new FrameReader(new ScriptedConn(stream, [1]));
  const bodies = await readAll(reader);
  assert.deepEqual(bodies.map(decodeMessage), messages);
});

Deno.test("FrameReader reads frames split at odd boundaries", async () => {
  const stream = concat(messages.map((m) => encodeFrame(m)));
  for (const sizes of [[2], [3, 5], [7, 1, 13], [stream.length - 1, 1]]) {
    const reader = new FrameReader(new ScriptedConn(stream, sizes));
    assert.deepEqual((await readAll(reader)).map(decodeMessage), messages);
  }
});

Deno.test("FrameReader cuts many coalesced frames out of one read", async () => {
  const many = Array.from({ length: 500 }, (_, i) => [MessageType.RESPONSE, i + 1, i]);
  const conn = new ScriptedConn(concat(many.map((m) => encodeFrame(m))));
  const reader = new FrameReader(conn);
  assert.equal(await reader.fill(), true);
  assert.equal(conn.reads.length, 1);
  const bodies: Uint8Array[] = [];
  let body: Uint8Array | undefined;
  while ((body = reader.take()) !== undefined) bodies.push(body);
  assert.equal(bodies.length, 500);
  assert.deepEqual(bodies.map(decodeMessage), many);
  assert.equal(await reader.fill(), false);
});

Deno.test("FrameReader reads frames larger than its buffer exactly and keeps the next one", async () => {
  const big = randomBytes(900_000);
  const stream = concat([
    encodeFrame([MessageType.RESPONSE, 1, "before"]),
    encodeBytesChunkFrame(2, big),
    encodeFrame([MessageType.RESPONSE, 3, "after"]),
  ]);
  for (const sizes of [[Infinity], [1000], [65_536, 3], [4, 100_000]]) {
    const reader = new FrameReader(new ScriptedConn(stream, sizes));
    const decoded = (await readAll(reader)).map(decodeMessage);
    assert.equal(decoded.length, 3);
    assert.deepEqual(decoded[0], [MessageType.RESPONSE, 1, "before"]);
    assert.deepEqual(decoded[1], [MessageType.CHUNK, 2, big]);
    assert.deepEqual(decoded[2], [MessageType.RESPONSE, 3, "after"]);
  }
});

Deno.test("FrameReader keeps earlier bodies intact when its buffer is refilled", async () => {
  const payloads = Array.from({ length: 400 }, (_, i) => randomBytes(1000 + (i * 37) % 5000));
  const stream = concat(payloads.map((p, i) => encodeBytesChunkFrame(i + 1, p)));
  const reader = new FrameReader(new ScriptedConn(stream, [3000, 70_000, 17]));
  const bodies = await readAll(reader);
  // Decode only at the end: every body and every binary view must still hold its bytes.
  const decoded = bodies.map(decodeMessage);
  assert.equal(decoded.length, payloads.length);
  decoded.forEach((message, i) =>
    assert.deepEqual(message, [MessageType.CHUNK, i + 1, payloads[i]])
  );
});

Deno.test("FrameReader refuses a length above FRAME_BYTES_MAX before reading the body", async () => {
  const conn = new ScriptedConn(concat([lengthPrefix(FRAME_BYTES_MAX + 1), new Uint8Array(64)]), [
    4,
  ]);
  const reader = new FrameReader(conn);
  await reader.fill();
  assert.throws(() => reader.take(), FrameError);
  assert.equal(conn.consumed, 4);
  const huge = new FrameReader(new ScriptedConn(lengthPrefix(0xffff_ffff)));
  await huge.fill();
  assert.throws(() => huge.take(), /Frame too large: 4294967295 bytes/);
});

Deno.test("FrameReader honours a lowered frameBytesMax", async () => {
  const frame = encodeFrame({ pad: "x".repeat(5000) });
  const reader = new FrameReader(new ScriptedConn(frame), { frameBytesMax: 4096 });
  await reader.fill();
  assert.throws(() => reader.take(), FrameError);
});

Deno.test("FrameReader reports a stream ending inside a frame as truncated", async () => {
  const frame = encodeFrame([MessageType.RESPONSE, 1, "x".repeat(100)]);
  const big = encodeBytesChunkFrame(1, randomBytes(200_000));
  for (const cut of [1, 3, 4, 5, frame.length - 1]) {
    const reader = new FrameReader(new ScriptedConn(frame.subarray(0, cut)));
    await assert.rejects(readAll(reader), (error: Error) => {
      assert(error instanceof FrameError);
      assert.match(error.message, /^Truncated frame/);
      return true;
    });
  }
  const reader = new FrameReader(new ScriptedConn(big.subarray(0, 150_000), [10_000]));
  await assert.rejects(
    readAll(reader),
    /Truncated frame: stream ended after 150000 of 200016 bytes/,
  );
});

Deno.test("FrameReader ends cleanly at a frame boundary", async () => {
  const reader = new FrameReader(new ScriptedConn(new Uint8Array(0)));
  assert.deepEqual(await readAll(reader), []);
});

Deno.test("decodeMessage() rejects garbage with FrameError", () => {
  const bad: Uint8Array[] = [
    new Uint8Array(0),
    new Uint8Array([0xc1]), // never used
    new Uint8Array([0x93, 0x00]), // array of 3 with 1 element
    new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff]), // array claiming 4G elements
    new Uint8Array([0xc6, 0x7f, 0xff, 0xff, 0xff]), // bin claiming 2 GiB
    concat([encode([MessageType.CANCEL, 1]), new Uint8Array([0])]), // trailing byte
  ];
  for (let i = 0; i < 200; i++) bad.push(randomBytes(1 + (i % 40)));
  for (const body of bad) {
    assert.throws(() => decodeMessage(body), FrameError);
  }
});

Deno.test("decodeMessage() rejects well-formed msgpack of the wrong shape", () => {
  const shapes: unknown[] = [
    null,
    42,
    "ping",
    { type: 0 },
    [],
    [MessageType.REQUEST],
    [9, 1],
    ["0", 1, "m", null],
    [MessageType.REQUEST, -1, "m", null],
    [MessageType.REQUEST, 1.5, "m", null],
    [MessageType.REQUEST, 2 ** 32, "m", null],
    [MessageType.REQUEST, 1, "", null],
    [MessageType.REQUEST, 1, 7, null],
    [MessageType.REQUEST, 1, "m".repeat(257), null],
    [MessageType.REQUEST, 1, "m"],
    [MessageType.REQUEST, 1, "m", null, "extra"],
    [MessageType.RESPONSE, 0, null],
    [MessageType.RESPONSE, 1],
    [MessageType.ERROR, 1, 5, "message"],
    [MessageType.ERROR, 1, "CODE", null],
    [MessageType.ERROR, 1, "C".repeat(65), "message"],
    [MessageType.CHUNK, 0, new Uint8Array(1)],
    [MessageType.CANCEL, 0],
    [MessageType.CANCEL, 1, 2],
    [{ toString: 1, valueOf: 2 }, 1], // found by the fuzzer: String() on this throws
    [MessageType.REQUEST, { toString: 1 }, "m", null],
  ];
  for (const shape of shapes) {
    assert.throws(() => decodeMessage(encode(shape)), FrameError, JSON.stringify(shape));
  }
});

Deno.test("encodeFrame() refuses a body above the limit", () => {
  assert.throws(() => encodeFrame(new Uint8Array(FRAME_BYTES_MAX)), FrameError);
  assert.throws(() => encodeFrame("x".repeat(100), 50), /Frame too large: 102 bytes \(max 50\)/);
});
