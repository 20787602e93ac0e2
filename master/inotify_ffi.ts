/**
 * The libc symbols the tree watcher uses (glibc 2.36, x86_64), and the
 * inotify constants of `<sys/inotify.h>`.
 *
 * @module
 */

export const INOTIFY_SYMBOLS = {
  inotify_init1: {
    parameters: [
      "i32", // int flags
    ],
    result: "i32",
  },
  inotify_add_watch: {
    parameters: [
      "i32", // int fd
      "buffer", // const char *pathname
      "u32", // uint32_t mask
    ],
    result: "i32",
  },
  inotify_rm_watch: {
    parameters: [
      "i32", // int fd
      "i32", // int wd
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
  close: {
    parameters: [
      "i32", // int fd
    ],
    result: "i32",
  },
  __errno_location: {
    parameters: [],
    result: "pointer", // int *
  },
} as const satisfies Deno.ForeignLibraryInterface;

export type InotifyLibc = Deno.DynamicLibrary<typeof INOTIFY_SYMBOLS>;

/** `inotify_init1` and `eventfd` flags. */
export const IN_NONBLOCK = 0o4000;
export const IN_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = IN_NONBLOCK;
export const EFD_CLOEXEC = IN_CLOEXEC;

/** Events (`mask` of `struct inotify_event`, and what to watch). */
export const IN_MODIFY = 0x2;
export const IN_ATTRIB = 0x4;
export const IN_CLOSE_WRITE = 0x8;
export const IN_MOVED_FROM = 0x40;
export const IN_MOVED_TO = 0x80;
export const IN_CREATE = 0x100;
export const IN_DELETE = 0x200;
export const IN_DELETE_SELF = 0x400;
export const IN_MOVE_SELF = 0x800;
export const IN_Q_OVERFLOW = 0x4000;
export const IN_IGNORED = 0x8000;
export const IN_ISDIR = 0x40000000;
/** Watch flags. */
export const IN_ONLYDIR = 0x01000000;
export const IN_DONT_FOLLOW = 0x02000000;
export const IN_EXCL_UNLINK = 0x04000000;

/** `struct inotify_event`: wd, mask, cookie, len (4 bytes each), then the name. */
export const INOTIFY_EVENT_HEADER_BYTES = 16;
/** `struct pollfd`: fd (int), events (short), revents (short). */
export const POLLFD_BYTES = 8;
export const POLLIN = 0x1;

export const EAGAIN = 11;
export const EINTR = 4;
export const ENOSPC = 28;
