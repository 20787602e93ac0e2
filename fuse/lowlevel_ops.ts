/**
 * The `fuse_lowlevel_ops` table of a session: one `UnsafeCallback` per
 * request type, each decoding its arguments and handing the request to the
 * {@link Bridge}. libfuse calls them synchronously on the JS thread (from
 * `fuse_session_process_buf`).
 *
 * A request the file system has no handler for gets no callback where
 * libfuse's default answer is the right one (ENOSYS), except `open` and
 * `opendir`: without a handler they answer ENOSYS themselves once the kernel
 * supports zero-message opens (libfuse 3.14 would answer success), so that
 * the kernel stops sending them and keeps its caches.
 *
 * @module
 */

import type { Bridge } from "./bridge.ts";
import { EIO, ENOSYS } from "./errno.ts";
import type { Libfuse } from "./ffi.ts";
import {
  FILE_INFO_FH,
  FILE_INFO_FLAGS,
  FILE_INFO_SIZE,
  FORGET_DATA_SIZE,
  LOWLEVEL_OPS_SIZE,
  type LowlevelOp,
  lowlevelOpOffset,
} from "./structs.ts";
import type { FileSystem } from "./types.ts";

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

type Callback<N extends CallbackName> = Deno.UnsafeCallbackFunction<
  typeof CALLBACK_DEFINITIONS[N]["parameters"],
  typeof CALLBACK_DEFINITIONS[N]["result"]
>;

/** Callbacks by request type; a missing one leaves the op to libfuse. */
type Callbacks = { [N in CallbackName]?: Callback<N> };

/** What {@linkcode buildOps} needs from its session. */
export interface OpsOptions {
  fs: FileSystem;
  bridge: Bridge<Deno.PointerValue>;
  lib: Libfuse;
  /** The `init` request, with its `fuse_conn_info`. */
  onInit(conn: Deno.PointerValue): void;
  /** Whether the kernel supports zero-message opens (known after init). */
  zeroMessageOpen(): boolean;
  /** Every callback created is pushed here; the session closes them. */
  callbacks: Deno.UnsafeCallback[];
}

/** Builds the `fuse_lowlevel_ops` struct for `fuse_session_new`. */
export function buildOps(options: OpsOptions): Uint8Array<ArrayBuffer> {
  const ops = new Uint8Array(LOWLEVEL_OPS_SIZE);
  const opsView = new DataView(ops.buffer);
  const callbacks: Callbacks = { ...sessionCallbacks(options), ...requestCallbacks(options) };
  for (const op of Object.keys(CALLBACK_DEFINITIONS) as CallbackName[]) {
    const handler = callbacks[op];
    if (handler === undefined) continue;
    const callback = new Deno.UnsafeCallback(
      CALLBACK_DEFINITIONS[op],
      handler as Callback<typeof op>,
    );
    options.callbacks.push(callback as unknown as Deno.UnsafeCallback);
    const offset = lowlevelOpOffset(op as LowlevelOp);
    opsView.setBigUint64(offset, Deno.UnsafePointer.value(callback.pointer) as bigint, true);
  }
  return ops;
}

/** init, destroy, the forgets, and open/opendir without a handler: no bridge request. */
function sessionCallbacks(options: OpsOptions): Callbacks {
  const { fs, bridge } = options;
  const f = options.lib.symbols;
  const noOpen = (req: Deno.PointerValue, _ino: bigint, fi: Deno.PointerValue) => {
    if (options.zeroMessageOpen()) f.fuse_reply_err(req, ENOSYS);
    else f.fuse_reply_open(req, fileInfoCopy(fi));
  };
  return {
    init: (_userdata, conn) => options.onInit(conn),
    destroy: () => {
      try {
        fs.destroy?.();
      } catch (error) {
        console.error("fuse: destroy handler failed:", error);
      }
    },
    forget: (req, ino, nlookup) => {
      try {
        bridge.forget(ino, Number(nlookup));
      } finally {
        f.fuse_reply_none(req);
      }
    },
    forget_multi: (req, count, forgets) => {
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
    },
    open: fs.open ? undefined : noOpen,
    opendir: fs.opendir ? undefined : noOpen,
  };
}

/** Requests the bridge answers, each guarded: a decoding failure still gets a reply. */
function requestCallbacks(options: OpsOptions): Callbacks {
  const { fs, bridge } = options;
  const f = options.lib.symbols;
  const fh = fileHandleReader();
  const name = (ptr: Deno.PointerValue) =>
    ptr === null ? "" : Deno.UnsafePointerView.getCString(ptr);
  const requests: Callbacks = {
    lookup: (req, parent, namePtr) => bridge.lookup(req, parent, name(namePtr)),
    getattr: (req, ino) => bridge.getattr(req, ino),
    readlink: fs.readlink && ((req, ino) => bridge.readlink(req, ino)),
    open: fs.open && ((req, ino, fi) => {
      const copy = fileInfoCopy(fi);
      bridge.open(req, ino, flagsOf(copy), copy);
    }),
    release: fs.release && ((req, ino, fi) => bridge.release(req, ino, fh(fi), false)),
    read: fs.read &&
      ((req, ino, size, offset, fi) => bridge.read(req, ino, fh(fi), Number(size), Number(offset))),
    opendir: fs.opendir && ((req, ino, fi) => {
      const copy = fileInfoCopy(fi);
      bridge.opendir(req, ino, flagsOf(copy), copy);
    }),
    readdir: fs.readdir &&
      ((req, ino, size, offset, fi) =>
        bridge.readdir(req, ino, fh(fi), Number(offset), Number(size))),
    readdirplus: fs.readdirplus &&
      ((req, ino, size, offset, fi) =>
        bridge.readdirplus(req, ino, fh(fi), Number(offset), Number(size))),
    releasedir: fs.releasedir && ((req, ino, fi) => bridge.release(req, ino, fh(fi), true)),
    statfs: (req, ino) => bridge.statfs(req, ino),
    access: fs.access && ((req, ino, mask) => bridge.access(req, ino, mask)),
    getxattr: (req, ino, namePtr, size) => bridge.getxattr(req, ino, name(namePtr), Number(size)),
    listxattr: (req, ino, size) => bridge.listxattr(req, ino, Number(size)),
  };
  const guarded: Record<string, unknown> = {};
  for (const [op, handler] of Object.entries(requests)) {
    if (!handler) continue;
    const run = handler as (req: Deno.PointerValue, ...args: unknown[]) => void;
    // Decoding failures (never expected) must still answer the request.
    guarded[op] = (req: Deno.PointerValue, ...args: unknown[]) => {
      try {
        run(req, ...args);
      } catch (error) {
        console.error(`fuse: ${op} request failed:`, error);
        if (req !== null) f.fuse_reply_err(req, EIO);
      }
    };
  }
  return guarded as Callbacks;
}

/** A copy of a request's `fuse_file_info`, to send back with an open reply. */
function fileInfoCopy(fi: Deno.PointerValue): Uint8Array<ArrayBuffer> {
  const copy = new Uint8Array(FILE_INFO_SIZE);
  if (fi !== null) Deno.UnsafePointerView.copyInto(fi, copy);
  return copy;
}

function flagsOf(fileInfo: Uint8Array): number {
  return new DataView(fileInfo.buffer).getInt32(FILE_INFO_FLAGS, true);
}

/** Reads the fh of a `fuse_file_info` (numbers below 2^53 by contract) through one scratch. */
function fileHandleReader(): (fi: Deno.PointerValue) => number {
  const scratch = new Uint8Array(FILE_INFO_SIZE);
  const view = new DataView(scratch.buffer);
  return (fi) => {
    if (fi === null) return 0;
    Deno.UnsafePointerView.copyInto(fi, scratch);
    return Number(view.getBigUint64(FILE_INFO_FH, true));
  };
}
