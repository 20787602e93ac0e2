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
import { Bridge, type HandlerFailure } from "./bridge.ts";
import { EAGAIN, EINTR, ENOTCONN } from "./errno.ts";
import { type Libfuse, openLibfuse } from "./ffi.ts";
import { type Libc, openLibc } from "./libc.ts";
import { buildOps } from "./lowlevel_ops.ts";
import { abortConnection, cleanStaleMount, connectionIdOf } from "./mounts.ts";
import { NativeSink } from "./native_sink.ts";
import {
  ARGS_ALLOCATED,
  ARGS_ARGC,
  ARGS_ARGV,
  ARGS_SIZE,
  BUF_MEM,
  BUF_SIZE,
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
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  F_GETFL,
  F_SETFL,
  FUSE_CAP_NO_OPEN_SUPPORT,
  FUSE_CAP_NO_OPENDIR_SUPPORT,
  ITIMERSPEC_INTERVAL,
  ITIMERSPEC_SIZE,
  ITIMERSPEC_VALUE,
  LOWLEVEL_OPS_SIZE,
  MNT_DETACH,
  O_NONBLOCK,
  POLLFD_EVENTS,
  POLLFD_FD,
  POLLFD_REVENTS,
  POLLFD_SIZE,
  POLLIN,
  TFD_CLOEXEC,
  TFD_NONBLOCK,
  TIMESPEC_NSEC,
} from "./structs.ts";
import type { ConnInfo, FileSystem, FuseStats, MountedSession, MountOptions } from "./types.ts";

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
const REQUESTS_PER_TURN_DEFAULT = 32;
const SYNC_WAIT_MS_DEFAULT = 1;

const encoder = new TextEncoder();

/** Signals a session closes on by default. */
const CLOSE_SIGNALS_DEFAULT: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

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
    const args = this.#args(options);
    const ops = buildOps({
      fs,
      bridge: this.#bridge,
      lib: this.#fuse,
      onInit: (conn) => this.#onInit(fs, conn),
      zeroMessageOpen: () => this.#zeroMessageOpen,
      callbacks: this.#callbacks,
    });
    this.#se = f.fuse_session_new(args.struct, ops, BigInt(LOWLEVEL_OPS_SIZE), null);
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
    this.#setUpWaits();
    this.#serving = this.#serve();
  }

  /**
   * The `struct fuse_args` of `fuse_session_new` (`-o` mount options), and
   * the buffers its pointers point into (keep them referenced until then).
   */
  #args(options: MountOptions): { struct: Uint8Array<ArrayBuffer>; buffers: unknown[] } {
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
    return { struct: args, buffers: [argv, argvBuffers] };
  }

  /** The descriptors the loop waits on: the device and the wake-up eventfd, the tick timer. */
  #setUpWaits(): void {
    const c = this.#libc.symbols;
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
