/**
 * Mounting and serving a {@link FileSystem} through libfuse3's low-level API.
 *
 * How requests are driven (measured, see FUSE-NOTES.md and bench/fuse_bench.ts):
 *
 * The session is driven from the JavaScript thread. The `/dev/fuse` descriptor
 * is non-blocking; the loop calls `fuse_session_receive_buf` (a synchronous
 * FFI call, one `read(2)`) and `fuse_session_process_buf`, during which
 * libfuse calls our plain (not thread-safe) `UnsafeCallback`s synchronously on
 * this thread: about 0.1 µs per crossing. A handler may answer later: the
 * bridge keeps the `fuse_req_t` and replies when its promise settles.
 *
 * When the queue is empty the loop waits for the next request:
 *  - first in a blocking `poll(2)` on this thread with no timeout, but only
 *    while no handler is waiting for a promise: a client that sends one
 *    request after another (stat of every file, a compiler opening headers)
 *    then gets its answer with the latency of a C server. The wait is bounded
 *    by a timerfd in the same poll, ticking every `syncWaitMs` (1 ms by
 *    default) while requests flow: at each tick the loop lets the event loop
 *    run, and after a whole tick without a request it stops the timer and
 *    hands the wait to a thread. A poll() timeout would arm and cancel a
 *    kernel timer on every wait, two exits to the hypervisor in a virtual
 *    machine: measured on 20 warm compiles through the mirror, our CPU per
 *    request fell from about 3.5× C's to 2.3×, and a compile from 1.2–1.3×
 *    C's time to about 1.1×;
 *  - then in `poll(2)` as a `nonblocking` FFI call (on a helper thread), so
 *    timers, network I/O and async handlers run meanwhile. Handing a wait to a
 *    thread and back costs 20–40 µs, which is what waiting on this thread
 *    saves per request in serial workloads.
 * Every `requestsPerTurn` requests the loop also yields to the event loop
 * (`setImmediate`), so a flood of requests cannot starve other work.
 *
 * Measured here (bench/fuse_bench.ts, 2 cores, a VM): lookups at 0.99–1.05×
 * the C mirror with and without kernel caching, reads 1.9–2.2× C (our reads
 * come straight from the source fd, like C's, with a larger reply), `find`
 * over /usr/include 1.03–1.4× C, a warm compile 0.9× C with open requests
 * and at bare-disk speed with zero-message opens (no requests at all). Our
 * CPU per request is still about 2× C's (V8 entry and exit on every
 * callback), which shows only where requests are many and cheap.
 *
 * The serving process must never touch its own mount, not even with Deno's
 * async file APIs: some of them (seek, close of a file) run on this thread,
 * and the request they cause can only be answered by this thread: deadlock.
 * Use subprocesses (or another process) to access the mount.
 *
 * The alternative, libfuse's own loop (`fuse_session_loop_mt`) on a helper
 * thread with `UnsafeCallback.threadSafe` callbacks, marshals every callback to
 * this thread and blocks the libfuse thread until JavaScript returns: it cost
 * 3–5× the CPU of C, leaked memory across create/close and once lost a wake-up
 * (a request stuck forever). It is not used.
 *
 * Notifications (`notifyInvalEntry`, `notifyInvalInode`) run as nonblocking
 * FFI calls: the kernel may hold a directory lock until a pending lookup in it
 * is answered, and that answer comes from this thread.
 *
 * Closing: unmount lazily (MNT_DETACH), answer pending requests with EIO,
 * then close the session descriptor, which ends the kernel connection even
 * when other mount namespaces still hold copies of the mount (their users
 * then see ENOTCONN instead of hanging). libfuse installs no signal handlers
 * here; {@link FuseSession.closeOnSignals} uses Deno's.
 *
 * @module
 */

import { cString } from "../common/c_string.ts";
import { Bridge, type HandlerFailure, type ReplySink } from "./bridge.ts";
import { EAGAIN, EINTR, ENOSYS, ENOTCONN, errnoFromError } from "./errno.ts";
import { type Libfuse, openLibfuse } from "./ffi.ts";
import { type Libc, openLibc } from "./libc.ts";
import {
  ARGS_ALLOCATED,
  ARGS_ARGC,
  ARGS_ARGV,
  ARGS_SIZE,
  BUF_FD,
  BUF_FLAGS,
  BUF_MEM,
  BUF_POS,
  BUF_SIZE,
  BUF_SIZE_FIELD,
  BUFVEC_BUF,
  BUFVEC_COUNT,
  BUFVEC_IDX,
  BUFVEC_OFF,
  BUFVEC_SIZE,
  CLOCK_MONOTONIC,
  CONN_CAPABLE,
  CONN_CONGESTION_THRESHOLD,
  CONN_INFO_SIZE,
  CONN_MAX_BACKGROUND,
  CONN_MAX_READ,
  CONN_MAX_READAHEAD,
  CONN_MAX_WRITE,
  CONN_PROTO_MAJOR,
  CONN_PROTO_MINOR,
  CONN_TIME_GRAN,
  CONN_WANT,
  CTX_GID,
  CTX_PID,
  CTX_SIZE,
  CTX_UID,
  CTX_UMASK,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  encodeEntryParam,
  encodeFileInfoReply,
  encodeStat,
  encodeStatvfs,
  ENTRY_PARAM_SIZE,
  F_GETFL,
  F_SETFL,
  FILE_INFO_FH,
  FILE_INFO_FLAGS,
  FILE_INFO_SIZE,
  FORGET_DATA_SIZE,
  FUSE_BUF_FD_SEEK,
  FUSE_BUF_IS_FD,
  FUSE_CAP_NO_OPEN_SUPPORT,
  FUSE_CAP_NO_OPENDIR_SUPPORT,
  ITIMERSPEC_INTERVAL,
  ITIMERSPEC_SIZE,
  ITIMERSPEC_VALUE,
  LOWLEVEL_OPS_SIZE,
  type LowlevelOp,
  lowlevelOpOffset,
  MNT_DETACH,
  O_NONBLOCK,
  POLLFD_EVENTS,
  POLLFD_FD,
  POLLFD_REVENTS,
  POLLFD_SIZE,
  POLLIN,
  S_IFMT,
  STAT_INO,
  STAT_MODE,
  STAT_SIZE,
  STATVFS_SIZE,
  TFD_CLOEXEC,
  TFD_NONBLOCK,
  TIMESPEC_NSEC,
} from "./structs.ts";
import type {
  AttrReply,
  ConnInfo,
  DirEntry,
  DirEntryPlus,
  Entry,
  FdSlice,
  FileSystem,
  FuseStats,
  MountedSession,
  MountOptions,
  OpenDirReply,
  OpenReply,
  RequestContext,
  StatFs,
} from "./types.ts";

/** Mounting failed. */
export class FuseMountError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "FuseMountError";
  }
}

/** The session loop met an error it cannot serve past. */
export class FuseSessionError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "FuseSessionError";
  }
}

const INIT_TIMEOUT_MS = 10_000;
const NOTIFY_DRAIN_TIMEOUT_MS = 2_000;
const DIR_BUF_BYTES_MAX = 1 << 20;
const NAME_BYTES_MAX = 4096;
const REQUESTS_PER_TURN_DEFAULT = 32;
const SYNC_WAIT_MS_DEFAULT = 1;

const encoder = new TextEncoder();

/** Lazily read `fuse_req_ctx`; valid only while the request is unanswered. */
class NativeRequestContext implements RequestContext {
  readonly #lib: Libfuse;
  readonly #req: Deno.PointerValue;
  readonly #isValid: () => boolean;
  #fields: Uint32Array | undefined;

  constructor(lib: Libfuse, req: Deno.PointerValue, isValid: () => boolean) {
    this.#lib = lib;
    this.#req = req;
    this.#isValid = isValid;
  }

  #load(index: number): number {
    if (this.#fields === undefined) {
      if (!this.#isValid()) throw new Error("Request context used after the reply was sent");
      const ptr = this.#lib.symbols.fuse_req_ctx(this.#req);
      const fields = new Uint32Array(CTX_SIZE / 4);
      if (ptr !== null) Deno.UnsafePointerView.copyInto(ptr, fields);
      this.#fields = fields;
    }
    return this.#fields[index];
  }
  get uid(): number {
    return this.#load(CTX_UID / 4);
  }
  get gid(): number {
    return this.#load(CTX_GID / 4);
  }
  get pid(): number {
    return this.#load(CTX_PID / 4);
  }
  get umask(): number {
    return this.#load(CTX_UMASK / 4);
  }
}

/** Replies through libfuse, with scratch buffers reused (replies are synchronous). */
class NativeSink implements ReplySink<Deno.PointerValue> {
  readonly #lib: Libfuse;
  readonly #f: Libfuse["symbols"];
  readonly #entry = new Uint8Array(ENTRY_PARAM_SIZE);
  readonly #entryView = new DataView(this.#entry.buffer);
  readonly #stat = new Uint8Array(STAT_SIZE);
  readonly #statView = new DataView(this.#stat.buffer);
  readonly #statvfs = new Uint8Array(STATVFS_SIZE);
  readonly #bufvec = new Uint8Array(BUFVEC_SIZE);
  readonly #bufvecView = new DataView(this.#bufvec.buffer);
  readonly #name = new Uint8Array(NAME_BYTES_MAX + 1);
  #dir = new Uint8Array(8192);

  constructor(lib: Libfuse) {
    this.#lib = lib;
    this.#f = lib.symbols;
  }

  context(req: Deno.PointerValue, isValid: () => boolean): RequestContext {
    return new NativeRequestContext(this.#lib, req, isValid);
  }
  err(req: Deno.PointerValue, errno: number): void {
    this.#f.fuse_reply_err(req, errno);
  }
  none(req: Deno.PointerValue): void {
    this.#f.fuse_reply_none(req);
  }
  entry(req: Deno.PointerValue, entry: Entry): number {
    encodeEntryParam(this.#entryView, 0, entry);
    return this.#f.fuse_reply_entry(req, this.#entry);
  }
  attr(req: Deno.PointerValue, reply: AttrReply): void {
    encodeStat(this.#statView, 0, reply.attr);
    this.#f.fuse_reply_attr(req, this.#stat, reply.attrTimeoutS);
  }
  readlink(req: Deno.PointerValue, target: string | Uint8Array): void {
    const bytes = typeof target === "string" ? encoder.encode(target) : target;
    const text = new Uint8Array(bytes.length + 1);
    text.set(bytes);
    this.#f.fuse_reply_readlink(req, text);
  }
  open(req: Deno.PointerValue, fileInfo: Uint8Array, reply: OpenReply & OpenDirReply): void {
    encodeFileInfoReply(new DataView(fileInfo.buffer, fileInfo.byteOffset), 0, reply);
    this.#f.fuse_reply_open(req, fileInfo as Uint8Array<ArrayBuffer>);
  }
  buf(req: Deno.PointerValue, data: Uint8Array): void {
    this.#f.fuse_reply_buf(req, data as Uint8Array<ArrayBuffer>, BigInt(data.length));
  }
  data(req: Deno.PointerValue, slice: FdSlice): void {
    const view = this.#bufvecView;
    view.setBigUint64(BUFVEC_COUNT, 1n, true);
    view.setBigUint64(BUFVEC_IDX, 0n, true);
    view.setBigUint64(BUFVEC_OFF, 0n, true);
    view.setBigUint64(BUFVEC_BUF + BUF_SIZE_FIELD, BigInt(slice.size), true);
    view.setUint32(BUFVEC_BUF + BUF_FLAGS, FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, true);
    view.setBigUint64(BUFVEC_BUF + BUF_MEM, 0n, true);
    view.setInt32(BUFVEC_BUF + BUF_FD, slice.fd, true);
    view.setBigInt64(BUFVEC_BUF + BUF_POS, BigInt(slice.offset), true);
    // Replies an error itself when reading the fd fails; never reply twice.
    this.#f.fuse_reply_data(req, this.#bufvec, 0);
  }
  statfs(req: Deno.PointerValue, st: StatFs): void {
    encodeStatvfs(new DataView(this.#statvfs.buffer), 0, st);
    this.#f.fuse_reply_statfs(req, this.#statvfs);
  }
  xattrSize(req: Deno.PointerValue, size: number): void {
    this.#f.fuse_reply_xattr(req, BigInt(size));
  }

  #dirBuffer(sizeMax: number): Uint8Array<ArrayBuffer> {
    const size = Math.min(sizeMax, DIR_BUF_BYTES_MAX);
    if (this.#dir.length < size) this.#dir = new Uint8Array(size);
    return this.#dir;
  }

  /** Encode `name` NUL-terminated into the name scratch; false if too long. */
  #cName(name: string): boolean {
    const { read, written } = encoder.encodeInto(name, this.#name.subarray(0, NAME_BYTES_MAX));
    if (read !== name.length) return false;
    this.#name[written] = 0;
    return true;
  }

  readdir(
    req: Deno.PointerValue,
    entries: readonly DirEntry[],
    offset: number,
    sizeMax: number,
  ): void {
    const dir = this.#dirBuffer(sizeMax);
    const size = Math.min(sizeMax, dir.length);
    const view = this.#statView;
    let used = 0;
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i];
      if (!this.#cName(entry.name)) continue;
      view.setBigUint64(STAT_INO, BigInt(entry.ino), true);
      view.setUint32(STAT_MODE, entry.mode & S_IFMT, true);
      const need = Number(
        this.#f.fuse_add_direntry(
          req,
          dir.subarray(used),
          BigInt(size - used),
          this.#name,
          this.#stat,
          BigInt(offset + i + 1),
        ),
      );
      if (need > size - used) break;
      used += need;
    }
    this.#f.fuse_reply_buf(req, dir, BigInt(used));
  }

  readdirplus(
    req: Deno.PointerValue,
    entries: readonly DirEntryPlus[],
    offset: number,
    sizeMax: number,
  ): number {
    const dir = this.#dirBuffer(sizeMax);
    const size = Math.min(sizeMax, dir.length);
    let used = 0;
    let packed = 0;
    for (let i = 0; i < entries.length; i++) {
      const { name, entry } = entries[i];
      if (!this.#cName(name)) break;
      encodeEntryParam(this.#entryView, 0, entry);
      const need = Number(
        this.#f.fuse_add_direntry_plus(
          req,
          dir.subarray(used),
          BigInt(size - used),
          this.#name,
          this.#entry,
          BigInt(offset + i + 1),
        ),
      );
      if (need > size - used) break;
      used += need;
      packed++;
    }
    this.#f.fuse_reply_buf(req, dir, BigInt(used));
    return packed;
  }
}

const CALLBACK_DEFINITIONS = {
  init: { parameters: ["pointer", "pointer"], result: "void" },
  destroy: { parameters: ["pointer"], result: "void" },
  lookup: { parameters: ["pointer", "u64", "pointer"], result: "void" },
  forget: { parameters: ["pointer", "u64", "u64"], result: "void" },
  forget_multi: { parameters: ["pointer", "usize", "pointer"], result: "void" },
  getattr: { parameters: ["pointer", "u64", "pointer"], result: "void" },
  readlink: { parameters: ["pointer", "u64"], result: "void" },
  open: { parameters: ["pointer", "u64", "pointer"], result: "void" },
  read: { parameters: ["pointer", "u64", "usize", "i64", "pointer"], result: "void" },
  release: { parameters: ["pointer", "u64", "pointer"], result: "void" },
  opendir: { parameters: ["pointer", "u64", "pointer"], result: "void" },
  readdir: { parameters: ["pointer", "u64", "usize", "i64", "pointer"], result: "void" },
  readdirplus: { parameters: ["pointer", "u64", "usize", "i64", "pointer"], result: "void" },
  releasedir: { parameters: ["pointer", "u64", "pointer"], result: "void" },
  statfs: { parameters: ["pointer", "u64"], result: "void" },
  access: { parameters: ["pointer", "u64", "i32"], result: "void" },
  getxattr: { parameters: ["pointer", "u64", "pointer", "usize"], result: "void" },
  listxattr: { parameters: ["pointer", "u64", "usize"], result: "void" },
} as const satisfies Record<string, Deno.UnsafeCallbackDefinition>;

type CallbackName = keyof typeof CALLBACK_DEFINITIONS;

/** Signals a session closes on by default. */
const CLOSE_SIGNALS_DEFAULT: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

/** Find the fuse connection id ("minor" of st_dev) of a mount point in mountinfo. */
async function connectionIdOf(mountpoint: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile("/proc/self/mountinfo");
  } catch {
    return undefined;
  }
  let found: number | undefined;
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    if (fields.length < 10) continue;
    const mountedAt = fields[4].replace(
      /\\(\d{3})/g,
      (_, o) => String.fromCharCode(parseInt(o, 8)),
    );
    const dash = fields.indexOf("-");
    if (mountedAt !== mountpoint || dash < 0 || !fields[dash + 1]?.startsWith("fuse")) continue;
    const [, minor] = fields[2].split(":");
    found = Number(minor);
  }
  return found;
}

/** A mounted, served file system. */
export class FuseSession implements MountedSession {
  readonly mountpoint: string;
  readonly closed: Promise<void>;

  readonly #fuse: Libfuse;
  readonly #libc: Libc;
  readonly #bridge: Bridge<Deno.PointerValue>;
  readonly #callbacks: Deno.UnsafeCallback[] = [];
  readonly #bufStruct = new Uint8Array(BUF_SIZE);
  readonly #pollfds = new Uint8Array(POLLFD_SIZE * 2);
  readonly #fileInfoScratch = new Uint8Array(FILE_INFO_SIZE);
  readonly #fileInfoView = new DataView(this.#fileInfoScratch.buffer);
  readonly #syncWaitMs: number;
  readonly #requestsPerTurn: number;
  readonly #notifies = new Set<Promise<number>>();
  readonly #signalHandlers: Array<[Deno.Signal, () => void]> = [];
  #se: Deno.PointerValue = null;
  #fd = -1;
  #wakeFd = -1;
  /** The tick timer of waits on this thread (-1: always wait on a thread). */
  #tickFd = -1;
  #ticking = false;
  #requestsAtTick = 0;
  /** pollfds of waits on this thread: the device, then the tick timer. */
  readonly #syncPollfds = new Uint8Array(POLLFD_SIZE * 2);
  readonly #syncPollView = new DataView(this.#syncPollfds.buffer);
  readonly #tickSpec = new Uint8Array(ITIMERSPEC_SIZE);
  readonly #tickStop = new Uint8Array(ITIMERSPEC_SIZE);
  readonly #tickCount = new BigUint64Array(1);
  #requests = 0;
  #threadWaits = 0;
  #closing = false;
  #closePromise: Promise<void> | undefined;
  #serving: Promise<void> = Promise.resolve();
  #resolveClosed!: () => void;
  #initDone!: (error?: Error) => void;
  #initialized: Promise<void>;
  #connectionId: number | undefined;
  #zeroMessageOpen = false;

  private constructor(fs: FileSystem, mountpoint: string, options: MountOptions) {
    this.mountpoint = mountpoint;
    this.#syncWaitMs = Math.max(0, Math.min(options.syncWaitMs ?? SYNC_WAIT_MS_DEFAULT, 100));
    this.#requestsPerTurn = Math.max(1, options.requestsPerTurn ?? REQUESTS_PER_TURN_DEFAULT);
    this.closed = new Promise((resolve) => this.#resolveClosed = resolve);
    this.#initialized = new Promise((resolve, reject) => {
      this.#initDone = (error) => error ? reject(error) : resolve();
    });
    this.#initialized.catch(() => {});
    this.#fuse = openLibfuse();
    try {
      this.#libc = openLibc();
    } catch (error) {
      this.#fuse.close();
      throw error;
    }
    const onError = (failure: HandlerFailure) => {
      console.error(`fuse: ${failure.op} handler failed:`, failure.error);
    };
    this.#bridge = new Bridge(fs, new NativeSink(this.#fuse), { onError });
  }

  /**
   * Mount `fs` at `options.mountpoint` and serve it until {@link close}.
   * A stale mount left at the mount point by a dead process is cleaned first.
   */
  static async mount(fs: FileSystem, options: MountOptions): Promise<FuseSession> {
    await cleanStaleMount(options.mountpoint);
    let mountpoint: string;
    try {
      mountpoint = await Deno.realPath(options.mountpoint);
      const info = await Deno.stat(mountpoint);
      if (!info.isDirectory) throw new Error("not a directory");
    } catch (error) {
      throw new FuseMountError(`Cannot mount at ${options.mountpoint}: bad mount point`, {
        cause: error,
      });
    }
    const session = new FuseSession(fs, mountpoint, options);
    try {
      session.#start(fs, options);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new FuseMountError(`Cannot mount at ${mountpoint}: no INIT from kernel`)),
          INIT_TIMEOUT_MS,
        );
      });
      try {
        await Promise.race([session.#initialized, timeout]);
      } finally {
        clearTimeout(timer);
      }
      session.#connectionId = await connectionIdOf(mountpoint);
      return session;
    } catch (error) {
      await session.close();
      throw error;
    }
  }

  get stats(): Readonly<FuseStats> {
    const bridge = this.#bridge.stats;
    return {
      requests: this.#requests,
      asyncReplies: bridge.asyncReplies,
      pending: bridge.pending,
      failures: bridge.failures,
      threadWaits: this.#threadWaits,
      inodes: bridge.inodes,
    };
  }

  #callback<N extends CallbackName>(
    name: N,
    handler: Deno.UnsafeCallbackFunction<
      typeof CALLBACK_DEFINITIONS[N]["parameters"],
      typeof CALLBACK_DEFINITIONS[N]["result"]
    >,
  ): Deno.PointerValue {
    const callback = new Deno.UnsafeCallback(CALLBACK_DEFINITIONS[name], handler);
    this.#callbacks.push(callback as unknown as Deno.UnsafeCallback);
    return callback.pointer;
  }

  #fileInfoCopy(fi: Deno.PointerValue): Uint8Array {
    const copy = new Uint8Array(FILE_INFO_SIZE);
    if (fi !== null) Deno.UnsafePointerView.copyInto(fi, copy);
    return copy;
  }

  /** fh of a fuse_file_info (numbers below 2^53 by contract). */
  #fh(fi: Deno.PointerValue): number {
    if (fi === null) return 0;
    Deno.UnsafePointerView.copyInto(fi, this.#fileInfoScratch);
    return Number(this.#fileInfoView.getBigUint64(FILE_INFO_FH, true));
  }

  #buildOps(fs: FileSystem): Uint8Array<ArrayBuffer> {
    const bridge = this.#bridge;
    const f = this.#fuse.symbols;
    const ops = new Uint8Array(LOWLEVEL_OPS_SIZE);
    const opsView = new DataView(ops.buffer);
    const set = (op: LowlevelOp, pointer: Deno.PointerValue) => {
      opsView.setBigUint64(lowlevelOpOffset(op), Deno.UnsafePointer.value(pointer) as bigint, true);
    };
    // Decoding failures (never expected) must still answer the request.
    const guard = (req: Deno.PointerValue, op: string, run: () => void) => {
      try {
        run();
      } catch (error) {
        console.error(`fuse: ${op} request failed:`, error);
        if (req !== null) f.fuse_reply_err(req, 5);
      }
    };
    const name = (ptr: Deno.PointerValue) =>
      ptr === null ? "" : Deno.UnsafePointerView.getCString(ptr);

    set("init", this.#callback("init", (_userdata, conn) => this.#onInit(fs, conn)));
    set(
      "destroy",
      this.#callback("destroy", () => {
        try {
          fs.destroy?.();
        } catch (error) {
          console.error("fuse: destroy handler failed:", error);
        }
      }),
    );
    set(
      "lookup",
      this.#callback("lookup", (req, parent, namePtr) => {
        guard(req, "lookup", () => bridge.lookup(req, parent, name(namePtr)));
      }),
    );
    set(
      "forget",
      this.#callback("forget", (req, ino, nlookup) => {
        try {
          bridge.forget(ino, Number(nlookup));
        } finally {
          f.fuse_reply_none(req);
        }
      }),
    );
    set(
      "forget_multi",
      this.#callback("forget_multi", (req, count, forgets) => {
        try {
          const n = Number(count);
          if (n > 0 && forgets !== null) {
            const data = new BigUint64Array(
              Deno.UnsafePointerView.getArrayBuffer(forgets, n * FORGET_DATA_SIZE),
            );
            for (let i = 0; i < n; i++) bridge.forget(data[2 * i], Number(data[2 * i + 1]));
          }
        } finally {
          f.fuse_reply_none(req);
        }
      }),
    );
    set(
      "getattr",
      this.#callback("getattr", (req, ino) => {
        guard(req, "getattr", () => bridge.getattr(req, ino));
      }),
    );
    if (fs.readlink) {
      set(
        "readlink",
        this.#callback("readlink", (req, ino) => {
          guard(req, "readlink", () => bridge.readlink(req, ino));
        }),
      );
    }
    if (fs.open) {
      set(
        "open",
        this.#callback("open", (req, ino, fi) => {
          guard(req, "open", () => {
            const copy = this.#fileInfoCopy(fi);
            const flags = new DataView(copy.buffer).getInt32(FILE_INFO_FLAGS, true);
            bridge.open(req, ino, flags, copy);
          });
        }),
      );
    } else {
      // ENOSYS tells the kernel to stop sending this request (zero-message
      // opens, caches kept); libfuse 3.14 would answer success instead.
      set(
        "open",
        this.#callback("open", (req, _ino, fi) => {
          if (this.#zeroMessageOpen) f.fuse_reply_err(req, ENOSYS);
          else f.fuse_reply_open(req, this.#fileInfoCopy(fi) as Uint8Array<ArrayBuffer>);
        }),
      );
    }
    if (fs.release) {
      set(
        "release",
        this.#callback("release", (req, ino, fi) => {
          guard(req, "release", () => bridge.release(req, ino, this.#fh(fi), false));
        }),
      );
    }
    if (fs.read) {
      set(
        "read",
        this.#callback("read", (req, ino, size, offset, fi) => {
          guard(
            req,
            "read",
            () => bridge.read(req, ino, this.#fh(fi), Number(size), Number(offset)),
          );
        }),
      );
    }
    if (fs.opendir) {
      set(
        "opendir",
        this.#callback("opendir", (req, ino, fi) => {
          guard(req, "opendir", () => {
            const copy = this.#fileInfoCopy(fi);
            const flags = new DataView(copy.buffer).getInt32(FILE_INFO_FLAGS, true);
            bridge.opendir(req, ino, flags, copy);
          });
        }),
      );
    } else {
      // ENOSYS tells the kernel to stop sending this request (zero-message
      // opens, caches kept); libfuse 3.14 would answer success instead.
      set(
        "opendir",
        this.#callback("opendir", (req, _ino, fi) => {
          if (this.#zeroMessageOpen) f.fuse_reply_err(req, ENOSYS);
          else f.fuse_reply_open(req, this.#fileInfoCopy(fi) as Uint8Array<ArrayBuffer>);
        }),
      );
    }
    if (fs.readdir) {
      set(
        "readdir",
        this.#callback("readdir", (req, ino, size, offset, fi) => {
          guard(req, "readdir", () => {
            bridge.readdir(req, ino, this.#fh(fi), Number(offset), Number(size));
          });
        }),
      );
    }
    if (fs.readdirplus) {
      set(
        "readdirplus",
        this.#callback("readdirplus", (req, ino, size, offset, fi) => {
          guard(req, "readdirplus", () => {
            bridge.readdirplus(req, ino, this.#fh(fi), Number(offset), Number(size));
          });
        }),
      );
    }
    if (fs.releasedir) {
      set(
        "releasedir",
        this.#callback("releasedir", (req, ino, fi) => {
          guard(req, "releasedir", () => bridge.release(req, ino, this.#fh(fi), true));
        }),
      );
    }
    set(
      "statfs",
      this.#callback("statfs", (req, ino) => {
        guard(req, "statfs", () => bridge.statfs(req, ino));
      }),
    );
    if (fs.access) {
      set(
        "access",
        this.#callback("access", (req, ino, mask) => {
          guard(req, "access", () => bridge.access(req, ino, mask));
        }),
      );
    }
    set(
      "getxattr",
      this.#callback("getxattr", (req, ino, namePtr, size) => {
        guard(req, "getxattr", () => bridge.getxattr(req, ino, name(namePtr), Number(size)));
      }),
    );
    set(
      "listxattr",
      this.#callback("listxattr", (req, ino, size) => {
        guard(req, "listxattr", () => bridge.listxattr(req, ino, Number(size)));
      }),
    );
    return ops;
  }

  #onInit(fs: FileSystem, connPtr: Deno.PointerValue): void {
    if (connPtr === null) return;
    const view = new DataView(Deno.UnsafePointerView.getArrayBuffer(connPtr, CONN_INFO_SIZE));
    const u32 = (at: number) => view.getUint32(at, true);
    const conn: ConnInfo = {
      protoMajor: u32(CONN_PROTO_MAJOR),
      protoMinor: u32(CONN_PROTO_MINOR),
      capable: u32(CONN_CAPABLE),
      want: u32(CONN_WANT),
      maxReadahead: u32(CONN_MAX_READAHEAD),
      maxBackground: u32(CONN_MAX_BACKGROUND),
      congestionThreshold: u32(CONN_CONGESTION_THRESHOLD),
      timeGran: u32(CONN_TIME_GRAN),
      maxWrite: u32(CONN_MAX_WRITE),
      maxRead: u32(CONN_MAX_READ),
      mountpoint: this.mountpoint,
    };
    // Without a handler the open callback answers ENOSYS, and the kernel
    // skips OPEN/RELEASE (keeping the page cache) or OPENDIR/RELEASEDIR.
    this.#zeroMessageOpen = (conn.capable & FUSE_CAP_NO_OPEN_SUPPORT) !== 0;
    if (!fs.open) conn.want |= conn.capable & FUSE_CAP_NO_OPEN_SUPPORT;
    if (!fs.opendir) conn.want |= conn.capable & FUSE_CAP_NO_OPENDIR_SUPPORT;
    try {
      fs.init?.(conn);
      view.setUint32(CONN_WANT, (conn.want & conn.capable) >>> 0, true);
      view.setUint32(CONN_MAX_READAHEAD, conn.maxReadahead, true);
      view.setUint32(CONN_MAX_BACKGROUND, conn.maxBackground, true);
      view.setUint32(CONN_CONGESTION_THRESHOLD, conn.congestionThreshold, true);
      view.setUint32(CONN_TIME_GRAN, conn.timeGran, true);
      this.#initDone();
    } catch (error) {
      this.#initDone(
        new FuseMountError(`Cannot mount at ${this.mountpoint}: init failed`, { cause: error }),
      );
    }
  }

  #start(fs: FileSystem, options: MountOptions): void {
    const f = this.#fuse.symbols;
    const c = this.#libc.symbols;
    const mountOptions: string[] = ["default_permissions", "allow_other", "ro"].filter((_, i) =>
      [options.defaultPermissions, options.allowOther, options.readOnly][i]
    );
    const fsName = options.fsName ?? "termite";
    for (const value of [fsName, options.subtype ?? "", ...(options.extraOptions ?? [])]) {
      if (/[,\\\0]/.test(value)) {
        throw new FuseMountError(`Cannot mount at ${this.mountpoint}: bad option: ${value}`);
      }
    }
    mountOptions.push(`fsname=${fsName}`);
    if (options.subtype) mountOptions.push(`subtype=${options.subtype}`);
    mountOptions.push(...(options.extraOptions ?? []));
    const argvStrings = ["termite-fuse", "-o", mountOptions.join(",")];
    if (options.debug) argvStrings.push("-d");
    const argvBuffers = argvStrings.map(cString);
    const argv = new BigUint64Array(Math.max(argvBuffers.length + 1, 16));
    argvBuffers.forEach((buffer, i) => {
      argv[i] = Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)) as bigint;
    });
    const args = new Uint8Array(ARGS_SIZE);
    const argsView = new DataView(args.buffer);
    argsView.setInt32(ARGS_ARGC, argvStrings.length, true);
    argsView.setBigUint64(
      ARGS_ARGV,
      Deno.UnsafePointer.value(Deno.UnsafePointer.of(argv)) as bigint,
      true,
    );
    argsView.setInt32(ARGS_ALLOCATED, 0, true);

    const ops = this.#buildOps(fs);
    this.#se = f.fuse_session_new(args, ops, BigInt(LOWLEVEL_OPS_SIZE), null);
    if (this.#se === null) {
      throw new FuseMountError(`Cannot mount at ${this.mountpoint}: fuse_session_new failed`);
    }
    if (f.fuse_session_mount(this.#se, cString(this.mountpoint)) !== 0) {
      throw new FuseMountError(`Cannot mount at ${this.mountpoint}: fuse_session_mount failed`);
    }
    this.#fd = f.fuse_session_fd(this.#se);
    const flags = c.fcntl(this.#fd, F_GETFL, 0);
    if (flags < 0 || c.fcntl(this.#fd, F_SETFL, flags | O_NONBLOCK) < 0) {
      throw new FuseMountError(`Cannot mount at ${this.mountpoint}: fcntl failed`);
    }
    this.#wakeFd = c.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (this.#wakeFd < 0) {
      throw new FuseMountError(`Cannot mount at ${this.mountpoint}: eventfd failed`);
    }
    const pollView = new DataView(this.#pollfds.buffer);
    pollView.setInt32(POLLFD_FD, this.#fd, true);
    pollView.setInt16(POLLFD_EVENTS, POLLIN, true);
    pollView.setInt32(POLLFD_SIZE + POLLFD_FD, this.#wakeFd, true);
    pollView.setInt16(POLLFD_SIZE + POLLFD_EVENTS, POLLIN, true);
    if (this.#syncWaitMs > 0) {
      this.#tickFd = c.timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
      if (this.#tickFd < 0) {
        throw new FuseMountError(`Cannot mount at ${this.mountpoint}: timerfd_create failed`);
      }
      const nsec = BigInt(Math.round(this.#syncWaitMs * 1e6));
      const spec = new DataView(this.#tickSpec.buffer);
      for (const at of [ITIMERSPEC_INTERVAL, ITIMERSPEC_VALUE]) {
        spec.setBigInt64(at, nsec / 1_000_000_000n, true);
        spec.setBigInt64(at + TIMESPEC_NSEC, nsec % 1_000_000_000n, true);
      }
      const syncView = this.#syncPollView;
      syncView.setInt32(POLLFD_FD, this.#fd, true);
      syncView.setInt16(POLLFD_EVENTS, POLLIN, true);
      syncView.setInt32(POLLFD_SIZE + POLLFD_FD, this.#tickFd, true);
      syncView.setInt16(POLLFD_SIZE + POLLFD_EVENTS, POLLIN, true);
    }
    this.#serving = this.#serve();
  }

  async #serve(): Promise<void> {
    const f = this.#fuse.symbols;
    const c = this.#libc.symbols;
    const se = this.#se;
    const buf = this.#bufStruct;
    const pollfds = this.#pollfds;
    const bridge = this.#bridge;
    const syncWait = this.#tickFd >= 0;
    let failure: unknown;
    try {
      while (!this.#closing) {
        let handled = 0;
        let wait = false;
        // After a reply, wait for the next request in poll() first: in serial
        // workloads the queue is usually empty, and a read() answering EAGAIN
        // would be one syscall more per request.
        let pollFirst = false;
        while (handled < this.#requestsPerTurn) {
          if (pollFirst) {
            pollFirst = false;
            if (!syncWait || bridge.pendingCount > 0) {
              wait = true;
              break;
            }
            const woken = this.#waitHere();
            if (woken === "idle") {
              wait = true;
              break;
            }
            if (woken === "tick") break; // let the event loop run
          }
          const res = f.fuse_session_receive_buf(se, buf);
          if (res > 0) {
            this.#requests++;
            handled++;
            pollFirst = true;
            f.fuse_session_process_buf(se, buf);
            continue;
          }
          if (res === -EINTR) continue;
          if (res === -EAGAIN) {
            pollFirst = true;
            continue;
          }
          if (res === 0 || f.fuse_session_exited(se)) return;
          throw new FuseSessionError(`Cannot read requests at ${this.mountpoint}: errno ${-res}`);
        }
        if (!wait) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          continue;
        }
        this.#stopTicks();
        this.#threadWaits++;
        await c.poll_nonblocking(pollfds, 2n, -1);
      }
    } catch (error) {
      failure = error;
    } finally {
      this.#stopTicks();
      if (!this.#closing) {
        if (failure !== undefined) console.error("fuse: session loop failed:", failure);
        // Ended by the kernel (unmounted elsewhere or aborted): clean up.
        queueMicrotask(() => void this.close());
      }
    }
  }

  /**
   * Wait on this thread for the next request, bounded by the tick timer
   * rather than by a poll() timeout: a timeout arms and cancels a kernel timer
   * on every wait, which in a virtual machine costs two exits to the
   * hypervisor, as much as our whole request handling (see the module
   * comment for what it cost). The timer ticks
   * every `syncWaitMs` while requests flow and is stopped when they do not.
   *
   * "request": the device is readable; "tick": a tick passed with requests
   * handled since the previous one (time to let the event loop run); "idle":
   * a whole tick without requests (time to wait on a thread instead).
   */
  #waitHere(): "request" | "tick" | "idle" {
    const c = this.#libc.symbols;
    if (!this.#ticking) {
      c.timerfd_settime(this.#tickFd, 0, this.#tickSpec, null);
      this.#ticking = true;
      this.#requestsAtTick = this.#requests;
    }
    const view = this.#syncPollView;
    if (c.poll(this.#syncPollfds, 2n, -1) <= 0) return "request"; // EINTR: read again
    if ((view.getInt16(POLLFD_SIZE + POLLFD_REVENTS, true) & POLLIN) === 0) return "request";
    c.read(this.#tickFd, this.#tickCount, 8n);
    if (this.#requests === this.#requestsAtTick) return "idle";
    this.#requestsAtTick = this.#requests;
    return "tick";
  }

  #stopTicks(): void {
    if (!this.#ticking) return;
    const c = this.#libc.symbols;
    c.timerfd_settime(this.#tickFd, 0, this.#tickStop, null);
    c.read(this.#tickFd, this.#tickCount, 8n); // drop an expiry not yet read
    this.#ticking = false;
  }

  async notifyInvalEntry(parent: bigint, name: string): Promise<number> {
    if (this.#closing || this.#se === null) return -ENOTCONN;
    const bytes = encoder.encode(name);
    return await this.#trackNotify(
      this.#fuse.symbols.fuse_lowlevel_notify_inval_entry_nonblocking(
        this.#se,
        parent,
        cString(name),
        BigInt(bytes.length),
      ),
    );
  }

  async notifyInvalInode(ino: bigint, offset = 0, length = 0): Promise<number> {
    if (this.#closing || this.#se === null) return -ENOTCONN;
    return await this.#trackNotify(
      this.#fuse.symbols.fuse_lowlevel_notify_inval_inode_nonblocking(
        this.#se,
        ino,
        BigInt(offset),
        BigInt(length),
      ),
    );
  }

  async #trackNotify(call: Promise<number>): Promise<number> {
    this.#notifies.add(call);
    try {
      return await call;
    } finally {
      this.#notifies.delete(call);
    }
  }

  closeOnSignals(signals: readonly Deno.Signal[] = CLOSE_SIGNALS_DEFAULT): void {
    if (this.#closing) return;
    for (const signal of signals) {
      const handler = () => void this.close();
      Deno.addSignalListener(signal, handler);
      this.#signalHandlers.push([signal, handler]);
    }
  }

  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    this.#closing = true;
    for (const [signal, handler] of this.#signalHandlers) {
      Deno.removeSignalListener(signal, handler);
    }
    this.#signalHandlers.length = 0;
    const f = this.#fuse.symbols;
    const c = this.#libc.symbols;
    if (this.#wakeFd >= 0) c.write(this.#wakeFd, new BigUint64Array([1n]), 8n);
    await this.#serving;
    if (this.#se !== null) {
      // No new users: detach the mount from this namespace.
      if (this.#fd >= 0) {
        if (Deno.uid() === 0) c.umount2(cString(this.mountpoint), MNT_DETACH);
        else f.fuse_session_unmount(this.#se);
      }
      this.#bridge.abortPending();
      if (this.#notifies.size > 0) await this.#drainNotifies();
      f.fuse_session_destroy(this.#se); // closes the fd: ends the connection
      this.#se = null;
    }
    const mem = new DataView(this.#bufStruct.buffer).getBigUint64(BUF_MEM, true);
    if (mem !== 0n) c.free(Deno.UnsafePointer.create(mem));
    if (this.#wakeFd >= 0) c.close(this.#wakeFd);
    this.#wakeFd = -1;
    if (this.#tickFd >= 0) c.close(this.#tickFd);
    this.#tickFd = -1;
    this.#fd = -1;
    for (const callback of this.#callbacks) callback.close();
    this.#callbacks.length = 0;
    this.#initDone(new FuseMountError(`Cannot mount at ${this.mountpoint}: session closed`));
    this.#libc.close();
    this.#fuse.close();
    this.#resolveClosed();
  }

  /** Notifications still blocked in the kernel: abort the connection to free them. */
  async #drainNotifies(): Promise<void> {
    const settled = () => Promise.allSettled([...this.#notifies]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), NOTIFY_DRAIN_TIMEOUT_MS);
    });
    try {
      if (await Promise.race([settled(), timeout]) !== "timeout") return;
      if (this.#connectionId !== undefined) await abortConnection(this.#connectionId);
      await settled();
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Abort a FUSE connection through fusectl (mounting fusectl if needed). */
export async function abortConnection(connectionId: number): Promise<boolean> {
  const dir = "/sys/fs/fuse/connections";
  const path = `${dir}/${connectionId}/abort`;
  try {
    await Deno.writeTextFile(path, "1");
    return true;
  } catch {
    // fusectl may not be mounted.
  }
  try {
    const { success } = await new Deno.Command("mount", {
      args: ["-t", "fusectl", "none", dir],
      stdout: "null",
      stderr: "null",
    }).output();
    if (!success) return false;
    await Deno.writeTextFile(path, "1");
    return true;
  } catch {
    return false;
  }
}

/** Whether `path` is listed as a FUSE mount point in this mount namespace. */
async function isFuseMountPoint(path: string): Promise<boolean> {
  let absolute: string;
  try {
    absolute = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
    absolute = absolute.replace(/\/+$/, "") || "/";
  } catch {
    return false;
  }
  return await connectionIdOf(absolute) !== undefined;
}

/**
 * If `path` is a dead FUSE mount ("Transport endpoint is not connected":
 * its server died), detach it (`umount2(MNT_DETACH)`) and return true;
 * otherwise return false. A plain `stat` may still succeed from cached
 * attributes for a while, so a listed FUSE mount is also asked for `statfs`
 * (in a subprocess: a hung server must not block this thread).
 */
export async function cleanStaleMount(path: string): Promise<boolean> {
  let dead = false;
  try {
    await Deno.stat(path);
  } catch (error) {
    dead = errnoFromError(error) === ENOTCONN;
    if (!dead) return false;
  }
  if (!dead) {
    if (!(await isFuseMountPoint(path))) return false;
    const probe = await new Deno.Command("stat", {
      args: ["-f", "-c", "%t", path],
      stdout: "null",
      stderr: "piped",
    }).output();
    dead = !probe.success && /not connected/i.test(new TextDecoder().decode(probe.stderr));
    if (!dead) return false;
  }
  const libc = openLibc();
  try {
    return libc.symbols.umount2(cString(path), MNT_DETACH) === 0;
  } finally {
    libc.close();
  }
}
