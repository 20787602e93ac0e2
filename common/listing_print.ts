/**
 * A directory listing's fingerprint, the same whatever the order of its
 * names: how many names, and the sum of a hash of each name with its kind.
 * The master sends it in place of a listing a mirror can work out from the
 * other updates it gets (see master/change_log.ts); the mirror checks what it
 * worked out against it and forgets the listing when they differ. A check
 * against mistakes in that bookkeeping, not a proof: the names come from the
 * tree (jobs choose them), and a sum of 32-bit hashes can be made to collide
 * on purpose; a wrong listing needs a mistake in the master's log first.
 *
 * @module
 */
import type { FileKind } from "./types.ts";

/** FNV-1a, 32 bits, over `name` (UTF-16 code units) then the kind's first letter. */
function entryHash(name: string, kind: FileKind): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= kind.charCodeAt(0);
  return Math.imul(h, 0x01000193) >>> 0;
}

/** The fingerprint of a listing: `count.sum` (the sum modulo 2^32). */
export function listingPrint(entries: Iterable<[string, FileKind]>): string {
  let count = 0;
  let sum = 0;
  for (const [name, kind] of entries) {
    count++;
    sum = (sum + entryHash(name, kind)) >>> 0;
  }
  return `${count}.${sum}`;
}
