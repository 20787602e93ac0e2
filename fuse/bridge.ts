/**
 * The bridge turns kernel requests (already decoded by the session) into calls
 * of a {@link FileSystem}, and the answers into replies. It is the only place
 * where unexpected exceptions become `EIO`, and it guarantees exactly one reply
 * per request: whether the handler answers at once, throws, returns a promise
 * that resolves or rejects, or the session closes first (then EIO).
 *
 * It also counts lookups per inode ({@link LookupCounts}), so that a file
 * system sees a single `forget(ino)` when the kernel drops its last reference.
 *
 * The bridge does not know about libfuse: replies go to a {@link ReplySink}
 * (native in `session.ts`, recording in the tests).
 *
 * @module
 */

import { EIO, ENODATA, ENOSYS, ERANGE } from "./errno.ts";
import { LookupCounts } from "./node_table.ts";
import type {
  AttrReply,
  DirEntry,
  DirEntryPlus,
  Entry,
  Errno,
  FdSlice,
  FileSystem,
  OpenDirReply,
  OpenReply,
  Reply,
  RequestContext,
  StatFs,
} from "./types.ts";

/** Where replies go. `R` is the request handle (a `fuse_req_t` in the session). */
export interface ReplySink<R> {
  /** The sender of a request; only read while the request is unanswered. */
  context(req: R, isValid: () => boolean): RequestContext;
  err(req: R, errno: Errno): void;
  none(req: R): void;
  /** Returns 0, or a negative errno when the kernel did not take the entry. */
  entry(req: R, entry: Entry): number;
  attr(req: R, reply: AttrReply): void;
  readlink(req: R, target: string | Uint8Array): void;
  /** `fileInfo` is what `copyFileInfo` returned for this request. */
  open(req: R, fileInfo: Uint8Array, reply: OpenReply & OpenDirReply): void;
  buf(req: R, data: Uint8Array): void;
  data(req: R, slice: FdSlice): void;
  statfs(req: R, st: StatFs): void;
  xattrSize(req: R, size: number): void;
  /** Pack entries (positions offset, offset+1, ...) into at most sizeMax bytes; reply. */
  readdir(req: R, entries: readonly DirEntry[], offset: number, sizeMax: number): void;
  /** Like readdir; returns how many entries were packed. */
  readdirplus(
    req: R,
    entries: readonly DirEntryPlus[],
    offset: number,
    sizeMax: number,
  ): number;
}

/** A request being answered. */
interface Pending<R> {
  req: R;
  done: boolean;
}

/** The kernel never counts "." and ".." of a readdirplus reply as lookups. */
function isDotOrDotDot(name: string): boolean {
  return name === "." || name === "..";
}

/** Counters kept by the bridge. */
export interface BridgeStats {
  asyncReplies: number;
  pending: number;
  failures: number;
  inodes: number;
}

/** An error a handler threw, reported to `onError` (then answered EIO). */
export interface HandlerFailure {
  op: string;
  error: unknown;
}

export class Bridge<R> {
  readonly #fs: FileSystem;
  readonly #sink: ReplySink<R>;
  readonly #onError: (failure: HandlerFailure) => void;
  readonly #lookups = new LookupCounts();
  readonly #pending = new Set<Pending<R>>();
  #asyncReplies = 0;
  #failures = 0;
  #closed = false;

  constructor(
    fs: FileSystem,
    sink: ReplySink<R>,
    options: { onError?: (failure: HandlerFailure) => void } = {},
  ) {
    this.#fs = fs;
    this.#sink = sink;
    this.#onError = options.onError ?? (() => {});
  }

  get fs(): FileSystem {
    return this.#fs;
  }

  get stats(): BridgeStats {
    return {
      asyncReplies: this.#asyncReplies,
      pending: this.#pending.size,
      failures: this.#failures,
      inodes: this.#lookups.size,
    };
  }

  /** Requests waiting for a promise. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /** The kernel's lookup count of `ino` as seen by the bridge (0 if unknown). */
  lookupCount(ino: bigint): number {
    return this.#lookups.get(ino);
  }

  /**
   * Answer every pending request with `errno` and ignore their later results.
   * Used when the session closes.
   */
  abortPending(errno: Errno = EIO): void {
    this.#closed = true;
    for (const pending of this.#pending) {
      pending.done = true;
      this.#sink.err(pending.req, errno);
    }
    this.#pending.clear();
  }

  /**
   * Run `call`, then `send` its value, once; numbers are errnos (except when
   * `zeroIsValue` and the value is 0, for `access`).
   */
  #answer<T>(
    op: string,
    req: R,
    call: (ctx: RequestContext) => Reply<T>,
    send: (req: R, value: T) => void,
  ): void {
    const pending: Pending<R> = { req, done: false };
    let result: Reply<T>;
    try {
      result = call(this.#sink.context(req, () => !pending.done));
    } catch (error) {
      this.#fail(op, pending, error);
      return;
    }
    if (result instanceof Promise) {
      this.#asyncReplies++;
      this.#pending.add(pending);
      result.then(
        (value) => {
          if (pending.done) return;
          this.#pending.delete(pending);
          this.#finish(op, pending, value, send);
        },
        (error) => {
          if (pending.done) return;
          this.#pending.delete(pending);
          this.#fail(op, pending, error);
        },
      );
      return;
    }
    this.#finish(op, pending, result, send);
  }

  #finish<T>(op: string, pending: Pending<R>, value: T | Errno, send: (req: R, v: T) => void) {
    if (typeof value === "number" && !(value === 0 && op === "access")) {
      pending.done = true;
      const errno = Math.abs(Math.trunc(value));
      this.#sink.err(pending.req, errno > 0 && errno < 4096 ? errno : EIO);
      return;
    }
    try {
      send(pending.req, value as T);
      pending.done = true;
    } catch (error) {
      this.#fail(op, pending, error);
    }
  }

  #fail(op: string, pending: Pending<R>, error: unknown): void {
    if (pending.done) return;
    pending.done = true;
    this.#failures++;
    try {
      this.#onError({ op, error });
    } catch {
      // A failing logger must not cost the reply.
    }
    this.#sink.err(pending.req, EIO);
  }

  /** Work after a reply was sent: a failure is reported, never answered again. */
  #afterReply(op: string, work: () => void): void {
    try {
      work();
    } catch (error) {
      this.#failures++;
      this.#onError({ op, error });
    }
  }

  // ---- requests ----

  lookup(req: R, parent: bigint, name: string): void {
    this.#answer("lookup", req, (ctx) => this.#fs.lookup(parent, name, ctx), (req, entry) => {
      const res = this.#sink.entry(req, entry);
      if (res === 0 && entry.ino !== 0 && entry.ino !== 0n && !this.#closed) {
        this.#afterReply("lookup", () => this.#lookups.add(entry.ino));
      }
    });
  }

  /** forget and batch_forget: no reply is sent by the bridge (the session replies none). */
  forget(ino: bigint, nlookup: number): void {
    if (!this.#lookups.forget(ino, nlookup)) return;
    try {
      this.#fs.forget?.(ino);
    } catch (error) {
      this.#failures++;
      this.#onError({ op: "forget", error });
    }
  }

  getattr(req: R, ino: bigint): void {
    this.#answer("getattr", req, (ctx) => this.#fs.getattr(ino, ctx), (req, reply) => {
      this.#sink.attr(req, reply);
    });
  }

  readlink(req: R, ino: bigint): void {
    const fs = this.#fs;
    if (!fs.readlink) return this.#sink.err(req, ENOSYS);
    this.#answer("readlink", req, (ctx) => fs.readlink!(ino, ctx), (req, target) => {
      this.#sink.readlink(req, target);
    });
  }

  open(req: R, ino: bigint, flags: number, fileInfo: Uint8Array): void {
    const fs = this.#fs;
    if (!fs.open) return this.#sink.open(req, fileInfo, {});
    this.#answer("open", req, (ctx) => fs.open!(ino, flags, ctx), (req, reply) => {
      this.#sink.open(req, fileInfo, reply);
    });
  }

  opendir(req: R, ino: bigint, flags: number, fileInfo: Uint8Array): void {
    const fs = this.#fs;
    if (!fs.opendir) return this.#sink.open(req, fileInfo, {});
    this.#answer("opendir", req, (ctx) => fs.opendir!(ino, flags, ctx), (req, reply) => {
      this.#sink.open(req, fileInfo, reply);
    });
  }

  read(req: R, ino: bigint, fh: number, size: number, offset: number): void {
    const fs = this.#fs;
    if (!fs.read) return this.#sink.err(req, ENOSYS);
    this.#answer("read", req, (ctx) => fs.read!(ino, fh, size, offset, ctx), (req, data) => {
      if (data instanceof Uint8Array) {
        this.#sink.buf(req, data.length > size ? data.subarray(0, size) : data);
      } else {
        this.#sink.data(req, { ...data, size: Math.min(size, data.size) });
      }
    });
  }

  readdir(req: R, ino: bigint, fh: number, offset: number, sizeMax: number): void {
    const fs = this.#fs;
    if (!fs.readdir) return this.#sink.err(req, ENOSYS);
    this.#answer(
      "readdir",
      req,
      (ctx) => fs.readdir!(ino, fh, offset, sizeMax, ctx),
      (req, entries) => this.#sink.readdir(req, entries, offset, sizeMax),
    );
  }

  readdirplus(req: R, ino: bigint, fh: number, offset: number, sizeMax: number): void {
    const fs = this.#fs;
    if (!fs.readdirplus) return this.#sink.err(req, ENOSYS);
    this.#answer(
      "readdirplus",
      req,
      (ctx) => fs.readdirplus!(ino, fh, offset, sizeMax, ctx),
      (req, entries) => {
        const packed = this.#sink.readdirplus(req, entries, offset, sizeMax);
        if (this.#closed) return;
        this.#afterReply("readdirplus", () => {
          for (let i = 0; i < packed; i++) {
            const { name, entry } = entries[i];
            if (entry.ino !== 0 && entry.ino !== 0n && !isDotOrDotDot(name)) {
              this.#lookups.add(entry.ino);
            }
          }
        });
      },
    );
  }

  /** release and releasedir: the handler cannot fail the request. */
  release(req: R, ino: bigint, fh: number, dir: boolean): void {
    try {
      if (dir) this.#fs.releasedir?.(ino, fh);
      else this.#fs.release?.(ino, fh);
    } catch (error) {
      this.#failures++;
      this.#onError({ op: dir ? "releasedir" : "release", error });
    }
    this.#sink.err(req, 0);
  }

  statfs(req: R, ino: bigint): void {
    const fs = this.#fs;
    if (!fs.statfs) {
      return this.#sink.statfs(req, {
        bsize: 4096,
        blocks: 0,
        bfree: 0,
        bavail: 0,
        files: 0,
        ffree: 0,
        namemax: 255,
      });
    }
    this.#answer("statfs", req, (ctx) => fs.statfs!(ino, ctx), (req, st) => {
      this.#sink.statfs(req, st);
    });
  }

  access(req: R, ino: bigint, mask: number): void {
    const fs = this.#fs;
    if (!fs.access) return this.#sink.err(req, 0);
    this.#answer("access", req, (ctx) => fs.access!(ino, mask, ctx), (req) => {
      this.#sink.err(req, 0);
    });
  }

  getxattr(req: R, ino: bigint, name: string, size: number): void {
    const fs = this.#fs;
    if (!fs.getxattr) return this.#sink.err(req, ENODATA);
    this.#answer("getxattr", req, (ctx) => fs.getxattr!(ino, name, ctx), (req, value) => {
      this.#sendXattr(req, value, size);
    });
  }

  listxattr(req: R, ino: bigint, size: number): void {
    const fs = this.#fs;
    if (!fs.listxattr) return this.#sendXattr(req, new Uint8Array(0), size);
    this.#answer("listxattr", req, (ctx) => fs.listxattr!(ino, ctx), (req, names) => {
      const encoder = new TextEncoder();
      const parts = names.map((name) => encoder.encode(name + "\0"));
      const list = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
      let at = 0;
      for (const part of parts) {
        list.set(part, at);
        at += part.length;
      }
      this.#sendXattr(req, list, size);
    });
  }

  #sendXattr(req: R, value: Uint8Array, size: number): void {
    if (size === 0) this.#sink.xattrSize(req, value.length);
    else if (value.length > size) this.#sink.err(req, ERANGE);
    else this.#sink.buf(req, value);
  }
}
