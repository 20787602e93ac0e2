/**
 * C strings for FFI calls.
 *
 * @module
 */

const encoder = new TextEncoder();

/**
 * `text` NUL-terminated, for a `buffer` parameter of an FFI call. At least
 * 128 bytes, so that V8 keeps it off its heap and a pointer taken with
 * `Deno.UnsafePointer.of` stays valid while the array is referenced.
 */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(text);
  const out = new Uint8Array(Math.max(bytes.length + 1, 128));
  out.set(bytes);
  return out;
}
