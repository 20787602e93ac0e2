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
 * @module
 */

import type { Fetcher, Store } from "../cas/mod.ts";
import { cString } from "../common/c_string.ts";
import { baseName, isInside, joinPath, normalizePath, parentOf } from "../common/paths.ts";
import type { FileAttr, FileKind } from "../common/types.ts";
import {
  EACCES,
  EBADF,
  EINVAL,
  EIO,
  EISDIR,
  ENFILE,
  ENOENT,
  ENOSYS,
  ENOTDIR,
  EROFS,
  ESTALE,
} from "../fuse/errno.ts";
import { type Libc, openLibc } from "../fuse/libc.ts";
import { NodeTable, type TableNode } from "../fuse/node_table.ts";
import {
  FUSE_CAP_CACHE_SYMLINKS,
  FUSE_CAP_NO_OPEN_SUPPORT,
  FUSE_CAP_NO_OPENDIR_SUPPORT,
  FUSE_CAP_READDIRPLUS,
  FUSE_CAP_READDIRPLUS_AUTO,
  FUSE_ROOT_ID,
  O_ACCMODE,
  O_CLOEXEC,
  O_RDONLY,
  R_OK,
  S_IFDIR,
  S_IFLNK,
  S_IFREG,
  W_OK,
  X_OK,
} from "../fuse/structs.ts";
import type {
  Attr,
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

/** The master's file service, as the mirror needs it (implemented over RPC by the worker). */
export interface MasterLink {
  /** The master's `fs.attr`: one path's attributes (`kind: null` when absent). */
  attr(path: string, options: { withHash: boolean; signal?: AbortSignal }): Promise<FileAttr>;
  /**
   * The master's `fs.dir`: attributes of all children of a directory at once
   * (hashes only where the master has them cached).
   */
  dir(path: string, options: { signal?: AbortSignal }): Promise<FileAttr[]>;
  /** The master's `blob.get`: writes the blob's bytes to `sink`, in order. */
  fetchBlob(
    hash: string,
    sink: { write(chunk: Uint8Array): Promise<void> },
    signal: AbortSignal,
  ): Promise<void>;
}

/** Options of {@linkcode MirrorFs}. */
export interface MirrorOptions {
  link: MasterLink;
  /** The worker's content store (shared by every mirror, kept between jobs). */
  store: Store;
  /**
   * The master's writable root: paths at or under it are owned by uid/gid
   * 65534 (the job user, so jobs can write through an overlay); the rest by root.
   */
  writableRoot: string;
  /** Kernel cache lifetimes in seconds (default 3600 each). */
  entryTimeoutS?: number;
  attrTimeoutS?: number;
  negativeTimeoutS?: number;
  /**
   * Always shown as empty directories, whatever the master says (a sandbox
   * mounts over them). Only shown when their parent exists on the master.
   * Default {@linkcode MOUNT_POINTS_DEFAULT}.
   */
  mountPoints?: readonly string[];
  /** Cached paths kept at most (default 1,000,000); unreferenced ones are dropped, LRU. */
  entriesMax?: number;
  /** Link calls running at once (default 64). */
  linkCallsMax?: number;
  /** Open files and directories at once (default 8192); beyond, `open` answers ENFILE. */
  handlesMax?: number;
  /**
   * Without open requests: blob descriptors kept open, one per recently read
   * file (default 1024; the kernel's page cache answers most reads anyway).
   */
  blobFdsMax?: number;
  /** Files up to this size get their content fetched when looked up (default 16 MiB). */
  prefetchBytesMax?: number;
  /** Content prefetches running or queued at once (default 256); beyond, none start. */
  prefetchesMax?: number;
  /**
   * Answer open and opendir with ENOSYS, so that the kernel sends none (nor
   * releases) and caches pages and listings by itself; reads then come with
   * fh 0 and use a descriptor cached per inode. Default true (if the kernel
   * supports it, else it is turned off at init).
   */
  zeroOpen?: boolean;
  /**
   * Offer READDIRPLUS (listings with lookup answers, so `ls -l`, `find` and
   * the like need no lookup per name). Default true: a store-warm `find` +
   * `cat` of /usr/include took about 30% less time with it (bench/mirror_bench.ts).
   */
  readdirPlus?: boolean;
  /** Told about failures that cost a request or a prefetch (default: ignored). */
  onError?: (error: unknown, context: string) => void;
}

/** Counters of a {@linkcode MirrorFs}. */
export interface MirrorStats {
  lookups: number;
  /** Lookups that had to wait for the network. */
  lookupsWaited: number;
  /** Lookups answered "no such file" from a cached listing. */
  negativeLocal: number;
  dirFetches: number;
  attrFetches: number;
  /** Blob fetches started over the link (a blob already stored costs none). */
  blobFetches: number;
  blobBytes: number;
  prefetches: number;
  /** Updates applied again over fetched answers they overtook. */
  replayed: number;
  /** Failures answered EIO (link failures, corrupt blobs) and failed prefetches. */
  errors: number;
  /** Paths cached now. */
  entries: number;
  /** Open file and directory handles now. */
  handles: number;
  /** Stored blobs found corrupt when first used by this mirror (discarded, fetched again). */
  corruptBlobs: number;
}

export const MOUNT_POINTS_DEFAULT: readonly string[] = ["/proc", "/dev", "/tmp", "/sys"];
export const JOB_UID = 65534;
export const JOB_GID = 65534;
const TIMEOUT_S_DEFAULT = 3600;
const ENTRIES_MAX_DEFAULT = 1_000_000;
const LINK_CALLS_MAX_DEFAULT = 64;
const HANDLES_MAX_DEFAULT = 8192;
const BLOB_FDS_MAX_DEFAULT = 1024;
const PREFETCH_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;
const PREFETCHES_MAX_DEFAULT = 256;
/** Hashes remembered as checked by this mirror (the set is cleared beyond it). */
const VERIFIED_MAX = 1_000_000;
/** Names answered negatively and remembered (to invalidate them later), per directory. */
const NEGATIVES_PER_DIR_MAX = 4096;
/** The same, in all. Beyond either, a missing name is answered ENOENT (not cached). */
const NEGATIVES_MAX = 1_000_000;
/** Entries returned by one readdir call (the bridge packs what fits). */
const READDIR_BATCH_MAX = 4096;
/** Evict down to this fraction of entriesMax, so eviction runs rarely. */
const EVICT_TARGET_FRACTION = 0.9;
/** Fetches repeated at most this often when a reset() overtakes them. */
const FETCH_ATTEMPTS_MAX = 3;
/**
 * Updates remembered to replay over fetches they overtook (halved beyond it; a
 * fetch that began before the oldest one kept is made again). Fetches last
 * milliseconds; a job brings tens of updates.
 */
const RECENT_UPDATES_MAX = 10_000;
const NAME_BYTES_MAX = 255;

/** sizeof(struct fuse_entry_out) + sizeof(struct fuse_dirent) without the name. */
const DIRENTPLUS_FIXED_BYTES = 128 + 24;

/** A path the mirror knows about; its id is the kernel's node id. */
interface Node extends TableNode {
  readonly path: string;
  readonly name: string;
  readonly parent: Node | undefined;
  /** The master's attributes, or undefined when not known (yet, or since reset). */
  attr: FileAttr | undefined;
  /** For directories: names and kinds of the children, when known. */
  listing: Map<string, FileKind> | undefined;
  /** Whether every child in the listing had its attrs fetched (by a `dir` call). */
  complete: boolean;
  /** Cached child nodes (a subset of the listing). */
  readonly kids: Map<string, Node>;
  /** Open handles. */
  opens: number;
  /** No longer reachable by path (deleted or replaced); kept while the kernel or a handle holds it. */
  detached: boolean;
  /** A sandbox mount point: an empty directory, whatever the master says. */
  readonly synthetic: boolean;
  /** Names answered "no such file" (negative entries the kernel may cache). */
  negatives: Set<string> | undefined;
  /** The listing as readdir rows, built when first listed; dropped when the listing changes. */
  rows: DirRow[] | undefined;
}

interface FileHandle {
  fd: number;
  hash: string;
  node: Node;
}

/** One row of a directory listing; `node` gives d_ino when cached. */
interface DirRow {
  name: string;
  kind: FileKind;
  node: Node | undefined;
}

interface DirHandle {
  node: Node;
  rows: readonly DirRow[];
}

interface AttrFetch {
  promise: Promise<FileAttr>;
  withHash: boolean;
  /** The number of the first update that may have overtaken the answer. */
  since: number;
}

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
  readonly #link: MasterLink;
  readonly #store: Store;
  readonly #writableRoot: string;
  readonly #entryTimeoutS: number;
  readonly #attrTimeoutS: number;
  readonly #negativeTimeoutS: number;
  readonly #mountPoints: ReadonlyMap<string, readonly string[]>;
  readonly #mountPointSet: ReadonlySet<string>;
  readonly #entriesMax: number;
  readonly #handlesMax: number;
  readonly #blobFdsMax: number;
  readonly #prefetchBytesMax: number;
  readonly #prefetchesMax: number;
  readonly #readdirPlus: boolean;
  readonly #onError: (error: unknown, context: string) => void;
  readonly #limiter: Limiter;
  readonly #root: Node;
  /**
   * Every node the kernel may name: attached ones in LRU order (first = least
   * recent); a detached one only while the kernel or a handle holds it.
   */
  readonly #nodes = new NodeTable<Node>({ keep: (node) => !node.detached || node.opens > 0 });
  #attached = 0;
  readonly #dirFetches = new Map<Node, Promise<void>>();
  readonly #attrFetches = new Map<string, AttrFetch>();
  readonly #prefetching = new Set<string>();
  readonly #background = new Set<Promise<unknown>>();
  readonly #files = new Map<number, FileHandle>();
  readonly #dirs = new Map<number, DirHandle>();
  /** Without open requests: a blob descriptor per node id, LRU order. */
  readonly #blobs = new Map<bigint, FileHandle>();
  readonly #blobOpening = new Map<bigint, Promise<FileHandle | Errno>>();
  /** Stored blobs rehashed once by this mirror (or fetched, hence verified, by it). */
  readonly #verified = new Set<string>();
  readonly #closing: FileHandle[] = [];
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #zeroOpen: boolean;
  #zeroOpenDir: boolean;
  #nextFh = 1;
  #negativeCount = 0;
  /** Bumped by reset(): fetches started before are not trusted. */
  #epoch = 0;
  /**
   * The latest updates, in arrival order; update number n is
   * `#recent[n - #recentBase]`. A fetch answered by the master before an
   * update but received after it would put back what the update changed
   * (found as a lost file in a rebuilt tree: `ar: lvm.o: No such file`), so
   * the updates that arrived while a fetch was in flight are applied again
   * over its answer.
   */
  #recent: FileAttr[] = [];
  #recentBase = 0;
  #evictAbove: number;
  readonly #closer = new AbortController();
  #session: MountedSession | undefined;
  #libc: Libc | undefined;
  #mountpoint: string | undefined;
  #closed = false;

  constructor(options: MirrorOptions) {
    this.#link = options.link;
    this.#store = options.store;
    this.#writableRoot = normalizePath(options.writableRoot);
    this.#entryTimeoutS = options.entryTimeoutS ?? TIMEOUT_S_DEFAULT;
    this.#attrTimeoutS = options.attrTimeoutS ?? TIMEOUT_S_DEFAULT;
    this.#negativeTimeoutS = options.negativeTimeoutS ?? TIMEOUT_S_DEFAULT;
    this.#entriesMax = options.entriesMax ?? ENTRIES_MAX_DEFAULT;
    this.#evictAbove = this.#entriesMax;
    this.#handlesMax = options.handlesMax ?? HANDLES_MAX_DEFAULT;
    this.#blobFdsMax = options.blobFdsMax ?? BLOB_FDS_MAX_DEFAULT;
    this.#prefetchBytesMax = options.prefetchBytesMax ?? PREFETCH_BYTES_MAX_DEFAULT;
    this.#prefetchesMax = options.prefetchesMax ?? PREFETCHES_MAX_DEFAULT;
    this.#readdirPlus = options.readdirPlus ?? true;
    if (this.#readdirPlus) this.readdirplus = this.#readdirplus.bind(this);
    this.#zeroOpen = options.zeroOpen ?? true;
    this.#zeroOpenDir = options.zeroOpen ?? true;
    this.#onError = options.onError ?? (() => {});
    const linkCallsMax = options.linkCallsMax ?? LINK_CALLS_MAX_DEFAULT;
    this.#limiter = new Limiter({
      max: linkCallsMax,
      backgroundMax: Math.max(1, Math.floor(linkCallsMax * 3 / 4)),
    });
    const mountPoints = new Map<string, string[]>();
    const mountPointSet = new Set<string>();
    for (const raw of options.mountPoints ?? MOUNT_POINTS_DEFAULT) {
      const path = normalizePath(raw);
      if (path === "/") continue;
      mountPointSet.add(path);
      const parent = parentOf(path);
      mountPoints.set(parent, [...(mountPoints.get(parent) ?? []), baseName(path)]);
    }
    this.#mountPoints = mountPoints;
    this.#mountPointSet = mountPointSet;
    this.#root = this.#newNode(undefined, "", "/", false);
    this.stats = {
      lookups: 0,
      lookupsWaited: 0,
      negativeLocal: 0,
      dirFetches: 0,
      attrFetches: 0,
      blobFetches: 0,
      blobBytes: 0,
      prefetches: 0,
      replayed: 0,
      errors: 0,
      entries: 0,
      handles: 0,
      corruptBlobs: 0,
    };
    Object.defineProperties(this.stats, {
      entries: { get: () => this.#attached, enumerable: true },
      handles: { get: () => this.#handleCount(), enumerable: true },
    });
  }

  /** Use `session` for kernel cache invalidation. */
  attach(session: MountedSession): void {
    this.#session = session;
  }

  // ---- updates from the master ----

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
    for (const update of updates) this.#recent.push(update);
    if (this.#recent.length > RECENT_UPDATES_MAX) {
      const drop = this.#recent.length - RECENT_UPDATES_MAX / 2;
      this.#recent.splice(0, drop);
      this.#recentBase += drop;
    }
    const entries: [bigint, string][] = [];
    const inodes: [bigint, number][] = [];
    this.#applyToCache(updates, entries, inodes);
    this.#evictIfNeeded();
    return this.#notify(entries, inodes);
  }

  /** Number of the next update to arrive. */
  #updateCount(): number {
    return this.#recentBase + this.#recent.length;
  }

  /**
   * Applies again, to the cache only, the updates since number `since` of
   * `path` and everything under it: what a fetch of `path` that started
   * before them may have undone. The kernel heard nothing from the fetch's
   * answer yet (this runs before it is used), so nothing is invalidated.
   * The fetch was made again if they were forgotten (`since` < the base).
   */
  #replaySince(since: number, path: string): void {
    if (since < this.#recentBase) return;
    const prefix = path === "/" ? "/" : `${path}/`;
    const overtaking = this.#recent.slice(since - this.#recentBase).filter((u) => {
      const p = normalizePath(u.path);
      return p === path || p.startsWith(prefix);
    });
    if (overtaking.length > 0) {
      this.stats.replayed += overtaking.length;
      this.#applyToCache(overtaking, [], []);
    }
  }

  /** Applies pushed attrs to the cache; collects the kernel invalidations they need. */
  #applyToCache(
    updates: readonly FileAttr[],
    entries: [bigint, string][],
    inodes: [bigint, number][],
  ): void {
    for (const update of updates) {
      const path = normalizePath(update.path);
      if (this.#isUnderMountPoint(path)) continue;
      if (path === "/") {
        this.#updateNode(this.#root, update, entries, inodes);
        continue;
      }
      const parent = this.#find(parentOf(path));
      if (parent === undefined || parent.synthetic) continue; // the kernel cannot know it
      const name = baseName(path);
      const node = parent.kids.get(name);
      if (update.kind === null) {
        const known = parent.listing?.delete(name) === true;
        if (known) parent.rows = undefined;
        if (node) this.#detach(node);
        if (known || node) entries.push([parent.id, name]);
        continue;
      }
      if (parent.negatives?.has(name)) {
        this.#forgetNegative(parent, name);
        entries.push([parent.id, name]);
      }
      if (parent.listing && parent.listing.get(name) !== update.kind) {
        parent.listing.set(name, update.kind);
        parent.rows = undefined;
        entries.push([parent.id, name]);
      }
      if (node) {
        if (node.attr !== undefined && node.attr.kind !== update.kind) {
          this.#detach(node);
          entries.push([parent.id, name]);
          if (parent.listing) this.#learnChild(parent, name, update);
        } else {
          this.#updateNode(node, update, entries, inodes);
        }
      } else if (parent.listing) {
        this.#learnChild(parent, name, update);
      }
    }
  }

  /**
   * Drops every cached attribute and listing and invalidates everything the
   * kernel cached (used when the master's change log overflowed). Node ids the
   * kernel holds stay valid; their attributes are fetched again when asked for.
   * The promise settles like {@linkcode MirrorFs.applyUpdates}'s.
   */
  reset(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#epoch++;
    this.#dirFetches.clear();
    this.#attrFetches.clear();
    const entries: [bigint, string][] = [];
    const inodes: [bigint, number][] = [];
    const visit = (node: Node): void => {
      for (const kid of [...node.kids.values()]) visit(kid);
      if (node.negatives) {
        for (const name of node.negatives) entries.push([node.id, name]);
        this.#negativeCount -= node.negatives.size;
        node.negatives = undefined;
      }
      if (node.synthetic) return;
      if (node.known) {
        inodes.push([node.id, 0]);
        // Not a directory's entry: that would detach the sandboxes' mounts on it.
        if (node.parent && node.attr?.kind !== "dir") entries.push([node.parent.id, node.name]);
      }
      node.attr = undefined;
      node.listing = undefined;
      node.rows = undefined;
      node.complete = false;
      if (node !== this.#root && !node.known && node.opens === 0 && node.kids.size === 0) {
        this.#detach(node);
      }
    };
    visit(this.#root);
    return this.#notify(entries, inodes);
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
      this.#closeHandle(handle);
    }
    for (const [id, handle] of this.#blobs) {
      this.#blobs.delete(id);
      this.#closeHandle(handle);
    }
    clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    for (const handle of this.#closing.splice(0)) this.#closeHandle(handle);
    this.#dirs.clear();
    this.#libc?.close();
    this.#libc = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
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
    this.#track(this.#fetchDir(this.#root).catch((error) => this.#failed(error, "prefetch /")));
  }

  lookup(
    parentId: bigint,
    name: string,
    _ctx: RequestContext,
  ): Entry | Errno | Promise<Entry | Errno> {
    this.stats.lookups++;
    if (this.#closed) return EIO;
    const parent = this.#nodes.get(parentId);
    if (parent === undefined) return ESTALE;
    const answer = this.#lookupLocal(parent, name, true);
    if (answer !== undefined) return answer;
    this.stats.lookupsWaited++;
    return this.#lookupSlow(parent, name);
  }

  forget(ino: bigint): void {
    if (this.#nodes.forget(ino) === undefined) return;
    const cached = this.#blobs.get(ino);
    if (cached !== undefined) {
      this.#blobs.delete(ino);
      this.#closeLater(cached);
    }
  }

  getattr(ino: bigint, _ctx: RequestContext): AttrReply | Errno | Promise<AttrReply | Errno> {
    if (this.#closed) return EIO;
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (node.attr !== undefined) {
      return { attr: this.#toAttr(node), attrTimeoutS: this.#attrTimeoutS };
    }
    if (node.detached) return ESTALE;
    return (async () => {
      try {
        await this.#refresh(node, false);
      } catch (error) {
        return this.#failed(error, `getattr ${node.path}`);
      }
      if (node.attr === undefined) return node.detached ? ESTALE : ENOENT;
      return { attr: this.#toAttr(node), attrTimeoutS: this.#attrTimeoutS };
    })();
  }

  readlink(ino: bigint, _ctx: RequestContext): string | Errno | Promise<string | Errno> {
    if (this.#closed) return EIO;
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    const local = targetOf(node);
    if (local !== undefined) return local;
    if (node.detached || node.attr !== undefined) return EINVAL;
    return (async () => {
      try {
        await this.#refresh(node, false);
      } catch (error) {
        return this.#failed(error, `readlink ${node.path}`);
      }
      return targetOf(node) ?? (node.attr === undefined ? ENOENT : EINVAL);
    })();
  }

  opendir(
    ino: bigint,
    _flags: number,
    _ctx: RequestContext,
  ): OpenDirReply | Errno | Promise<OpenDirReply | Errno> {
    if (this.#closed) return EIO;
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (node.attr !== undefined && node.attr.kind !== "dir") return ENOTDIR;
    // The kernel then stops sending opendir and releasedir, and caches listings itself.
    if (this.#zeroOpenDir) return ENOSYS;
    if (this.#files.size + this.#dirs.size >= this.#handlesMax) return ENFILE;
    const rows = this.#rowsOf(node);
    if (rows instanceof Promise) {
      return rows.then((rows) => typeof rows === "number" ? rows : this.#openDir(node, rows));
    }
    return typeof rows === "number" ? rows : this.#openDir(node, rows);
  }

  readdir(
    ino: bigint,
    fh: number,
    offset: number,
    _sizeMax: number,
    _ctx: RequestContext,
  ): readonly DirEntry[] | Errno | Promise<readonly DirEntry[] | Errno> {
    return this.#withRows(ino, fh, "readdir", (node, rows) => {
      const result: DirEntry[] = [];
      const end = Math.min(rows.length, offset + READDIR_BATCH_MAX);
      for (let i = offset; i < end; i++) {
        const { name, kind, node: kid } = rows[i];
        result.push({ name, ino: kid?.id ?? fallbackIno(node, name), mode: typeBits(kind) });
      }
      return result;
    });
  }

  #readdirplus(
    ino: bigint,
    fh: number,
    offset: number,
    sizeMax: number,
    _ctx: RequestContext,
  ): readonly DirEntryPlus[] | Errno | Promise<readonly DirEntryPlus[] | Errno> {
    return this.#withRows(ino, fh, "readdirplus", (dir, rows) => {
      const result: DirEntryPlus[] = [];
      let bytes = 0;
      for (let i = offset; i < rows.length; i++) {
        const { name, kind } = rows[i];
        const size = DIRENTPLUS_FIXED_BYTES + align8(byteLength(name));
        if (bytes + size > sizeMax) break; // the rest would not be counted as lookups
        bytes += size;
        const dots = name === "." || name === "..";
        let node = rows[i].node;
        if (!dots) {
          const current = dir.kids.get(name);
          if (current !== undefined) node = current;
        }
        if (node?.attr === undefined || node.detached || dots) {
          const id = node?.id ?? fallbackIno(dir, name);
          result.push({
            name,
            entry: {
              ino: 0,
              attr: node?.attr ? this.#toAttr(node) : minimalAttr(id, kind),
              entryTimeoutS: 0,
              attrTimeoutS: 0,
            },
          });
          continue;
        }
        this.#nodes.remember(node);
        result.push({ name, entry: this.#entryOf(node) });
      }
      return result;
    });
  }

  releasedir(_ino: bigint, fh: number): void {
    this.#dirs.delete(fh);
  }

  open(
    ino: bigint,
    flags: number,
    _ctx: RequestContext,
  ): OpenReply | Errno | Promise<OpenReply | Errno> {
    if (this.#closed) return EIO;
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if ((flags & O_ACCMODE) !== O_RDONLY) return EROFS;
    if (node.attr?.kind === "dir") return EISDIR;
    // The kernel then stops sending open and release and keeps page caches (keep_cache).
    if (this.#zeroOpen) return ENOSYS;
    if (this.#files.size + this.#dirs.size >= this.#handlesMax) return ENFILE;
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
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    const cached = this.#blobs.get(ino);
    if (cached !== undefined && cached.hash === node.attr?.hash) {
      this.#blobs.delete(ino);
      this.#blobs.set(ino, cached);
      return { fd: cached.fd, offset, size };
    }
    return this.#openCached(node).then((handle) =>
      typeof handle === "number" ? handle : { fd: handle.fd, offset, size }
    );
  }

  release(_ino: bigint, fh: number): void {
    const handle = this.#files.get(fh);
    if (handle === undefined) return;
    this.#files.delete(fh);
    this.#closeHandle(handle);
  }

  statfs(_ino: bigint, _ctx: RequestContext): StatFs {
    const blocks = Math.ceil(this.#store.bytesMax / 4096);
    return {
      bsize: 4096,
      frsize: 4096,
      blocks,
      bfree: 0,
      bavail: 0,
      files: this.#attached,
      ffree: 0,
      namemax: NAME_BYTES_MAX,
    };
  }

  access(ino: bigint, mask: number, ctx: RequestContext): 0 | Errno {
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (mask & W_OK) return EROFS;
    if (node.attr === undefined) return 0; // the kernel asks getattr first; be lenient
    const attr = this.#toAttr(node);
    if (ctx.uid === 0) {
      // root may read anything, and execute what anyone may execute.
      if ((mask & X_OK) && node.attr.kind === "file" && (attr.mode & 0o111) === 0) return EACCES;
      return 0;
    }
    const bits = ctx.uid === attr.uid
      ? (attr.mode >> 6) & 7
      : ctx.gid === attr.gid
      ? (attr.mode >> 3) & 7
      : attr.mode & 7;
    const wanted = mask & (R_OK | X_OK);
    return (bits & wanted) === wanted ? 0 : EACCES;
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

  // ---- lookups ----

  /** Answers from memory, or undefined when the network is needed. */
  #lookupLocal(parent: Node, name: string, countNegative: boolean): Entry | Errno | undefined {
    if (parent.attr !== undefined && parent.attr.kind !== "dir") return ENOTDIR;
    if (parent.detached) return parent.attr === undefined ? ESTALE : ENOENT;
    const listing = parent.listing;
    if (listing === undefined) return undefined;
    if (!listing.has(name)) {
      if (countNegative) this.stats.negativeLocal++;
      return this.#negative(parent, name);
    }
    const child = parent.kids.get(name);
    if (child?.attr === undefined) return undefined;
    this.#nodes.remember(child);
    this.#nodes.touch(child);
    this.#maybePrefetch(child);
    return this.#entryOf(child);
  }

  async #lookupSlow(parent: Node, name: string): Promise<Entry | Errno> {
    try {
      if (parent.listing === undefined || !parent.complete) await this.#fetchDir(parent);
      const answer = this.#lookupLocal(parent, name, false);
      if (answer !== undefined) return answer;
      // A listed child without attrs (evicted, or added by an update): ask for it alone.
      this.#absorbFetched(await this.#fetchFresh(joinPath(parent.path, name), false, false));
      return this.#lookupLocal(parent, name, false) ?? EIO;
    } catch (error) {
      return this.#failed(error, `lookup ${joinPath(parent.path, name)}`);
    }
  }

  #negative(parent: Node, name: string): Entry | Errno {
    if (parent.negatives?.has(name)) {
      return { ino: 0, entryTimeoutS: this.#negativeTimeoutS, attrTimeoutS: 0 };
    }
    if (
      this.#negativeCount >= NEGATIVES_MAX || (parent.negatives?.size ?? 0) >= NEGATIVES_PER_DIR_MAX
    ) {
      return ENOENT; // not cached by the kernel, so nothing to invalidate later
    }
    parent.negatives ??= new Set();
    parent.negatives.add(name);
    this.#negativeCount++;
    return { ino: 0, entryTimeoutS: this.#negativeTimeoutS, attrTimeoutS: 0 };
  }

  #forgetNegative(parent: Node, name: string): void {
    if (parent.negatives?.delete(name)) this.#negativeCount--;
  }

  #entryOf(node: Node): Entry & { attr: Attr } {
    return {
      ino: node.id,
      attr: this.#toAttr(node),
      entryTimeoutS: this.#entryTimeoutS,
      attrTimeoutS: this.#attrTimeoutS,
    };
  }

  // ---- fetching ----

  /** Fetches a directory's children (once for concurrent callers) and caches them all. */
  #fetchDir(node: Node): Promise<void> {
    if (node.synthetic) return Promise.resolve();
    let promise = this.#dirFetches.get(node);
    if (promise === undefined) {
      const fetching: Promise<void> = this.#doFetchDir(node).finally(() => {
        if (this.#dirFetches.get(node) === fetching) this.#dirFetches.delete(node);
      });
      promise = fetching;
      this.#dirFetches.set(node, promise);
    }
    return promise;
  }

  async #doFetchDir(node: Node): Promise<void> {
    const signal = this.#closer.signal;
    let attrs: FileAttr[];
    let since: number;
    for (let attempt = 1;; attempt++) {
      this.stats.dirFetches++;
      const epoch = this.#epoch;
      since = this.#updateCount();
      attrs = await this.#limiter.run(() => this.#link.dir(node.path, { signal }), { signal });
      // An answer from before a reset may miss changes the master could not push.
      if (
        (epoch === this.#epoch && since >= this.#recentBase) || attempt === FETCH_ATTEMPTS_MAX
      ) break;
    }
    if (node.detached || this.#closed) return;
    const listing = new Map<string, FileKind>();
    for (const attr of attrs) {
      if (attr.kind === null) continue;
      const name = childName(node.path, attr.path);
      if (name === undefined) continue;
      listing.set(name, attr.kind);
      this.#learnChild(node, name, attr);
    }
    this.#setListing(node, listing);
    node.complete = true;
    this.#replaySince(since, node.path);
    this.#evictIfNeeded();
  }

  /** Fetches one path's attrs (once for concurrent callers wanting no more). */
  #fetchAttr(path: string, withHash: boolean, background: boolean): AttrFetch {
    const inflight = this.#attrFetches.get(path);
    if (inflight !== undefined && (inflight.withHash || !withHash)) return inflight;
    this.stats.attrFetches++;
    const signal = this.#closer.signal;
    const since = this.#updateCount();
    const promise = this.#limiter.run(
      () => this.#link.attr(path, { withHash, signal }),
      { signal, background },
    ).finally(() => {
      if (this.#attrFetches.get(path)?.promise === promise) this.#attrFetches.delete(path);
    });
    const fetch = { promise, withHash, since };
    this.#attrFetches.set(path, fetch);
    return fetch;
  }

  /**
   * Like #fetchAttr, but asks again when a reset happened meanwhile; gives the
   * number of the first update that may have overtaken the answer.
   */
  async #fetchFresh(
    path: string,
    withHash: boolean,
    background: boolean,
  ): Promise<{ attr: FileAttr; since: number }> {
    for (let attempt = 1;; attempt++) {
      const epoch = this.#epoch;
      const fetch = this.#fetchAttr(path, withHash, background);
      const attr = await fetch.promise;
      if (
        (epoch === this.#epoch && fetch.since >= this.#recentBase) ||
        attempt === FETCH_ATTEMPTS_MAX
      ) return { attr, since: fetch.since };
    }
  }

  /** Stores a fetched attr, then the updates that overtook it. */
  #absorbFetched(fetched: { attr: FileAttr; since: number }): void {
    this.#absorb(fetched.attr);
    this.#replaySince(fetched.since, normalizePath(fetched.attr.path));
  }

  /** Refetches a node's own attrs and stores them (the node may get detached). */
  async #refresh(node: Node, withHash: boolean, background = false): Promise<void> {
    const fetched = await this.#fetchFresh(node.path, withHash, background);
    if (node.detached || this.#closed) return;
    if (node === this.#root) {
      if (fetched.attr.kind === "dir") this.#setAttr(node, fetched.attr);
      this.#replaySince(fetched.since, "/");
      return;
    }
    this.#absorbFetched(fetched);
  }

  /** Stores fetched attrs of one path into the tree (no kernel invalidation). */
  #absorb(attr: FileAttr): Node | undefined {
    const path = normalizePath(attr.path);
    if (this.#isUnderMountPoint(path) || path === "/") return undefined;
    const parent = this.#find(parentOf(path));
    if (parent === undefined || parent.synthetic) return undefined;
    const name = baseName(path);
    if (attr.kind === null) {
      if (parent.listing?.delete(name)) parent.rows = undefined;
      const node = parent.kids.get(name);
      if (node) this.#detach(node);
      return undefined;
    }
    if (parent.listing !== undefined && parent.listing.get(name) !== attr.kind) {
      parent.listing.set(name, attr.kind);
      parent.rows = undefined;
      this.#forgetNegative(parent, name);
    }
    return this.#learnChild(parent, name, attr);
  }

  /** Creates or updates the child node `name` of `parent` with `attr`. */
  #learnChild(parent: Node, name: string, attr: FileAttr): Node | undefined {
    if (parent.synthetic || !validName(name)) return undefined;
    let child = parent.kids.get(name);
    if (child?.synthetic) return child;
    if (child?.attr !== undefined && child.attr.kind !== attr.kind) {
      this.#detach(child);
      child = undefined;
    }
    child ??= this.#newNode(parent, name, joinPath(parent.path, name), false);
    this.#setAttr(child, attr);
    return child;
  }

  #setAttr(node: Node, attr: FileAttr): void {
    const old = node.attr;
    const next: FileAttr = { ...attr, path: node.path };
    if (
      next.hash === undefined && old?.hash !== undefined && old.kind === "file" &&
      next.kind === "file" && old.size === next.size && old.mtimeMs === next.mtimeMs
    ) {
      next.hash = old.hash;
    }
    const children = next.children;
    delete next.children;
    node.attr = next;
    if (next.kind === "dir" && children !== undefined) {
      // Names only: a listing new from here lacks its children's attrs.
      if (node.listing === undefined) node.complete = false;
      this.#setListing(node, mapOf(children));
    }
  }

  /** Replaces a directory's listing; drops cached children no longer in it. */
  #setListing(node: Node, listing: Map<string, FileKind>): void {
    for (const name of this.#mountPoints.get(node.path) ?? []) {
      listing.set(name, "dir");
      if (!node.kids.get(name)?.synthetic) {
        const old = node.kids.get(name);
        if (old) this.#detach(old);
        const child = this.#newNode(node, name, joinPath(node.path, name), true);
        child.attr = {
          path: child.path,
          kind: "dir",
          mode: child.path === "/tmp" ? 0o1777 : 0o755,
          size: 0,
          mtimeMs: Date.now(),
        };
        child.listing = new Map();
        child.complete = true;
      }
    }
    for (const [name, kid] of [...node.kids]) {
      const kind = listing.get(name);
      if (kind === undefined || (kid.attr !== undefined && kid.attr.kind !== kind)) {
        this.#detach(kid);
      }
    }
    if (node.negatives) {
      for (const name of listing.keys()) this.#forgetNegative(node, name);
    }
    node.listing = listing;
    node.rows = undefined;
  }

  /** Updates a cached node from a pushed attr and collects kernel invalidations. */
  #updateNode(
    node: Node,
    update: FileAttr,
    entries: [bigint, string][],
    inodes: [bigint, number][],
  ): void {
    if (node.synthetic || update.kind === null) return;
    const old = node.attr;
    if (update.kind === "dir" && update.children !== undefined && node.listing !== undefined) {
      const next = mapOf(update.children);
      for (const [name, kind] of node.listing) {
        if (next.get(name) !== kind) entries.push([node.id, name]);
      }
      for (const name of next.keys()) {
        if (!node.listing.has(name) || node.negatives?.has(name)) entries.push([node.id, name]);
      }
    }
    this.#setAttr(node, update);
    if (old === undefined) {
      if (node.known) inodes.push([node.id, 0]);
      return;
    }
    const contentChanged = old.size !== update.size || old.mtimeMs !== update.mtimeMs ||
      (update.hash !== undefined && old.hash !== undefined && old.hash !== update.hash) ||
      old.target !== update.target;
    const metaChanged = old.mode !== update.mode;
    if (contentChanged) {
      // Attrs and data; for a file the entry too, so the kernel looks the path up
      // again. Never a directory's entry: invalidating a dentry detaches every
      // mount on it, in every namespace, and the jobs' sandboxes mount their
      // overlay (and /proc, /dev, /tmp) on directories of this mirror.
      inodes.push([node.id, 0]);
      if (node.parent && update.kind !== "dir") entries.push([node.parent.id, node.name]);
    } else if (metaChanged) {
      inodes.push([node.id, -1]);
    }
  }

  // ---- files ----

  async #open(node: Node): Promise<OpenReply | Errno> {
    const handle = await this.#openBlob(node);
    if (typeof handle === "number") return handle;
    if (this.#closed) {
      this.#closeHandle(handle);
      return EIO;
    }
    const fh = this.#nextFh++;
    this.#files.set(fh, handle);
    return { fh, keepCache: true };
  }

  /** Opens (once for concurrent reads) and caches the blob descriptor of a node. */
  #openCached(node: Node): Promise<FileHandle | Errno> {
    let opening = this.#blobOpening.get(node.id);
    if (opening === undefined) {
      const promise: Promise<FileHandle | Errno> = this.#openBlob(node).then((handle) => {
        if (typeof handle === "number") return handle;
        if (this.#closed) {
          this.#closeHandle(handle);
          return EIO;
        }
        const old = this.#blobs.get(node.id);
        if (old !== undefined) this.#closeLater(old);
        this.#blobs.delete(node.id);
        this.#blobs.set(node.id, handle);
        for (const [id, oldest] of this.#blobs) {
          if (this.#blobs.size <= this.#blobFdsMax) break;
          this.#blobs.delete(id);
          this.#closeLater(oldest);
        }
        return handle;
      }).finally(() => {
        if (this.#blobOpening.get(node.id) === promise) this.#blobOpening.delete(node.id);
      });
      opening = promise;
      this.#blobOpening.set(node.id, opening);
    }
    return opening;
  }

  /** Fetches a node's blob if needed, pins it and opens it: a handle to close later. */
  async #openBlob(node: Node): Promise<FileHandle | Errno> {
    let hash: string;
    let path: string;
    try {
      if (node.attr?.kind !== "file" || node.attr.hash === undefined) {
        if (node.detached) return ESTALE;
        await this.#refresh(node, true);
      }
      const attr = node.attr;
      if (attr === undefined) return node.detached ? ESTALE : ENOENT;
      if (attr.kind === "dir") return EISDIR;
      if (attr.kind !== "file" || attr.hash === undefined) {
        return this.#failed(new Error(`No hash for ${node.path}`), `open ${node.path}`);
      }
      hash = attr.hash;
      try {
        const stored = this.#store.sizeOf(hash) !== undefined;
        path = await this.#store.ensure(hash, this.#fetcher(false), {
          pin: true,
          signal: this.#closer.signal,
        });
        if (stored && !this.#verified.has(hash)) {
          // Stored before this mirror used it: rehash it once, so that a blob
          // corrupted on disk is discarded and fetched again, never served.
          let whole = false;
          try {
            whole = await this.#store.verify(hash);
          } finally {
            if (!whole) this.#store.unpin(hash);
          }
          if (!whole) {
            this.stats.corruptBlobs++;
            try {
              this.#onError(new Error(`Blob ${hash} was corrupt on disk`), `open ${node.path}`);
            } catch {
              // A failing logger must not cost the reply.
            }
            path = await this.#store.ensure(hash, this.#fetcher(false), {
              pin: true,
              signal: this.#closer.signal,
            });
          }
        }
        if (this.#verified.size >= VERIFIED_MAX) this.#verified.clear();
        this.#verified.add(hash);
      } catch (error) {
        // The hash may be stale (changed on the master): ask for it again next time.
        if (node.attr?.hash === hash) node.attr = { ...node.attr, hash: undefined };
        throw error;
      }
    } catch (error) {
      return this.#failed(error, `open ${node.path}`);
    }
    if (this.#closed) {
      this.#store.unpin(hash);
      return EIO;
    }
    const libc = this.#libc ??= openLibc();
    const fd = libc.symbols.open(cString(path), O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
      this.#store.unpin(hash);
      return this.#failed(new Error(`Cannot open blob ${path}`), `open ${node.path}`);
    }
    node.opens++;
    return { fd, hash, node };
  }

  /**
   * Closes a cached descriptor after the current requests are answered (a
   * reply may still read from it in this turn of the event loop).
   */
  #closeLater(handle: FileHandle): void {
    this.#closing.push(handle);
    this.#closeTimer ??= setTimeout(() => {
      this.#closeTimer = undefined;
      for (const each of this.#closing.splice(0)) this.#closeHandle(each);
    }, 0);
  }

  #handleCount(): number {
    return this.#files.size + this.#dirs.size + this.#blobs.size;
  }

  #closeHandle(handle: FileHandle): void {
    this.#libc?.symbols.close(handle.fd);
    try {
      this.#store.unpin(handle.hash);
    } catch (error) {
      this.#onError(error, "release");
    }
    handle.node.opens--;
    this.#nodes.dropIfUnused(handle.node);
  }

  #fetcher(background: boolean): Fetcher {
    return (hash, sink, signal) =>
      this.#limiter.run(async () => {
        this.stats.blobFetches++;
        await this.#link.fetchBlob(hash, {
          write: (chunk) => {
            this.stats.blobBytes += chunk.length;
            return sink.write(chunk);
          },
        }, signal);
      }, { signal, background });
  }

  /** Starts fetching a looked-up file's content in the background. */
  #maybePrefetch(node: Node): void {
    const attr = node.attr;
    if (attr?.kind !== "file" || attr.size > this.#prefetchBytesMax || this.#closed) return;
    if (attr.hash !== undefined && this.#store.sizeOf(attr.hash) !== undefined) return;
    if (this.#prefetching.size >= this.#prefetchesMax || this.#prefetching.has(node.path)) return;
    const path = node.path;
    this.#prefetching.add(path);
    this.stats.prefetches++;
    const task = (async () => {
      try {
        if (node.attr?.hash === undefined) await this.#refresh(node, true, true);
        const hash = node.attr?.hash;
        if (hash === undefined || this.#closed) return;
        await this.#store.ensure(hash, this.#fetcher(true), { signal: this.#closer.signal });
      } catch (error) {
        if (!this.#closed) this.#failed(error, `prefetch ${path}`);
      } finally {
        this.#prefetching.delete(path);
      }
    })();
    this.#track(task);
  }

  #track(promise: Promise<unknown>): void {
    this.#background.add(promise);
    promise.finally(() => this.#background.delete(promise));
  }

  // ---- directories ----

  #openDir(node: Node, rows: readonly DirRow[]): OpenDirReply {
    const fh = this.#nextFh++;
    this.#dirs.set(fh, { node, rows });
    return { fh, cacheReaddir: true, keepCache: true };
  }

  /** The rows of a directory listing ("." and ".." first), fetching it if needed. */
  #rowsOf(node: Node): readonly DirRow[] | Errno | Promise<readonly DirRow[] | Errno> {
    if (node.detached) return node.rows ?? this.#buildRows(node);
    if (node.listing !== undefined && (node.complete || node.synthetic)) {
      return node.rows ??= this.#buildRows(node);
    }
    return (async () => {
      try {
        await this.#fetchDir(node);
      } catch (error) {
        return this.#failed(error, `readdir ${node.path}`);
      }
      if (node.listing === undefined && !node.detached) return ENOENT;
      return node.rows ??= this.#buildRows(node);
    })();
  }

  #buildRows(node: Node): DirRow[] {
    const rows: DirRow[] = [
      { name: ".", kind: "dir", node },
      { name: "..", kind: "dir", node: node.parent ?? node },
    ];
    for (const [name, kind] of node.listing ?? []) {
      rows.push({ name, kind, node: node.kids.get(name) });
    }
    return rows;
  }

  /** Runs `list` on the rows of an open directory (`fh`) or of `ino` (fh 0: no opendir). */
  #withRows<T>(
    ino: bigint,
    fh: number,
    op: string,
    list: (node: Node, rows: readonly DirRow[]) => T,
  ): T | Errno | Promise<T | Errno> {
    if (fh !== 0) {
      const handle = this.#dirs.get(fh);
      if (handle === undefined || handle.node.id !== ino) return EBADF;
      return list(handle.node, handle.rows);
    }
    if (this.#closed) return EIO;
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (node.attr !== undefined && node.attr.kind !== "dir") return ENOTDIR;
    const rows = this.#rowsOf(node);
    if (rows instanceof Promise) {
      return rows.then((rows) => typeof rows === "number" ? rows : list(node, rows)).catch(
        (error) => this.#failed(error, op),
      );
    }
    return typeof rows === "number" ? rows : list(node, rows);
  }

  // ---- nodes ----

  #newNode(parent: Node | undefined, name: string, path: string, synthetic: boolean): Node {
    const id = parent === undefined ? FUSE_ROOT_ID : this.#nodes.nextId();
    const node: Node = {
      id,
      path,
      name,
      parent,
      attr: undefined,
      listing: undefined,
      complete: false,
      kids: new Map(),
      known: parent === undefined,
      opens: 0,
      detached: false,
      synthetic,
      negatives: undefined,
      rows: undefined,
    };
    parent?.kids.set(name, node);
    this.#nodes.add(node);
    this.#attached++;
    return node;
  }

  /** The attached node of `path`, if cached. */
  #find(path: string): Node | undefined {
    if (path === "/") return this.#root;
    let node: Node | undefined = this.#root;
    for (const part of path.slice(1).split("/")) {
      node = node.kids.get(part);
      if (node === undefined) return undefined;
    }
    return node;
  }

  /** Removes a node and its subtree from the tree; kept by id while still in use. */
  #detach(node: Node): void {
    if (node.detached || node === this.#root) return;
    for (const kid of [...node.kids.values()]) this.#detach(kid);
    if (node.parent?.kids.get(node.name) === node) node.parent.kids.delete(node.name);
    node.detached = true;
    node.listing = undefined;
    node.rows = undefined;
    if (node.negatives) {
      this.#negativeCount -= node.negatives.size;
      node.negatives = undefined;
    }
    this.#attached--;
    this.#nodes.dropIfUnused(node);
  }

  /** Drops least recently used nodes nobody holds, when above the cap. */
  #evictIfNeeded(): void {
    if (this.#attached <= this.#evictAbove) return;
    const target = Math.floor(this.#entriesMax * EVICT_TARGET_FRACTION);
    for (const node of this.#nodes.values()) {
      if (this.#attached <= target) break;
      if (
        node === this.#root || node.detached || node.known || node.opens > 0 ||
        node.kids.size > 0 || node.synthetic || this.#dirFetches.has(node)
      ) {
        continue;
      }
      this.#detach(node);
    }
    // When most nodes are held, scan again only after some growth.
    this.#evictAbove = Math.max(
      this.#entriesMax,
      this.#attached + Math.ceil(this.#entriesMax * (1 - EVICT_TARGET_FRACTION)),
    );
  }

  #isUnderMountPoint(path: string): boolean {
    for (const mountPoint of this.#mountPointSet) {
      if (path === mountPoint || path.startsWith(mountPoint + "/")) return true;
    }
    return false;
  }

  #toAttr(node: Node): Attr {
    const attr = node.attr!;
    const owner = isInside(node.path, this.#writableRoot) ? JOB_UID : 0;
    const size = attr.kind === "symlink" && attr.target !== undefined
      ? byteLength(attr.target)
      : attr.size;
    return {
      ino: node.id,
      mode: typeBits(attr.kind ?? "file") | (attr.mode & 0o7777),
      nlink: 1,
      uid: owner,
      gid: owner === 0 ? 0 : JOB_GID,
      size,
      mtimeMs: attr.mtimeMs,
      ctimeMs: attr.mtimeMs,
      atimeMs: attr.mtimeMs,
      blksize: 4096,
    };
  }

  #notify(entries: [bigint, string][], inodes: [bigint, number][]): Promise<void> {
    const session = this.#session;
    if (session === undefined || (entries.length === 0 && inodes.length === 0)) {
      return Promise.resolve();
    }
    const calls: Promise<number>[] = [];
    const seen = new Set<string>();
    for (const [ino, offset] of inodes) {
      calls.push(session.notifyInvalInode(ino, offset, 0));
    }
    for (const [parent, name] of entries) {
      const key = `${parent}/${name}`;
      if (seen.has(key)) continue;
      seen.add(key);
      calls.push(session.notifyInvalEntry(parent, name));
    }
    const done = Promise.allSettled(calls).then(() => {});
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

  /** Where the mirror is mounted (from init), if known. */
  get mountpoint(): string | undefined {
    return this.#mountpoint;
  }
}

/** The mirror was closed while a request was waiting. */
export class MirrorClosedError extends Error {
  constructor() {
    super("Cannot serve request: mirror closed");
    this.name = "MirrorClosedError";
  }
}

/** The name of `path` in `dir` if it is a direct child, else undefined. */
function childName(dir: string, path: string): string | undefined {
  const normalized = normalizePath(path);
  if (normalized === "/" || parentOf(normalized) !== dir) return undefined;
  const name = baseName(normalized);
  return validName(name) ? name : undefined;
}

function validName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") &&
    !name.includes("\0") && byteLength(name) <= NAME_BYTES_MAX;
}

function mapOf(children: Record<string, FileKind>): Map<string, FileKind> {
  const map = new Map<string, FileKind>();
  for (const [name, kind] of Object.entries(children)) {
    if (validName(name)) map.set(name, kind);
  }
  return map;
}

function typeBits(kind: FileKind): number {
  return kind === "dir" ? S_IFDIR : kind === "symlink" ? S_IFLNK : S_IFREG;
}

function targetOf(node: Node): string | undefined {
  return node.attr?.kind === "symlink" ? node.attr.target : undefined;
}

function minimalAttr(ino: bigint, kind: FileKind): Attr {
  return { ino, mode: typeBits(kind), nlink: 1, uid: 0, gid: 0, size: 0, mtimeMs: 0 };
}

/** A d_ino for a listed name without a node: stable, and never a node id. */
function fallbackIno(dir: Node, name: string): bigint {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193);
  return (1n << 62n) | ((dir.id & 0x3fffffffn) << 32n) | BigInt(hash >>> 0);
}

const encoder = new TextEncoder();

function byteLength(text: string): number {
  return encoder.encode(text).length;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}
