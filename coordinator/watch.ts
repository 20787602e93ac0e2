/**
 * Master side of the coordinator protocol: a live view of the worker list,
 * pushed by the coordinator over a long-lived connection.
 *
 * @module
 */

import { connect, isSecretMismatch, type RpcPeer } from "../rpc/mod.ts";
import { parseHostPort } from "../common/address.ts";
import { Backoff, errorMessage, sleep } from "./_net.ts";
import {
  validateWorkerList,
  type WorkerInfo,
  type WorkerList,
  WORKERS_MAX_DEFAULT,
} from "./types.ts";

/** Options for {@linkcode watchWorkers}. */
export interface WorkerWatchOptions {
  /** The coordinator's "host:port". */
  coordinator: string;
  secret: CryptoKey;
  /** Called with each new list (also after a reconnect). */
  onChange: (workers: WorkerInfo[]) => void;
  /**
   * Called when the coordinator proves it holds another secret before any
   * list arrived (a misconfiguration: the caller may give up).
   */
  onSecretMismatch?: (error: Error) => void;
  log?: (message: string) => void;
  /** How often to ask for the list, to notice a silent coordinator; default 15 000. */
  pollIntervalMs?: number;
  /** First reconnect delay; doubles up to `backoffMaxMs`. Default 100. */
  backoffMinMs?: number;
  /** Default 5000. */
  backoffMaxMs?: number;
  /** Time allowed to connect and for each call; default 10 000. */
  timeoutMs?: number;
  /** Longest list accepted; default 1024. */
  workersMax?: number;
}

/** A running watch. */
export interface WorkerWatch extends AsyncDisposable {
  close(): Promise<void>;
  /** The last known list; kept while the coordinator is unreachable. */
  readonly workers: WorkerInfo[];
  /** Resolves once the first list arrived (or when the watch is closed first). */
  ready: Promise<void>;
}

class WorkerWatchImpl implements WorkerWatch {
  readonly #options: WorkerWatchOptions;
  readonly #log: (message: string) => void;
  readonly #abort = new AbortController();
  readonly #loop: Promise<void>;
  readonly #workersMax: number;
  #workers: WorkerInfo[] = [];
  /** Highest list sequence seen on the current connection. */
  #seq = -1;
  /** A list arrived once. */
  #listed = false;
  #resolveReady!: () => void;
  readonly ready: Promise<void>;

  constructor(options: WorkerWatchOptions) {
    this.#options = options;
    this.#log = options.log ?? (() => {});
    this.#workersMax = options.workersMax ?? WORKERS_MAX_DEFAULT;
    this.ready = new Promise((resolve) => this.#resolveReady = resolve);
    parseHostPort(options.coordinator);
    this.#loop = this.#run();
  }

  get workers(): WorkerInfo[] {
    return this.#workers;
  }

  #apply(value: unknown): void {
    let list: WorkerList;
    try {
      list = validateWorkerList(value, this.#workersMax);
    } catch (error) {
      this.#log(`Ignoring worker list from coordinator: ${errorMessage(error)}`);
      return;
    }
    if (list.seq < this.#seq) return;
    this.#seq = list.seq;
    this.#workers = list.workers;
    this.#listed = true;
    this.#resolveReady();
    try {
      this.#options.onChange(list.workers);
    } catch (error) {
      this.#log(`Worker list callback failed: ${errorMessage(error)}`);
    }
  }

  async #run(): Promise<void> {
    const options = this.#options;
    const { hostname, port } = parseHostPort(options.coordinator);
    const signal = this.#abort.signal;
    const pollIntervalMs = options.pollIntervalMs ?? 15_000;
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
          role: "master",
          handlers: { workers: (params: unknown) => this.#apply(params) },
          timeoutMs,
          signal,
          log: (m) => this.#log(m),
        });
        const onClosed = () => connection.abort();
        peer.closed.then(onClosed, onClosed);
        const both = AbortSignal.any([signal, connection.signal]);
        this.#seq = -1;
        this.#apply(await peer.call("subscribe", {}, { timeoutMs, signal: both }));
        this.#log(`Watching workers at coordinator ${options.coordinator}`);
        lastError = "";
        backoff.reset();
        while (!both.aborted) {
          await sleep(pollIntervalMs, both);
          if (both.aborted) break;
          this.#apply(await peer.call("workers", {}, { timeoutMs, signal: both }));
        }
        if (!signal.aborted) this.#log(`Connection to coordinator ${options.coordinator} closed`);
      } catch (error) {
        if (!signal.aborted && !this.#listed && isSecretMismatch(error)) {
          options.onSecretMismatch?.(error as Error);
        }
        if (!signal.aborted) {
          const message = errorMessage(error);
          if (message !== lastError) {
            this.#log(`Cannot watch coordinator ${options.coordinator}: ${message}`);
            lastError = message;
          }
        }
      } finally {
        connection.abort();
        peer?.close();
      }
      if (peer !== undefined) await peer.closed.catch(() => {});
      await sleep(backoff.next(), signal);
    }
    this.#resolveReady();
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
 * Watches the coordinator's worker list until closed.
 *
 * @throws {AddressError} when `options.coordinator` is not "host:port".
 */
export function watchWorkers(options: WorkerWatchOptions): WorkerWatch {
  return new WorkerWatchImpl(options);
}
