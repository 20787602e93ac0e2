import { createHash } from "node:crypto";

/** Size of the buffer used to stream files through SHA-256. */
export const HASH_CHUNK_BYTES = 1024 * 1024;

export { isHash } from "../common/hash.ts";

/** Returns the lowercase hex SHA-256 of `bytes`. */
export function hashBytes(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * Streams the file at `path` through SHA-256 in 1 MiB chunks; `sizeHint`, its
 * expected size, sizes the buffer (see {@link hashBuffer}).
 * File system errors are thrown as they come from Deno (e.g. `Deno.errors.NotFound`).
 */
export async function hashFile(
  path: string,
  sizeHint?: number,
): Promise<{ hash: string; size: number }> {
  using file = await Deno.open(path, { read: true });
  return await hashReader(file, sizeHint);
}

/**
 * The buffer for reading a file of `sizeHint` bytes (if known) through a hash:
 * one byte more than the file, so that its end shows in one read more, and
 * never above {@link HASH_CHUNK_BYTES}. A small file takes no 1 MiB buffer
 * (allocated, zeroed and collected for every file: it was most of the cost of
 * hashing headers).
 */
export function hashBuffer(sizeHint?: number): Uint8Array {
  const bytes = sizeHint === undefined || !(sizeHint >= 0) ? HASH_CHUNK_BYTES : sizeHint + 1;
  return new Uint8Array(Math.min(HASH_CHUNK_BYTES, Math.max(bytes, 1)));
}

/**
 * The buffer for the next read, after one that filled `buffer` with `n`
 * bytes: a full buffer smaller than {@link HASH_CHUNK_BYTES} means a file
 * larger than its hint (grown since), read on 1 MiB at a time.
 */
export function grownBuffer(buffer: Uint8Array, n: number): Uint8Array {
  return n === buffer.length && buffer.length < HASH_CHUNK_BYTES
    ? new Uint8Array(HASH_CHUNK_BYTES)
    : buffer;
}

/**
 * Streams what `file` reads until its end through SHA-256 in chunks of at most
 * 1 MiB; `sizeHint`, the size the file is expected to have, sizes the buffer
 * (the whole file is hashed whatever its size).
 */
export async function hashReader(
  file: { read(p: Uint8Array): Promise<number | null> },
  sizeHint?: number,
): Promise<{ hash: string; size: number }> {
  const hasher = createHash("sha256");
  let buffer = hashBuffer(sizeHint);
  let size = 0;
  while (true) {
    const n = await file.read(buffer);
    if (n === null) break;
    hasher.update(buffer.subarray(0, n));
    size += n;
    buffer = grownBuffer(buffer, n);
  }
  return { hash: hasher.digest("hex"), size };
}

/**
 * {@link hashReader} with synchronous reads (`null` or 0 at the end); with
 * `bytesMax`, undefined as soon as the file proves larger (one that grew
 * since its size was taken: the caller reads it asynchronously instead of
 * holding its thread).
 */
export function hashReaderSync(
  file: { readSync(p: Uint8Array): number | null },
  sizeHint?: number,
  bytesMax = Infinity,
): { hash: string; size: number } | undefined {
  const hasher = createHash("sha256");
  let buffer = hashBuffer(sizeHint);
  let size = 0;
  while (true) {
    const n = file.readSync(buffer);
    if (n === null || n === 0) break;
    hasher.update(buffer.subarray(0, n));
    size += n;
    if (size > bytesMax) return undefined;
    buffer = grownBuffer(buffer, n);
  }
  return { hash: hasher.digest("hex"), size };
}
