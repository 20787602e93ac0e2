/**
 * The libfuse3 symbols this project uses (low-level API, libfuse 3.14).
 *
 * Versioned symbols: libfuse 3.14 exports most functions as `FUSE_3.0`;
 * `dlsym` (what `Deno.dlopen` uses) resolves an unversioned name to the
 * default version. Every symbol below has a single version in 3.14, so the
 * default is the one the headers describe. (A plain `fuse_session_loop_mt`
 * would resolve to the 3.12 variant; we do not use libfuse's loops.)
 *
 * @module
 */

export const LIBFUSE_PATH = "libfuse3.so.3";

export const LIBFUSE_SYMBOLS = {
  fuse_session_new: {
    parameters: [
      "buffer", // struct fuse_args *args
      "buffer", // const struct fuse_lowlevel_ops *op
      "usize", // size_t op_size
      "pointer", // void *userdata
    ],
    result: "pointer", // struct fuse_session *
  },
  fuse_session_mount: {
    parameters: [
      "pointer", // struct fuse_session *se
      "buffer", // const char *mountpoint
    ],
    result: "i32",
  },
  fuse_session_fd: {
    parameters: ["pointer"], // struct fuse_session *se
    result: "i32",
  },
  fuse_session_receive_buf: {
    parameters: [
      "pointer", // struct fuse_session *se
      "buffer", // struct fuse_buf *buf
    ],
    result: "i32",
  },
  fuse_session_process_buf: {
    parameters: [
      "pointer", // struct fuse_session *se
      "buffer", // const struct fuse_buf *buf
    ],
    result: "void",
  },
  fuse_session_exit: {
    parameters: ["pointer"], // struct fuse_session *se
    result: "void",
  },
  fuse_session_exited: {
    parameters: ["pointer"], // struct fuse_session *se
    result: "i32",
  },
  fuse_session_unmount: {
    parameters: ["pointer"], // struct fuse_session *se
    result: "void",
  },
  fuse_session_destroy: {
    parameters: ["pointer"], // struct fuse_session *se
    result: "void",
  },
  fuse_req_ctx: {
    parameters: ["pointer"], // fuse_req_t req
    result: "pointer", // const struct fuse_ctx *
  },
  fuse_reply_err: {
    parameters: [
      "pointer", // fuse_req_t req
      "i32", // int err
    ],
    result: "i32",
  },
  fuse_reply_none: {
    parameters: ["pointer"], // fuse_req_t req
    result: "void",
  },
  fuse_reply_entry: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // const struct fuse_entry_param *e
    ],
    result: "i32",
  },
  fuse_reply_attr: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // const struct stat *attr
      "f64", // double attr_timeout
    ],
    result: "i32",
  },
  fuse_reply_readlink: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // const char *link
    ],
    result: "i32",
  },
  fuse_reply_open: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // const struct fuse_file_info *fi
    ],
    result: "i32",
  },
  fuse_reply_buf: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // const char *buf
      "usize", // size_t size
    ],
    result: "i32",
  },
  fuse_reply_data: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // struct fuse_bufvec *bufv
      "i32", // enum fuse_buf_copy_flags flags
    ],
    result: "i32",
  },
  fuse_reply_statfs: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // const struct statvfs *stbuf
    ],
    result: "i32",
  },
  fuse_reply_xattr: {
    parameters: [
      "pointer", // fuse_req_t req
      "usize", // size_t count
    ],
    result: "i32",
  },
  fuse_add_direntry: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // char *buf
      "usize", // size_t bufsize
      "buffer", // const char *name
      "buffer", // const struct stat *stbuf
      "i64", // off_t off
    ],
    result: "usize",
  },
  fuse_add_direntry_plus: {
    parameters: [
      "pointer", // fuse_req_t req
      "buffer", // char *buf
      "usize", // size_t bufsize
      "buffer", // const char *name
      "buffer", // const struct fuse_entry_param *e
      "i64", // off_t off
    ],
    result: "usize",
  },
  fuse_lowlevel_notify_inval_entry: {
    parameters: [
      "pointer", // struct fuse_session *se
      "u64", // fuse_ino_t parent
      "buffer", // const char *name
      "usize", // size_t namelen
    ],
    result: "i32",
  },
  fuse_lowlevel_notify_inval_inode: {
    parameters: [
      "pointer", // struct fuse_session *se
      "u64", // fuse_ino_t ino
      "i64", // off_t off
      "i64", // off_t len
    ],
    result: "i32",
  },
  fuse_lowlevel_notify_inval_entry_nonblocking: {
    name: "fuse_lowlevel_notify_inval_entry",
    parameters: [
      "pointer", // struct fuse_session *se
      "u64", // fuse_ino_t parent
      "buffer", // const char *name
      "usize", // size_t namelen
    ],
    result: "i32",
    nonblocking: true,
  },
  fuse_lowlevel_notify_inval_inode_nonblocking: {
    name: "fuse_lowlevel_notify_inval_inode",
    parameters: [
      "pointer", // struct fuse_session *se
      "u64", // fuse_ino_t ino
      "i64", // off_t off
      "i64", // off_t len
    ],
    result: "i32",
    nonblocking: true,
  },
  fuse_lowlevel_notify_delete: {
    parameters: [
      "pointer", // struct fuse_session *se
      "u64", // fuse_ino_t parent
      "u64", // fuse_ino_t child
      "buffer", // const char *name
      "usize", // size_t namelen
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

export type Libfuse = Deno.DynamicLibrary<typeof LIBFUSE_SYMBOLS>;

/** libfuse3 could not be loaded. */
export class LibfuseLoadError extends Error {
  constructor(path: string, options?: ErrorOptions) {
    super(`Cannot load libfuse3: ${path} (install the libfuse3-3 package)`, options);
    this.name = "LibfuseLoadError";
  }
}

/** Open libfuse3. The caller owns the library and closes it. */
export function openLibfuse(path: string = LIBFUSE_PATH): Libfuse {
  try {
    return Deno.dlopen(path, LIBFUSE_SYMBOLS);
  } catch (error) {
    throw new LibfuseLoadError(path, { cause: error });
  }
}
