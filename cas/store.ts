import { CasError, ioError } from "./errors.ts";
import { grownBuffer, hashBuffer, hashBytes, hashFile, isHash } from "./hash.ts";
import { TempBlob } from "./temp_blob.ts";

/** Where a {@linkcode Fetcher} writes a blob's bytes, in order. Await each write. */
export type BlobSink = { write(chunk: Uint8Array): Promise<void> };

/** The sink a {@linkcode Fetcher} gets from the store: it also tells what it holds, and starts over. */
export interface StoreSink extends BlobSink {
  /** The SHA-256 (hex) of the bytes written so far. */
  digest(): string;
  /** Forgets the bytes written so far (a source gave other bytes; another one follows). */
  restart(): Promise<void>;
}

/**
 * Fetches the blob named `hash` (from a peer, usually) and writes its bytes to `sink`.
 * Resolves when all bytes are written; should stop when `signal` aborts.
 */
export type Fetcher = (hash: string, sink: StoreSink, signal: AbortSignal) => Promise<void>;

/** Options of {@linkcode Store.open}. */
export interface StoreOptions {
  /** Directory of the store; created if missing. */
  dir: string;
  /** Byte cap: least-recently-used unpinned blobs are evicted above it. */
  bytesMax: number;
  /** Largest single blob accepted by a put or fetch (`LIMIT` beyond). Default `bytesMax`. */
  blobBytesMax?: number;
}

/** Options of {@linkcode Store.ensure}. */
export interface EnsureOptions {
  /** Aborts this caller's wait; the shared fetch is aborted once every waiter has gone. */
  signal?: AbortSignal;
  /** Pin the blob before returning (the caller must `unpin` it later). Closes the gap
   * between `ensure()` returning and the caller pinning, in which eviction could run. */
  pin?: boolean;
}

/** Default `bytesMax` of {@linkcode Store.readBytes}. */
export const READ_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;

/** Blob files touched longer ago than this get their times updated on disk when used,
 * so that LRU order survives a restart (approximately) without a syscall per use. */
const DISK_TOUCH_INTERVAL_MS = 10 * 60 * 1000;

/** Files stat'ed at once while scanning the store at open. */
const SCAN_CONCURRENCY = 64;

const TMP_DIR_NAME = "tmp";

interface Entry {
  size: number;
  diskTouchMs: number;
}

interface Inflight {
  promise: Promise<string>;
  controller: AbortController;
  waiters: number;
}

/**
 * A content-addressed store of blobs named by their SHA-256 (lowercase hex), kept in
 * `<dir>/<hash[0..2]>/<hash>`, with a byte cap and least-recently-used eviction.
 *
 * Blobs are written to `<dir>/tmp/` (same file system) and renamed into place, so a
 * blob path either does not exist or holds the full, verified content. Readers open
 * {@linkcode Store.pathOf} themselves and should {@linkcode Store.pin} the blob while
 * they use it.
 */
export class Store {
  readonly dir: string;
  readonly bytesMax: number;
  readonly blobBytesMax: number;
  readonly #tmpDir: string;
  /** Insertion order is LRU order: first = least recently used. */
  readonly #index = new Map<string, Entry>();
  #mutex: Promise<void> = Promise.resolve();
  readonly #pins = new Map<string, number>();
  readonly #inflight = new Map<string, Inflight>();
  /** File work that may outlive the call that started it (see settle()). */
  readonly #work = new Set<Promise<unknown>>();
  #bytes = 0;
  #closed = false;

  private constructor(options: Required<StoreOptions>) {
    this.dir = options.dir;
    this.bytesMax = options.bytesMax;
    this.blobBytesMax = options.blobBytesMax;
    this.#tmpDir = `${options.dir}/${TMP_DIR_NAME}`;
  }

  /**
   * Opens (creating if needed) the store in `options.dir`: removes temp files left by a
   * crash, indexes existing blobs in LRU order of their access/modification times, and
   * evicts down to `bytesMax`.
   */
  static async open(options: StoreOptions): Promise<Store> {
    const { dir, bytesMax } = options;
    const blobBytesMax = options.blobBytesMax ?? bytesMax;
    if (!Number.isSafeInteger(bytesMax) || bytesMax <= 0) {
      throw new RangeError(`Cannot open store: bytesMax must be a positive integer: ${bytesMax}`);
    }
    if (!Number.isSafeInteger(blobBytesMax) || blobBytesMax <= 0) {
      throw new RangeError(
        `Cannot open store: blobBytesMax must be a positive integer: ${blobBytesMax}`,
      );
    }
    const store = new Store({ dir, bytesMax, blobBytesMax });
    const found: { hash: string; size: number; usedMs: number }[] = [];
    try {
      await Deno.mkdir(dir, { recursive: true });
      await Deno.remove(store.#tmpDir, { recursive: true }).catch((error) => {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      });
      await Deno.mkdir(store.#tmpDir, { recursive: true });
      for (let i = 0; i < 256; i++) {
        const prefix = i.toString(16).padStart(2, "0");
        const fanDir = `${dir}/${prefix}`;
        await Deno.mkdir(fanDir, { recursive: true });
        const names: string[] = [];
        for await (const entry of Deno.readDir(fanDir)) {
          if (entry.isFile && isHash(entry.name) && entry.name.startsWith(prefix)) {
            names.push(entry.name);
          }
        }
        for (let j = 0; j < names.length; j += SCAN_CONCURRENCY) {
          await Promise.all(
            names.slice(j, j + SCAN_CONCURRENCY).map(async (hash) => {
              const info = await Deno.stat(`${fanDir}/${hash}`);
              const usedMs = Math.max(info.atime?.getTime() ?? 0, info.mtime?.getTime() ?? 0);
              found.push({ hash, size: info.size, usedMs });
            }),
          );
        }
      }
    } catch (error) {
      throw ioError(`Cannot open store ${dir}`, error);
    }
    found.sort((a, b) => a.usedMs - b.usedMs);
    for (const { hash, size, usedMs } of found) {
      store.#index.set(hash, { size, diskTouchMs: usedMs });
      store.#bytes += size;
    }
    store.#evictSync();
    return store;
  }

  /** Bytes currently stored (sum of blob sizes). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Number of blobs currently stored. */
  get count(): number {
    return this.#index.size;
  }

  /** Path of the blob named `hash` (whether or not present). Throws a TypeError on a non-hash. */
  pathOf(hash: string): string {
    if (!isHash(hash)) {
      throw new TypeError(`Cannot name blob: not a SHA-256 hex hash: ${JSON.stringify(hash)}`);
    }
    return `${this.dir}/${hash.slice(0, 2)}/${hash}`;
  }

  /** Whether the blob is in the store; marks it recently used. */
  has(hash: string): boolean {
    this.#assertOpen();
    if (!this.#index.has(hash)) return false;
    this.#touch(hash);
    return true;
  }

  /**
   * Whether the blob is stored, once a fetch of it in flight (if any) has
   * ended: true if it is in the store then. Starts no fetch; `signal` gives up
   * waiting (the fetch goes on for its own callers).
   */
  async whenStored(hash: string, signal?: AbortSignal): Promise<boolean> {
    this.#assertOpen();
    const inflight = this.#inflight.get(hash);
    if (inflight !== undefined && !this.#index.has(hash)) {
      try {
        await raceSignal(inflight.promise, signal);
      } catch (error) {
        if (signal?.aborted) throw error;
        return false;
      }
    }
    return this.has(hash);
  }

  /** Size of the blob in bytes, or undefined if absent. Does not change LRU order. */
  sizeOf(hash: string): number | undefined {
    return this.#index.get(hash)?.size;
  }

  /**
   * Copies the file at `path` into the store (hashing it on the way) and returns its hash
   * and size. With `options.hash` already present this is a cheap no-op; with
   * `options.hash` given and the content hashing differently it throws `CORRUPT`.
   * `options.sizeHint`, its expected size, sizes the read buffer.
   */
  async putFile(
    path: string,
    options: { hash?: string; sizeHint?: number } = {},
  ): Promise<{ hash: string; size: number }> {
    this.#assertOpen();
    const expected = options.hash;
    if (expected !== undefined) {
      this.pathOf(expected); // validates
      const entry = this.#index.get(expected);
      if (entry) {
        this.#touch(expected);
        return { hash: expected, size: entry.size };
      }
    }
    let source: Deno.FsFile;
    try {
      source = await Deno.open(path, { read: true });
    } catch (error) {
      throw ioError(`Cannot read file ${path}`, error);
    }
    try {
      return await this.putReader(source, path, { hash: expected, sizeHint: options.sizeHint });
    } finally {
      source.close();
    }
  }

  /**
   * Copies what `reader` gives, to its end, into the store (hashing it on the
   * way) and returns its hash and size; `name` says what it reads, in errors.
   * With `options.hash` given and the content hashing differently it throws
   * `CORRUPT`; past `options.sizeMax` bytes it throws `LIMIT`. `options.sizeHint`, the size
   * it is expected to give, sizes the read buffer (see `hashBuffer`).
   */
  async putReader(
    reader: { read(buffer: Uint8Array): Promise<number | null> },
    name: string,
    options: { hash?: string; sizeMax?: number; sizeHint?: number } = {},
  ): Promise<{ hash: string; size: number }> {
    this.#assertOpen();
    const expected = options.hash;
    const temp = await this.#createTemp();
    try {
      let buffer = hashBuffer(options.sizeHint);
      let total = 0;
      while (true) {
        let n: number | null;
        try {
          n = await reader.read(buffer);
        } catch (error) {
          throw ioError(`Cannot read file ${name}`, error);
        }
        if (n === null) break;
        total += n;
        if (options.sizeMax !== undefined && total > options.sizeMax) {
          throw new CasError("LIMIT", `${name} holds more than ${options.sizeMax} bytes`);
        }
        await temp.write(buffer.subarray(0, n));
        buffer = grownBuffer(buffer, n);
      }
      const { hash, size } = await temp.finish();
      if (expected !== undefined && hash !== expected) {
        throw new CasError(
          "CORRUPT",
          `Cannot store file ${name} as blob ${expected}: content hashes to ${hash}`,
        );
      }
      this.#assertOpen();
      await this.#commit(temp, hash, size);
      await this.#pinnedEvict(hash);
      return { hash, size };
    } finally {
      // Awaited: a caller told of a failure finds no temp file left behind.
      await this.#track(temp.discard());
    }
  }

  /** Stores `bytes` and returns their hash. */
  async putBytes(bytes: Uint8Array): Promise<string> {
    this.#assertOpen();
    const hash = hashBytes(bytes);
    if (this.#index.has(hash)) {
      this.#touch(hash);
      return hash;
    }
    if (bytes.length > this.blobBytesMax) {
      throw new CasError(
        "LIMIT",
        `Cannot store blob ${hash}: ${bytes.length} bytes exceeds blobBytesMax ${this.blobBytesMax}`,
      );
    }
    const temp = await this.#createTemp();
    try {
      await temp.write(bytes);
      await temp.finish();
      this.#assertOpen();
      await this.#commit(temp, hash, bytes.length);
      await this.#pinnedEvict(hash);
      return hash;
    } finally {
      // Awaited: a caller told of a failure finds no temp file left behind.
      await this.#track(temp.discard());
    }
  }

  /**
   * Makes sure the blob is in the store and returns its path. If absent, calls `fetcher`
   * once however many callers ask concurrently, streams its bytes into a temp file while
   * hashing, and verifies the hash: on mismatch throws `CORRUPT` and stores nothing (a
   * later call fetches again). Errors thrown by the fetcher reach every waiter unchanged;
   * a caller whose `options.signal` aborts gets its reason.
   */
  async ensure(hash: string, fetcher: Fetcher, options: EnsureOptions = {}): Promise<string> {
    this.#assertOpen();
    const path = this.pathOf(hash);
    if (this.#index.has(hash)) {
      this.#touch(hash);
      if (options.pin) this.pin(hash);
      return path;
    }
    const signal = options.signal;
    signal?.throwIfAborted();
    let inflight = this.#inflight.get(hash);
    if (!inflight) {
      const controller = new AbortController();
      // Tracked apart from its waiters: a waiter that gives up returns at once,
      // while the fetch still writes (and then removes) its temp file.
      const promise = this.#track(this.#fetch(hash, fetcher, controller.signal));
      inflight = { promise, controller, waiters: 0 };
      this.#inflight.set(hash, inflight);
      // Waiters may all abort; the shared outcome must never be an unhandled rejection.
      promise.catch(() => {});
    }
    inflight.waiters++;
    const current = inflight;
    let abortedByCaller = false;
    try {
      await raceSignal(current.promise, signal);
    } catch (error) {
      abortedByCaller = signal?.aborted === true && error === signal.reason;
      throw error;
    } finally {
      current.waiters--;
      if (abortedByCaller && current.waiters === 0) {
        // Last interested caller gone: abort the fetch, let a new ensure() start afresh.
        if (this.#inflight.get(hash) === current) this.#inflight.delete(hash);
        current.controller.abort(signal?.reason);
      }
    }
    if (options.pin) {
      if (!this.#index.has(hash)) {
        throw new CasError("MISSING", `Cannot pin blob ${hash}: evicted right after its fetch`);
      }
      this.pin(hash);
    }
    return path;
  }

  /**
   * Rehashes the blob on disk. If it is missing or its content does not match, deletes it,
   * drops it from the index and returns false. Returns false for a blob not in the store.
   */
  async verify(hash: string): Promise<boolean> {
    this.#assertOpen();
    const path = this.pathOf(hash);
    const entry = this.#index.get(hash);
    if (!entry) return false;
    let actual: string | undefined;
    let size = -1;
    try {
      ({ hash: actual, size } = await hashFile(path, entry.size));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        throw ioError(`Cannot verify blob ${hash}`, error);
      }
    }
    if (actual === hash && size === entry.size) return true;
    // Replaced meanwhile (evicted and fetched again): the new file was verified when fetched.
    if (this.#index.get(hash) !== entry) return this.#index.has(hash);
    await this.#remove(hash, entry);
    return false;
  }

  /** Reads a small blob into memory: `MISSING` if absent, `LIMIT` if above `bytesMax`. */
  async readBytes(
    hash: string,
    options: { bytesMax?: number } = {},
  ): Promise<Uint8Array> {
    this.#assertOpen();
    const path = this.pathOf(hash);
    const bytesMax = options.bytesMax ?? READ_BYTES_MAX_DEFAULT;
    const entry = this.#index.get(hash);
    if (!entry) throw new CasError("MISSING", `Cannot read blob ${hash}: not in store`);
    if (entry.size > bytesMax) {
      throw new CasError(
        "LIMIT",
        `Cannot read blob ${hash}: ${entry.size} bytes exceeds bytesMax ${bytesMax}`,
      );
    }
    this.#touch(hash);
    try {
      return await Deno.readFile(path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        if (this.#index.get(hash) === entry) await this.#remove(hash, entry);
        throw new CasError("MISSING", `Cannot read blob ${hash}: file vanished`, {
          cause: error,
        });
      }
      throw ioError(`Cannot read blob ${hash}`, error);
    }
  }

  /** Protects the blob from eviction until a matching {@linkcode Store.unpin}. Refcounted;
   * a hash may be pinned before it is stored. */
  pin(hash: string): void {
    this.pathOf(hash); // validates
    this.#pins.set(hash, (this.#pins.get(hash) ?? 0) + 1);
  }

  /** Releases one {@linkcode Store.pin}. Throws on an unbalanced unpin (a bug). */
  unpin(hash: string): void {
    const count = this.#pins.get(hash);
    if (count === undefined) throw new Error(`Cannot unpin blob ${hash}: not pinned`);
    if (count === 1) this.#pins.delete(hash);
    else this.#pins.set(hash, count - 1);
  }

  /** Whether the blob is pinned. */
  isPinned(hash: string): boolean {
    return this.#pins.has(hash);
  }

  /** Evicts least-recently-used unpinned blobs until `bytes <= bytesMax` (or only pinned
   * blobs are left). Runs after every put; call it after unpinning to reclaim space. */
  evict(): Promise<void> {
    this.#assertOpen();
    return this.#exclusive(() => this.#evictLocked());
  }

  /**
   * Resolves when no fetch or temp-file clean-up started before is still
   * touching the store's files (after close(), before removing the directory).
   */
  async settle(): Promise<void> {
    while (this.#work.size > 0) await Promise.allSettled([...this.#work]);
  }

  #track<T>(work: Promise<T>): Promise<T> {
    this.#work.add(work);
    const done = () => this.#work.delete(work);
    work.then(done, done);
    return work;
  }

  /** Stops the store: aborts in-flight fetches; later calls throw `IO`. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const reason = new CasError("IO", `Cannot use store ${this.dir}: closed`);
    for (const inflight of this.#inflight.values()) inflight.controller.abort(reason);
    this.#inflight.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async #fetch(hash: string, fetcher: Fetcher, signal: AbortSignal): Promise<string> {
    const temp = await this.#createTemp();
    try {
      const sink: StoreSink = {
        write: (chunk) => {
          if (signal.aborted) return Promise.reject(signal.reason);
          return temp.write(chunk);
        },
        digest: () => temp.digest(),
        restart: () => temp.restart(),
      };
      await fetcher(hash, sink, signal);
      signal.throwIfAborted();
      const { hash: actual, size } = await temp.finish();
      if (actual !== hash) {
        throw new CasError(
          "CORRUPT",
          `Cannot store fetched blob: expected hash ${hash}, got ${actual} (${size} bytes)`,
        );
      }
      signal.throwIfAborted();
      this.#assertOpen();
      await this.#commit(temp, hash, size);
      await this.#pinnedEvict(hash);
      return this.pathOf(hash);
    } finally {
      // Awaited: a caller told of a failure finds no temp file left behind.
      await this.#track(temp.discard());
      const inflight = this.#inflight.get(hash);
      if (inflight?.controller.signal === signal) this.#inflight.delete(hash);
    }
  }

  #createTemp(): Promise<TempBlob> {
    return TempBlob.create({
      storeDir: this.dir,
      tmpDir: this.#tmpDir,
      blobBytesMax: this.blobBytesMax,
    });
  }

  /**
   * Runs `fn` with no other mutation of the store (commit, eviction, removal)
   * in between. The file operations are asynchronous on purpose: a worker serves
   * FUSE requests on the JS thread, and a synchronous rename there can wait on a
   * kernel lock held by an overlayfs copy-up that itself waits for a FUSE reply.
   */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#mutex.then(fn);
    this.#mutex = run.then(() => {}, () => {});
    return run;
  }

  /** Moves a finished temp file into place and indexes it. */
  #commit(temp: TempBlob, hash: string, size: number): Promise<void> {
    return this.#exclusive(async () => {
      if (this.#index.has(hash)) {
        this.#touch(hash); // someone else stored it meanwhile; temp is discarded
        return;
      }
      const path = this.pathOf(hash);
      try {
        try {
          await Deno.rename(temp.path, path);
        } catch (error) {
          if (!(error instanceof Deno.errors.NotFound)) throw error;
          await Deno.mkdir(`${this.dir}/${hash.slice(0, 2)}`, { recursive: true });
          await Deno.rename(temp.path, path);
        }
      } catch (error) {
        throw ioError(`Cannot store blob ${hash}`, error);
      }
      temp.committed = true;
      this.#index.set(hash, { size, diskTouchMs: Date.now() });
      this.#bytes += size;
    });
  }

  /** Evicts while keeping the blob just stored (it may alone exceed the cap). */
  async #pinnedEvict(hash: string): Promise<void> {
    if (this.#bytes <= this.bytesMax) return;
    this.pin(hash);
    try {
      await this.#exclusive(() => this.#evictLocked());
    } finally {
      this.unpin(hash);
    }
  }

  /** At open only, before anything else uses the store. */
  #evictSync(): void {
    if (this.#bytes <= this.bytesMax) return;
    for (const [hash, entry] of this.#index) {
      if (this.#bytes <= this.bytesMax) break;
      if (this.#pins.has(hash)) continue;
      try {
        Deno.removeSync(this.pathOf(hash));
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) continue;
      }
      this.#index.delete(hash);
      this.#bytes -= entry.size;
    }
  }

  async #evictLocked(): Promise<void> {
    for (const [hash, entry] of [...this.#index]) {
      if (this.#bytes <= this.bytesMax) break;
      if (this.#pins.has(hash) || this.#index.get(hash) !== entry) continue;
      await this.#removeLocked(hash, entry);
    }
  }

  /** Deletes a blob file and drops it from the index (kept if the delete fails). */
  #remove(hash: string, entry: Entry): Promise<void> {
    return this.#exclusive(() => this.#removeLocked(hash, entry));
  }

  async #removeLocked(hash: string, entry: Entry): Promise<void> {
    if (this.#index.get(hash) !== entry) return;
    try {
      await Deno.remove(this.pathOf(hash));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) return;
    }
    if (this.#index.get(hash) !== entry) return;
    this.#index.delete(hash);
    this.#bytes -= entry.size;
  }

  #touch(hash: string): void {
    const entry = this.#index.get(hash);
    if (!entry) return;
    this.#index.delete(hash);
    this.#index.set(hash, entry);
    const nowMs = Date.now();
    if (nowMs - entry.diskTouchMs > DISK_TOUCH_INTERVAL_MS) {
      entry.diskTouchMs = nowMs;
      const now = new Date(nowMs);
      // Only the LRU order after a restart suffers if this fails.
      Deno.utime(this.pathOf(hash), now, now).catch(() => {});
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new CasError("IO", `Cannot use store ${this.dir}: closed`);
  }
}

/** Resolves like `promise`, or rejects with `signal.reason` when it aborts first. */
function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}
