/**
 * Servers and clients over TCP and unix sockets.
 *
 * @module
 */

import { errorMessage } from "../common/errors.ts";
import { formatHostPort } from "../common/address.ts";
import { AuthError, RpcError } from "./errors.ts";
import { closeQuietly, type FrameConn, type FrameReader } from "./frame.ts";
import { clientHandshake, HANDSHAKE_TIMEOUT_MS, type Role, serverHandshake } from "./handshake.ts";
import { type Handlers, RpcPeer } from "./peer.ts";
import type { TlsConfig } from "./tls.ts";
import { setTlsNoDelay } from "./_tcp_nodelay.ts";
import { listenNodeTls } from "./_node_tls.ts";

/** Default limit on connections a server holds (authenticated or not). */
export const PEERS_MAX = 256;
/** Default deadline of connect plus handshake. */
export const CONNECT_TIMEOUT_MS = 5000;
/** Pause after a failed `accept` (e.g. out of file descriptors). */
const ACCEPT_RETRY_MS = 100;

/** Options of {@link listen}. */
export interface ListenOptions {
  transport: "tcp" | "unix";
  /** TCP: address to bind; default "127.0.0.1". */
  hostname?: string;
  /** TCP: port; default 0 (any free port, see {@link RpcServer.port}). */
  port?: number;
  /** Unix: socket path. It is removed when the server closes. */
  path?: string;
  secret: CryptoKey;
  /** Our role. */
  role: Role;
  /** Methods served to every peer, or a function making them per peer. */
  handlers: Handlers | ((peer: RpcPeer) => Handlers);
  /** Called after a peer authenticated, before any of its calls is served. */
  onPeer?: (peer: RpcPeer) => void;
  /** Where auth failures and dropped peers are reported. Default `console.error`. */
  log?: (message: string) => void;
  /** Default 5000. */
  handshakeTimeoutMs?: number;
  /** Connection limit, including handshakes in progress. Default 256. */
  peersMax?: number;
  /**
   * TCP: serve over TLS with this certificate and key, clients' certificates
   * checked against its CAs; only {@linkcode listenTls} takes it.
   */
  tls?: TlsConfig;
}

/** A listening server; closing it closes every connection. */
export interface RpcServer extends AsyncDisposable {
  readonly addr: Deno.Addr;
  /** TCP port (0 for unix sockets). */
  readonly port: number;
  /** Authenticated peers currently connected. */
  readonly peers: ReadonlySet<RpcPeer>;
  close(): Promise<void>;
}

/** Options of {@link connect}. */
export interface ConnectOptions {
  transport: "tcp" | "unix";
  /** TCP: default "127.0.0.1". */
  hostname?: string;
  port?: number;
  path?: string;
  secret: CryptoKey;
  /** Our role. */
  role: Role;
  /** Methods we serve to the server. */
  handlers?: Handlers;
  /** Deadline of connect plus handshake. Default 5000. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Where a dropped connection is reported. Default `console.error`. */
  log?: (message: string) => void;
  /**
   * TCP: connect over TLS, the server's certificate checked against these
   * CAs and the hostname; ours (`cert`, `key`) shown to the server.
   */
  tls?: TlsConfig;
}

/** What a failed TLS handshake most likely means, for the log. */
const TLS_HINT = "(a peer without TLS, or a certificate not from the farm's CA?)";

/** A connection accepted, with why it is refused when its TLS client certificate was bad. */
interface Accepted {
  conn: FrameConn;
  remoteAddr: Deno.Addr;
  refusal?: string;
}

/** Where a {@link Server} takes connections from: a Deno listener, or node:tls's. */
interface Acceptor {
  readonly addr: Deno.Addr;
  /** The next connection; null once closed. */
  accept(): Promise<Accepted | null>;
  close(): Promise<void> | void;
}

/**
 * Listens for peers on plain TCP or a unix socket. Each connection must
 * authenticate within the handshake deadline; until it has, nothing it sends
 * is acted on. Failures are logged and the connection is dropped; the server
 * keeps serving others. For TLS see {@linkcode listenTls}.
 */
export function listen(options: ListenOptions): RpcServer {
  if (options.tls !== undefined) throw new TypeError("listen(): TLS needs listenTls()");
  let listener: Deno.Listener;
  if (options.transport === "unix") {
    if (options.path === undefined) throw new TypeError("listen(): a unix socket needs a path");
    listener = Deno.listen({ transport: "unix", path: options.path });
  } else {
    listener = Deno.listen({
      transport: "tcp",
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? 0,
    });
  }
  return new Server(denoAcceptor(listener), options);
}

/** Listens over TLS when `options.tls` is given ({@linkcode listenTls}), else plain. */
export function listenAny(options: ListenOptions): Promise<RpcServer> {
  return options.tls === undefined ? Promise.resolve(listen(options)) : listenTls(options);
}

/**
 * Listens for peers over TLS, as {@linkcode listen} does on plain TCP, with
 * `options.tls`'s certificate and key; every client must show a certificate
 * from one of its CAs. A client that shows none, or another CA's, is told so
 * in the handshake and dropped, and the refusal logged.
 *
 * @throws {TlsConfigError} when the certificate or key cannot be used.
 */
export async function listenTls(options: ListenOptions): Promise<RpcServer> {
  if (options.tls === undefined || options.transport !== "tcp") {
    throw new TypeError("listenTls(): needs TCP and a TLS config");
  }
  const listener = await listenNodeTls({
    hostname: options.hostname ?? "127.0.0.1",
    port: options.port ?? 0,
    tls: options.tls,
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS,
    connectionsMax: options.peersMax ?? PEERS_MAX,
    log: options.log ?? console.error,
  });
  return new Server(listener, options);
}

function denoAcceptor(listener: Deno.Listener): Acceptor {
  let closed = false;
  return {
    addr: listener.addr,
    async accept(): Promise<Accepted | null> {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (closed || error instanceof Deno.errors.BadResource) return null;
        throw error;
      }
      noDelay(conn);
      return { conn, remoteAddr: conn.remoteAddr };
    },
    close(): void {
      closed = true;
      closeQuietly(listener);
    },
  };
}

class Server implements RpcServer {
  readonly addr: Deno.Addr;
  readonly port: number;
  readonly #listener: Acceptor;
  readonly #options: ListenOptions;
  readonly #log: (message: string) => void;
  readonly #peers = new Set<RpcPeer>();
  readonly #handshaking = new Set<FrameConn>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #acceptLoop: Promise<void>;
  #closed = false;
  #listenerClosed: Promise<void> | void = undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #retryWake: (() => void) | undefined;

  constructor(listener: Acceptor, options: ListenOptions) {
    this.#listener = listener;
    this.#options = options;
    this.#log = options.log ?? console.error;
    this.addr = listener.addr;
    this.port = listener.addr.transport === "tcp" ? listener.addr.port : 0;
    this.#acceptLoop = this.#accept();
  }

  get peers(): ReadonlySet<RpcPeer> {
    return this.#peers;
  }

  async #accept(): Promise<void> {
    const peersMax = this.#options.peersMax ?? PEERS_MAX;
    while (!this.#closed) {
      let accepted: Accepted | null;
      try {
        accepted = await this.#listener.accept();
      } catch (error) {
        if (this.#closed) return;
        this.#log(`Cannot accept a connection: ${errorMessage(error)}`);
        await new Promise<void>((resolve) => {
          this.#retryWake = resolve;
          this.#retryTimer = setTimeout(resolve, ACCEPT_RETRY_MS);
        });
        continue;
      }
      if (accepted === null) return;
      const { conn, refusal } = accepted;
      if (this.#closed) {
        closeQuietly(conn);
        return;
      }
      const remoteAddr = formatAddr(accepted.remoteAddr);
      if (this.#peers.size + this.#handshaking.size >= peersMax) {
        this.#log(`Refusing connection from ${remoteAddr}: ${peersMax} connections open`);
        closeQuietly(conn);
        continue;
      }
      const task = this.#serve(conn, remoteAddr, refusal);
      this.#tasks.add(task);
      task.finally(() => this.#tasks.delete(task));
    }
  }

  async #serve(conn: FrameConn, remoteAddr: string, refusal?: string): Promise<void> {
    this.#handshaking.add(conn);
    let peerRole: Role;
    let reader: FrameReader;
    const timeoutMs = this.#options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    try {
      ({ peerRole, reader } = await serverHandshake(conn, {
        secret: this.#options.secret,
        role: this.#options.role,
        timeoutMs,
        refusal,
      }));
    } catch (error) {
      if (!this.#closed) this.#log(`Rejected peer ${remoteAddr}: ${errorMessage(error)}`);
      closeQuietly(conn);
      return;
    } finally {
      this.#handshaking.delete(conn);
    }
    if (this.#closed) {
      closeQuietly(conn);
      return;
    }
    const peer = new RpcPeer({ conn, reader, peerRole, remoteAddr, log: this.#log });
    this.#peers.add(peer);
    try {
      const handlers = this.#options.handlers;
      peer.setHandlers(typeof handlers === "function" ? handlers(peer) : handlers);
      this.#options.onPeer?.(peer);
    } catch (error) {
      this.#log(`Dropping peer ${remoteAddr}: setting it up failed: ${errorMessage(error)}`);
      peer.close();
    }
    await peer.closed;
    this.#peers.delete(peer);
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#listenerClosed = this.#listener.close();
      clearTimeout(this.#retryTimer);
      this.#retryWake?.();
      for (const conn of this.#handshaking) closeQuietly(conn);
      for (const peer of this.#peers) peer.close();
    }
    await this.#listenerClosed;
    await this.#acceptLoop;
    while (this.#tasks.size > 0) await Promise.all(this.#tasks);
    if (this.#options.transport === "unix" && this.#options.path !== undefined) {
      await Deno.remove(this.#options.path).catch(() => {});
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Connects and authenticates.
 * @throws {RpcError} `UNAVAILABLE` if the connection cannot be made,
 * `TIMEOUT` if that takes too long, `CANCELLED` if `signal` aborts.
 * @throws {AuthError} if the handshake fails (wrong secret, version
 * mismatch, handshake deadline).
 */
export async function connect(options: ConnectOptions): Promise<RpcPeer> {
  const timeoutMs = options.timeoutMs ?? CONNECT_TIMEOUT_MS;
  const started = Date.now();
  const deadline = new AbortController();
  const timer = setTimeout(
    () => deadline.abort(new RpcError("TIMEOUT", `Connect timed out after ${timeoutMs} ms`)),
    timeoutMs,
  );
  const signal = options.signal === undefined
    ? deadline.signal
    : AbortSignal.any([deadline.signal, options.signal]);
  const target = options.transport === "unix" ? `unix:${options.path}` : formatAddr({
    transport: "tcp",
    hostname: options.hostname ?? "127.0.0.1",
    port: options.port ?? 0,
  });
  try {
    const conn = await dial(options, { signal, target, timeoutMs, started });
    noDelay(conn);
    if (signal.aborted) {
      closeQuietly(conn);
      throw new RpcError("CANCELLED", `Cannot connect to ${target}: cancelled`);
    }
    const { peerRole, reader } = await clientHandshake(conn, {
      secret: options.secret,
      role: options.role,
      timeoutMs: Math.max(1, timeoutMs - (Date.now() - started)),
      signal: options.signal,
    }).catch((error) => {
      if (error instanceof AuthError) {
        throw new AuthError(`Cannot connect to ${target}: ${error.message}`, { cause: error });
      }
      throw error;
    });
    return new RpcPeer({
      conn,
      reader,
      peerRole,
      remoteAddr: formatAddr(conn.remoteAddr),
      handlers: options.handlers,
      log: options.log,
    });
  } finally {
    clearTimeout(timer);
  }
}

/** Opens the connection of {@linkcode connect} (TLS started, when asked); errors name `target`. */
async function dial(
  options: ConnectOptions,
  at: { signal: AbortSignal; target: string; timeoutMs: number; started: number },
): Promise<Deno.Conn> {
  const { signal, target } = at;
  try {
    signal.throwIfAborted();
    if (options.transport === "unix") {
      if (options.path === undefined) {
        throw new TypeError("connect(): a unix socket needs a path");
      }
      return await Deno.connect({ transport: "unix", path: options.path });
    }
    if (options.port === undefined) throw new TypeError("connect(): TCP needs a port");
    if (options.tls !== undefined) return await dialTls(options, at);
    return await Deno.connect({
      transport: "tcp",
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port,
      signal,
    });
  } catch (error) {
    if (error instanceof TypeError || error instanceof AuthError) throw error;
    if (signal.aborted) {
      const reason = signal.reason;
      if (reason instanceof RpcError) {
        throw new RpcError(reason.code, `Cannot connect to ${target}: ${reason.message}`, {
          cause: error,
        });
      }
      throw new RpcError("CANCELLED", `Cannot connect to ${target}: cancelled`, {
        cause: reason,
      });
    }
    throw new RpcError("UNAVAILABLE", `Cannot connect to ${target}: ${errorMessage(error)}`, {
      cause: error,
    });
  }
}

/**
 * A TLS connection, the server's certificate checked, ours shown when we
 * have one; a failed handshake is an AuthError. `Deno.connectTls` takes no
 * signal: on abort the connection is closed when it comes.
 */
async function dialTls(
  options: ConnectOptions,
  at: { signal: AbortSignal; target: string; timeoutMs: number; started: number },
): Promise<Deno.Conn> {
  const tls = options.tls!;
  const hostname = options.hostname ?? "127.0.0.1";
  const connecting = Deno.connectTls({
    hostname,
    port: options.port!,
    caCerts: tls.caCerts,
    ...(tls.cert !== undefined && tls.key !== undefined ? { cert: tls.cert, key: tls.key } : {}),
  });
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(at.signal.reason);
    at.signal.addEventListener("abort", onAbort);
  });
  let conn: Deno.TlsConn;
  try {
    conn = await Promise.race([connecting, aborted]);
  } catch (error) {
    connecting.then(closeQuietly, () => {});
    throw error;
  } finally {
    at.signal.removeEventListener("abort", onAbort!);
  }
  // Deno 2.9's TlsConn has no setNoDelay; see _tcp_nodelay.ts.
  setTlsNoDelay(conn);
  try {
    await tlsHandshake(conn, Math.max(1, at.timeoutMs - (Date.now() - at.started)));
    return conn;
  } catch (error) {
    closeQuietly(conn);
    if (at.signal.aborted) throw error;
    const why = error instanceof AuthError ? error.message : `${errorMessage(error)} ${TLS_HINT}`;
    throw new AuthError(`Cannot connect to ${at.target} over TLS: ${why}`, { cause: error });
  }
}

/** Our writer coalesces frames itself; Nagle's algorithm would only add latency. */
function noDelay(conn: Deno.Conn): void {
  const tcp = conn as Partial<Deno.TcpConn>;
  if (conn.remoteAddr.transport === "tcp" && typeof tcp.setNoDelay === "function") {
    tcp.setNoDelay(true);
  }
}

/** Completes a TLS handshake within `timeoutMs`; a failure says TLS and why. */
async function tlsHandshake(conn: Deno.TlsConn, timeoutMs: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      conn.handshake(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new AuthError(`TLS handshake timed out after ${timeoutMs} ms`)),
          timeoutMs,
        );
      }),
    ]);
  } catch (error) {
    if (error instanceof AuthError) throw error;
    throw new AuthError(`TLS handshake failed: ${errorMessage(error)} ${TLS_HINT}`, {
      cause: error,
    });
  } finally {
    clearTimeout(timer);
  }
}

/** "host:port", "[v6]:port" or "unix". */
export function formatAddr(addr: Deno.Addr): string {
  if (addr.transport === "tcp" || addr.transport === "udp") {
    return formatHostPort(addr.hostname, addr.port);
  }
  return "unix";
}
