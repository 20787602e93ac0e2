/**
 * Worker side of the coordinator protocol: keep a connection, register and
 * re-register with fresh figures, reconnect with backoff, and answer the
 * "drain" and "stop" actions the coordinator relays from its status page.
 *
 * @module
 */

import { isSecretMismatch, type TlsConfig } from "../rpc/mod.ts";
import { sleep } from "./_net.ts";
import { keepConnected } from "./_reconnect.ts";
import type { RegisterParams, RegisterReply, WorkerInfo } from "./types.ts";

/** Options for {@linkcode registerWorker}. */
export interface WorkerRegistrationOptions {
  /** The coordinator's "host:port". */
  coordinator: string;
  secret: CryptoKey;
  /** TLS around the connection (plain TCP when undefined). */
  tls?: TlsConfig;
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
    this.#loop = this.#run();
  }

  get registered(): boolean {
    return this.#registered;
  }

  #run(): Promise<void> {
    const options = this.#options;
    const intervalMs = options.intervalMs ?? REGISTER_INTERVAL_MS_DEFAULT;
    const timeoutMs = options.timeoutMs ?? 10_000;
    return keepConnected({
      coordinator: options.coordinator,
      secret: options.secret,
      tls: options.tls,
      role: "worker",
      handlers: {
        drain: () => this.#drain(),
        stop: () => this.#stop(),
      },
      signal: this.#abort.signal,
      failure: "Cannot register with",
      log: this.#log,
      backoffMinMs: options.backoffMinMs,
      backoffMaxMs: options.backoffMaxMs,
      timeoutMs,
      onError: (error) => {
        if (!this.#everRegistered && isSecretMismatch(error)) {
          options.onSecretMismatch?.(error as Error);
        }
      },
      onDisconnect: () => {
        this.#registered = false;
      },
      session: async (peer, session, healthy) => {
        while (!session.aborted) {
          const params: RegisterParams = { ...options.info(), draining: this.#draining };
          const reply = await peer.call<RegisterReply>("register", params, {
            timeoutMs,
            signal: session,
          });
          if (!this.#registered) this.#log(`Registered with coordinator ${options.coordinator}`);
          this.#registered = true;
          this.#everRegistered = true;
          if (reply?.draining === true && !this.#draining) this.#drain();
          healthy();
          await sleep(intervalMs, session);
        }
      },
    });
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
