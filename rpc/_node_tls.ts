/**
 * A TLS listener that asks every client for a certificate and checks it
 * against the farm's CA. `Deno.listenTls` cannot ask (Deno 2.9); `node:tls`'s
 * server can. Its sockets are adapted to {@link FrameConn}.
 *
 * The server does not reject a bad client certificate during the TLS
 * handshake (`rejectUnauthorized: false`): Deno's node:tls then only resets
 * the connection, and neither side learns why. It checks `authorized` itself
 * and hands the connection on with a refusal, which the RPC handshake sends
 * to the client in words before closing (nothing else is read or served).
 *
 * @module
 */

import tls from "node:tls";
import type { Socket } from "node:net";
import { Buffer } from "node:buffer";
import { errorMessage } from "../common/errors.ts";
import { formatHostPort } from "../common/address.ts";
import type { FrameConn } from "./frame.ts";
import { checkKeyPair, type TlsConfig, TlsConfigError } from "./tls.ts";

/** Above this many received bytes not yet read, the socket stops reading. */
const READ_HIGH_WATER_BYTES = 1 << 20;
/** How long a closed socket may take to flush what was written before it is destroyed. */
const CLOSE_LINGER_MS = 5000;

/** What to do about a client certificate, for both sides' logs. */
const CLIENT_CERT_HINT =
  "every member needs --tls-cert and --tls-key: a certificate from the farm CA (--tls-ca)";

/** A connection whose TLS handshake completed. */
export interface TlsAccepted {
  conn: FrameConn;
  remoteAddr: Deno.NetAddr;
  /**
   * Why the client is refused (no certificate, or one not from the farm's
   * CA); undefined when its certificate is good.
   */
  refusal?: string;
}

/** Options of {@linkcode listenNodeTls}. */
export interface NodeTlsListenOptions {
  hostname: string;
  port: number;
  tls: TlsConfig;
  /** Deadline of the TLS handshake. */
  handshakeTimeoutMs: number;
  /** Connections held at once, handshakes included; more are closed at once. */
  connectionsMax: number;
  log: (message: string) => void;
}

/** A listening node:tls server; see the module documentation. */
export interface NodeTlsListener {
  readonly addr: Deno.NetAddr;
  /** The next connection; null once closed. */
  accept(): Promise<TlsAccepted | null>;
  close(): Promise<void>;
}

/**
 * Listens with node:tls, client certificates requested and checked.
 * @throws {TlsConfigError} when the certificate or key cannot be used.
 * @throws {Deno.errors.AddrInUse} or {Deno.errors.AddrNotAvailable} as
 *   `Deno.listen` would (callers name the flag by them); other listen errors
 *   as node gives them.
 */
export async function listenNodeTls(options: NodeTlsListenOptions): Promise<NodeTlsListener> {
  const { cert, key, caCerts } = options.tls;
  if (cert === undefined || key === undefined) {
    throw new TypeError("A TLS listener needs a certificate and a key");
  }
  checkKeyPair(cert, key);
  let server: tls.Server;
  try {
    server = tls.createServer({
      cert,
      key,
      ca: caCerts,
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: options.handshakeTimeoutMs,
    });
  } catch (error) {
    throw new TlsConfigError(
      `Cannot use the TLS certificate and key: ${errorMessage(error)}`,
      { cause: error },
    );
  }
  const listener = new Listener(server, options);
  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error) => reject(denoListenError(error));
    server.once("error", onError);
    server.listen(options.port, options.hostname, () => {
      server.off("error", onError);
      resolve();
    });
  });
  listener.listening();
  return listener;
}

/** Node's listen errors as the Deno errors callers test for. */
function denoListenError(error: Error): Error {
  const code = (error as { code?: string }).code;
  if (code === "EADDRINUSE") return new Deno.errors.AddrInUse(error.message, { cause: error });
  if (code === "EADDRNOTAVAIL") {
    return new Deno.errors.AddrNotAvailable(error.message, { cause: error });
  }
  return error;
}

class Listener implements NodeTlsListener {
  addr: Deno.NetAddr = { transport: "tcp", hostname: "", port: 0 };
  readonly #server: tls.Server;
  readonly #options: NodeTlsListenOptions;
  /** Raw sockets open, handshakes included. */
  readonly #raw = new Set<Socket>();
  readonly #addrs = new WeakMap<Socket, Deno.NetAddr>();
  #ready: TlsAccepted[] = [];
  #waiter: ((accepted: TlsAccepted | null) => void) | undefined;
  #closed = false;
  #listening = false;
  #serverClosed: Promise<void> | undefined;

  constructor(server: tls.Server, options: NodeTlsListenOptions) {
    this.#server = server;
    this.#options = options;
    server.on("connection", (raw: Socket) => this.#onConnection(raw));
    server.on("secureConnection", (socket: tls.TLSSocket) => this.#onSecure(socket));
    server.on("tlsClientError", (error: Error, socket: tls.TLSSocket) => {
      const raw = parentOf(socket);
      // A socket refused for the connection limit was logged as such.
      if (!this.#closed && (raw === undefined || this.#raw.has(raw))) {
        this.#options.log(
          `Rejected peer ${describe(raw && this.#addrs.get(raw))}: TLS handshake failed: ` +
            `${errorMessage(error)} (a peer without TLS, or a certificate not from the farm's CA?)`,
        );
      }
      socket.destroy();
      raw?.destroy();
    });
    server.on("error", (error: Error) => {
      // Before it listens, the error is listenNodeTls's to throw.
      if (this.#listening && !this.#closed) {
        this.#options.log(`TLS listener: ${errorMessage(error)}`);
      }
    });
  }

  /** Called once the server listens. */
  listening(): void {
    const address = this.#server.address();
    if (address === null || typeof address === "string") {
      throw new Error("node:tls server has no TCP address");
    }
    this.addr = { transport: "tcp", hostname: address.address, port: address.port };
    this.#listening = true;
  }

  #onConnection(raw: Socket): void {
    // An error on a socket with no listener would end the process.
    raw.on("error", () => {});
    const addr: Deno.NetAddr = {
      transport: "tcp",
      hostname: raw.remoteAddress ?? "?",
      port: raw.remotePort ?? 0,
    };
    if (this.#closed) {
      raw.destroy();
      return;
    }
    if (this.#raw.size >= this.#options.connectionsMax) {
      this.#options.log(
        `Refusing connection from ${
          describe(addr)
        }: ${this.#options.connectionsMax} connections open`,
      );
      raw.destroy();
      return;
    }
    raw.setNoDelay(true);
    this.#raw.add(raw);
    this.#addrs.set(raw, addr);
    raw.once("close", () => this.#raw.delete(raw));
  }

  #onSecure(socket: tls.TLSSocket): void {
    socket.on("error", () => {}); // Reported through the conn's read or write.
    const raw = parentOf(socket);
    if (this.#closed) {
      socket.destroy();
      raw?.destroy();
      return;
    }
    // Job-like calls write a reply after a chunk: Nagle would hold it ~40 ms.
    socket.setNoDelay(true);
    const remoteAddr: Deno.NetAddr = (raw && this.#addrs.get(raw)) ?? {
      transport: "tcp",
      hostname: socket.remoteAddress ?? "?",
      port: socket.remotePort ?? 0,
    };
    const accepted: TlsAccepted = {
      conn: new NodeSocketConn(socket),
      remoteAddr,
      refusal: socket.authorized ? undefined : refusalOf(socket),
    };
    const waiter = this.#waiter;
    this.#waiter = undefined;
    if (waiter !== undefined) waiter(accepted);
    else this.#ready.push(accepted);
  }

  accept(): Promise<TlsAccepted | null> {
    if (this.#closed) return Promise.resolve(null);
    const ready = this.#ready.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    if (this.#waiter !== undefined) throw new Error("accept() is already pending");
    return new Promise((resolve) => this.#waiter = resolve);
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#waiter?.(null);
      this.#waiter = undefined;
      for (const accepted of this.#ready.splice(0)) accepted.conn.close();
      this.#serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      for (const raw of this.#raw) raw.destroy();
    }
    return this.#serverClosed!;
  }
}

/**
 * The TCP socket under a TLS socket (node keeps it in `_parent`), whose
 * address a TLS socket that failed its handshake no longer knows.
 */
function parentOf(socket: tls.TLSSocket): Socket | undefined {
  const parent = (socket as unknown as { _parent?: Socket })._parent;
  return parent ?? undefined;
}

function describe(addr: Deno.NetAddr | undefined): string {
  return addr === undefined ? "(address unknown)" : formatHostPort(addr.hostname, addr.port);
}

/** Why a client certificate was not accepted, and what to do, in one line. */
export function refusalOf(socket: tls.TLSSocket): string {
  const cert = socket.getPeerCertificate();
  if (cert === null || cert === undefined || Object.keys(cert).length === 0) {
    return `TLS client certificate missing: ${CLIENT_CERT_HINT}`;
  }
  const code = String(socket.authorizationError ?? "unknown");
  return `TLS client certificate refused (${code}: ${
    explainVerifyError(code)
  }): ${CLIENT_CERT_HINT}`;
}

/** OpenSSL's verification codes in words. */
function explainVerifyError(code: string): string {
  switch (code) {
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "UNABLE_TO_GET_ISSUER_CERT":
    case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
    case "SELF_SIGNED_CERT_IN_CHAIN":
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
    case "CERT_SIGNATURE_FAILURE":
      // Deno's node:tls also says so of a certificate without clientAuth.
      return "not signed by the farm CA, or its extendedKeyUsage lacks clientAuth";
    case "CERT_HAS_EXPIRED":
      return "expired";
    case "CERT_NOT_YET_VALID":
      return "not valid yet (check the clocks)";
    case "INVALID_PURPOSE":
      return "not for client authentication (extendedKeyUsage lacks clientAuth)";
    case "CERT_REVOKED":
      return "revoked";
    default:
      return "not accepted";
  }
}

/**
 * A node socket as a {@link FrameConn}: received chunks are queued (reading
 * pauses above {@link READ_HIGH_WATER_BYTES}), writes are copied (the caller
 * reuses its buffer) and wait for `drain` when node's buffer is full.
 */
export class NodeSocketConn implements FrameConn {
  readonly #socket: tls.TLSSocket;
  #chunks: Uint8Array[] = [];
  #queuedBytes = 0;
  #ended = false;
  #error: Error | undefined;
  #closed = false;
  #wake: (() => void) | undefined;
  #drain: (() => void) | undefined;
  #lingerTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    socket.on("data", (chunk: Uint8Array) => {
      if (this.#closed) return;
      this.#chunks.push(chunk);
      this.#queuedBytes += chunk.length;
      if (this.#queuedBytes > READ_HIGH_WATER_BYTES) socket.pause();
      this.#wakeReader();
    });
    socket.on("end", () => {
      this.#ended = true;
      this.#wakeReader();
    });
    socket.on("error", (error: Error) => {
      this.#error ??= error;
      this.#wakeReader();
      this.#wakeWriter();
    });
    socket.on("close", () => {
      this.#ended = true;
      clearTimeout(this.#lingerTimer);
      this.#wakeReader();
      this.#wakeWriter();
    });
    socket.on("drain", () => this.#wakeWriter());
  }

  #wakeReader(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #wakeWriter(): void {
    const drain = this.#drain;
    this.#drain = undefined;
    drain?.();
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#closed) return null;
      if (this.#error !== undefined) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    let n = 0;
    while (n < p.length && this.#chunks.length > 0) {
      const chunk = this.#chunks[0];
      const take = Math.min(chunk.length, p.length - n);
      p.set(take === chunk.length ? chunk : chunk.subarray(0, take), n);
      n += take;
      if (take === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(take);
    }
    this.#queuedBytes -= n;
    if (this.#socket.isPaused() && this.#queuedBytes <= READ_HIGH_WATER_BYTES / 4) {
      this.#socket.resume();
    }
    return n;
  }

  async write(p: Uint8Array): Promise<number> {
    if (this.#closed) throw new Deno.errors.BadResource("Connection closed");
    if (this.#error !== undefined) throw this.#error;
    if (this.#socket.destroyed) throw new Deno.errors.BrokenPipe("Connection closed by the peer");
    if (!this.#socket.write(Buffer.from(p))) {
      await new Promise<void>((resolve) => this.#drain = resolve);
      if (this.#error !== undefined) throw this.#error;
      if (this.#closed || this.#socket.destroyed) {
        throw new Deno.errors.BrokenPipe("Connection closed while writing");
      }
    }
    return p.length;
  }

  /** Flushes what was written, then closes (destroyed after {@link CLOSE_LINGER_MS} at most). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#chunks = [];
    this.#queuedBytes = 0;
    const socket = this.#socket;
    socket.resume(); // Unread bytes would make the kernel reset the connection.
    this.#wakeReader();
    this.#wakeWriter();
    if (socket.destroyed) return;
    this.#lingerTimer = setTimeout(() => socket.destroy(), CLOSE_LINGER_MS);
    socket.end(() => socket.destroy());
  }
}
