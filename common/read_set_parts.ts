/**
 * A read set too large for a job's reply travels ahead of it in parts (job
 * chunks `{ reads, hashes }`), each below a frame, up to a total: the worker
 * splits it ({@linkcode splitReadSet}), the master puts it back together
 * ({@linkcode ReadSetParts}). Past the total, or with a part missing or
 * malformed, the read set is incomplete (never cached), as the worker's
 * recording would be past its own limits.
 *
 * @module
 */

import type { ReadKind, ReadSet, ReadSetPart } from "./protocol.ts";

/** Bytes of a read set in all (by {@linkcode readEntryBytes}); past it, it is incomplete. */
export const READ_SET_BYTES_MAX = 8 * 2 ** 20;
/**
 * Bytes of read set entries per part or in the reply. The estimate counts
 * UTF-16 units; a path's UTF-8 may take up to three times that: a part is
 * still below the 1 MiB frame.
 */
export const READ_SET_PART_BYTES = 256 * 1024;
/** Parts per job (READ_SET_BYTES_MAX over entries as small as they come). */
const PARTS_MAX = 1024;

/** An upper bound of an entry's encoded size, its hash's included (the path twice). */
export function readEntryBytes(path: string): number {
  return 2 * path.length + 96;
}

/**
 * Splits a complete read set whose entries exceed `partBytes`: the parts to
 * send ahead, and what the reply carries (no entries, `parts` their count).
 * Returns the read set itself when it fits, and an incomplete one past
 * `bytesMax`.
 */
export function splitReadSet(
  reads: ReadSet & { complete: true },
  partBytes: number = READ_SET_PART_BYTES,
  bytesMax: number = READ_SET_BYTES_MAX,
): { parts: ReadSetPart[]; reply: ReadSet } {
  let total = 0;
  for (const [path] of reads.entries) total += readEntryBytes(path);
  // Counted as the master counts them (ReadSetParts.add).
  for (const [path, hash] of Object.entries(reads.hashes ?? {})) total += path.length + hash.length;
  if (total > bytesMax) {
    return {
      parts: [],
      reply: { complete: false, why: `read set too large (${total} bytes, at most ${bytesMax})` },
    };
  }
  if (total <= partBytes) return { parts: [], reply: reads };
  const hashes = reads.hashes ?? {};
  const parts: ReadSetPart[] = [];
  let part: ReadSetPart = { reads: [], hashes: {} };
  let size = 0;
  for (const entry of reads.entries) {
    const n = readEntryBytes(entry[0]);
    if (size > 0 && size + n > partBytes) {
      parts.push(part);
      part = { reads: [], hashes: {} };
      size = 0;
    }
    part.reads.push(entry);
    if (Object.hasOwn(hashes, entry[0])) part.hashes[entry[0]] = hashes[entry[0]];
    size += n;
  }
  if (size > 0) parts.push(part);
  return {
    parts,
    reply: { complete: true, entries: [], hashes: {}, stdin: reads.stdin, parts: parts.length },
  };
}

/** The parts of one job's read set as they arrive; untrusted (a worker may lie). */
export class ReadSetParts {
  readonly #bytesMax: number;
  #entries: [string, ReadKind[]][] = [];
  // No prototype: a path named `__proto__` is a key like any other.
  #hashes: Record<string, string> = Object.create(null);
  #count = 0;
  #bytes = 0;
  #bad: string | null = null;

  constructor(bytesMax: number = READ_SET_BYTES_MAX) {
    this.#bytesMax = bytesMax;
  }

  /** Takes one part (a job chunk with `reads`); a bad or excess one spoils the whole. */
  add(part: unknown): void {
    if (this.#bad !== null) return;
    const p = part as Partial<ReadSetPart>;
    if (
      !Array.isArray(p.reads) || typeof p.hashes !== "object" || p.hashes === null ||
      Array.isArray(p.hashes)
    ) {
      this.#bad = "a malformed read set part";
      return;
    }
    if (++this.#count > PARTS_MAX) {
      this.#bad = `more than ${PARTS_MAX} read set parts`;
      return;
    }
    for (const entry of p.reads) {
      if (!Array.isArray(entry) || typeof entry[0] !== "string" || !Array.isArray(entry[1])) {
        this.#bad = "a malformed read set entry";
        return;
      }
      this.#bytes += readEntryBytes(entry[0]);
      if (this.#bytes > this.#bytesMax) {
        this.#bad = `read set parts beyond ${this.#bytesMax} bytes`;
        return;
      }
      this.#entries.push(entry as [string, ReadKind[]]);
    }
    for (const [path, hash] of Object.entries(p.hashes)) {
      if (typeof hash !== "string") {
        this.#bad = "a malformed read set hash";
        return;
      }
      // Hashes count against the limit too: a part may name paths its reads do not.
      this.#bytes += path.length + hash.length;
      if (this.#bytes > this.#bytesMax) {
        this.#bad = `read set parts beyond ${this.#bytesMax} bytes`;
        return;
      }
      this.#hashes[path] = hash;
    }
  }

  /** The reply's read set with the parts' entries ahead of its own. */
  merge(reply: ReadSet | undefined): ReadSet | undefined {
    if (reply === undefined || reply === null || reply.complete !== true) {
      return this.#count === 0 || reply?.complete === false ? reply : {
        complete: false,
        why: "read set parts without a read set",
      };
    }
    if (this.#bad !== null) return { complete: false, why: this.#bad };
    const expected = reply.parts ?? 0;
    if (expected !== this.#count) {
      return {
        complete: false,
        why: `read set parts: ${this.#count} came, the reply says ${String(expected)}`,
      };
    }
    if (this.#count === 0) return reply;
    const entries = Array.isArray(reply.entries) ? reply.entries : [];
    return {
      complete: true,
      entries: [...this.#entries, ...entries],
      hashes: { ...this.#hashes, ...(reply.hashes ?? {}) },
      stdin: reply.stdin,
    };
  }
}
