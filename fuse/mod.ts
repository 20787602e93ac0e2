/**
 * FUSE through libfuse3's low-level API from Deno: a node API
 * ({@link FileSystem}), a session that mounts and serves it
 * ({@link FuseSession}), the node table file systems keep their inodes in
 * ({@link NodeTable}), and a read-only mirror of a local directory
 * ({@link LoopbackFs}).
 *
 * Inside: `types.ts` (the node API), `bridge.ts` (requests to node calls,
 * one reply each, lookup counts), `node_table.ts`, `session.ts` (mount and
 * the request loop), `lowlevel_ops.ts` (the callbacks), `native_sink.ts`
 * (replies through libfuse), `mounts.ts` (mountinfo, fusectl, stale
 * mounts), `ffi.ts`/`libc.ts` (symbol tables), `structs.ts` (layouts and
 * constants, checked against the C headers), `errno.ts`, `loopback.ts`.
 *
 * @module
 */

export type * from "./types.ts";
export * from "./errno.ts";
export { FuseMountError, FuseSession, FuseSessionError } from "./session.ts";
export { abortConnection, cleanStaleMount, setReadahead } from "./mounts.ts";
export { Bridge, type BridgeStats, type HandlerFailure, type ReplySink } from "./bridge.ts";
export { LookupCounts, NodeTable, type NodeTableOptions, type TableNode } from "./node_table.ts";
export {
  FUSE_CAP_ASYNC_READ,
  FUSE_CAP_AUTO_INVAL_DATA,
  FUSE_CAP_CACHE_SYMLINKS,
  FUSE_CAP_EXPLICIT_INVAL_DATA,
  FUSE_CAP_NO_OPEN_SUPPORT,
  FUSE_CAP_NO_OPENDIR_SUPPORT,
  FUSE_CAP_PARALLEL_DIROPS,
  FUSE_CAP_READDIRPLUS,
  FUSE_CAP_READDIRPLUS_AUTO,
  FUSE_CAP_SPLICE_MOVE,
  FUSE_CAP_SPLICE_WRITE,
  FUSE_ROOT_ID,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
} from "./structs.ts";
export { LoopbackError, LoopbackFs, type LoopbackOptions } from "./loopback.ts";
