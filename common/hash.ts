/**
 * How contents are named everywhere: hex SHA-256.
 *
 * @module
 */

/** A SHA-256 hash as the wire and the stores write it: 64 lowercase hex characters. */
export const HASH_PATTERN: RegExp = /^[0-9a-f]{64}$/;

/** Returns whether `s` is a SHA-256 hash: exactly 64 lowercase hex characters. */
export function isHash(s: string): boolean {
  return HASH_PATTERN.test(s);
}
