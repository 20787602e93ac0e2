/**
 * The coordinator's clients (a worker registering, a master watching) keep
 * one connection open: connect, run a session on it until it fails or closes,
 * wait with backoff, connect again. This is that loop, once.
 *
 * @module
 */

import { connect, type Handlers, type RpcPeer, type TlsConfig } from "../rpc/mod.ts";
import { parseHostPort } from "../common/address.ts";
import { Backoff, errorMessage, sleep } from "./_net.ts";

/** Options for {@linkcode keepConnected}. */
export interface ReconnectOptions {
  /** The coordinator's "host:port". */
  coordinator: string;
  secret: CryptoKey;
  /** TLS around the connection (plain TCP when undefined). */
  tls?: TlsConfig;
  role: "worker" | "master";
  /** Methods the coordinator may call on us. */
  handlers: Handlers;
  /** Ends the loop (and the current session). */
  signal: AbortSignal;
  /**
   * Runs on each new connection until `session` aborts (the connection
   * closed, or `signal`) or it throws. Call `healthy()` after each success:
   * the next reconnect waits the shortest delay and logs a failure again.
   */
  session: (peer: RpcPeer, session: AbortSignal, healthy: () => void) => Promise<void>;
  /** Start of the log line for a failed attempt, e.g. "Cannot register with". */
  failure: string;
  /** Called with each failure (not after `signal` aborted). */
  onError?: (error: unknown) => void;
  /** Called whenever a connection ends or an attempt failed. */
  onDisconnect?: () => void;
  log: (message: string) => void;
  /** First reconnect delay; doubles up to `backoffMaxMs`. Default 100. */
  backoffMinMs?: number;
  /** Default 5000. */
  backoffMaxMs?: number;
  /** Time allowed to connect; default 10 000. */
  timeoutMs?: number;
}

/**
 * Connects to the coordinator again and again until `options.signal` aborts;
 * resolves then, never rejects. Each distinct failure is logged once.
 *
 * @throws {AddressError} at once when `options.coordinator` is not "host:port".
 */
export function keepConnected(options: ReconnectOptions): Promise<void> {
  const { hostname, port } = parseHostPort(options.coordinator);
  return run(options, hostname, port);
}

async function run(options: ReconnectOptions, hostname: string, port: number): Promise<void> {
  const { signal, log, coordinator } = options;
  const backoff = new Backoff(options.backoffMinMs ?? 100, options.backoffMaxMs ?? 5000);
  let lastError = "";
  const healthy = () => {
    backoff.reset();
    lastError = "";
  };
  while (!signal.aborted) {
    let peer: RpcPeer | undefined;
    const connection = new AbortController();
    try {
      peer = await connect({
        transport: "tcp",
        hostname,
        port,
        secret: options.secret,
        tls: options.tls,
        role: options.role,
        handlers: options.handlers,
        timeoutMs: options.timeoutMs ?? 10_000,
        signal,
        log,
      });
      const onClosed = () => connection.abort();
      peer.closed.then(onClosed, onClosed);
      await options.session(peer, AbortSignal.any([signal, connection.signal]), healthy);
      if (!signal.aborted) log(`Connection to coordinator ${coordinator} closed`);
    } catch (error) {
      if (!signal.aborted) {
        options.onError?.(error);
        const message = errorMessage(error);
        // Log each distinct failure once, not every retry.
        if (message !== lastError) {
          log(`${options.failure} coordinator ${coordinator}: ${message}`);
          lastError = message;
        }
      }
    } finally {
      options.onDisconnect?.();
      connection.abort();
      peer?.close();
    }
    if (peer !== undefined) await peer.closed.catch(() => {});
    await sleep(backoff.next(), signal);
  }
}
