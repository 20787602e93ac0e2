/**
 * Fuzzes a live server over loopback TCP with random and mutated frames,
 * before and after authentication. The server must never crash, must drop
 * exactly the connections that sent something bad (and log each), must never
 * run a handler for an unauthenticated peer, and must still serve a good
 * client at the end.
 *
 * Reproduce a failure with `FUZZ_SEED=<seed printed on failure>`.
 */

import assert from "node:assert/strict";
import { encode } from "@msgpack/msgpack";
import {
  AuthError,
  CHALLENGE_BYTES,
  clientHandshake,
  connect,
  decodeBody,
  decodeMessage,
  encodeFrame,
  FRAME_BYTES_MAX,
  type FrameConn,
  FrameError,
  FrameReader,
  HANDSHAKE_MAGIC,
  listen,
  MessageType,
  PROTOCOL_VERSION,
  RpcError,
  secretFromBytes,
  writeAll,
} from "../rpc/mod.ts";
import { Fuzz, FUZZ_SEED } from "./_fuzz.ts";

const SEED = FUZZ_SEED;
const HANDSHAKE_CONNECTIONS = 5000;
const SESSION_CONNECTIONS = 4000;
const PARALLEL = 16;
const PING_ID = 0xffff_fff0;

/** The shared generator, aimed at the RPC layer's method names and integer edges. */
class RpcFuzz extends Fuzz {
  protected override numbers: readonly number[] = [
    0,
    1,
    -1,
    127,
    128,
    255,
    65535,
    2 ** 32,
    -(2 ** 31),
    2 ** 53 - 1,
  ];
  override string(): string {
    return this.pick([
      "",
      "echo",
      "ping",
      "touch",
      "preauth",
      "__proto__",
      "constructor",
      "toString",
      "x".repeat(this.int(300)),
      String.fromCharCode(...Array.from({ length: this.int(12) }, () => this.int(0x3000))),
    ]);
  }
  id(): number {
    return this.pick([0, 1, 2, this.int(2000), 0xffff_ffff, this.int(2 ** 32)]);
  }
  /** A well-formed post-handshake message of any type. */
  message(): unknown[] {
    switch (this.int(6)) {
      case 0:
      case 1:
        return [
          MessageType.REQUEST,
          this.id(),
          this.pick(["echo", "echo", "fail", "nope", "touch", "constructor"]),
          this.value(),
        ];
      case 2:
        return [MessageType.RESPONSE, 1 + this.int(5000), this.value()];
      case 3:
        return [MessageType.ERROR, 1 + this.int(5000), "ENOENT", this.string()];
      case 4:
        return [
          MessageType.CHUNK,
          1 + this.int(5000),
          this.chance(0.5) ? this.bytes(100) : this.value(),
        ];
      default:
        return [MessageType.CANCEL, 1 + this.int(5000)];
    }
  }
}

function frameOf(body: Uint8Array): Uint8Array {
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  return frame;
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

/** A conn over fixed bytes, to predict what the server makes of a stream. */
function bytesConn(bytes: Uint8Array): FrameConn {
  let offset = 0;
  return {
    read(p) {
      if (offset >= bytes.length) return Promise.resolve(null);
      const n = Math.min(p.length, bytes.length - offset);
      p.set(bytes.subarray(offset, offset + n));
      offset += n;
      return Promise.resolve(n);
    },
    write: (p) => Promise.resolve(p.length),
    close() {},
  };
}

/**
 * Parses `stream` the way an authenticated server does.
 * @returns how many frames were looked at and whether the ping was reached.
 */
async function predict(
  stream: Uint8Array,
  ping: unknown[],
): Promise<{ frames: number; pingReached: boolean; bad: boolean }> {
  const reader = new FrameReader(bytesConn(stream));
  let frames = 0;
  try {
    for (;;) {
      let body: Uint8Array | undefined;
      while ((body = reader.take()) !== undefined) {
        frames++;
        const message = decodeMessage(body);
        if (
          message[0] === MessageType.REQUEST && message[1] === PING_ID && message[2] === "ping" &&
          message[3] === ping[3]
        ) {
          return { frames, pingReached: true, bad: false };
        }
      }
      if (!(await reader.fill())) return { frames, pingReached: false, bad: false };
    }
  } catch (error) {
    if (!(error instanceof FrameError)) throw error;
    return { frames: frames || 1, pingReached: false, bad: true };
  }
}

/** Reads frames until the server closes; returns the decoded bodies. */
async function drain(conn: Deno.Conn, reader: FrameReader, stop?: (m: unknown) => boolean) {
  const messages: unknown[] = [];
  const timer = setTimeout(() => conn.close(), 20_000);
  try {
    for (;;) {
      let body: Uint8Array | undefined;
      while ((body = reader.take()) !== undefined) {
        const message = decodeBody(body);
        messages.push(message);
        if (stop?.(message)) return { messages, closed: false };
      }
      if (!(await reader.fill())) return { messages, closed: true };
    }
  } catch (error) {
    if (error instanceof Deno.errors.ConnectionReset) return { messages, closed: true };
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** One unauthenticated connection sending a damaged handshake. Returns frames sent. */
async function fuzzHandshake(fuzz: RpcFuzz, port: number): Promise<number> {
  const challenge = fuzz.bytes(CHALLENGE_BYTES);
  const hello: Record<string, unknown> = {
    m: HANDSHAKE_MAGIC,
    v: PROTOCOL_VERSION,
    r: fuzz.pick(["worker", "master", "coordinator"]),
    c: challenge,
  };
  const frames: Uint8Array[] = [];
  switch (fuzz.int(5)) {
    case 0: // random bytes
      frames.push(fuzz.bytes(fuzz.int(200)));
      break;
    case 1: // a damaged hello
      frames.push(fuzz.mutate(encodeFrame(hello)));
      break;
    case 2: { // a hello with a bad field
      const field = fuzz.pick(["m", "v", "r", "c", "extra"]);
      frames.push(encodeFrame({ ...hello, [field]: fuzz.value() }));
      break;
    }
    case 3: // a random msgpack value as hello
      frames.push(frameOf(encode(fuzz.value())));
      break;
    default: { // a good hello, then a wrong or damaged proof and pipelined requests
      frames.push(encodeFrame(hello));
      const proof = fuzz.chance(0.5) ? { p: fuzz.bytes(32) } : fuzz.value();
      const frame = encodeFrame(proof);
      frames.push(fuzz.chance(0.5) ? fuzz.mutate(frame) : frame);
      frames.push(encodeFrame([MessageType.REQUEST, 1, "preauth", null]));
    }
  }
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(conn, concat(frames)).catch(() => {});
    await conn.closeWrite().catch(() => {});
    const { messages, closed } = await drain(conn, new FrameReader(conn));
    assert(closed);
    for (const message of messages) {
      assert.notDeepEqual(message, { ok: true }, "an unauthenticated peer was accepted");
    }
  } finally {
    conn.close();
  }
  return frames.length;
}

/** One authenticated connection sending a batch of frames. */
async function fuzzSession(
  fuzz: RpcFuzz,
  port: number,
  secret: CryptoKey,
): Promise<{ frames: number; bad: boolean }> {
  const parts: Uint8Array[] = [];
  const badRate = fuzz.pick([0, 0.01, 0.03, 0.1]);
  for (let n = 1 + fuzz.int(60); n > 0; n--) {
    const roll = fuzz.random();
    if (roll >= badRate) {
      parts.push(encodeFrame(fuzz.message()));
      continue;
    }
    switch (fuzz.int(5)) {
      case 0: { // damaged body, correct length
        const frame = encodeFrame(fuzz.message());
        parts.push(frameOf(fuzz.mutate(frame.subarray(4))));
        break;
      }
      case 1: // damaged frame, length included
        parts.push(fuzz.mutate(encodeFrame(fuzz.message())));
        break;
      case 2: // random body
        parts.push(frameOf(fuzz.bytes(fuzz.int(100))));
        break;
      case 3: // wrong shape
        parts.push(frameOf(encode(fuzz.value())));
        break;
      default: { // a length above the limit (truncated, no body follows)
        const header = new Uint8Array(4);
        new DataView(header.buffer).setUint32(0, FRAME_BYTES_MAX + 1 + fuzz.int(1 << 30));
        parts.push(header);
      }
    }
  }
  const nonce = fuzz.int(1 << 30);
  const ping = [MessageType.REQUEST, PING_ID, "ping", nonce];
  parts.push(encodeFrame(ping));
  const stream = concat(parts);
  const expected = await predict(stream, ping);

  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const { reader } = await clientHandshake(conn, { secret, role: "master" });
    await writeAll(conn, stream).catch(() => {});
    await conn.closeWrite().catch(() => {});
    const isPong = (m: unknown) =>
      Array.isArray(m) && m[0] === MessageType.RESPONSE && m[1] === PING_ID && m[2] === nonce;
    const { messages } = await drain(conn, reader, isPong);
    const answered = messages.some(isPong);
    assert.equal(
      answered,
      expected.pingReached,
      `stream ${stream.length} bytes, ${JSON.stringify(expected)}`,
    );
  } finally {
    conn.close();
  }
  return { frames: expected.frames, bad: !expected.pingReached };
}

Deno.test("a live server survives 10,000+ random and mutated frames and handshakes", async () => {
  console.log(`FUZZ_SEED=${SEED}`);
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const logs: string[] = [];
  let preauthCalls = 0;
  const server = listen({
    transport: "tcp",
    secret,
    role: "worker",
    log: (message) => logs.push(message),
    handshakeTimeoutMs: 5000,
    handlers: {
      echo: (x) => x,
      ping: (x) => x,
      touch: () => true,
      fail: () => {
        throw new RpcError("ENOENT", "nothing here");
      },
      preauth: () => {
        preauthCalls++;
      },
    },
  });
  try {
    const seeds = new RpcFuzz(SEED);
    let handshakeFrames = 0;
    let sessionFrames = 0;
    let badSessions = 0;
    const jobs: (() => Promise<void>)[] = [];
    for (let i = 0; i < HANDSHAKE_CONNECTIONS; i++) {
      const fuzz = new RpcFuzz(seeds.int(2 ** 31));
      jobs.push(async () => {
        const frames = await fuzzHandshake(fuzz, server.port);
        handshakeFrames += frames;
      });
    }
    for (let i = 0; i < SESSION_CONNECTIONS; i++) {
      const fuzz = new RpcFuzz(seeds.int(2 ** 31));
      jobs.push(async () => {
        const { frames, bad } = await fuzzSession(fuzz, server.port, secret);
        sessionFrames += frames;
        if (bad) badSessions++;
      });
    }
    // Interleave both kinds over PARALLEL workers.
    jobs.sort(() => seeds.random() - 0.5);
    let next = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (next < jobs.length) await jobs[next++]();
      }),
    );
    console.log(
      `handshake frames ${handshakeFrames}, session frames ${sessionFrames}, ` +
        `bad sessions ${badSessions}/${SESSION_CONNECTIONS}`,
    );
    assert(handshakeFrames >= HANDSHAKE_CONNECTIONS);
    assert(handshakeFrames + sessionFrames >= 10_000);
    assert(badSessions > 0 && badSessions < SESSION_CONNECTIONS);

    // Every bad connection was dropped and logged once; no unauthenticated request ran.
    for (let i = 0; i < 400 && server.peers.size > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.equal(server.peers.size, 0);
    const rejected = logs.filter((l) => l.startsWith("Rejected peer")).length;
    const dropped = logs.filter((l) => l.startsWith("Dropping peer")).length;
    assert.equal(rejected, HANDSHAKE_CONNECTIONS);
    assert.equal(dropped, badSessions);
    assert.equal(preauthCalls, 0);

    // And a good client is still served.
    await using good = await connect({
      transport: "tcp",
      port: server.port,
      secret,
      role: "master",
    });
    assert.equal(await good.call("echo", "still alive"), "still alive");
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => good.call("echo", { i })),
    );
    assert.deepEqual(results, Array.from({ length: 100 }, (_, i) => ({ i })));
  } catch (error) {
    console.error(`Failed with FUZZ_SEED=${SEED}`);
    throw error;
  } finally {
    await server.close();
  }
});

Deno.test("a client refuses 1,000 random and mutated server handshakes", async () => {
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const fuzz = new RpcFuzz(SEED ^ 0x5eed);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const ROUNDS = 1000;
  const server = (async () => {
    for (let i = 0; i < ROUNDS; i++) {
      const conn = await listener.accept();
      try {
        const reader = new FrameReader(conn);
        let body: Uint8Array | undefined;
        while ((body = reader.take()) === undefined) await reader.fill();
        const hello = decodeBody(body) as { c: Uint8Array };
        const reply: Record<string, unknown> = {
          m: HANDSHAKE_MAGIC,
          v: PROTOCOL_VERSION,
          r: "worker",
          c: fuzz.chance(0.2) ? hello.c : fuzz.bytes(CHALLENGE_BYTES),
          p: fuzz.bytes(32),
        };
        let frame: Uint8Array;
        switch (fuzz.int(4)) {
          case 0:
            frame = fuzz.bytes(fuzz.int(100));
            break;
          case 1:
            frame = fuzz.mutate(encodeFrame(reply));
            break;
          case 2:
            frame = encodeFrame({
              ...reply,
              [fuzz.pick(["m", "v", "r", "c", "p", "e"])]: fuzz.value(),
            });
            break;
          default:
            frame = frameOf(encode(fuzz.value()));
        }
        await writeAll(conn, frame).catch(() => {});
        await writeAll(conn, encodeFrame({ ok: true })).catch(() => {});
        await conn.closeWrite().catch(() => {});
        await drain(conn, reader);
      } finally {
        conn.close();
      }
    }
  })();
  let refused = 0;
  try {
    for (let i = 0; i < ROUNDS; i++) {
      try {
        const peer = await connect({
          transport: "tcp",
          port: listener.addr.port,
          secret,
          role: "master",
          timeoutMs: 5000,
        });
        peer.close();
        await peer.closed;
        assert.fail("the client accepted a forged handshake");
      } catch (error) {
        assert(error instanceof AuthError, `round ${i}: ${error}`);
        refused++;
      }
    }
  } catch (error) {
    console.error(`Failed with FUZZ_SEED=${SEED}`);
    throw error;
  } finally {
    await server;
    listener.close();
  }
  assert.equal(refused, ROUNDS);
});
