/**
 * The shared secret every coordinator, worker and master of one farm holds.
 *
 * @module
 */

import { errorMessage } from "../common/errors.ts";
import { SecretError } from "./errors.ts";

/** Largest secret file accepted. */
export const SECRET_BYTES_MAX = 64 * 1024;

/**
 * Turns secret bytes into an HMAC-SHA256 key (not extractable).
 * @throws {SecretError} if `bytes` is empty.
 */
export async function secretFromBytes(bytes: Uint8Array): Promise<CryptoKey> {
  if (bytes.length === 0) throw new SecretError("Secret is empty");
  return await crypto.subtle.importKey(
    "raw",
    new Uint8Array(bytes),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
}

/**
 * Loads the secret from a file that only its owner may read (mode 0600 or
 * stricter). Trailing whitespace (a final newline) is ignored, so
 * `echo secret > file` and `head -c 32 /dev/urandom > file` both work.
 *
 * @throws {SecretError} if the file is missing, unreadable, empty, larger
 * than {@link SECRET_BYTES_MAX}, or open to group or others.
 */
export async function loadSecret(path: string): Promise<CryptoKey> {
  let bytes: Uint8Array;
  try {
    using file = await Deno.open(path, { read: true });
    const info = await file.stat();
    if (!info.isFile) throw new SecretError(`Secret ${path} is not a regular file`);
    const mode = (info.mode ?? 0) & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new SecretError(
        `Secret file ${path} has mode 0${
          mode.toString(8)
        }: others can read it; run \`chmod 600 ${path}\``,
      );
    }
    if (info.size > SECRET_BYTES_MAX) {
      throw new SecretError(
        `Secret file ${path} is too large: ${info.size} bytes (max ${SECRET_BYTES_MAX})`,
      );
    }
    bytes = new Uint8Array(info.size);
    let filled = 0;
    while (filled < bytes.length) {
      const n = await file.read(bytes.subarray(filled));
      if (n === null) break;
      filled += n;
    }
    bytes = bytes.subarray(0, filled);
  } catch (error) {
    if (error instanceof SecretError) throw error;
    const reason = error instanceof Deno.errors.NotFound ? "no such file" : errorMessage(error);
    throw new SecretError(`Cannot read secret file ${path}: ${reason}`, { cause: error });
  }
  let end = bytes.length;
  while (end > 0 && isSpace(bytes[end - 1])) end--;
  if (end === 0) throw new SecretError(`Secret file ${path} is empty`);
  const key = await secretFromBytes(bytes.subarray(0, end));
  bytes.fill(0);
  return key;
}

function isSpace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d;
}
