/**
 * Sizes and offsets of the C structs exchanged with libfuse3 and libc
 * (x86_64, glibc, libfuse 3.14, FUSE_USE_VERSION 35), constants, and
 * `DataView` codecs. `tests/fuse_structs_test.ts` checks every number here
 * against a C probe compiled from the headers on the machine.
 *
 * @module
 */

import type { Attr, Entry, StatFs } from "./types.ts";

// ---- struct stat (sys/stat.h) ----
export const STAT_SIZE = 144;
export const STAT_DEV = 0;
export const STAT_INO = 8;
export const STAT_NLINK = 16;
export const STAT_MODE = 24; // u32
export const STAT_UID = 28; // u32
export const STAT_GID = 32; // u32
export const STAT_RDEV = 40;
export const STAT_SIZE_FIELD = 48; // st_size (i64)
export const STAT_BLKSIZE = 56;
export const STAT_BLOCKS = 64;
export const STAT_ATIM = 72; // tv_sec i64, tv_nsec i64
export const STAT_MTIM = 88;
export const STAT_CTIM = 104;

// ---- struct fuse_entry_param ----
export const ENTRY_PARAM_SIZE = 176;
export const ENTRY_PARAM_INO = 0;
export const ENTRY_PARAM_GENERATION = 8;
export const ENTRY_PARAM_ATTR = 16;
export const ENTRY_PARAM_ATTR_TIMEOUT = 160; // f64
export const ENTRY_PARAM_ENTRY_TIMEOUT = 168; // f64

// ---- struct fuse_file_info ----
export const FILE_INFO_SIZE = 40;
export const FILE_INFO_FLAGS = 0; // i32
/** The byte that holds the bit fields writepage..noflush. */
export const FILE_INFO_BITS = 4;
export const FILE_INFO_BIT_DIRECT_IO = 0x02;
export const FILE_INFO_BIT_KEEP_CACHE = 0x04;
export const FILE_INFO_BIT_NONSEEKABLE = 0x10;
export const FILE_INFO_BIT_CACHE_READDIR = 0x40;
export const FILE_INFO_FH = 16; // u64
export const FILE_INFO_LOCK_OWNER = 24;
export const FILE_INFO_POLL_EVENTS = 32;

// ---- struct fuse_args ----
export const ARGS_SIZE = 24;
export const ARGS_ARGC = 0; // i32
export const ARGS_ARGV = 8; // char **
export const ARGS_ALLOCATED = 16; // i32

// ---- struct fuse_ctx ----
export const CTX_SIZE = 16;
export const CTX_UID = 0;
export const CTX_GID = 4;
export const CTX_PID = 8;
export const CTX_UMASK = 12;

// ---- struct fuse_conn_info ----
export const CONN_INFO_SIZE = 128;
export const CONN_PROTO_MAJOR = 0;
export const CONN_PROTO_MINOR = 4;
export const CONN_MAX_WRITE = 8;
export const CONN_MAX_READ = 12;
export const CONN_MAX_READAHEAD = 16;
export const CONN_CAPABLE = 20;
export const CONN_WANT = 24;
export const CONN_MAX_BACKGROUND = 28;
export const CONN_CONGESTION_THRESHOLD = 32;
export const CONN_TIME_GRAN = 36;

// ---- struct fuse_buf / fuse_bufvec ----
export const BUF_SIZE = 40;
export const BUF_SIZE_FIELD = 0; // size_t
export const BUF_FLAGS = 8; // enum fuse_buf_flags
export const BUF_MEM = 16; // void *
export const BUF_FD = 24; // int
export const BUF_POS = 32; // off_t
export const BUFVEC_SIZE = 64; // with one fuse_buf
export const BUFVEC_COUNT = 0;
export const BUFVEC_IDX = 8;
export const BUFVEC_OFF = 16;
export const BUFVEC_BUF = 24;
export const FUSE_BUF_IS_FD = 1 << 1;
export const FUSE_BUF_FD_SEEK = 1 << 2;
export const FUSE_BUF_SPLICE_MOVE = 1 << 3;

// ---- struct fuse_lowlevel_ops: function pointers in this order ----
export const LOWLEVEL_OPS = [
  "init",
  "destroy",
  "lookup",
  "forget",
  "getattr",
  "setattr",
  "readlink",
  "mknod",
  "mkdir",
  "unlink",
  "rmdir",
  "symlink",
  "rename",
  "link",
  "open",
  "read",
  "write",
  "flush",
  "release",
  "fsync",
  "opendir",
  "readdir",
  "releasedir",
  "fsyncdir",
  "statfs",
  "setxattr",
  "getxattr",
  "listxattr",
  "removexattr",
  "access",
  "create",
  "getlk",
  "setlk",
  "bmap",
  "ioctl",
  "poll",
  "write_buf",
  "retrieve_reply",
  "forget_multi",
  "flock",
  "fallocate",
  "readdirplus",
  "copy_file_range",
  "lseek",
] as const;
export type LowlevelOp = typeof LOWLEVEL_OPS[number];
export const LOWLEVEL_OPS_SIZE = 352;
export function lowlevelOpOffset(op: LowlevelOp): number {
  return LOWLEVEL_OPS.indexOf(op) * 8;
}

// ---- struct fuse_forget_data (batch_forget) ----
export const FORGET_DATA_SIZE = 16;
export const FORGET_DATA_INO = 0;
export const FORGET_DATA_NLOOKUP = 8;

// ---- struct statvfs ----
export const STATVFS_SIZE = 112;
export const STATVFS_BSIZE = 0;
export const STATVFS_FRSIZE = 8;
export const STATVFS_BLOCKS = 16;
export const STATVFS_BFREE = 24;
export const STATVFS_BAVAIL = 32;
export const STATVFS_FILES = 40;
export const STATVFS_FFREE = 48;
export const STATVFS_FAVAIL = 56;
export const STATVFS_FSID = 64;
export const STATVFS_FLAG = 72;
export const STATVFS_NAMEMAX = 80;

// ---- struct pollfd ----
export const POLLFD_SIZE = 8;
export const POLLFD_FD = 0; // i32
export const POLLFD_EVENTS = 4; // i16
export const POLLFD_REVENTS = 6; // i16
export const POLLIN = 0x001;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

// ---- struct linux_dirent64 (getdents64) ----
export const DIRENT64_INO = 0;
export const DIRENT64_OFF = 8;
export const DIRENT64_RECLEN = 16; // u16
export const DIRENT64_TYPE = 18; // u8
export const DIRENT64_NAME = 19;
export const DT_UNKNOWN = 0;
export const DT_DIR = 4;
export const DT_REG = 8;
export const DT_LNK = 10;

// ---- file mode bits ----
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

// ---- fcntl.h, unistd.h, sys/mount.h ----
export const O_RDONLY = 0;
export const O_NONBLOCK = 0o4000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;
export const O_ACCMODE = 3;
export const R_OK = 4;
export const W_OK = 2;
export const X_OK = 1;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_EMPTY_PATH = 0x1000;
export const MNT_FORCE = 1;
export const MNT_DETACH = 2;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const CLOCK_MONOTONIC = 1;
export const TFD_CLOEXEC = 0o2000000;
export const TFD_NONBLOCK = 0o4000;
/** struct itimerspec: it_interval then it_value, each { tv_sec, tv_nsec }. */
export const ITIMERSPEC_SIZE = 32;
export const ITIMERSPEC_INTERVAL = 0;
export const ITIMERSPEC_VALUE = 16;
export const TIMESPEC_NSEC = 8;

// ---- FUSE_CAP_* (fuse_common.h) ----
export const FUSE_CAP_ASYNC_READ = 1 << 0;
export const FUSE_CAP_EXPORT_SUPPORT = 1 << 4;
export const FUSE_CAP_SPLICE_WRITE = 1 << 7;
export const FUSE_CAP_SPLICE_MOVE = 1 << 8;
export const FUSE_CAP_SPLICE_READ = 1 << 9;
export const FUSE_CAP_AUTO_INVAL_DATA = 1 << 12;
export const FUSE_CAP_READDIRPLUS = 1 << 13;
export const FUSE_CAP_READDIRPLUS_AUTO = 1 << 14;
export const FUSE_CAP_ASYNC_DIO = 1 << 15;
export const FUSE_CAP_NO_OPEN_SUPPORT = 1 << 17;
export const FUSE_CAP_PARALLEL_DIROPS = 1 << 18;
export const FUSE_CAP_CACHE_SYMLINKS = 1 << 23;
export const FUSE_CAP_NO_OPENDIR_SUPPORT = 1 << 24;
export const FUSE_CAP_EXPLICIT_INVAL_DATA = 1 << 25;

/** The root inode's node id (FUSE_ROOT_ID). */
export const FUSE_ROOT_ID = 1n;

// ---- codecs ----

function setTime(view: DataView, offset: number, ms: number, nsec: number | undefined): void {
  let sec: number;
  if (nsec === undefined) {
    sec = Math.floor(ms / 1000);
    nsec = Math.min(999_999_999, Math.round((ms - sec * 1000) * 1e6));
  } else {
    sec = Math.round((ms - nsec / 1e6) / 1000);
  }
  view.setBigInt64(offset, BigInt(sec), true);
  view.setBigInt64(offset + 8, BigInt(nsec), true);
}

/** Write `attr` as a `struct stat` at `offset`. */
export function encodeStat(view: DataView, offset: number, attr: Attr): void {
  view.setBigUint64(offset + STAT_DEV, 0n, true);
  view.setBigUint64(offset + STAT_INO, BigInt(attr.ino), true);
  view.setBigUint64(offset + STAT_NLINK, BigInt(attr.nlink), true);
  view.setUint32(offset + STAT_MODE, attr.mode, true);
  view.setUint32(offset + STAT_UID, attr.uid, true);
  view.setUint32(offset + STAT_GID, attr.gid, true);
  view.setBigUint64(offset + STAT_RDEV, BigInt(attr.rdev ?? 0), true);
  view.setBigInt64(offset + STAT_SIZE_FIELD, BigInt(attr.size), true);
  view.setBigInt64(offset + STAT_BLKSIZE, BigInt(attr.blksize ?? 4096), true);
  view.setBigInt64(offset + STAT_BLOCKS, BigInt(attr.blocks ?? Math.ceil(attr.size / 512)), true);
  setTime(view, offset + STAT_ATIM, attr.atimeMs ?? attr.mtimeMs, attr.atimeNsec);
  setTime(view, offset + STAT_MTIM, attr.mtimeMs, attr.mtimeNsec);
  setTime(view, offset + STAT_CTIM, attr.ctimeMs ?? attr.mtimeMs, attr.ctimeNsec);
}

/** A `struct stat` from libc, with the device number and exact times kept. */
export interface StatResult extends Attr {
  dev: bigint;
  ino: bigint;
  rdev: number;
  blksize: number;
  blocks: number;
  atimeMs: number;
  ctimeMs: number;
  mtimeNsec: number;
  atimeNsec: number;
  ctimeNsec: number;
}

/** Read a `struct stat` at `offset`. */
export function decodeStat(view: DataView, offset: number): StatResult {
  const time = (at: number) => Number(view.getBigInt64(offset + at, true));
  const nsec = (at: number) => Number(view.getBigInt64(offset + at + 8, true));
  return {
    dev: view.getBigUint64(offset + STAT_DEV, true),
    ino: view.getBigUint64(offset + STAT_INO, true),
    nlink: Number(view.getBigUint64(offset + STAT_NLINK, true)),
    mode: view.getUint32(offset + STAT_MODE, true),
    uid: view.getUint32(offset + STAT_UID, true),
    gid: view.getUint32(offset + STAT_GID, true),
    rdev: Number(view.getBigUint64(offset + STAT_RDEV, true)),
    size: Number(view.getBigInt64(offset + STAT_SIZE_FIELD, true)),
    blksize: Number(view.getBigInt64(offset + STAT_BLKSIZE, true)),
    blocks: Number(view.getBigInt64(offset + STAT_BLOCKS, true)),
    atimeMs: time(STAT_ATIM) * 1000 + nsec(STAT_ATIM) / 1e6,
    atimeNsec: nsec(STAT_ATIM),
    mtimeMs: time(STAT_MTIM) * 1000 + nsec(STAT_MTIM) / 1e6,
    mtimeNsec: nsec(STAT_MTIM),
    ctimeMs: time(STAT_CTIM) * 1000 + nsec(STAT_CTIM) / 1e6,
    ctimeNsec: nsec(STAT_CTIM),
  };
}

/** Write `entry` as a `struct fuse_entry_param` at `offset`. */
export function encodeEntryParam(view: DataView, offset: number, entry: Entry): void {
  view.setBigUint64(offset + ENTRY_PARAM_INO, BigInt(entry.ino), true);
  view.setBigUint64(offset + ENTRY_PARAM_GENERATION, BigInt(entry.generation ?? 0), true);
  if (entry.attr) {
    encodeStat(view, offset + ENTRY_PARAM_ATTR, entry.attr);
  } else {
    for (let i = 0; i < STAT_SIZE; i += 8) {
      view.setBigUint64(offset + ENTRY_PARAM_ATTR + i, 0n, true);
    }
  }
  view.setFloat64(offset + ENTRY_PARAM_ATTR_TIMEOUT, entry.attrTimeoutS, true);
  view.setFloat64(offset + ENTRY_PARAM_ENTRY_TIMEOUT, entry.entryTimeoutS, true);
}

/** Set the reply fields of a `struct fuse_file_info` at `offset`. */
export function encodeFileInfoReply(
  view: DataView,
  offset: number,
  reply: {
    fh?: number;
    keepCache?: boolean;
    directIo?: boolean;
    cacheReaddir?: boolean;
    nonseekable?: boolean;
  },
): void {
  let bits = view.getUint8(offset + FILE_INFO_BITS) &
    ~(FILE_INFO_BIT_DIRECT_IO | FILE_INFO_BIT_KEEP_CACHE | FILE_INFO_BIT_CACHE_READDIR |
      FILE_INFO_BIT_NONSEEKABLE);
  if (reply.directIo) bits |= FILE_INFO_BIT_DIRECT_IO;
  if (reply.keepCache) bits |= FILE_INFO_BIT_KEEP_CACHE;
  if (reply.cacheReaddir) bits |= FILE_INFO_BIT_CACHE_READDIR;
  if (reply.nonseekable) bits |= FILE_INFO_BIT_NONSEEKABLE;
  view.setUint8(offset + FILE_INFO_BITS, bits);
  view.setBigUint64(offset + FILE_INFO_FH, BigInt(reply.fh ?? 0), true);
}

/** Write `st` as a `struct statvfs` at `offset`. */
export function encodeStatvfs(view: DataView, offset: number, st: StatFs): void {
  for (let i = 0; i < STATVFS_SIZE; i += 8) view.setBigUint64(offset + i, 0n, true);
  const put = (at: number, value: number) => view.setBigUint64(offset + at, BigInt(value), true);
  put(STATVFS_BSIZE, st.bsize);
  put(STATVFS_FRSIZE, st.frsize ?? st.bsize);
  put(STATVFS_BLOCKS, st.blocks);
  put(STATVFS_BFREE, st.bfree);
  put(STATVFS_BAVAIL, st.bavail);
  put(STATVFS_FILES, st.files);
  put(STATVFS_FFREE, st.ffree);
  put(STATVFS_FAVAIL, st.favail ?? st.ffree);
  put(STATVFS_NAMEMAX, st.namemax);
}

/** Read a `struct statvfs` at `offset`. */
export function decodeStatvfs(view: DataView, offset: number): StatFs {
  const get = (at: number) => Number(view.getBigUint64(offset + at, true));
  return {
    bsize: get(STATVFS_BSIZE),
    frsize: get(STATVFS_FRSIZE),
    blocks: get(STATVFS_BLOCKS),
    bfree: get(STATVFS_BFREE),
    bavail: get(STATVFS_BAVAIL),
    files: get(STATVFS_FILES),
    ffree: get(STATVFS_FFREE),
    favail: get(STATVFS_FAVAIL),
    namemax: get(STATVFS_NAMEMAX),
  };
}
