import { createHash } from "node:crypto";

/** Size of the buffer used to stream files through SHA-256. */
export const HASH_CHUNK_BYTES = 1024 * 1024;

export { isHash } from "../common/hash.ts";

/** Returns the lowercase hex SHA-256 of `bytes`. */
export function hashBytes(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * Streams the file at `path` through SHA-256 in 1 MiB chunks.
 * File system errors are thrown as they come from Deno (e.g. `Deno.errors.NotFound`).
 */
export async function hashFile(path: string): Promise<{ hash: string; size: number }> {
  using file = await Deno.open(path, { read: true });
  return await hashReader(file);
}

/** Streams what `file` reads until its end through SHA-256 in 1 MiB chunks. */
export async function hashReader(
  file: { read(p: Uint8Array): Promise<number | null> },
): Promise<{ hash: string; size: number }> {
  const hasher = createHash("sha256");
  const buffer = new Uint8Array(HASH_CHUNK_BYTES);
  let size = 0;
  while (true) {
    const n = await file.read(buffer);
    if (n === null) break;
    hasher.update(buffer.subarray(0, n));
    size += n;
  }
  return { hash: hasher.digest("hex"), size };
}
