/**
 * A job's results as the worker sends them: in the reply when they fit one
 * frame, else as `rs` and `blobs` chunks before a reply with nothing left.
 *
 * @module
 */
import { RESULT_PART_BYTES } from "../common/protocol.ts";
import { RESULT_SET_KEYS, type ResultSet } from "../common/types.ts";

/** What is left for the reply itself. */
export interface ReplyResults {
  resultSet: ResultSet;
  inline: Record<string, Uint8Array>;
}

const encoder = new TextEncoder();

/** An upper bound of an entry's encoded size (msgpack: keys, numbers, strings). */
function entryBytes(entry: string | { path: string; target?: string; hash?: string }): number {
  if (typeof entry === "string") return 8 + encoder.encode(entry).length;
  return 128 + encoder.encode(entry.path).length +
    (entry.target === undefined ? 0 : encoder.encode(entry.target).length);
}

/**
 * Sends `set` and `inline` through `send` in parts of about
 * {@linkcode RESULT_PART_BYTES} when together they would not fit in a reply
 * of that size; returns what the reply carries (all of it when small).
 */
export async function sendResultParts(
  set: ResultSet,
  inline: Record<string, Uint8Array>,
  send: (
    chunk: { rs: Partial<ResultSet> } | { blobs: Record<string, Uint8Array> },
  ) => Promise<void>,
  partBytes = RESULT_PART_BYTES,
): Promise<ReplyResults> {
  let total = 0;
  for (const key of RESULT_SET_KEYS) for (const e of set[key]) total += entryBytes(e);
  for (const bytes of Object.values(inline)) total += 80 + bytes.length;
  if (total <= partBytes) return { resultSet: set, inline };

  let part: Partial<ResultSet> = {};
  let size = 0;
  for (const key of RESULT_SET_KEYS) {
    for (const e of set[key]) {
      const n = entryBytes(e);
      if (size > 0 && size + n > partBytes) {
        await send({ rs: part });
        part = {};
        size = 0;
      }
      ((part[key] ??= []) as unknown[]).push(e);
      size += n;
    }
  }
  if (size > 0) await send({ rs: part });

  let blobs: Record<string, Uint8Array> = {};
  size = 0;
  for (const [hash, bytes] of Object.entries(inline)) {
    const n = 80 + bytes.length;
    if (size > 0 && size + n > partBytes) {
      await send({ blobs });
      blobs = {};
      size = 0;
    }
    blobs[hash] = bytes;
    size += n;
  }
  if (size > 0) await send({ blobs });
  return { resultSet: { deletions: [], dirs: [], files: [], symlinks: [] }, inline: {} };
}
