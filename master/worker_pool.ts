/**
 * The master's workers: connections to the workers the coordinator lists,
 * each with the jobs this master may run there at once (the worker takes a
 * slot per job and shares its slots in turn between masters). Which job runs where is
 * the {@linkcode Dispatch} state machine's choice; the pool feeds it the
 * connections' events and the clock, and carries out what it decides.
 */
import type { WorkerInfo } from "../coordinator/mod.ts";
import { type MirrorOpenParams, type MirrorOpenReply, WorkerMethods } from "../common/protocol.ts";
import { parseHostPort } from "../common/address.ts";
import { connect, type Handlers, type RpcPeer, type TlsConfig } from "../rpc/mod.ts";
import { type AttemptEnd, Dispatch, type Effect, type FallbackCause } from "./dispatch.ts";

export interface PooledWorker {
  readonly id: string;
  readonly address: string;
  peer: RpcPeer;
  slots: number;
  running: number;
  /** Position in the change log this worker's mirror has seen. */
  cursor: number;
  jobsDone: number;
  jobsFailed: number;
}

export interface WorkerPoolOptions {
  secret: CryptoKey;
  /** TLS to the workers (plain TCP when undefined). */
  tls?: TlsConfig;
  masterId: string;
  writableRoot: string;
  /** Slots to ask of each worker (capped by what it has). */
  slotsPerWorker: number;
  /** Served to the workers on each connection (fs.attr, fs.dir, blob.get). */
  handlers: Handlers;
  log: (message: string) => void;
  /** How long a failed worker is left alone. */
  retryAfterMs?: number;
  connectTimeoutMs?: number;
  /** Waiters for a slot, at most. */
  waitersMax?: number;
  /** Other workers tried after a failed attempt. */
  retries?: number;
  /** A job waits this long for a slot before it runs locally. */
  slotWaitMs?: number;
  localFallback?: boolean;
  now?: () => number;
  /** Tool keys whose learned warm sets a mirror should fetch as soon as it opens. */
  warmTools?: () => string[];
}

/** Where a job runs: on a worker, locally (with the reason), or nowhere. */
export type PoolPlacement =
  | { kind: "run"; worker: PooledWorker }
  | { kind: "local"; cause: FallbackCause; reason: string }
  | { kind: "fail"; cause: FallbackCause; reason: string };

export class WorkerPool {
  #options: WorkerPoolOptions;
  #now: () => number;
  #dispatch: Dispatch;
  #known = new Map<string, WorkerInfo>();
  #workers = new Map<string, PooledWorker>();
  #connecting = new Map<string, Promise<void>>();
  /** Jobs waiting for the dispatcher's decision. */
  #pending = new Map<number, (p: PoolPlacement) => void>();
  #jobSeq = 0;
  #closed = false;
  #timer?: ReturnType<typeof setTimeout>;
  #timerAt = Infinity;

  constructor(options: WorkerPoolOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#dispatch = new Dispatch({
      now: this.#now,
      retries: options.retries ?? 2,
      slotWaitMs: options.slotWaitMs ?? 120_000,
      setAsideMs: options.retryAfterMs ?? 5_000,
      waitersMax: options.waitersMax ?? 4096,
      localFallback: options.localFallback ?? true,
    });
  }

  get workers(): PooledWorker[] {
    return [...this.#workers.values()];
  }

  /** The address of the pooled worker on connection `peer`, if it is one. */
  addressOf(peer: RpcPeer): string | undefined {
    for (const worker of this.#workers.values()) {
      if (worker.peer === peer) return worker.address;
    }
    return undefined;
  }

  /** Whether a worker at `address` is in the pool, connected. */
  isLive(address: string): boolean {
    for (const worker of this.#workers.values()) {
      if (worker.address === address) return !worker.peer.isClosing;
    }
    return false;
  }

  /** Jobs waiting for a slot. */
  get waiting(): number {
    return this.#dispatch.waiting;
  }

  /** The coordinator's list changed. */
  update(list: WorkerInfo[]): void {
    if (this.#closed) return;
    this.#known = new Map(list.filter((w) => !w.draining).map((w) => [w.id, w]));
    // A connected worker missing from the list stays while its connection
    // lives: a restarted coordinator's list fills up only as the workers
    // register again, and a dead worker's connection closes by itself (a
    // silent one is set aside by its job's deadline). A draining one goes.
    for (const w of list) {
      const connected = this.#workers.get(w.id);
      if (w.draining && connected) {
        this.#options.log(`worker ${connected.address} is draining`);
        this.#drop(w.id);
        this.#apply(this.#dispatch.removed(w.id));
      }
    }
    this.#connectAll();
  }

  #connectAll(): void {
    for (const [id, info] of this.#known) {
      if (this.#workers.has(id) || this.#connecting.has(id)) continue;
      if (!this.#dispatch.mayConnect(id)) continue;
      this.#apply(this.#dispatch.connecting(id));
      const p = this.#connect(info).finally(() => this.#connecting.delete(id));
      this.#connecting.set(id, p);
    }
    this.#schedule();
  }

  async #connect(info: WorkerInfo): Promise<void> {
    let peer: RpcPeer | undefined;
    try {
      peer = await connect({
        transport: "tcp",
        ...parseHostPort(info.address),
        secret: this.#options.secret,
        tls: this.#options.tls,
        role: "master",
        handlers: this.#options.handlers,
        timeoutMs: this.#options.connectTimeoutMs ?? 5_000,
      });
      const reply = await peer.call<MirrorOpenReply>(
        WorkerMethods.mirrorOpen,
        {
          masterId: this.#options.masterId,
          writableRoot: this.#options.writableRoot,
          slots: this.#options.slotsPerWorker,
          warm: this.#options.warmTools?.(),
        } satisfies MirrorOpenParams,
        { timeoutMs: 30_000 },
      );
      if (this.#closed || !this.#known.has(info.id)) {
        peer.close();
        this.#apply(this.#dispatch.removed(info.id));
        return;
      }
      if (reply.slots <= 0) {
        this.#options.log(`worker ${info.address} takes no jobs (draining)`);
        peer.close();
        this.#apply(this.#dispatch.down(info.id, `${info.address} takes no jobs (draining)`));
        return;
      }
      const worker: PooledWorker = {
        id: info.id,
        address: info.address,
        peer,
        slots: reply.slots,
        running: 0,
        cursor: 0,
        jobsDone: 0,
        jobsFailed: 0,
      };
      this.#workers.set(info.id, worker);
      this.#options.log(`worker ${info.address}: up to ${reply.slots} jobs at once`);
      peer.closed.then(() => {
        if (this.#workers.get(info.id) === worker) {
          this.#options.log(`lost worker ${info.address}`);
          this.#workers.delete(info.id);
          this.#apply(this.#dispatch.down(info.id, `lost the connection to ${info.address}`));
          this.#connectAll();
        }
      });
      this.#apply(this.#dispatch.up(info.id, reply.slots));
    } catch (err) {
      peer?.close();
      const why = `cannot use worker ${info.address}: ${(err as Error).message}`;
      this.#options.log(why);
      this.#apply(this.#dispatch.down(info.id, why));
      this.#schedule();
    }
  }

  #drop(id: string): void {
    const w = this.#workers.get(id);
    if (!w) return;
    this.#workers.delete(id);
    w.peer.close();
  }

  /**
   * Where a new job runs: a worker's slot (least loaded first, waiting up to
   * the slot wait while any worker may come), or locally with the reason.
   */
  submit(signal?: AbortSignal): { job: number; placement: Promise<PoolPlacement> } {
    const job = ++this.#jobSeq;
    return { job, placement: this.#await(job, () => this.#dispatch.submit(job), signal) };
  }

  /**
   * An attempt ended; frees its slot. Resolves with where the job runs next
   * after a failure, or null when it is done.
   */
  end(
    job: number,
    worker: PooledWorker,
    end: AttemptEnd,
    signal?: AbortSignal,
  ): Promise<PoolPlacement | null> {
    worker.running = Math.max(0, worker.running - 1);
    if (end.kind !== "failed") {
      this.#apply(this.#dispatch.ended(job, worker.id, end));
      return Promise.resolve(null);
    }
    if (end.workerFault) this.#options.log(`setting worker ${worker.address} aside: ${end.why}`);
    return this.#await(job, () => this.#dispatch.ended(job, worker.id, end), signal);
  }

  #await(job: number, step: () => Effect[], signal?: AbortSignal): Promise<PoolPlacement> {
    if (this.#closed) {
      return Promise.resolve({
        kind: "fail",
        cause: "no-workers",
        reason: "the master is closing",
      });
    }
    const placed = new Promise<PoolPlacement>((resolve) => {
      const onAbort = () => {
        if (!this.#pending.delete(job)) return;
        this.#dispatch.cancel(job);
        resolve({ kind: "fail", cause: "no-workers", reason: "cancelled" });
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#pending.set(job, (p) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(p);
      });
    });
    this.#apply(step());
    return placed;
  }

  /** Carries out the dispatcher's decisions. */
  #apply(effects: Effect[]): void {
    for (const e of effects) {
      if (e.kind === "drop") {
        this.#drop(e.worker);
        continue;
      }
      const resolve = this.#pending.get(e.job);
      this.#pending.delete(e.job);
      if (e.kind === "run") {
        const worker = this.#workers.get(e.worker)!;
        worker.running++;
        resolve?.({ kind: "run", worker });
      } else resolve?.(e);
    }
    this.#schedule();
  }

  /** One timer for the next waiter's deadline or set-aside worker's return. */
  #schedule(): void {
    if (this.#closed) return;
    const at = Math.min(
      this.#dispatch.nextDeadline() ?? Infinity,
      this.#dispatch.nextRetryAt() ?? Infinity,
    );
    if (at === Infinity || at >= this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => {
      this.#timerAt = Infinity;
      this.#timer = undefined;
      this.#apply(this.#dispatch.tick());
      this.#connectAll();
    }, Math.max(0, at - this.#now()));
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const [job, resolve] of this.#pending) {
      this.#dispatch.cancel(job);
      resolve({ kind: "fail", cause: "no-workers", reason: "the master is closing" });
    }
    this.#pending.clear();
    await Promise.allSettled([...this.#connecting.values()]);
    for (const id of [...this.#workers.keys()]) this.#drop(id);
  }
}
