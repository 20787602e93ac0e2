/**
 * Constants and layouts of the calls in `libc_fs.ts` (x86_64 Linux, glibc
 * 2.36), checked against the headers by `tests/beneath_test.ts`. `struct
 * stat`'s offsets, the `S_IF*` mode bits and the open flags both use are
 * those of `fuse/structs.ts`, re-exported here.
 *
 * @module
 */
export {
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_PATH,
  O_RDONLY,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
} from "../fuse/structs.ts";

/** `SYS_openat2` (x86_64). */
export const SYS_OPENAT2 = 437n;

/** `struct open_how { u64 flags; u64 mode; u64 resolve; }`. */
export const OPEN_HOW_SIZE = 24;
export const OPEN_HOW_FLAGS = 0;
export const OPEN_HOW_MODE = 8;
export const OPEN_HOW_RESOLVE = 16;

export const O_WRONLY = 0o1;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;

export const AT_REMOVEDIR = 0x200;

export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;
export const RESOLVE_IN_ROOT = 0x10;

export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
