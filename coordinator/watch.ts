/**
 * Master side of the coordinator protocol: a live view of the worker list,
 * pushed by the coordinator over a long-lived connection.
 *
 * @module
 */

import { isSecretMismatch, type TlsConfig } from "../rpc/mod.ts";
import { errorMessage, sleep } from "./_net.ts";
import { keepConnected } from "./_reconnect.ts";
import {
  type MasterAnnouncement,
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
  /** TLS around the connection (plain TCP when undefined). */
  tls?: TlsConfig;
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
  /**
   * Who this master is, sent with "subscribe" so that the coordinator's page
   * lists it (a coordinator that predates this ignores it).
   */
  master?: MasterAnnouncement;
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

  /** Throws at once on a malformed address: a configuration error. */
  #run(): Promise<void> {
    const options = this.#options;
    const pollIntervalMs = options.pollIntervalMs ?? 15_000;
    const timeoutMs = options.timeoutMs ?? 10_000;
    return keepConnected({
      coordinator: options.coordinator,
      secret: options.secret,
      tls: options.tls,
      role: "master",
      handlers: { workers: (params: unknown) => this.#apply(params) },
      signal: this.#abort.signal,
      failure: "Cannot watch",
      log: this.#log,
      backoffMinMs: options.backoffMinMs,
      backoffMaxMs: options.backoffMaxMs,
      timeoutMs,
      onError: (error) => {
        if (!this.#listed && isSecretMismatch(error)) options.onSecretMismatch?.(error as Error);
      },
      session: async (peer, session, healthy) => {
        this.#seq = -1;
        const params = options.master === undefined ? {} : { master: options.master };
        this.#apply(await peer.call("subscribe", params, { timeoutMs, signal: session }));
        this.#log(`Watching workers at coordinator ${options.coordinator}`);
        healthy();
        while (!session.aborted) {
          await sleep(pollIntervalMs, session);
          if (session.aborted) break;
          this.#apply(await peer.call("workers", {}, { timeoutMs, signal: session }));
        }
      },
    }).finally(() => this.#resolveReady());
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
