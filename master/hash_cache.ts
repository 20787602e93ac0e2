/**
 * Path → content-hash cache of the master, keyed by size, mtime, ctime and
 * inode, persisted across restarts, so neither a second build nor a restarted
 * master re-hashes an unchanged tree.
 */
import { hashReader, hashReaderSync } from "../cas/mod.ts";
import { openRegular, openRegularSync } from "../common/regular_file.ts";

interface Entry {
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
  hash: string;
}

export interface HashCacheOptions {
  /** File the cache is persisted in; none = memory only. */
  file?: string;
  entriesMax?: number;
  /** Persist at most this often while dirty. */
  saveIntervalMs?: number;
}

/**
 * Files up to this size are hashed with synchronous calls: opening, reading
 * and stat'ing a header that way takes tens of µs of the event loop, where
 * the asynchronous calls cost a thread hop each (~55 µs of CPU here, six per
 * file). Larger ones are read asynchronously, 1 MiB at a time.
 */
export const SYNC_HASH_BYTES_MAX = 64 * 1024;

/** A file modified this recently may change again within the same timestamp. */
const RACY_MS = 2000;
const FORMAT = "termite-hash-cache-v1";

export class HashCache {
  #entries = new Map<string, Entry>();
  #byHash = new Map<string, string>();
  /**
   * Hashes running, by path and the version of the file they were asked for
   * (size, mtime, ctime, inode): a hash begun before the file was rewritten
   * read the old bytes, and must not answer for the new version.
   */
  #inflight = new Map<string, Promise<string>>();
  #file?: string;
  #entriesMax: number;
  #dirty = false;
  #timer?: ReturnType<typeof setTimeout>;
  #saveIntervalMs: number;
  stats = { hits: 0, misses: 0, bytesHashed: 0 };

  private constructor(options: HashCacheOptions) {
    this.#file = options.file;
    this.#entriesMax = options.entriesMax ?? 1_000_000;
    this.#saveIntervalMs = options.saveIntervalMs ?? 10_000;
  }

  static async open(options: HashCacheOptions = {}): Promise<HashCache> {
    const cache = new HashCache(options);
    if (options.file) {
      try {
        const data = JSON.parse(await Deno.readTextFile(options.file));
        if (data?.format === FORMAT && Array.isArray(data.entries)) {
          for (const [path, size, mtimeMs, ctimeMs, ino, hash] of data.entries) {
            cache.#set(path, { size, mtimeMs, ctimeMs, ino, hash });
          }
        }
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) {
          console.error(`termite master: ignoring unreadable hash cache ${options.file}: ${err}`);
        }
      }
    }
    return cache;
  }

  get size(): number {
    return this.#entries.size;
  }

  #set(path: string, entry: Entry): void {
    const old = this.#entries.get(path);
    if (old && this.#byHash.get(old.hash) === path) this.#byHash.delete(old.hash);
    this.#entries.delete(path);
    this.#entries.set(path, entry);
    this.#byHash.set(entry.hash, path);
    while (this.#entries.size > this.#entriesMax) {
      const [oldest, e] = this.#entries.entries().next().value!;
      this.#entries.delete(oldest);
      if (this.#byHash.get(e.hash) === oldest) this.#byHash.delete(e.hash);
    }
  }

  #markDirty(): void {
    this.#dirty = true;
    if (this.#file && this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.save().catch((err) => console.error(`termite master: saving hash cache: ${err}`));
      }, this.#saveIntervalMs);
    }
  }

  /** The cached hash if `info` still matches, else undefined. */
  lookup(path: string, info: Deno.FileInfo): string | undefined {
    const e = this.#entries.get(path);
    if (
      e && e.size === info.size && e.mtimeMs === (info.mtime?.getTime() ?? 0) &&
      e.ctimeMs === (info.ctime?.getTime() ?? 0) && e.ino === (info.ino ?? 0)
    ) {
      this.stats.hits++;
      return e.hash;
    }
    return undefined;
  }

  /** A path known to hold `hash` (to serve contents by hash). */
  pathOf(hash: string): string | undefined {
    return this.#byHash.get(hash);
  }

  /** Records a hash the caller knows (it wrote the file itself). */
  record(path: string, info: Deno.FileInfo, hash: string): void {
    this.#set(path, {
      size: info.size,
      mtimeMs: info.mtime?.getTime() ?? 0,
      ctimeMs: info.ctime?.getTime() ?? 0,
      ino: info.ino ?? 0,
      hash,
    });
    this.#markDirty();
  }

  /**
   * Hash of the regular file at `path` that `info` (its lstat) describes,
   * hashing only when the cache is stale.
   * @throws {NotRegularFileError} the path no longer holds that regular file.
   */
  hash(path: string, info: Deno.FileInfo): Promise<string> {
    const cached = this.lookup(path, info);
    if (cached) return Promise.resolve(cached);
    if (info.size <= SYNC_HASH_BYTES_MAX) {
      // At once, so never in flight: nothing for a later version to find.
      try {
        // Only the regular file `info` describes: never a FIFO or device put there since.
        using regular = openRegularSync(path, info);
        // A file grown past the bound since its lstat is read asynchronously, below.
        const read = hashReaderSync(regular, info.size, SYNC_HASH_BYTES_MAX);
        if (read !== undefined) {
          this.stats.misses++;
          return Promise.resolve(
            this.#hashed(path, info, read.hash, read.size, regular.statSync()),
          );
        }
      } catch (err) {
        this.stats.misses++;
        return Promise.reject(err);
      }
    }
    const key = versionKey(path, info);
    const running = this.#inflight.get(key);
    if (running) return running;
    this.stats.misses++;
    const promise = (async () => {
      try {
        using regular = await openRegular(path, info);
        using file = await regular.open();
        const { hash, size } = await hashReader(file, info.size);
        return this.#hashed(path, info, hash, size, await file.stat());
      } finally {
        this.#inflight.delete(key);
      }
    })();
    this.#inflight.set(key, promise);
    return promise;
  }

  /**
   * A file hashed: `info` is what it was asked for, `after` its attributes
   * once read (`size` bytes). Only a file that did not change while hashing,
   * and not too recently (it could change again within the same timestamp),
   * is cached. Both times count: `cp -p` or a tar extraction writes new bytes
   * under an old mtime, and the ctime it moves has whole seconds here (Deno's).
   */
  #hashed(
    path: string,
    info: Deno.FileInfo,
    hash: string,
    size: number,
    after: Deno.FileInfo,
  ): string {
    this.stats.bytesHashed += size;
    const mtimeMs = after.mtime?.getTime() ?? 0;
    const changedMs = Math.max(mtimeMs, (after.ctime?.getTime() ?? 0) + 999);
    if (
      after.size === size && after.ino === info.ino &&
      mtimeMs === (info.mtime?.getTime() ?? 0) &&
      (after.ctime?.getTime() ?? 0) === (info.ctime?.getTime() ?? 0) &&
      Date.now() - changedMs > RACY_MS
    ) {
      this.record(path, after, hash);
    } else {
      this.#byHash.set(hash, path);
    }
    return hash;
  }

  forget(path: string): void {
    const e = this.#entries.get(path);
    if (!e) return;
    this.#entries.delete(path);
    if (this.#byHash.get(e.hash) === path) this.#byHash.delete(e.hash);
    this.#markDirty();
  }

  async save(): Promise<void> {
    if (!this.#file || !this.#dirty) return;
    this.#dirty = false;
    const entries = [...this.#entries].map((
      [p, e],
    ) => [p, e.size, e.mtimeMs, e.ctimeMs, e.ino, e.hash]);
    const tmp = `${this.#file}.tmp-${crypto.randomUUID()}`;
    try {
      await Deno.writeTextFile(tmp, JSON.stringify({ format: FORMAT, entries }));
      await Deno.rename(tmp, this.#file);
    } catch (err) {
      await Deno.remove(tmp).catch(() => {});
      this.#dirty = true;
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.save();
  }
}

/** A path and the version of its file that `info` describes. */
function versionKey(path: string, info: Deno.FileInfo): string {
  return `${info.size}:${info.mtime?.getTime() ?? 0}:${info.ctime?.getTime() ?? 0}:${
    info.ino ?? 0
  }:${path}`;
}
