/**
 * The worker's view of a master's file system: a read-only FUSE file system
 * showing the master's whole `/`, fetched lazily over a {@link MasterLink},
 * with file contents served from the worker's content store by SHA-256.
 *
 * How it stays fast:
 * - Attributes come a whole directory at a time (`link.dir`), so a lookup is
 *   usually answered from memory, and a name missing from a known directory is
 *   answered "no such file" with a long-lived negative entry, no round trip.
 *   libfuse 3.14 makes the kernel serialise lookups in a directory, so every
 *   network wait in a lookup holds up its neighbours ({@link MirrorStats.lookupsWaited}).
 * - Kernel caches live long (an hour by default); correctness comes from
 *   explicit invalidation when the master pushes changes ({@link MirrorFs.applyUpdates}).
 * - A lookup of a file starts fetching its content in the background; reads are
 *   answered from a descriptor of the stored blob without copying through
 *   JavaScript, and the kernel keeps the page cache across opens.
 * - No open, opendir, release or getxattr requests at all (ENOSYS makes the
 *   kernel stop sending them), and READDIRPLUS: a warm `cat` of every file in
 *   /usr/include took 270 ms against 775 ms with open requests, a warm
 *   `ls -lR` 55 ms against 940 ms (bench/mirror_bench.ts).
 *
 * Handlers never touch paths under the mount point (that would deadlock the
 * single thread serving it): they only use the link and the store.
 *
 * This file turns kernel requests into calls of the mirror's parts, one file
 * each: the attribute cache (`mirror_cache.ts`), attribute and directory
 * fetches (`mirror_fetch.ts`), update replay (`mirror_updates.ts`), blob
 * fetches and descriptors (`mirror_blobs.ts`), prefetch
 * (`mirror_prefetch.ts`), listings (`mirror_readdir.ts`), lookups and
 * attributes (`mirror_lookup.ts`).
 *
 * @module
 */

import type { Store } from "../cas/mod.ts";
import { isInside } from "../common/paths.ts";
import type { FileAttr } from "../common/types.ts";
import { EBADF, EIO, EISDIR, ENFILE, ENOSYS, ENOTDIR, EROFS, ESTALE } from "../fuse/errno.ts";
import {
  FUSE_CAP_CACHE_SYMLINKS,
  FUSE_CAP_NO_OPEN_SUPPORT,
  FUSE_CAP_NO_OPENDIR_SUPPORT,
  FUSE_CAP_READDIRPLUS,
  FUSE_CAP_READDIRPLUS_AUTO,
  O_ACCMODE,
  O_RDONLY,
} from "../fuse/structs.ts";
import type {
  AttrReply,
  ConnInfo,
  DirEntry,
  DirEntryPlus,
  Entry,
  Errno,
  FdSlice,
  FileSystem,
  MountedSession,
  OpenDirReply,
  OpenReply,
  Reply,
  RequestContext,
  StatFs,
} from "../fuse/types.ts";
import { Limiter } from "./_mirror_limiter.ts";
import { BlobFiles, type BlobHandle } from "./mirror_blobs.ts";
import { AttrCache, type MirrorNode, NAME_BYTES_MAX } from "./mirror_cache.ts";
import { AttrFetches } from "./mirror_fetch.ts";
import { type FailedFn, NodeAnswers } from "./mirror_lookup.ts";
import { Prefetcher } from "./mirror_prefetch.ts";
import { Listings } from "./mirror_readdir.ts";
import {
  BLOB_FDS_MAX_DEFAULT,
  ENTRIES_MAX_DEFAULT,
  HANDLES_MAX_DEFAULT,
  LINK_CALLS_MAX_DEFAULT,
  type MirrorOptions,
  type MirrorStats,
  MOUNT_POINTS_DEFAULT,
  newStats,
  PREFETCH_BYTES_MAX_DEFAULT,
  PREFETCHES_MAX_DEFAULT,
  TIMEOUT_S_DEFAULT,
} from "./mirror_options.ts";
import { Invalidations, MirrorUpdates } from "./mirror_updates.ts";
import { Warmer } from "./mirror_warm.ts";

export { MOUNT_POINTS_DEFAULT };
export type { MirrorOptions, MirrorStats };

/** A read-only mirror of a master's `/`, see the module documentation. */
export class MirrorFs implements FileSystem {
  readonly stats: MirrorStats;
  /** Defined only with `readdirPlus` (its presence makes libfuse offer READDIRPLUS). */
  readonly readdirplus?: (
    ino: bigint,
    fh: number,
    offset: number,
    sizeMax: number,
    ctx: RequestContext,
  ) => Reply<readonly DirEntryPlus[]>;
  readonly #store: Store;
  readonly #handlesMax: number;
  readonly #readdirPlus: boolean;
  readonly #onError: (error: unknown, context: string) => void;
  readonly #cache: AttrCache;
  readonly #updates: MirrorUpdates;
  readonly #fetches: AttrFetches;
  readonly #blobs: BlobFiles;
  readonly #prefetcher: Prefetcher;
  readonly #warmer: Warmer;
  readonly #background = new Set<Promise<unknown>>();
  readonly #files = new Map<number, BlobHandle>();
  readonly #listings: Listings;
  readonly #answers: NodeAnswers;
  #zeroOpen: boolean;
  #zeroOpenDir: boolean;
  #nextFh = 1;
  readonly #closer = new AbortController();
  #session: MountedSession | undefined;
  #mountpoint: string | undefined;
  #closed = false;
  /** The fetch of the listings from `/` to the writable root, started at mount. */
  #pathWalk: Promise<unknown> = Promise.resolve();

  constructor(options: MirrorOptions) {
    this.#store = options.store;
    this.#handlesMax = options.handlesMax ?? HANDLES_MAX_DEFAULT;
    this.#readdirPlus = options.readdirPlus ?? true;
    if (this.#readdirPlus) this.readdirplus = this.#readdirplus.bind(this);
    this.#zeroOpen = options.zeroOpen ?? true;
    this.#zeroOpenDir = options.zeroOpen ?? true;
    this.#onError = options.onError ?? (() => {});
    this.stats = newStats();
    const { link } = options;
    const linkCallsMax = options.linkCallsMax ?? LINK_CALLS_MAX_DEFAULT;
    const limiter = new Limiter({
      max: linkCallsMax,
      backgroundMax: Math.max(1, Math.floor(linkCallsMax * 3 / 4)),
    });
    const signal = this.#closer.signal;
    const failed = (error: unknown, context: string) => this.#failed(error, context);
    this.#cache = new AttrCache({
      writableRoot: options.writableRoot,
      mountPoints: options.mountPoints ?? MOUNT_POINTS_DEFAULT,
      entriesMax: options.entriesMax ?? ENTRIES_MAX_DEFAULT,
      entryTimeoutS: options.entryTimeoutS ?? TIMEOUT_S_DEFAULT,
      attrTimeoutS: options.attrTimeoutS ?? TIMEOUT_S_DEFAULT,
      negativeTimeoutS: options.negativeTimeoutS ?? TIMEOUT_S_DEFAULT,
      busy: (node) => this.#fetches.isFetching(node),
    });
    const cache = this.#cache;
    const updates = this.#updates = new MirrorUpdates(cache, this.stats);
    const fetches = this.#fetches = new AttrFetches({
      link,
      limiter,
      cache,
      updates,
      stats: this.stats,
      signal,
    });
    this.#blobs = this.#newBlobs(options, { limiter, fetches, failed });
    this.#prefetcher = this.#newPrefetcher(options, { fetches, failed });
    this.#warmer = this.#newWarmer(options, { fetches, failed });
    this.#listings = new Listings({
      cache,
      fetches,
      signal,
      nextFh: () => this.#nextFh++,
      failed,
    });
    this.#answers = new NodeAnswers({
      cache,
      fetches,
      prefetcher: this.#prefetcher,
      stats: this.stats,
      failed,
    });
    Object.defineProperties(this.stats, {
      entries: { get: () => cache.attached, enumerable: true },
      handles: { get: () => this.#handleCount(), enumerable: true },
    });
  }

  /** The mirror's open contents: blobs fetched into the store, read through descriptors. */
  #newBlobs(
    options: MirrorOptions,
    parts: { limiter: Limiter; fetches: AttrFetches; failed: FailedFn },
  ): BlobFiles {
    const { fetches } = parts;
    return new BlobFiles({
      link: options.link,
      peers: options.peers,
      hostFiles: options.hostFiles,
      limiter: parts.limiter,
      store: options.store,
      nodes: this.#cache.nodes,
      stats: this.stats,
      signal: this.#closer.signal,
      fdsMax: options.blobFdsMax ?? BLOB_FDS_MAX_DEFAULT,
      refresh: (node, withHash) => fetches.refresh(node, withHash),
      failed: parts.failed,
      onError: this.#onError,
    });
  }

  /** Contents fetched ahead of their first read. */
  #newPrefetcher(
    options: MirrorOptions,
    parts: { fetches: AttrFetches; failed: FailedFn },
  ): Prefetcher {
    const { fetches } = parts;
    return new Prefetcher({
      store: options.store,
      blobs: this.#blobs,
      bytesMax: options.prefetchBytesMax ?? PREFETCH_BYTES_MAX_DEFAULT,
      max: options.prefetchesMax ?? PREFETCHES_MAX_DEFAULT,
      stats: this.stats,
      signal: this.#closer.signal,
      refresh: (node, withHash, background) => fetches.refresh(node, withHash, background),
      failed: parts.failed,
      track: (task) => this.#track(task),
    });
  }

  /** A tool's learned warm set, streamed in from the master. */
  #newWarmer(
    options: MirrorOptions,
    parts: { fetches: AttrFetches; failed: FailedFn },
  ): Warmer {
    return new Warmer({
      link: options.link,
      cache: this.#cache,
      fetches: parts.fetches,
      updates: this.#updates,
      store: options.store,
      blobs: this.#blobs,
      stats: this.stats,
      signal: this.#closer.signal,
      bytesMax: options.warmBytesMax,
      failed: parts.failed,
      track: (task) => this.#track(task),
    });
  }

  /** Use `session` for kernel cache invalidation. */
  attach(session: MountedSession): void {
    this.#session = session;
  }

  // ---- updates from the master ----

  /**
   * A job of `tool` is about to run: on the first one, the master's learned
   * warm set of the tool streams in, in the background (see `mirror_warm.ts`).
   */
  warm(tool: string): void {
    // After the way to the writable root: its listings would otherwise wait
    // behind the stream's on the link, and every job's first steps need them.
    if (!this.#closed) this.#warmer.warm(tool, this.#pathWalk);
  }

  /**
   * Fetches, in the background, the listing of every directory from `/` down
   * to `path` (the writable root: every job's overlay and cwd lie there, and
   * the kernel would otherwise look each one up in turn, waiting for each).
   */
  warmPath(path: string): void {
    if (this.#closed) return;
    const names = path.split("/").filter((name) => name !== "");
    const task = (async () => {
      let node = this.#cache.root;
      for (let i = 0;; i++) {
        if (node.synthetic || node.detached) return;
        if (node.listing === undefined || !node.complete) await this.#fetches.fetchDir(node);
        if (i === names.length || this.#closed) return;
        const kid = node.kids.get(names[i]);
        if (kid === undefined || kid.attr?.kind !== "dir") return;
        node = kid;
      }
    })().catch((error) => this.#failed(error, `prefetch ${path}`));
    this.#pathWalk = task;
    this.#track(task);
  }

  /**
   * Takes attributes pushed by the master (its local edits, other workers'
   * results): updates the cache and drops what the kernel cached about them.
   * `kind: null` deletes a path and everything under it; a directory attr with
   * `children` replaces its listing. The cache is updated at once; the promise
   * settles when the kernel has dropped its copies (await it before running a
   * job that must see the updates; it never rejects).
   */
  applyUpdates(updates: readonly FileAttr[]): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const invalidations = this.#updates.apply(updates);
    this.#cache.evictIfNeeded();
    return this.#notify(invalidations);
  }

  /**
   * Drops every cached attribute and listing and invalidates everything the
   * kernel cached (used when the master's change log overflowed). Node ids the
   * kernel holds stay valid; their attributes are fetched again when asked for.
   * The promise settles like {@linkcode MirrorFs.applyUpdates}'s.
   */
  reset(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#fetches.reset();
    const invalidations = new Invalidations();
    this.#cache.forgetAll(invalidations);
    return this.#notify(invalidations);
  }

  /**
   * Stops: aborts link calls and prefetches and waits for them, closes open
   * blobs. Later requests answer EIO. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closer.abort(new MirrorClosedError());
    while (this.#background.size > 0) {
      await Promise.allSettled([...this.#background]);
    }
    for (const [fh, handle] of this.#files) {
      this.#files.delete(fh);
      this.#blobs.close(handle);
    }
    this.#blobs.closeAll();
    this.#listings.clear();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * The content hash this mirror holds for the regular file at `path` (no
   * symlink on the way), if cached: what a job read there. The action cache
   * checks it against the master's own.
   */
  hashOf(path: string): string | undefined {
    const attr = this.#cache.find(path)?.attr;
    return attr?.kind === "file" ? attr.hash : undefined;
  }

  /** Where the mirror is mounted (from init), if known. */
  get mountpoint(): string | undefined {
    return this.#mountpoint;
  }

  // ---- FileSystem ----

  init(conn: ConnInfo): void {
    this.#mountpoint = conn.mountpoint;
    if (isInside(this.#store.dir, conn.mountpoint)) {
      this.#onError(
        new Error(`Store ${this.#store.dir} lies under mount point ${conn.mountpoint}`),
        "init",
      );
    }
    if (conn.capable & FUSE_CAP_CACHE_SYMLINKS) conn.want |= FUSE_CAP_CACHE_SYMLINKS;
    if (!(conn.capable & FUSE_CAP_NO_OPEN_SUPPORT)) this.#zeroOpen = false;
    if (!(conn.capable & FUSE_CAP_NO_OPENDIR_SUPPORT)) this.#zeroOpenDir = false;
    if (!this.#readdirPlus) conn.want &= ~(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
    // Warm up: the root's listing is needed by the first path lookup anyway.
    this.#track(
      this.#fetches.fetchDir(this.#cache.root).catch((error) => this.#failed(error, "prefetch /")),
    );
  }

  lookup(
    parentId: bigint,
    name: string,
    _ctx: RequestContext,
  ): Entry | Errno | Promise<Entry | Errno> {
    this.stats.lookups++;
    if (this.#closed) return EIO;
    const parent = this.#cache.nodes.get(parentId);
    if (parent === undefined) return ESTALE;
    return this.#answers.lookup(parent, name);
  }

  forget(ino: bigint): void {
    if (this.#cache.nodes.forget(ino) === undefined) return;
    this.#blobs.forget(ino);
  }

  getattr(ino: bigint, _ctx: RequestContext): AttrReply | Errno | Promise<AttrReply | Errno> {
    if (this.#closed) return EIO;
    const node = this.#cache.nodes.get(ino);
    if (node === undefined) return ESTALE;
    return this.#answers.getattr(node);
  }

  readlink(ino: bigint, _ctx: RequestContext): string | Errno | Promise<string | Errno> {
    if (this.#closed) return EIO;
    const node = this.#cache.nodes.get(ino);
    if (node === undefined) return ESTALE;
    return this.#answers.readlink(node);
  }

  opendir(
    ino: bigint,
    _flags: number,
    _ctx: RequestContext,
  ): OpenDirReply | Errno | Promise<OpenDirReply | Errno> {
    if (this.#closed) return EIO;
    const node = this.#cache.nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (node.attr !== undefined && node.attr.kind !== "dir") return ENOTDIR;
    // The kernel then stops sending opendir and releasedir, and caches listings itself.
    if (this.#zeroOpenDir) return ENOSYS;
    if (this.#files.size + this.#listings.openCount >= this.#handlesMax) return ENFILE;
    return this.#listings.open(node);
  }

  readdir(
    ino: bigint,
    fh: number,
    offset: number,
    _sizeMax: number,
    _ctx: RequestContext,
  ): readonly DirEntry[] | Errno | Promise<readonly DirEntry[] | Errno> {
    return this.#listings.readdir(ino, fh, offset);
  }

  #readdirplus(
    ino: bigint,
    fh: number,
    offset: number,
    sizeMax: number,
    _ctx: RequestContext,
  ): readonly DirEntryPlus[] | Errno | Promise<readonly DirEntryPlus[] | Errno> {
    return this.#listings.readdirplus(ino, fh, offset, sizeMax);
  }

  releasedir(_ino: bigint, fh: number): void {
    this.#listings.release(fh);
  }

  open(
    ino: bigint,
    flags: number,
    _ctx: RequestContext,
  ): OpenReply | Errno | Promise<OpenReply | Errno> {
    if (this.#closed) return EIO;
    const node = this.#cache.nodes.get(ino);
    if (node === undefined) return ESTALE;
    if ((flags & O_ACCMODE) !== O_RDONLY) return EROFS;
    if (node.attr?.kind === "dir") return EISDIR;
    // The kernel then stops sending open and release and keeps page caches (keep_cache).
    if (this.#zeroOpen) return ENOSYS;
    if (this.#files.size + this.#listings.openCount >= this.#handlesMax) return ENFILE;
    return this.#open(node);
  }

  read(
    ino: bigint,
    fh: number,
    size: number,
    offset: number,
    _ctx: RequestContext,
  ): FdSlice | Errno | Promise<FdSlice | Errno> {
    if (fh !== 0) {
      const handle = this.#files.get(fh);
      if (handle === undefined || handle.node.id !== ino) return EBADF;
      return { fd: handle.fd, offset, size };
    }
    // No open round trips: one cached descriptor per inode.
    if (this.#closed) return EIO;
    const node = this.#cache.nodes.get(ino);
    if (node === undefined) return ESTALE;
    const fd = this.#blobs.cachedFd(node);
    if (fd !== undefined) return { fd, offset, size };
    const started = performance.now();
    return this.#blobs.openCached(node).then((handle) => {
      this.stats.readWaitMs += performance.now() - started;
      return typeof handle === "number" ? handle : { fd: handle.fd, offset, size };
    });
  }

  release(_ino: bigint, fh: number): void {
    const handle = this.#files.get(fh);
    if (handle === undefined) return;
    this.#files.delete(fh);
    this.#blobs.close(handle);
  }

  statfs(_ino: bigint, _ctx: RequestContext): StatFs {
    const blocks = Math.ceil(this.#store.bytesMax / 4096);
    return {
      bsize: 4096,
      frsize: 4096,
      blocks,
      bfree: 0,
      bavail: 0,
      files: this.#cache.attached,
      ffree: 0,
      namemax: NAME_BYTES_MAX,
    };
  }

  access(ino: bigint, mask: number, ctx: RequestContext): 0 | Errno {
    const node = this.#cache.nodes.get(ino);
    if (node === undefined) return ESTALE;
    return this.#answers.access(node, mask, ctx);
  }

  /**
   * There are no extended attributes. ENOSYS rather than ENODATA: the kernel
   * then answers every later getxattr itself (EOPNOTSUPP, which `ls`, overlayfs
   * and ACL checks take as "none"), instead of asking once per file and name
   * (a warm `ls -lR /usr/include`: 18,000 requests and 940 ms with ENODATA,
   * none and 55 ms with ENOSYS).
   */
  getxattr(_ino: bigint, _name: string, _ctx: RequestContext): Errno {
    return ENOSYS;
  }

  listxattr(_ino: bigint, _ctx: RequestContext): readonly string[] {
    return [];
  }

  // ---- files ----

  async #open(node: MirrorNode): Promise<OpenReply | Errno> {
    const handle = await this.#blobs.open(node);
    if (typeof handle === "number") return handle;
    if (this.#closed) {
      this.#blobs.close(handle);
      return EIO;
    }
    const fh = this.#nextFh++;
    this.#files.set(fh, handle);
    return { fh, keepCache: true };
  }

  #handleCount(): number {
    return this.#files.size + this.#listings.openCount + this.#blobs.cachedCount;
  }

  // ---- background work and failures ----

  #track(promise: Promise<unknown>): void {
    this.#background.add(promise);
    promise.finally(() => this.#background.delete(promise));
  }

  #notify(invalidations: Invalidations): Promise<void> {
    const session = this.#session;
    if (session === undefined || invalidations.empty) return Promise.resolve();
    const done = invalidations.send(session);
    this.#track(done);
    return done;
  }

  /** Counts and reports a failure; the request answers EIO. */
  #failed(error: unknown, context: string): Errno {
    this.stats.errors++;
    try {
      this.#onError(error, context);
    } catch {
      // A failing logger must not cost the reply.
    }
    return EIO;
  }
}

/** The mirror was closed while a request was waiting. */
export class MirrorClosedError extends Error {
  constructor() {
    super("Cannot serve request: mirror closed");
    this.name = "MirrorClosedError";
  }
}
