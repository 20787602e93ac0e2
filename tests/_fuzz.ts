/**
 * Small seeded generators for fuzz tests (tests/rpc_fuzz_test.ts extends them):
 * random bytes and values, damaged frames, random and mutated handshakes.
 * Reproduce a failure with `FUZZ_SEED=<seed printed on failure>`.
 */
import { encode } from "@msgpack/msgpack";
import {
  CHALLENGE_BYTES,
  encodeFrame,
  FRAME_BYTES_MAX,
  HANDSHAKE_MAGIC,
  MessageType,
  PROTOCOL_VERSION,
} from "../rpc/mod.ts";

export const FUZZ_SEED = Number(Deno.env.get("FUZZ_SEED") ?? Date.now() % 0x7fff_ffff);

export class Fuzz {
  #a: number;
  constructor(seed: number) {
    this.#a = seed >>> 0;
  }
  /** mulberry32. */
  random(): number {
    this.#a = (this.#a + 0x6d2b79f5) >>> 0;
    let t = this.#a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.random() * n);
  }
  chance(p: number): boolean {
    return this.random() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  /** Numbers `value()` picks from (a subclass may aim elsewhere). */
  protected numbers: readonly number[] = [
    0,
    1,
    -1,
    255,
    65536,
    2 ** 32,
    -(2 ** 31),
    2 ** 53 - 1,
    1e300,
  ];
  string(): string {
    return this.pick([
      "",
      "echo",
      "touch",
      "__proto__",
      "constructor",
      "toString",
      "/",
      "..",
      "../../etc/passwd",
      "x".repeat(this.int(3000)),
      String.fromCharCode(...Array.from({ length: this.int(12) }, () => this.int(0x3000))),
    ]);
  }
  value(depth = 0): unknown {
    switch (this.int(depth > 2 ? 7 : 9)) {
      case 0:
        return null;
      case 1:
        return this.chance(0.5);
      case 2:
        return this.pick(this.numbers);
      case 3:
        return this.random() * 1e6 - 5e5;
      case 4:
        return this.string();
      case 5:
        return this.bytes(this.int(64));
      case 6:
        return this.int(1 << 30);
      case 7:
        return Array.from({ length: this.int(5) }, () => this.value(depth + 1));
      default: {
        const map: Record<string, unknown> = {};
        for (let i = this.int(5); i > 0; i--) {
          const key = this.string();
          if (key !== "__proto__") map[key] = this.value(depth + 1);
        }
        return map;
      }
    }
  }
  /** Damages `bytes` in place-ish ways: flips, overwrites, inserts, deletes, cuts, repeats. */
  mutate(bytes: Uint8Array): Uint8Array {
    const out = [...bytes];
    for (let n = 1 + this.int(3); n > 0; n--) {
      const at = this.int(out.length + 1);
      switch (this.int(6)) {
        case 0:
          if (at < out.length) out[at] ^= 1 << this.int(8);
          break;
        case 1:
          if (at < out.length) {
            out[at] = this.pick([0x00, 0xc1, 0xff, 0xdd, 0xc6, 0x90, 0x80, this.int(256)]);
          }
          break;
        case 2:
          out.splice(at, 0, this.int(256));
          break;
        case 3:
          out.splice(at, 1 + this.int(4));
          break;
        case 4:
          out.length = Math.min(out.length, at);
          break;
        default:
          out.splice(at, 0, ...out.slice(this.int(out.length + 1)).slice(0, 8));
      }
    }
    return new Uint8Array(out);
  }
  /** Bytes an unauthenticated peer sends: garbage, damaged or wrong handshakes. */
  handshake(): Uint8Array {
    const hello = {
      m: HANDSHAKE_MAGIC,
      v: PROTOCOL_VERSION,
      r: this.pick(["worker", "master", "coordinator"]),
      c: this.bytes(CHALLENGE_BYTES),
    };
    switch (this.int(5)) {
      case 0:
        return this.bytes(this.int(300));
      case 1:
        return this.mutate(encodeFrame(hello));
      case 2: {
        const field = this.pick(["m", "v", "r", "c", "extra"]);
        return encodeFrame({ ...hello, [field]: this.value() });
      }
      case 3:
        return frameOf(encode(this.value()));
      default:
        return concat([
          encodeFrame(hello),
          encodeFrame(this.chance(0.5) ? { p: this.bytes(32) } : this.value()),
          encodeFrame([MessageType.REQUEST, 1, "register", null]),
        ]);
    }
  }
  /** Frames an authenticated peer sends: calls of `methods` with random params, and damage. */
  session(methods: readonly string[]): Uint8Array {
    const parts: Uint8Array[] = [];
    for (let n = 1 + this.int(30); n > 0; n--) {
      const message = this.chance(0.7)
        ? [MessageType.REQUEST, this.int(2 ** 32), this.pick(methods), this.value()]
        : [this.int(8), this.int(5000), this.value(), this.value()];
      if (this.chance(0.9)) parts.push(encodeFrame(message));
      else if (this.chance(0.5)) parts.push(this.mutate(encodeFrame(message)));
      else {
        const header = new Uint8Array(4);
        new DataView(header.buffer).setUint32(0, FRAME_BYTES_MAX + 1 + this.int(1 << 30));
        parts.push(header);
      }
    }
    return concat(parts);
  }
}

export function frameOf(body: Uint8Array): Uint8Array {
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  return frame;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Writes `bytes`, half-closes, reads until the peer closes or `ms` pass; returns bytes read. */
export async function sendAndDrain(
  conn: Deno.Conn,
  bytes: Uint8Array,
  ms = 5_000,
): Promise<number> {
  let total = 0;
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch {
      // Closed.
    }
  }, ms);
  try {
    let off = 0;
    while (off < bytes.length) off += await conn.write(bytes.subarray(off));
    await conn.closeWrite();
  } catch {
    // The peer dropped us: fine.
  }
  try {
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      total += n;
    }
  } catch {
    // Reset or closed by the timer.
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // Closed.
    }
  }
  return total;
}
