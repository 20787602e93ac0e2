/**
 * Replies through libfuse: the native {@link ReplySink} of the bridge, and
 * the request context read from `fuse_req_ctx`. Replies are synchronous, so
 * the scratch buffers are reused.
 *
 * @module
 */

import type { ReplySink } from "./bridge.ts";
import type { Libfuse } from "./ffi.ts";
import {
  BUF_FD,
  BUF_FLAGS,
  BUF_MEM,
  BUF_POS,
  BUF_SIZE_FIELD,
  BUFVEC_BUF,
  BUFVEC_COUNT,
  BUFVEC_IDX,
  BUFVEC_OFF,
  BUFVEC_SIZE,
  CTX_GID,
  CTX_PID,
  CTX_SIZE,
  CTX_UID,
  CTX_UMASK,
  encodeEntryParam,
  encodeFileInfoReply,
  encodeStat,
  encodeStatvfs,
  ENTRY_PARAM_SIZE,
  FUSE_BUF_FD_SEEK,
  FUSE_BUF_IS_FD,
  S_IFMT,
  STAT_INO,
  STAT_MODE,
  STAT_SIZE,
  STATVFS_SIZE,
} from "./structs.ts";
import type {
  AttrReply,
  DirEntry,
  DirEntryPlus,
  Entry,
  FdSlice,
  OpenDirReply,
  OpenReply,
  RequestContext,
  StatFs,
} from "./types.ts";

const DIR_BUF_BYTES_MAX = 1 << 20;
const NAME_BYTES_MAX = 4096;

const encoder = new TextEncoder();

/** Lazily read `fuse_req_ctx`; valid only while the request is unanswered. */
export class NativeRequestContext implements RequestContext {
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
export class NativeSink implements ReplySink<Deno.PointerValue> {
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
