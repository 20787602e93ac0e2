/**
 * Loading libc through FFI and reading errno: what the users of every libc
 * symbol table share. The tables stay one a file, beside their users
 * (fuse/libc.ts, master/libc_fs.ts, master/inotify_ffi.ts, sandbox/_xattr.ts);
 * a table that reads errno includes `__errno_location`.
 *
 * @module
 */

/** glibc, as the dynamic loader finds it. */
export const LIBC_PATH = "libc.so.6";

/** libc could not be loaded (no such library, a missing symbol, no FFI permission). */
export class LibcLoadError extends Error {
  override name = "LibcLoadError";
  constructor(path: string, options?: ErrorOptions) {
    super(`Cannot load libc: ${path}`, options);
  }
}

/** Opens libc with `symbols`. The caller owns the library and closes it. */
export function loadLibc<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
  path: string = LIBC_PATH,
): Deno.DynamicLibrary<S> {
  try {
    return Deno.dlopen(path, symbols);
  } catch (error) {
    throw new LibcLoadError(path, { cause: error });
  }
}

/** A library whose symbol table includes `__errno_location`. */
export interface ErrnoLibrary {
  readonly symbols: { __errno_location(): Deno.PointerValue };
}

/**
 * This thread's errno as a live view (FFI calls that are not `nonblocking`
 * run on this thread): read `[0]` right after a call that returned -1. Valid
 * while `lib` is open.
 */
export function errnoView(lib: ErrnoLibrary): Int32Array<ArrayBuffer> {
  const p = lib.symbols.__errno_location();
  if (p === null) throw new Error("__errno_location returned NULL");
  return new Int32Array(Deno.UnsafePointerView.getArrayBuffer(p, 4));
}
