/**
 * The master's workers: connections to the workers the coordinator lists,
 * each with the slots it reserved for this master, handed out least loaded
 * first. A worker that fails is set aside for a while; the pool never waits
 * forever: `acquire` gives up after a deadline and the job runs locally.
 */
import type { WorkerInfo } from "../coordinator/mod.ts";
import { type MirrorOpenParams, type MirrorOpenReply, WorkerMethods } from "../common/protocol.ts";
import { parseHostPort } from "../common/address.ts";
import { connect, type Handlers, type RpcPeer } from "../rpc/mod.ts";

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
}

interface Waiter {
  resolve: (w: PooledWorker | null) => void;
  exclude: ReadonlySet<string>;
}

export class WorkerPool {
  #options: WorkerPoolOptions;
  #known = new Map<string, WorkerInfo>();
  #workers = new Map<string, PooledWorker>();
  #connecting = new Map<string, Promise<void>>();
  #failedUntil = new Map<string, number>();
  #waiters: Waiter[] = [];
  #closed = false;
  #retryTimer?: ReturnType<typeof setTimeout>;

  constructor(options: WorkerPoolOptions) {
    this.#options = options;
  }

  get workers(): PooledWorker[] {
    return [...this.#workers.values()];
  }

  /** Whether a worker may come: connected, connecting, or listed. */
  get hopeful(): boolean {
    return this.#workers.size > 0 || this.#connecting.size > 0;
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
      }
    }
    this.#connectAll();
  }

  #connectAll(): void {
    const now = Date.now();
    for (const [id, info] of this.#known) {
      if (this.#workers.has(id) || this.#connecting.has(id)) continue;
      if ((this.#failedUntil.get(id) ?? 0) > now) continue;
      const p = this.#connect(info).finally(() => {
        this.#connecting.delete(id);
        this.#wake();
      });
      this.#connecting.set(id, p);
    }
    if (this.#failedUntil.size > 0 && this.#retryTimer === undefined && !this.#closed) {
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = undefined;
        this.#connectAll();
      }, this.#options.retryAfterMs ?? 5_000);
    }
  }

  async #connect(info: WorkerInfo): Promise<void> {
    let peer: RpcPeer | undefined;
    try {
      peer = await connect({
        transport: "tcp",
        ...parseHostPort(info.address),
        secret: this.#options.secret,
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
        } satisfies MirrorOpenParams,
        { timeoutMs: 30_000 },
      );
      if (this.#closed || !this.#known.has(info.id)) {
        peer.close();
        return;
      }
      if (reply.slots <= 0) {
        this.#options.log(`worker ${info.address} has no free slots`);
        this.#failedUntil.set(info.id, Date.now() + (this.#options.retryAfterMs ?? 5_000));
        peer.close();
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
      this.#failedUntil.delete(info.id);
      this.#options.log(`worker ${info.address}: ${reply.slots} slots reserved`);
      peer.closed.then(() => {
        if (this.#workers.get(info.id) === worker) {
          this.#options.log(`lost worker ${info.address}`);
          this.#workers.delete(info.id);
          this.#failedUntil.set(info.id, Date.now() + (this.#options.retryAfterMs ?? 5_000));
          this.#connectAll();
          this.#wake();
        }
      });
    } catch (err) {
      peer?.close();
      this.#options.log(`cannot use worker ${info.address}: ${(err as Error).message}`);
      this.#failedUntil.set(info.id, Date.now() + (this.#options.retryAfterMs ?? 5_000));
      this.#connectAll();
    }
  }

  #drop(id: string): void {
    const w = this.#workers.get(id);
    if (!w) return;
    this.#workers.delete(id);
    w.peer.close();
  }

  /** A worker failed a job in a way that is its fault: set it aside. */
  fail(worker: PooledWorker, why: string): void {
    this.#options.log(`setting worker ${worker.address} aside: ${why}`);
    this.#failedUntil.set(worker.id, Date.now() + (this.#options.retryAfterMs ?? 5_000));
    this.#drop(worker.id);
    this.#connectAll();
    this.#wake();
  }

  #pick(exclude: ReadonlySet<string>): PooledWorker | null {
    let best: PooledWorker | null = null;
    for (const w of this.#workers.values()) {
      if (exclude.has(w.id) || w.running >= w.slots) continue;
      if (best === null || w.running / w.slots < best.running / best.slots) best = w;
    }
    return best;
  }

  #anyUsable(exclude: ReadonlySet<string>): boolean {
    for (const w of this.#workers.values()) if (!exclude.has(w.id)) return true;
    for (const id of this.#connecting.keys()) if (!exclude.has(id)) return true;
    return false;
  }

  /**
   * A worker with a free slot, least loaded first; waits for one while any
   * usable worker exists, up to `waitMs`; null when there is none.
   */
  acquire(exclude: ReadonlySet<string>, waitMs: number): Promise<PooledWorker | null> {
    const now = this.#pick(exclude);
    if (now) {
      now.running++;
      return Promise.resolve(now);
    }
    if (this.#closed || !this.#anyUsable(exclude)) return Promise.resolve(null);
    if (this.#waiters.length >= (this.#options.waitersMax ?? 4096)) return Promise.resolve(null);
    return new Promise((resolve) => {
      const waiter: Waiter = { resolve: () => {}, exclude };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((x) => x !== waiter);
        resolve(null);
      }, waitMs);
      waiter.resolve = (w) => {
        clearTimeout(timer);
        resolve(w);
      };
      this.#waiters.push(waiter);
    });
  }

  release(worker: PooledWorker): void {
    worker.running--;
    this.#wake();
  }

  #wake(): void {
    const still: Waiter[] = [];
    for (const waiter of this.#waiters) {
      const w = this.#pick(waiter.exclude);
      if (w) {
        w.running++;
        waiter.resolve(w);
      } else if (this.#closed || !this.#anyUsable(waiter.exclude)) {
        waiter.resolve(null);
      } else {
        still.push(waiter);
      }
    }
    this.#waiters = still;
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#wake();
    await Promise.allSettled([...this.#connecting.values()]);
    for (const id of [...this.#workers.keys()]) this.#drop(id);
  }
}
