/**
 * File contents taken from the worker host's own files. A master announces
 * each file's SHA-256 before its contents are fetched; when this host has a
 * public system file at the same absolute path, its bytes are copied into
 * the store instead of fetched, and the store hashes the copy as it would
 * any fetch: bytes that do not hash to the announced value are refused (and
 * the blob fetched as usual), so a file that differs, or changes during the
 * copy, is never served. The store's blob is a copy: the host file changing
 * afterwards changes nothing a job reads.
 *
 * Eligible ("public system file"): a normalised path under one of the
 * system prefixes (not under the worker's own cache dir, where its mounts
 * are); every directory below the host root a real directory (no symlink)
 * owned by root, not writable by group or others, searchable by others; the
 * file regular, owned by root, not writable by group or others, readable by
 * others, of the announced size, opened without following a symlink and
 * checked on its descriptor. Any doubt declines: the blob is fetched.
 *
 * A bounded memo keyed by (dev, ino, size, mtime, ctime) remembers what a
 * copy showed a host file to hash to (or not to), so that a file known to
 * differ is not read again for the same announcement.
 *
 * @module
 */

import { normalizePath } from "../common/paths.ts";
import { openRegularSync, type RegularFile } from "../common/regular_file.ts";
import { type BlobSink, CasError, type Fetcher } from "../cas/mod.ts";

/**
 * Where host files may come from: the system's programs and libraries
 * (`/lib*`, `/bin`, `/sbin` are symlinks on merged-/usr systems, and a
 * symlink declines; real directories on older ones). Not `/etc` (host
 * configuration, some of it private; `/etc/alternatives` holds only symlinks,
 * never contents), not `/var`, `/home`, `/tmp`, `/root`.
 */
export const HOST_FILE_PREFIXES_DEFAULT: readonly string[] = [
  "/usr",
  "/lib",
  "/lib32",
  "/lib64",
  "/libx32",
  "/bin",
  "/sbin",
  "/opt",
];
/** Host files remembered in the memo at most (least recently used forgotten). */
export const HOST_MEMO_MAX_DEFAULT = 65_536;
/** Host files copied into the store at once; the others wait their turn, reads first. */
export const HOST_COPIES_MAX = 4;
/** Of which for prefetches and warm sets (so that a read never waits behind them all). */
export const HOST_BACKGROUND_COPIES_MAX = 2;
/** Copies waiting for a turn at most; beyond, the blob is fetched as usual. */
const HOST_COPIES_WAITING_MAX = 1024;
/** Bytes read from a host file per call. */
const COPY_CHUNK_BYTES = 1024 * 1024;
/** Host files up to this size are read with synchronous calls, at once. */
const SYNC_COPY_BYTES_MAX = 64 * 1024;
/**
 * Files of at least this size are copied ahead when looked up (smaller ones
 * are fetched with their hash right away, by the mirror's prefetch).
 */
export const HOST_AHEAD_BYTES_MIN = 1024 * 1024;
/** Larger files are not copied ahead (a copy of a lookup nobody reads costs its bytes). */
export const HOST_AHEAD_BYTES_MAX = 512 * 1024 * 1024;
/** Copies ahead running or waiting at once, at most; beyond, none start. */
export const HOST_AHEAD_MAX = 8;
/** Path components at most (a longer path declines). */
const PATH_DEPTH_MAX = 64;

/** The counters {@linkcode HostFiles} keeps (over the worker's life). */
export interface HostFileStats {
  /** Blobs copied from host files into the store (their hash checked there). */
  blobs: number;
  /** Their bytes. */
  bytes: number;
  /** Copies refused: the host file's bytes did not hash to the announced value. */
  mismatched: number;
  /** Copies that failed otherwise (a read error, the host busy); fetched as usual. */
  failed: number;
  /** Files not tried because the memo knew they hash otherwise. */
  memoSkips: number;
  /** Files copied ahead, before the master announced their hash (see `HostFiles.ahead`). */
  ahead: number;
  /** Their bytes. */
  aheadBytes: number;
}

/** Options of {@linkcode HostFiles}. */
export interface HostFilesOptions {
  /** Absolute, normalised prefixes files may come from; default {@linkcode HOST_FILE_PREFIXES_DEFAULT}. */
  prefixes?: readonly string[];
  /** Never from at or under these (the worker's cache dir: its own mounts). */
  exclude?: readonly string[];
  /**
   * Where the host's `/` is looked at (default "/"): path P is read at
   * `root + P`, and only directories below `root` are checked. For tests,
   * which emulate a host whose files differ from the master's.
   */
  root?: string;
  /** Memo entries at most; default {@linkcode HOST_MEMO_MAX_DEFAULT}. */
  memoMax?: number;
}

/** Where a blob's contents are announced to live on the master (the same path here may hold them). */
export interface BlobSource {
  path: string;
  size: number;
}

/** Where {@linkcode HostFiles.ahead} copies to: the worker's store. */
export interface AheadStore {
  putReader(
    reader: { read(buffer: Uint8Array): Promise<number | null> },
    name: string,
    options: { sizeMax?: number; sizeHint?: number },
  ): Promise<{ hash: string; size: number }>;
}

/** A host file found eligible for one announced content, held open by descriptor. */
export interface HostFile {
  readonly file: RegularFile;
  readonly hash: string;
  readonly size: number;
  /** The memo key of the file as opened. */
  readonly key: string;
}

/** What the memo knows of one host file: it hashes to `hash`, or not (`same` false). */
interface MemoEntry {
  hash: string;
  same: boolean;
}

/** The worker's source of contents from its own host files, shared by every mirror. */
export class HostFiles {
  readonly stats: HostFileStats = {
    blobs: 0,
    bytes: 0,
    mismatched: 0,
    failed: 0,
    memoSkips: 0,
    ahead: 0,
    aheadBytes: 0,
  };
  readonly #prefixes: readonly string[];
  readonly #exclude: readonly string[];
  readonly #root: string;
  readonly #memoMax: number;
  /** Insertion order is LRU order. */
  readonly #memo = new Map<string, MemoEntry>();
  /** Copies running now, for reads and for background fetches. */
  readonly #running = { foreground: 0, background: 0 };
  readonly #waiting = { foreground: [] as (() => void)[], background: [] as (() => void)[] };
  /** Copies ahead in flight, by path: the hash their bytes had (undefined: none stored). */
  readonly #ahead = new Map<string, Promise<string | undefined>>();

  constructor(options: HostFilesOptions = {}) {
    const prefixes = options.prefixes ?? HOST_FILE_PREFIXES_DEFAULT;
    for (const prefix of [...prefixes, ...(options.exclude ?? [])]) {
      if (normalizePath(prefix) !== prefix || prefix === "/") {
        throw new RangeError(`Host file prefix must be absolute, normalised and not /: ${prefix}`);
      }
    }
    this.#prefixes = prefixes;
    this.#exclude = options.exclude ?? [];
    const root = options.root ?? "/";
    if (normalizePath(root) !== root) {
      throw new RangeError(`Host root must be absolute and normalised: ${root}`);
    }
    this.#root = root === "/" ? "" : root;
    this.#memoMax = options.memoMax ?? HOST_MEMO_MAX_DEFAULT;
    if (!Number.isSafeInteger(this.#memoMax) || this.#memoMax < 1) {
      throw new RangeError(`Host file memo size must be a positive integer: ${this.#memoMax}`);
    }
  }

  /** Entries in the memo now. */
  get memoSize(): number {
    return this.#memo.size;
  }

  /**
   * The host file at `path`, opened, if it is a public system file of
   * `size` bytes not known to hash otherwise than `hash`; undefined on any
   * doubt (never throws). The caller copies it ({@linkcode HostFiles.copy})
   * and closes it.
   */
  open(path: string, hash: string, size: number): Promise<HostFile | undefined> {
    return Promise.resolve(this.#open(path, hash, size));
  }

  #open(path: string, hash: string, size: number): HostFile | undefined {
    const file = this.#openPublic(path, size);
    if (file === undefined) return undefined;
    const key = memoKey(file.info);
    const known = this.#memo.get(key);
    if (known !== undefined) {
      this.#memo.delete(key);
      this.#memo.set(key, known);
      if (known.same !== (known.hash === hash)) {
        this.stats.memoSkips++;
        file.close();
        return undefined;
      }
    }
    return { file, hash, size, key };
  }

  /**
   * Copies the public system file at `path` (of `size` bytes, as the master
   * listed it) into `store` under the hash its bytes have, before the master
   * has announced a hash: a big file looked up is about to be read (a
   * compiler's `cc1`, 33 MB), and the master hashes it meanwhile, so the two
   * run side by side instead of one after the other. Safe whatever the bytes:
   * the store names a blob by its own hash, and a mirror serves a blob only
   * under a hash the master announced. In the background, bounded
   * ({@link HOST_AHEAD_MAX}); never rejects. Resolves to the hash of what it
   * stored, or undefined (not eligible, or not copied: then the blob is
   * fetched as usual once announced). {@linkcode HostFiles.settled} waits for it.
   */
  ahead(path: string, size: number, store: AheadStore): Promise<string | undefined> {
    const none = Promise.resolve(undefined);
    if (size < HOST_AHEAD_BYTES_MIN || size > HOST_AHEAD_BYTES_MAX) return none;
    if (this.#ahead.has(path) || this.#ahead.size >= HOST_AHEAD_MAX) return none;
    if (!this.#eligiblePath(path)) return none;
    const task = (async (): Promise<string | undefined> => {
      const file = this.#openPublic(path, size);
      if (file === undefined) return undefined;
      try {
        const key = memoKey(file.info);
        if (this.#memo.has(key)) return undefined; // copied, or known to differ, before
        await this.#turn("foreground");
        try {
          using reader = await file.open();
          const { hash } = await store.putReader(reader, file.name, {
            sizeMax: size,
            sizeHint: size,
          });
          this.stats.ahead++;
          this.stats.aheadBytes += size;
          // What these bytes hash to, for this version of the file only.
          this.#memo.set(key, { hash, same: true });
          this.#trimMemo();
          return hash;
        } finally {
          this.#running.foreground--;
          this.#pump();
        }
      } catch {
        this.stats.failed++; // fetched as usual when announced
        return undefined;
      } finally {
        file.close();
      }
    })().catch(() => undefined).finally(() => this.#ahead.delete(path));
    this.#ahead.set(path, task);
    return task;
  }

  /**
   * Resolves when no copy ahead of `path` is running (at once if none is),
   * to the hash it stored, if one is running and stored one.
   */
  settled(path: string): Promise<string | undefined> {
    return this.#ahead.get(path) ?? Promise.resolve(undefined);
  }

  /**
   * The file at `path` if it is a public system file of `size` bytes (see the
   * module doc). Synchronous calls: a few µs each on the host's own system
   * files, where an asynchronous one costs a thread hop (~55 µs of CPU here),
   * and a header deep in `/usr/include` takes eight of them. Never on this
   * worker's own mounts (its cache dir is excluded, and its jobs' mounts live
   * in their own namespaces), so no call waits on a FUSE request that this
   * very thread would have to answer.
   */
  #openPublic(path: string, size: number): RegularFile | undefined {
    if (!this.#eligiblePath(path) || !Number.isSafeInteger(size) || size < 0) return undefined;
    let file: RegularFile | undefined;
    try {
      const parts = path.split("/").slice(1);
      let dir = this.#root;
      for (const part of parts.slice(0, -1)) {
        dir += "/" + part;
        const info = Deno.lstatSync(dir);
        // (Permission bits: 0o022 writable by group/others, 0o001 searchable by others.)
        if (!info.isDirectory || info.uid !== 0 || info.mode === null) return undefined;
        if ((info.mode & 0o022) !== 0 || (info.mode & 0o001) === 0) return undefined;
      }
      const seen = Deno.lstatSync(this.#root + path);
      if (!seen.isFile || seen.size !== size) return undefined;
      file = openRegularSync(this.#root + path, seen);
      const info = file.info;
      if (
        info.uid !== 0 || info.mode === null || (info.mode & 0o022) !== 0 ||
        (info.mode & 0o004) === 0 || info.size !== size
      ) {
        file.close();
        return undefined;
      }
      return file;
    } catch {
      file?.close();
      return undefined;
    }
  }

  /**
   * Writes the host file's bytes to `sink` (the store's, which hashes them);
   * at most its announced size: a file grown since is refused here.
   * @throws {CasError} `CORRUPT` when the file grew or shrank; read errors as they come.
   */
  async copy(
    host: HostFile,
    sink: BlobSink,
    signal: AbortSignal,
    options: { background?: boolean } = {},
  ): Promise<void> {
    const kind = options.background ? "background" : "foreground";
    await this.#turn(kind);
    try {
      if (host.size <= SYNC_COPY_BYTES_MAX) {
        // Read at once (a header: a few µs, against two thread hops), then written.
        const buffer = new Uint8Array(host.size + 1);
        let total = 0;
        while (total < buffer.length) {
          const n = host.file.readSync(buffer.subarray(total), total);
          if (n === null) break;
          total += n;
        }
        if (total > host.size) {
          throw new CasError("CORRUPT", `Host file ${host.file.name} grew past ${host.size} bytes`);
        }
        if (total !== host.size) {
          throw new CasError("CORRUPT", `Host file ${host.file.name} shrank to ${total} bytes`);
        }
        signal.throwIfAborted();
        await sink.write(buffer.subarray(0, total));
        return;
      }
      using reader = await host.file.open();
      // Sized to the file (one byte more shows its end, or that it grew): a
      // toolchain's many small files take no 1 MiB buffer each.
      const buffer = new Uint8Array(Math.min(COPY_CHUNK_BYTES, host.size + 1));
      let total = 0;
      while (true) {
        signal.throwIfAborted();
        const n = await reader.read(buffer);
        if (n === null) break;
        total += n;
        if (total > host.size) {
          throw new CasError("CORRUPT", `Host file ${host.file.name} grew past ${host.size} bytes`);
        }
        // (A sink is done with a chunk once its write settles: the buffer is reused.)
        await sink.write(buffer.subarray(0, n));
      }
      if (total !== host.size) {
        throw new CasError("CORRUPT", `Host file ${host.file.name} shrank to ${total} bytes`);
      }
    } finally {
      this.#running[kind]--;
      this.#pump();
    }
  }

  /**
   * A fetcher that first copies the host file at `source.path`, if it is a
   * public system file not known to differ, and keeps the copy only if it
   * hashes to the announced value (`copied` is then told its size);
   * otherwise the sink starts over and `fallback` fetches the blob.
   */
  fetcher(
    source: BlobSource,
    fallback: Fetcher,
    hooks: {
      /** A prefetch or warm-set fetch: its copy waits for reads. */
      background?: boolean;
      copied?(bytes: number): void;
      onError?(error: unknown, context: string): void;
    } = {},
  ): Fetcher {
    return async (hash, sink, signal) => {
      const host = await this.open(source.path, hash, source.size);
      if (host !== undefined) {
        let same = false;
        try {
          await this.copy(host, sink, signal, { background: hooks.background });
          same = sink.digest() === hash;
          this.learned(host, same);
        } catch (error) {
          signal.throwIfAborted();
          this.stats.failed++;
          hooks.onError?.(error, `copy host file ${source.path}`);
        } finally {
          host.file.close();
        }
        if (same) {
          hooks.copied?.(host.size);
          return;
        }
        await sink.restart();
      }
      await fallback(hash, sink, signal);
    };
  }

  /** Records how a copy of `host` ended: its bytes hashed to the announced value or not. */
  learned(host: HostFile, same: boolean): void {
    if (same) {
      this.stats.blobs++;
      this.stats.bytes += host.size;
    } else {
      this.stats.mismatched++;
    }
    this.#memo.delete(host.key);
    this.#memo.set(host.key, { hash: host.hash, same });
    this.#trimMemo();
  }

  #trimMemo(): void {
    for (const key of this.#memo.keys()) {
      if (this.#memo.size <= this.#memoMax) break;
      this.#memo.delete(key);
    }
  }

  #eligiblePath(path: string): boolean {
    if (typeof path !== "string" || path.length > 4096 || normalizePath(path) !== path) {
      return false;
    }
    if (path.split("/").length - 1 > PATH_DEPTH_MAX || path.includes("\0")) return false;
    const under = (prefix: string) => path === prefix || path.startsWith(prefix + "/");
    return this.#prefixes.some(under) && !this.#exclude.some(under);
  }

  /** Waits for one of the {@link HOST_COPIES_MAX} turns (reads are given turns first). */
  async #turn(kind: "foreground" | "background"): Promise<void> {
    if (this.#free(kind)) {
      this.#running[kind]++;
      return;
    }
    const { foreground, background } = this.#waiting;
    if (foreground.length + background.length >= HOST_COPIES_WAITING_MAX) {
      throw new CasError("LIMIT", "Too many host files waiting to be copied");
    }
    // The turn is counted by #pump() as it is handed on.
    await new Promise<void>((resolve) => this.#waiting[kind].push(resolve));
  }

  #free(kind: "foreground" | "background"): boolean {
    const { foreground, background } = this.#running;
    if (foreground + background >= HOST_COPIES_MAX) return false;
    return kind === "foreground" || background < HOST_BACKGROUND_COPIES_MAX;
  }

  /** Hands free turns to waiting copies, reads first. */
  #pump(): void {
    for (const kind of ["foreground", "background"] as const) {
      while (this.#waiting[kind].length > 0 && this.#free(kind)) {
        this.#running[kind]++;
        this.#waiting[kind].shift()!();
      }
    }
  }
}

/** A host file's identity as the memo keys it: (dev, ino, size, mtime, ctime). */
function memoKey(info: Deno.FileInfo): string {
  return `${info.dev}:${info.ino}:${info.size}:${info.mtime?.getTime()}:${info.ctime?.getTime()}`;
}
