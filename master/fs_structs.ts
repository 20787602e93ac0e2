/**
 * Constants and layouts of the calls in `libc_fs.ts` (x86_64 Linux, glibc
 * 2.36), checked against the headers by `tests/beneath_test.ts`. `struct
 * stat`'s offsets are those of `fuse/structs.ts`.
 *
 * @module
 */

/** `SYS_openat2` (x86_64). */
export const SYS_OPENAT2 = 437n;

/** `struct open_how { u64 flags; u64 mode; u64 resolve; }`. */
export const OPEN_HOW_SIZE = 24;
export const OPEN_HOW_FLAGS = 0;
export const OPEN_HOW_MODE = 8;
export const OPEN_HOW_RESOLVE = 16;

export const O_RDONLY = 0o0;
export const O_WRONLY = 0o1;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NONBLOCK = 0o4000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;

export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;
export const RESOLVE_IN_ROOT = 0x10;

export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFIFO = 0o010000;
export const S_IFSOCK = 0o140000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
