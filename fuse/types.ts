/**
 * The node API of the FUSE layer: what a file system implements and what the
 * session offers. Inode-based like libfuse's low-level API; every handler may
 * answer now (a value or an errno) or later (a promise), see {@link Reply}.
 *
 * Lookup counting is done by the bridge: a file system does not count lookups.
 * {@link FileSystem.forget} is called once, when the kernel holds no more
 * references to an inode (every `lookup` reply and `readdirplus` entry counted).
 *
 * @module
 */

/** A positive errno constant (`ENOENT`, ...), see `errno.ts`. */
export type Errno = number;

/**
 * What a handler returns: a value, an errno (a positive number, where the value
 * is not a number itself), or a promise of either. A handler that throws or whose
 * promise rejects answers `EIO`; the bridge sends exactly one reply per request.
 */
export type Reply<T> = T | Errno | Promise<T | Errno>;

/** Attributes of an inode (what `struct stat` carries). */
export interface Attr {
  /** The inode number shown by `stat` (st_ino); may differ from the node id. */
  ino: bigint | number;
  /** File type and permission bits, e.g. `S_IFREG | 0o644`. */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  size: number;
  /** Times in ms since the epoch (fractions allowed). */
  mtimeMs: number;
  ctimeMs?: number;
  atimeMs?: number;
  /**
   * The exact nanoseconds part (0..999999999) of a time, when known: then the
   * seconds are taken from the `*Ms` value and the nanoseconds from here, so
   * that times survive the trip through a double exactly.
   */
  mtimeNsec?: number;
  ctimeNsec?: number;
  atimeNsec?: number;
  rdev?: number;
  blksize?: number;
  /** 512-byte blocks; `ceil(size / 512)` when absent. */
  blocks?: number;
}

/**
 * A `lookup` answer. `ino` is the node id the kernel will use in later requests;
 * `ino: 0` is a negative entry: the kernel caches "no such name" for
 * `entryTimeoutS` (no `attr` needed).
 */
export interface Entry {
  ino: bigint | number;
  attr?: Attr;
  entryTimeoutS: number;
  attrTimeoutS: number;
  generation?: number;
}

/** A `getattr` answer. */
export interface AttrReply {
  attr: Attr;
  attrTimeoutS: number;
}

/** One `readdir` entry. */
export interface DirEntry {
  name: string;
  /** Shown as `d_ino`; any value, not a node id. */
  ino: bigint | number;
  /** File type bits (`S_IFDIR`, `S_IFREG`, ...); permission bits are ignored. */
  mode: number;
}

/**
 * One `readdirplus` entry: a directory entry plus a full lookup answer, so the
 * kernel needs no `lookup` for it. An `entry.ino` of 0 means "no lookup data"
 * (then `entry.attr` still gives `d_ino` and the type). "." and ".." are never
 * counted as lookups.
 */
export interface DirEntryPlus {
  name: string;
  entry: Entry & { attr: Attr };
}

/** An `opendir` answer. */
export interface OpenDirReply {
  fh?: number;
  /** Let the kernel cache the directory listing (FOPEN_CACHE_DIR). */
  cacheReaddir?: boolean;
  /** Keep an earlier cached listing (FOPEN_KEEP_CACHE). */
  keepCache?: boolean;
}

/** An `open` answer. */
export interface OpenReply {
  fh?: number;
  /** Keep the page cache across opens (FOPEN_KEEP_CACHE): use for immutable contents. */
  keepCache?: boolean;
  /** Bypass the page cache (FOPEN_DIRECT_IO). */
  directIo?: boolean;
}

/**
 * Read data taken from a local file descriptor by libfuse (`fuse_reply_data`
 * with FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK): no copy through JavaScript. The fd
 * must stay open until the promise/handler has returned (it is read before the
 * reply is sent). Reads past the end of file give a short reply.
 */
export interface FdSlice {
  fd: number;
  offset: number;
  size: number;
}

/** A `statfs` answer (fields of `struct statvfs`). */
export interface StatFs {
  bsize: number;
  frsize?: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail?: number;
  namemax: number;
}

/** Who sent a request (`fuse_req_ctx`). Valid until the handler's reply is sent. */
export interface RequestContext {
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  readonly umask: number;
}

/**
 * Connection parameters negotiated at INIT (`struct fuse_conn_info`). A file
 * system's `init` may change `want` (FUSE_CAP_* bits, see `errno.ts`/`structs.ts`
 * exports), `maxReadahead`, `maxBackground`, `congestionThreshold`, `timeGran`.
 */
export interface ConnInfo {
  readonly protoMajor: number;
  readonly protoMinor: number;
  readonly capable: number;
  want: number;
  maxReadahead: number;
  maxBackground: number;
  congestionThreshold: number;
  timeGran: number;
  readonly maxWrite: number;
  readonly maxRead: number;
  /** The mount point: a file system must never touch paths under it. */
  readonly mountpoint: string;
}

/**
 * A file system. Only `lookup` and `getattr` are required; a missing handler
 * answers ENOSYS, except: without `open` (or `opendir`) the kernel is told to
 * skip OPEN/RELEASE (OPENDIR/RELEASEDIR) entirely (FUSE_CAP_NO_OPEN_SUPPORT:
 * zero-message opens, the page cache is kept across opens, reads come with
 * fh 0); getxattr answers ENODATA, listxattr an empty list, access 0, statfs
 * zeros.
 * `fh` values are numbers below 2^53 chosen by the file system.
 */
export interface FileSystem {
  init?(conn: ConnInfo): void;
  /** Called when the session ends (after unmount or abort). */
  destroy?(): void;
  lookup(parent: bigint, name: string, ctx: RequestContext): Reply<Entry>;
  /** The kernel holds no more references to `ino` (lookup count reached 0). */
  forget?(ino: bigint): void;
  getattr(ino: bigint, ctx: RequestContext): Reply<AttrReply>;
  readlink?(ino: bigint, ctx: RequestContext): Reply<string | Uint8Array>;
  opendir?(ino: bigint, flags: number, ctx: RequestContext): Reply<OpenDirReply>;
  /**
   * Entries of the directory from position `offset` on (position 0 is the
   * first entry). Return as many as convenient: the bridge packs what fits
   * into the kernel's buffer (`sizeMax` bytes, about 24 bytes + name each) and
   * the kernel asks again from the next position. An empty array ends the listing.
   */
  readdir?(
    ino: bigint,
    fh: number,
    offset: number,
    sizeMax: number,
    ctx: RequestContext,
  ): Reply<readonly DirEntry[]>;
  /**
   * Like `readdir` with full lookup answers (about 150 bytes + name each).
   * Defining it makes libfuse offer READDIRPLUS to the kernel. Each entry
   * with a non-zero `entry.ino` that fits into the reply counts as a lookup.
   */
  readdirplus?(
    ino: bigint,
    fh: number,
    offset: number,
    sizeMax: number,
    ctx: RequestContext,
  ): Reply<readonly DirEntryPlus[]>;
  releasedir?(ino: bigint, fh: number): void;
  open?(ino: bigint, flags: number, ctx: RequestContext): Reply<OpenReply>;
  read?(
    ino: bigint,
    fh: number,
    size: number,
    offset: number,
    ctx: RequestContext,
  ): Reply<Uint8Array | FdSlice>;
  release?(ino: bigint, fh: number): void;
  statfs?(ino: bigint, ctx: RequestContext): Reply<StatFs>;
  /** `mask` is R_OK/W_OK/X_OK bits (F_OK = 0). Answer 0 to allow. */
  access?(ino: bigint, mask: number, ctx: RequestContext): Reply<0>;
  /** Answer the value; the bridge handles the size probe (`size` 0) and ERANGE. */
  getxattr?(ino: bigint, name: string, ctx: RequestContext): Reply<Uint8Array>;
  listxattr?(ino: bigint, ctx: RequestContext): Reply<readonly string[]>;
}

/** How to mount. */
export interface MountOptions {
  /** An existing empty directory. */
  mountpoint: string;
  /** Shown as the source in /proc/mounts (`fsname=`). */
  fsName?: string;
  /** Shown as `fuse.<subtype>` in /proc/mounts. */
  subtype?: string;
  /** Let other users use the mount (root only, or user_allow_other). */
  allowOther?: boolean;
  /** Let the kernel check permission bits (then `access` is not called). */
  defaultPermissions?: boolean;
  /** Mount read-only (`ro`). */
  readOnly?: boolean;
  /** More `-o` options, e.g. `["max_read=131072"]`. */
  extraOptions?: string[];
  /** Log every request through libfuse (`-d`), to stderr. */
  debug?: boolean;
  /**
   * While requests flow, the serving loop waits for the next one on the JS
   * thread (a blocking `poll`), letting the event loop run every `syncWaitMs`
   * (default 1 ms, at most 100; 0 = always wait on a thread); after a whole
   * `syncWaitMs` without requests it hands the wait to a thread. Waiting here
   * keeps request latency near C; other JS work waits at most about this long.
   */
  syncWaitMs?: number;
  /** Requests answered before yielding to the event loop (default 32). */
  requestsPerTurn?: number;
}

/** Counters of a session. */
export interface FuseStats {
  /** Requests received from the kernel. */
  requests: number;
  /** Requests answered later (the handler returned a promise). */
  asyncReplies: number;
  /** Requests waiting for a promise right now. */
  pending: number;
  /** Handlers that threw or whose promise rejected (answered EIO). */
  failures: number;
  /** Waits handed to a thread (`poll` as a nonblocking FFI call). */
  threadWaits: number;
  /** Inodes the kernel currently holds references to (lookup count > 0). */
  inodes: number;
}

/**
 * A mounted file system being served (implemented by `FuseSession` in
 * `session.ts`; create one with `await FuseSession.mount(fs, options)`).
 */
export interface MountedSession extends AsyncDisposable {
  readonly mountpoint: string;
  /** Settles when the session has ended (close(), external unmount, abort). */
  readonly closed: Promise<void>;
  readonly stats: Readonly<FuseStats>;
  /**
   * Drop the kernel's cached entry `name` in `parent` (positive or negative).
   * Resolves to 0 or a negative errno (-ENOENT when the kernel did not cache it).
   * Runs on a helper thread: the kernel may wait for a request on the same
   * directory to be answered first, which the JS thread stays free to do.
   */
  notifyInvalEntry(parent: bigint, name: string): Promise<number>;
  /**
   * Drop cached attributes of `ino` and its cached data in
   * [offset, offset + length) (length 0 = to the end; offset -1 = attributes
   * only). Resolves to 0 or a negative errno. Runs on a helper thread too.
   */
  notifyInvalInode(ino: bigint, offset?: number, length?: number): Promise<number>;
  /** Close the session on SIGINT/SIGTERM (listeners removed on close). */
  closeOnSignals(signals?: readonly Deno.Signal[]): void;
  /**
   * Unmount (lazily), end the kernel connection even when other mount
   * namespaces hold copies of the mount, answer pending requests with EIO and
   * free every native resource. Idempotent.
   */
  close(): Promise<void>;
}
