/**
 * The libc symbols the FUSE layer uses (glibc 2.36, x86_64).
 *
 * Variadic functions (`open`, `fcntl`) are declared with their fixed integer
 * arguments, which the x86_64 calling convention passes the same way.
 *
 * @module
 */

import { LIBC_PATH, loadLibc } from "../common/libc.ts";

export const LIBC_SYMBOLS = {
  poll: {
    parameters: [
      "buffer", // struct pollfd *fds
      "u64", // nfds_t nfds
      "i32", // int timeout (ms)
    ],
    result: "i32",
  },
  poll_nonblocking: {
    name: "poll",
    parameters: [
      "buffer", // struct pollfd *fds
      "u64", // nfds_t nfds
      "i32", // int timeout (ms)
    ],
    result: "i32",
    nonblocking: true,
  },
  fcntl: {
    parameters: [
      "i32", // int fd
      "i32", // int cmd
      "i32", // int arg (long on the stack; ints are passed in registers)
    ],
    result: "i32",
  },
  eventfd: {
    parameters: [
      "u32", // unsigned int initval
      "i32", // int flags
    ],
    result: "i32",
  },
  timerfd_create: {
    parameters: [
      "i32", // int clockid
      "i32", // int flags
    ],
    result: "i32",
  },
  timerfd_settime: {
    parameters: [
      "i32", // int fd
      "i32", // int flags
      "buffer", // const struct itimerspec *new_value
      "pointer", // struct itimerspec *old_value (NULL)
    ],
    result: "i32",
  },
  read: {
    parameters: [
      "i32", // int fd
      "buffer", // void *buf
      "usize", // size_t count
    ],
    result: "isize",
  },
  write: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "usize", // size_t count
    ],
    result: "isize",
  },
  pread: {
    parameters: [
      "i32", // int fd
      "buffer", // void *buf
      "usize", // size_t count
      "i64", // off_t offset
    ],
    result: "isize",
  },
  open: {
    parameters: [
      "buffer", // const char *pathname
      "i32", // int flags
      "u32", // mode_t mode
    ],
    result: "i32",
  },
  openat: {
    parameters: [
      "i32", // int dirfd
      "buffer", // const char *pathname
      "i32", // int flags
      "u32", // mode_t mode
    ],
    result: "i32",
  },
  close: {
    parameters: ["i32"], // int fd
    result: "i32",
  },
  fstatat: {
    parameters: [
      "i32", // int dirfd
      "buffer", // const char *pathname
      "buffer", // struct stat *statbuf
      "i32", // int flags
    ],
    result: "i32",
  },
  fstat: {
    parameters: [
      "i32", // int fd
      "buffer", // struct stat *statbuf
    ],
    result: "i32",
  },
  readlinkat: {
    parameters: [
      "i32", // int dirfd
      "buffer", // const char *pathname
      "buffer", // char *buf
      "usize", // size_t bufsiz
    ],
    result: "isize",
  },
  getdents64: {
    parameters: [
      "i32", // int fd
      "buffer", // void *dirp
      "usize", // size_t count
    ],
    result: "isize",
  },
  lseek: {
    parameters: [
      "i32", // int fd
      "i64", // off_t offset
      "i32", // int whence
    ],
    result: "i64",
  },
  statvfs: {
    parameters: [
      "buffer", // const char *path
      "buffer", // struct statvfs *buf
    ],
    result: "i32",
  },
  umount2: {
    parameters: [
      "buffer", // const char *target
      "i32", // int flags
    ],
    result: "i32",
  },
  free: {
    parameters: ["pointer"], // void *ptr
    result: "void",
  },
  __errno_location: {
    parameters: [],
    result: "pointer", // int *
  },
} as const satisfies Deno.ForeignLibraryInterface;

export type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;

/** Opens libc. The caller owns the library and closes it. */
export function openLibc(path: string = LIBC_PATH): Libc {
  return loadLibc(LIBC_SYMBOLS, path);
}
