/**
 * Mutual authentication with the shared secret.
 *
 * ```
 * client → server  {m, v, r: clientRole, c: clientChallenge}
 * server → client  {m, v, r: serverRole, c: serverChallenge, p: serverProof}
 *                  (or {m, v, e} on a version mismatch or a refused TLS
 *                  client certificate, then close)
 * client → server  {p: clientProof}
 * server → client  {ok: true}   (or {e} then close)
 * ```
 *
 * Challenges are 32 fresh random bytes from `crypto.getRandomValues`. A proof
 * is HMAC-SHA256 over a domain tag, the prover's side ("client"/"server"),
 * its role and both challenges, its own first:
 * `tag \0 side \0 role \0 ownChallenge peerChallenge`. Because the side is
 * signed and the other party's challenge is fresh, an answer cannot be
 * reflected back or replayed. A peer challenge equal to our own is refused;
 * proofs are compared in constant time. Nothing is bound to addresses.
 *
 * Only the handshake is protected: the stream after it is neither encrypted
 * nor authenticated frame by frame (run farms on a trusted network).
 *
 * @module
 */

import { errorMessage } from "../common/errors.ts";
import { AuthError, FrameError, SecretMismatchError } from "./errors.ts";
import {
  closeQuietly,
  decodeBody,
  describe,
  encodeFrame,
  FRAME_BYTES_MAX,
  type FrameConn,
  FrameReader,
  PROTOCOL_VERSION,
  writeAll,
} from "./frame.ts";

/** Who is on the other end. */
export type Role = "coordinator" | "worker" | "master";

/** Every role. */
export const ROLES: readonly Role[] = ["coordinator", "worker", "master"];

/** Which end of the connection a proof is made by. */
export type Side = "client" | "server";

/** Marks our handshake messages. */
export const HANDSHAKE_MAGIC = "termite-rpc";
/** Domain tag of the signed proof. */
export const AUTH_TAG = "termite-rpc-auth-v1";
/** Bytes of a challenge. */
export const CHALLENGE_BYTES = 32;
/** Largest handshake frame; an unauthenticated peer cannot make us allocate more. */
export const HANDSHAKE_FRAME_BYTES_MAX = 4096;
/** Longest refusal reason from a peer that is logged. */
const REASON_LENGTH_MAX = 400;
/** Default deadline of a whole handshake. */
export const HANDSHAKE_TIMEOUT_MS = 5000;

/** Options of {@link clientHandshake} and {@link serverHandshake}. */
export interface HandshakeOptions {
  secret: CryptoKey;
  /** Our role. */
  role: Role;
  /** Deadline of the whole handshake; the connection is closed on expiry. Default 5000. */
  timeoutMs?: number;
  /** Aborting closes the connection and fails the handshake. */
  signal?: AbortSignal;
  /** Version we claim (tests only). */
  version?: number;
  /** Reader to use; one is created when absent. */
  reader?: FrameReader;
  /**
   * Server: refuse the client with this reason (its TLS certificate was
   * bad) after reading its hello, before any proof is made.
   */
  refusal?: string;
}

/** An authenticated connection. */
export interface HandshakeResult {
  /** The peer's authenticated role. */
  peerRole: Role;
  /**
   * The reader, holding anything the peer sent after its handshake; its
   * `frameBytesMax` is back to {@link FRAME_BYTES_MAX}.
   */
  reader: FrameReader;
}

const textEncoder = new TextEncoder();

/** The proof `side` sends: HMAC over tag, side, role, own and peer challenge. */
export async function computeProof(
  secret: CryptoKey,
  options: { side: Side; role: Role; own: Uint8Array; peer: Uint8Array },
): Promise<Uint8Array> {
  const head = textEncoder.encode(`${AUTH_TAG}\0${options.side}\0${options.role}\0`);
  const data = new Uint8Array(head.length + options.own.length + options.peer.length);
  data.set(head);
  data.set(options.own, head.length);
  data.set(options.peer, head.length + options.own.length);
  return new Uint8Array(await crypto.subtle.sign("HMAC", secret, data));
}

/** Compares in time that depends only on the lengths. */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let difference = 0;
  for (let i = 0; i < a.length; i++) difference |= a[i] ^ b[i];
  return difference === 0;
}

/** A fresh random challenge. */
export function newChallenge(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(CHALLENGE_BYTES));
}

/** Authenticates the connecting side. On failure `conn` is closed. */
export async function clientHandshake(
  conn: FrameConn,
  options: HandshakeOptions,
): Promise<HandshakeResult> {
  return await withDeadline(conn, options, async (reader) => {
    const version = options.version ?? PROTOCOL_VERSION;
    const own = newChallenge();
    await writeAll(
      conn,
      encodeFrame({ m: HANDSHAKE_MAGIC, v: version, r: options.role, c: own }),
    );

    const hello = await readHandshakeMessage(reader);
    checkHello(hello, version);
    if (typeof hello.e === "string") {
      throw new AuthError(`Peer refused the handshake: ${hello.e.slice(0, REASON_LENGTH_MAX)}`);
    }
    const peerRole = checkRole(hello.r);
    const peerChallenge = checkBytes(hello.c, "challenge");
    const peerProof = checkBytes(hello.p, "proof");
    if (timingSafeEqual(peerChallenge, own)) {
      throw new AuthError("Cannot verify peer: it reflected our challenge");
    }
    const expected = await computeProof(options.secret, {
      side: "server",
      role: peerRole,
      own: peerChallenge,
      peer: own,
    });
    if (!timingSafeEqual(peerProof, expected)) {
      throw new SecretMismatchError("Cannot verify peer: HMAC mismatch (wrong secret?)");
    }

    const proof = await computeProof(options.secret, {
      side: "client",
      role: options.role,
      own,
      peer: peerChallenge,
    });
    await writeAll(conn, encodeFrame({ p: proof }));

    const verdict = await readHandshakeMessage(reader);
    if (verdict.ok !== true) {
      const reason = typeof verdict.e === "string"
        ? verdict.e.slice(0, REASON_LENGTH_MAX)
        : "no reason given";
      throw new AuthError(`Peer refused our authentication: ${reason}`);
    }
    return peerRole;
  });
}

/** Authenticates the accepting side. On failure `conn` is closed. */
export async function serverHandshake(
  conn: FrameConn,
  options: HandshakeOptions,
): Promise<HandshakeResult> {
  return await withDeadline(conn, options, async (reader) => {
    const version = options.version ?? PROTOCOL_VERSION;
    const hello = await readHandshakeMessage(reader);
    if (options.refusal !== undefined && hello.m === HANDSHAKE_MAGIC) {
      // Tell the client why, so that both sides log what to fix.
      await writeAll(conn, encodeFrame({ m: HANDSHAKE_MAGIC, v: version, e: options.refusal }))
        .catch(() => {});
    }
    if (options.refusal !== undefined) throw new AuthError(options.refusal);
    try {
      checkHello(hello, version);
    } catch (error) {
      if (hello.m === HANDSHAKE_MAGIC && error instanceof AuthError) {
        // Tell the peer which version we speak so both sides log a clear error.
        await writeAll(conn, encodeFrame({ m: HANDSHAKE_MAGIC, v: version, e: error.message }))
          .catch(() => {});
      }
      throw error;
    }
    const peerRole = checkRole(hello.r);
    const peerChallenge = checkBytes(hello.c, "challenge");
    const own = newChallenge();
    if (timingSafeEqual(peerChallenge, own)) {
      throw new AuthError("Cannot verify peer: it sent our own challenge");
    }
    const proof = await computeProof(options.secret, {
      side: "server",
      role: options.role,
      own,
      peer: peerChallenge,
    });
    await writeAll(
      conn,
      encodeFrame({ m: HANDSHAKE_MAGIC, v: version, r: options.role, c: own, p: proof }),
    );

    const answer = await readHandshakeMessage(reader);
    const peerProof = checkBytes(answer.p, "proof");
    const expected = await computeProof(options.secret, {
      side: "client",
      role: peerRole,
      own: peerChallenge,
      peer: own,
    });
    if (!timingSafeEqual(peerProof, expected)) {
      await writeAll(conn, encodeFrame({ e: "authentication failed" })).catch(() => {});
      throw new AuthError("Cannot verify peer: HMAC mismatch (wrong secret or replayed handshake)");
    }
    await writeAll(conn, encodeFrame({ ok: true }));
    return peerRole;
  });
}

async function withDeadline(
  conn: FrameConn,
  options: HandshakeOptions,
  run: (reader: FrameReader) => Promise<Role>,
): Promise<HandshakeResult> {
  const timeoutMs = options.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  const reader = options.reader ?? new FrameReader(conn);
  reader.frameBytesMax = HANDSHAKE_FRAME_BYTES_MAX;
  let expired = false;
  const onExpiry = () => {
    expired = true;
    closeQuietly(conn);
  };
  const signal = options.signal;
  const timer = setTimeout(onExpiry, timeoutMs);
  signal?.addEventListener("abort", onExpiry);
  try {
    if (signal?.aborted) throw signal.reason;
    const peerRole = await run(reader);
    if (expired) throw new Error("deadline passed");
    reader.frameBytesMax = FRAME_BYTES_MAX;
    return { peerRole, reader };
  } catch (error) {
    closeQuietly(conn);
    if (signal?.aborted) {
      throw new AuthError(`Handshake cancelled: ${errorMessage(signal.reason)}`, {
        cause: signal.reason,
      });
    }
    if (expired) {
      throw new AuthError(`Handshake timed out after ${timeoutMs} ms`, { cause: error });
    }
    if (error instanceof AuthError) throw error;
    throw new AuthError(`Handshake failed: ${errorMessage(error)}`, { cause: error });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onExpiry);
  }
}

type HandshakeMessage = Record<string, unknown>;

async function readHandshakeMessage(reader: FrameReader): Promise<HandshakeMessage> {
  let body: Uint8Array | undefined;
  while ((body = reader.take()) === undefined) {
    if (!(await reader.fill())) {
      throw new AuthError("Peer closed the connection during the handshake");
    }
  }
  const message = decodeBody(body);
  if (typeof message !== "object" || message === null || Array.isArray(message)) {
    throw new FrameError("Malformed handshake message: not a map");
  }
  return message as HandshakeMessage;
}

function checkHello(hello: HandshakeMessage, version: number): void {
  if (hello.m !== HANDSHAKE_MAGIC) throw new AuthError("Peer does not speak the termite protocol");
  if (hello.v !== version) {
    const theirs = typeof hello.v === "number" ? String(hello.v) : "an unknown version";
    throw new AuthError(`Protocol version mismatch: we speak ${version}, peer speaks ${theirs}`);
  }
}

function checkRole(value: unknown): Role {
  if (typeof value !== "string" || !(ROLES as readonly string[]).includes(value)) {
    throw new AuthError(`Malformed handshake: unknown role ${describe(value)}`);
  }
  return value as Role;
}

function checkBytes(value: unknown, what: string): Uint8Array {
  if (!(value instanceof Uint8Array) || value.length !== CHALLENGE_BYTES) {
    throw new AuthError(`Malformed handshake: bad ${what}`);
  }
  return value;
}
