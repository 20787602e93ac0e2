/**
 * Servers and clients over TCP and unix sockets.
 *
 * @module
 */

import { errorMessage } from "../common/errors.ts";
import { formatHostPort } from "../common/address.ts";
import { AuthError, RpcError } from "./errors.ts";
import { closeQuietly, type FrameReader } from "./frame.ts";
import { clientHandshake, HANDSHAKE_TIMEOUT_MS, type Role, serverHandshake } from "./handshake.ts";
import { type Handlers, RpcPeer } from "./peer.ts";
import { type TlsConfig, TlsConfigError, tlsListenOptions } from "./tls.ts";
import { setTlsNoDelay } from "./_tcp_nodelay.ts";

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
  /** TCP: serve over TLS with this certificate and key (plain TCP when undefined). */
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
  /** TCP: connect over TLS, the server's certificate checked against these CAs. */
  tls?: TlsConfig;
}

/** What a failed TLS handshake most likely means, for the log. */
const TLS_HINT = "(a peer without TLS, or a certificate not from the farm's CA?)";

/**
 * Listens for peers. Each connection must authenticate within the handshake
 * deadline; until it has, nothing it sends is acted on. Failures are logged
 * and the connection is dropped; the server keeps serving others.
 */
export function listen(options: ListenOptions): RpcServer {
  let listener: Deno.Listener;
  if (options.transport === "unix") {
    if (options.path === undefined) throw new TypeError("listen(): a unix socket needs a path");
    listener = Deno.listen({ transport: "unix", path: options.path });
  } else if (options.tls !== undefined) {
    try {
      listener = Deno.listenTls({
        transport: "tcp",
        hostname: options.hostname ?? "127.0.0.1",
        port: options.port ?? 0,
        ...tlsListenOptions(options.tls),
      });
    } catch (error) {
      // Address errors are the caller's to name; the rest are the certificate's or key's.
      if (error instanceof Deno.errors.AddrInUse || error instanceof Deno.errors.AddrNotAvailable) {
        throw error;
      }
      if (/lookup address|resolve/i.test(errorMessage(error))) throw error;
      throw new TlsConfigError(
        `Cannot use the TLS certificate and key: ${errorMessage(error)}`,
        { cause: error },
      );
    }
  } else {
    listener = Deno.listen({
      transport: "tcp",
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? 0,
    });
  }
  return new Server(listener, options);
}

class Server implements RpcServer {
  readonly addr: Deno.Addr;
  readonly port: number;
  readonly #listener: Deno.Listener;
  readonly #options: ListenOptions;
  readonly #log: (message: string) => void;
  readonly #peers = new Set<RpcPeer>();
  readonly #handshaking = new Set<Deno.Conn>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #acceptLoop: Promise<void>;
  #closed = false;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #retryWake: (() => void) | undefined;

  constructor(listener: Deno.Listener, options: ListenOptions) {
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
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#closed || error instanceof Deno.errors.BadResource) return;
        this.#log(`Cannot accept a connection: ${errorMessage(error)}`);
        await new Promise<void>((resolve) => {
          this.#retryWake = resolve;
          this.#retryTimer = setTimeout(resolve, ACCEPT_RETRY_MS);
        });
        continue;
      }
      noDelay(conn);
      const remoteAddr = formatAddr(conn.remoteAddr);
      if (this.#peers.size + this.#handshaking.size >= peersMax) {
        this.#log(`Refusing connection from ${remoteAddr}: ${peersMax} connections open`);
        closeQuietly(conn);
        continue;
      }
      const task = this.#serve(conn, remoteAddr);
      this.#tasks.add(task);
      task.finally(() => this.#tasks.delete(task));
    }
  }

  async #serve(conn: Deno.Conn, remoteAddr: string): Promise<void> {
    this.#handshaking.add(conn);
    let peerRole: Role;
    let reader: FrameReader;
    const timeoutMs = this.#options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    try {
      if (this.#options.tls !== undefined) {
        setTlsNoDelay(conn as Deno.TlsConn);
        await tlsHandshake(conn as Deno.TlsConn, timeoutMs);
      }
      ({ peerRole, reader } = await serverHandshake(conn, {
        secret: this.#options.secret,
        role: this.#options.role,
        timeoutMs,
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
      closeQuietly(this.#listener);
      clearTimeout(this.#retryTimer);
      this.#retryWake?.();
      for (const conn of this.#handshaking) closeQuietly(conn);
      for (const peer of this.#peers) peer.close();
    }
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
    const conn = await Deno.connect({
      transport: "tcp",
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port,
      signal,
    });
    if (options.tls === undefined) return conn;
    return await startClientTls(conn, options, at);
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

/** TLS over a TCP connection, the server's certificate checked; a failure is an AuthError. */
async function startClientTls(
  tcp: Deno.TcpConn,
  options: ConnectOptions,
  at: { signal: AbortSignal; target: string; timeoutMs: number; started: number },
): Promise<Deno.Conn> {
  noDelay(tcp);
  let conn: Deno.Conn = tcp;
  try {
    conn = await Deno.startTls(tcp, {
      hostname: options.hostname ?? "127.0.0.1",
      caCerts: options.tls!.caCerts,
    });
    await tlsHandshake(conn as Deno.TlsConn, Math.max(1, at.timeoutMs - (Date.now() - at.started)));
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
