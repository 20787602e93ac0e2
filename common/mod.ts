/**
 * What every role shares: the data types and the RPC protocol between them,
 * and the small helpers (look here before writing one again):
 *
 * - `paths.ts`: normalizePath, parentOf, baseName, joinPath, isInside;
 * - `c_string.ts`: cString, NUL-terminated text for FFI calls;
 * - `libc.ts`: loadLibc (dlopen with a symbol table, LibcLoadError) and errnoView;
 * - `errors.ts`: errorMessage of any thrown value;
 * - `html.ts`: escapeHtml;
 * - `address.ts`: "host:port" parsing and formatting, wildcard and loopback hosts;
 * - `bytes.ts`: joining byte chunks;
 * - `hash.ts`: isHash and HASH_PATTERN (hex SHA-256);
 * - `regular_file.ts`: opening a tree's file only as the regular file it is.
 *
 * `cli.ts` (flags, signals, exiting) serves the role entry points only and
 * is not exported here.
 *
 * @module
 */

export * from "./address.ts";
export * from "./bytes.ts";
export * from "./c_string.ts";
export * from "./errors.ts";
export * from "./hash.ts";
export * from "./html.ts";
export * from "./libc.ts";
export * from "./paths.ts";
export * from "./protocol.ts";
export * from "./regular_file.ts";
export * from "./types.ts";
