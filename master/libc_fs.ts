/**
 * The libc symbols the master uses to write into its tree by descriptor
 * (glibc 2.36, x86_64): the `*at` family, `openat2` through `syscall`.
 *
 * `openat2` has no glibc wrapper: it is `syscall(SYS_openat2, ...)`, whose
 * variadic integer arguments x86_64 passes in registers like fixed ones.
 *
 * @module
 */

import { LIBC_PATH, loadLibc } from "../common/libc.ts";

export const LIBC_FS_SYMBOLS = {
  openat2: {
    name: "syscall",
    parameters: [
      "i64", // long number (SYS_openat2)
      "i32", // int dirfd
      "buffer", // const char *pathname
      "buffer", // struct open_how *how
      "usize", // size_t size
    ],
    result: "i64",
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
  mkdirat: {
    parameters: [
      "i32", // int dirfd
      "buffer", // const char *pathname
      "u32", // mode_t mode
    ],
    result: "i32",
  },
  renameat2: {
    parameters: [
      "i32", // int olddirfd
      "buffer", // const char *oldpath
      "i32", // int newdirfd
      "buffer", // const char *newpath
      "u32", // unsigned int flags
    ],
    result: "i32",
  },
  unlinkat: {
    parameters: [
      "i32", // int dirfd
      "buffer", // const char *pathname
      "i32", // int flags
    ],
    result: "i32",
  },
  symlinkat: {
    parameters: [
      "buffer", // const char *target
      "i32", // int newdirfd
      "buffer", // const char *linkpath
    ],
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
  fchmod: {
    parameters: [
      "i32", // int fd
      "u32", // mode_t mode
    ],
    result: "i32",
  },
  write: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "usize", // size_t count
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
  copy_file_range: {
    parameters: [
      "i32", // int fd_in
      "pointer", // off64_t *off_in (NULL: the file offset)
      "i32", // int fd_out
      "pointer", // off64_t *off_out (NULL: the file offset)
      "usize", // size_t len
      "u32", // unsigned int flags
    ],
    result: "isize",
  },
  close: {
    parameters: ["i32"], // int fd
    result: "i32",
  },
  __errno_location: {
    parameters: [],
    result: "pointer", // int *
  },
} as const satisfies Deno.ForeignLibraryInterface;

export type LibcFs = Deno.DynamicLibrary<typeof LIBC_FS_SYMBOLS>;

/** Opens libc (a LibcLoadError if it cannot). The caller owns the library and closes it. */
export function openLibcFs(path: string = LIBC_PATH): LibcFs {
  return loadLibc(LIBC_FS_SYMBOLS, path);
}
