/**
 * Worker side of the coordinator protocol: keep a connection, register and
 * re-register with fresh figures, reconnect with backoff, and answer the
 * "drain" and "stop" actions the coordinator relays from its status page.
 *
 * @module
 */

import { connect, isSecretMismatch, type RpcPeer } from "../rpc/mod.ts";
import { parseHostPort } from "../common/address.ts";
import { Backoff, errorMessage, sleep } from "./_net.ts";
import type { RegisterParams, RegisterReply, WorkerInfo } from "./types.ts";

/** Options for {@linkcode registerWorker}. */
export interface WorkerRegistrationOptions {
  /** The coordinator's "host:port". */
  coordinator: string;
  secret: CryptoKey;
  /** Called before each registration for fresh figures. */
  info: () => Omit<WorkerInfo, "lastContactMs" | "draining">;
  /** Time between registrations; default 5000. */
  intervalMs?: number;
  /** Called when the coordinator relays "drain"; later registrations say draining. */
  onDrain?: () => void;
  /**
   * Called when the coordinator relays "stop". Start a graceful shutdown
   * here; the reply to the coordinator is sent after this returns.
   */
  onStop?: () => void;
  /**
   * Called when the coordinator proves it holds another secret before this
   * worker ever registered (a misconfiguration: the caller may give up).
   */
  onSecretMismatch?: (error: Error) => void;
  log?: (message: string) => void;
  /** First reconnect delay; doubles up to `backoffMaxMs`. Default 100. */
  backoffMinMs?: number;
  /** Default 5000. */
  backoffMaxMs?: number;
  /** Time allowed to connect and for each registration call; default 10 000. */
  timeoutMs?: number;
}

/** A running registration loop. */
export interface WorkerRegistration extends AsyncDisposable {
  close(): Promise<void>;
  /** The last registration succeeded and its connection is still open. */
  readonly registered: boolean;
}

export const REGISTER_INTERVAL_MS_DEFAULT = 5000;

class WorkerRegistrationImpl implements WorkerRegistration {
  readonly #options: WorkerRegistrationOptions;
  readonly #log: (message: string) => void;
  readonly #abort = new AbortController();
  readonly #loop: Promise<void>;
  #registered = false;
  #everRegistered = false;
  #draining = false;

  constructor(options: WorkerRegistrationOptions) {
    this.#options = options;
    this.#log = options.log ?? (() => {});
    // Throws at once on a malformed address: a configuration error.
    parseHostPort(options.coordinator);
    this.#loop = this.#run();
  }

  get registered(): boolean {
    return this.#registered;
  }

  async #run(): Promise<void> {
    const options = this.#options;
    const { hostname, port } = parseHostPort(options.coordinator);
    const signal = this.#abort.signal;
    const intervalMs = options.intervalMs ?? REGISTER_INTERVAL_MS_DEFAULT;
    const timeoutMs = options.timeoutMs ?? 10_000;
    const backoff = new Backoff(options.backoffMinMs ?? 100, options.backoffMaxMs ?? 5000);
    let lastError = "";
    while (!signal.aborted) {
      let peer: RpcPeer | undefined;
      const connection = new AbortController();
      try {
        peer = await connect({
          transport: "tcp",
          hostname,
          port,
          secret: options.secret,
          role: "worker",
          handlers: {
            drain: () => this.#drain(),
            stop: () => this.#stop(),
          },
          timeoutMs,
          signal,
          log: (m) => this.#log(m),
        });
        const onClosed = () => connection.abort();
        peer.closed.then(onClosed, onClosed);
        const both = AbortSignal.any([signal, connection.signal]);
        while (!both.aborted) {
          const params: RegisterParams = { ...options.info(), draining: this.#draining };
          const reply = await peer.call<RegisterReply>("register", params, {
            timeoutMs,
            signal: both,
          });
          if (!this.#registered) {
            this.#log(`Registered with coordinator ${options.coordinator}`);
            lastError = "";
          }
          this.#registered = true;
          this.#everRegistered = true;
          if (reply?.draining === true && !this.#draining) this.#drain();
          backoff.reset();
          await sleep(intervalMs, both);
        }
        if (!signal.aborted) this.#log(`Connection to coordinator ${options.coordinator} closed`);
      } catch (error) {
        if (!signal.aborted && !this.#everRegistered && isSecretMismatch(error)) {
          options.onSecretMismatch?.(error as Error);
        }
        if (!signal.aborted) {
          const message = errorMessage(error);
          // Log each distinct failure once, not every retry.
          if (message !== lastError) {
            this.#log(`Cannot register with coordinator ${options.coordinator}: ${message}`);
            lastError = message;
          }
        }
      } finally {
        this.#registered = false;
        connection.abort();
        peer?.close();
      }
      if (peer !== undefined) await peer.closed.catch(() => {});
      await sleep(backoff.next(), signal);
    }
  }

  #drain(): { ok: true } {
    if (!this.#draining) {
      this.#draining = true;
      this.#log("Coordinator says: drain");
      this.#options.onDrain?.();
    }
    return { ok: true };
  }

  #stop(): { ok: true } {
    this.#log("Coordinator says: stop");
    this.#options.onStop?.();
    return { ok: true };
  }

  async close(): Promise<void> {
    this.#abort.abort();
    await this.#loop;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Keeps a worker registered with the coordinator until closed.
 *
 * @throws {AddressError} when `options.coordinator` is not "host:port".
 */
export function registerWorker(options: WorkerRegistrationOptions): WorkerRegistration {
  return new WorkerRegistrationImpl(options);
}
