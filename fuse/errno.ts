/**
 * Linux errno values (x86_64, asm-generic) answered to the kernel, and the
 * mapping from Deno's errors to them.
 *
 * @module
 */

import type { Errno } from "./types.ts";

export const EPERM = 1;
export const ENOENT = 2;
export const EINTR = 4;
export const EIO = 5;
export const ENXIO = 6;
export const E2BIG = 7;
export const EBADF = 9;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const EXDEV = 18;
export const ENODEV = 19;
export const ENOTDIR = 20;
export const EISDIR = 21;
export const EINVAL = 22;
export const ENFILE = 23;
export const EMFILE = 24;
export const EFBIG = 27;
export const ENOSPC = 28;
export const ESPIPE = 29;
export const EROFS = 30;
export const EMLINK = 31;
export const EPIPE = 32;
export const ERANGE = 34;
export const ENAMETOOLONG = 36;
export const ENOSYS = 38;
export const ENOTEMPTY = 39;
export const ELOOP = 40;
export const ENODATA = 61;
export const EOVERFLOW = 75;
export const EOPNOTSUPP = 95;
export const ENOTSUP = EOPNOTSUPP;
export const ECONNREFUSED = 111;
export const ENOTCONN = 107;
export const ETIMEDOUT = 110;
export const ESTALE = 116;

const ERRNO_BY_CODE: Readonly<Record<string, Errno>> = {
  EPERM,
  ENOENT,
  EINTR,
  EIO,
  ENXIO,
  E2BIG,
  EBADF,
  EAGAIN,
  ENOMEM,
  EACCES,
  EFAULT,
  EBUSY,
  EEXIST,
  EXDEV,
  ENODEV,
  ENOTDIR,
  EISDIR,
  EINVAL,
  ENFILE,
  EMFILE,
  EFBIG,
  ENOSPC,
  ESPIPE,
  EROFS,
  EMLINK,
  EPIPE,
  ERANGE,
  ENAMETOOLONG,
  ENOSYS,
  ENOTEMPTY,
  ELOOP,
  ENODATA,
  EOVERFLOW,
  EOPNOTSUPP,
  ENOTSUP,
  ECONNREFUSED,
  ENOTCONN,
  ETIMEDOUT,
  ESTALE,
};

const ERRNO_BY_DENO_ERROR: ReadonlyArray<[abstract new (...args: never[]) => Error, Errno]> = [
  [Deno.errors.NotFound, ENOENT],
  [Deno.errors.PermissionDenied, EACCES],
  [Deno.errors.AlreadyExists, EEXIST],
  [Deno.errors.NotADirectory, ENOTDIR],
  [Deno.errors.IsADirectory, EISDIR],
  [Deno.errors.FilesystemLoop, ELOOP],
  [Deno.errors.NotConnected, ENOTCONN],
  [Deno.errors.TimedOut, ETIMEDOUT],
  [Deno.errors.ConnectionRefused, ECONNREFUSED],
  [Deno.errors.InvalidData, EINVAL],
  [Deno.errors.Busy, EBUSY],
];

/** The errno a symbolic code (`"ENOENT"`) stands for, or undefined. */
export function errnoFromCode(code: string): Errno | undefined {
  return Object.hasOwn(ERRNO_BY_CODE, code) ? ERRNO_BY_CODE[code] : undefined;
}

/**
 * The errno an error from Deno's file APIs (or any error with an errno-like
 * `code`) stands for, or undefined for anything else. Callers decide what an
 * unknown error means; only the bridge turns exceptions into EIO.
 */
export function errnoFromError(error: unknown): Errno | undefined {
  if (!(error instanceof Error)) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string") {
    const errno = errnoFromCode(code);
    if (errno !== undefined) return errno;
  }
  for (const [errorClass, errno] of ERRNO_BY_DENO_ERROR) {
    if (error instanceof errorClass) return errno;
  }
  return undefined;
}
