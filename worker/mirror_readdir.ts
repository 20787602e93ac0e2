/**
 * A mirror's directory listings as the kernel gets them: open directories
 * (or none, with zero-message opens: fh 0), `readdir` entries, and
 * `readdirplus` entries with a lookup answer for each name that has
 * attributes (those count as lookups, so only what fits the reply is given).
 * A listing not known yet is fetched first.
 *
 * @module
 */

import type { FileKind } from "../common/types.ts";
import { EBADF, EIO, ENOENT, ENOTDIR, ESTALE } from "../fuse/errno.ts";
import type { Attr, DirEntry, DirEntryPlus, Errno, OpenDirReply, Reply } from "../fuse/types.ts";
import {
  type AttrCache,
  buildRows,
  byteLength,
  type DirRow,
  type MirrorNode,
  typeBits,
} from "./mirror_cache.ts";
import type { AttrFetches } from "./mirror_fetch.ts";

/** Entries returned by one readdir call (the bridge packs what fits). */
const READDIR_BATCH_MAX = 4096;
/** sizeof(struct fuse_entry_out) + sizeof(struct fuse_dirent) without the name. */
const DIRENTPLUS_FIXED_BYTES = 128 + 24;

/** Options of {@linkcode Listings}. */
export interface ListingsOptions {
  cache: AttrCache;
  fetches: AttrFetches;
  /** Aborted when the mirror closes (requests then answer EIO). */
  signal: AbortSignal;
  /** A file handle number for an open directory. */
  nextFh(): number;
  /** Counts and reports a failure that costs a request; gives EIO. */
  failed(error: unknown, context: string): Errno;
}

interface DirHandle {
  node: MirrorNode;
  rows: readonly DirRow[];
}

/** Directory listings of a mirror, open or read by inode. */
export class Listings {
  readonly #options: ListingsOptions;
  readonly #dirs = new Map<number, DirHandle>();

  constructor(options: ListingsOptions) {
    this.#options = options;
  }

  /** Open directories now. */
  get openCount(): number {
    return this.#dirs.size;
  }

  /** Opens `node`'s listing (fetched if needed) as it is now, under a new fh. */
  open(node: MirrorNode): OpenDirReply | Errno | Promise<OpenDirReply | Errno> {
    const rows = this.#rowsOf(node);
    if (rows instanceof Promise) {
      return rows.then((rows) => typeof rows === "number" ? rows : this.#open(node, rows));
    }
    return typeof rows === "number" ? rows : this.#open(node, rows);
  }

  release(fh: number): void {
    this.#dirs.delete(fh);
  }

  /** Forgets every open directory (the mirror is closing). */
  clear(): void {
    this.#dirs.clear();
  }

  readdir(ino: bigint, fh: number, offset: number): Reply<readonly DirEntry[]> {
    return this.#withRows(ino, fh, "readdir", (dir, rows) => readdirEntries(dir, rows, offset));
  }

  readdirplus(
    ino: bigint,
    fh: number,
    offset: number,
    sizeMax: number,
  ): Reply<readonly DirEntryPlus[]> {
    return this.#withRows(
      ino,
      fh,
      "readdirplus",
      (dir, rows) => readdirplusEntries(this.#options.cache, dir, rows, offset, sizeMax),
    );
  }

  #open(node: MirrorNode, rows: readonly DirRow[]): OpenDirReply {
    const fh = this.#options.nextFh();
    this.#dirs.set(fh, { node, rows });
    return { fh, cacheReaddir: true, keepCache: true };
  }

  /** The rows of a directory listing ("." and ".." first), fetching it if needed. */
  #rowsOf(node: MirrorNode): Reply<readonly DirRow[]> {
    if (node.detached) return node.rows ?? buildRows(node);
    if (node.listing !== undefined && (node.complete || node.synthetic)) {
      return node.rows ??= buildRows(node);
    }
    return (async () => {
      try {
        await this.#options.fetches.fetchDir(node);
      } catch (error) {
        return this.#options.failed(error, `readdir ${node.path}`);
      }
      if (node.listing === undefined && !node.detached) return ENOENT;
      return node.rows ??= buildRows(node);
    })();
  }

  /** Runs `list` on the rows of an open directory (`fh`) or of `ino` (fh 0: no opendir). */
  #withRows<T>(
    ino: bigint,
    fh: number,
    op: string,
    list: (node: MirrorNode, rows: readonly DirRow[]) => T,
  ): T | Errno | Promise<T | Errno> {
    if (fh !== 0) {
      const handle = this.#dirs.get(fh);
      if (handle === undefined || handle.node.id !== ino) return EBADF;
      return list(handle.node, handle.rows);
    }
    if (this.#options.signal.aborted) return EIO;
    const node = this.#options.cache.nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (node.attr !== undefined && node.attr.kind !== "dir") return ENOTDIR;
    const rows = this.#rowsOf(node);
    if (rows instanceof Promise) {
      return rows.then((rows) => typeof rows === "number" ? rows : list(node, rows)).catch(
        (error) => this.#options.failed(error, op),
      );
    }
    return typeof rows === "number" ? rows : list(node, rows);
  }
}

/** `readdir` entries of `dir` from row `offset` on. */
export function readdirEntries(
  dir: MirrorNode,
  rows: readonly DirRow[],
  offset: number,
): DirEntry[] {
  const result: DirEntry[] = [];
  const end = Math.min(rows.length, offset + READDIR_BATCH_MAX);
  for (let i = offset; i < end; i++) {
    const { name, kind, node: kid } = rows[i];
    result.push({ name, ino: kid?.id ?? fallbackIno(dir, name), mode: typeBits(kind) });
  }
  return result;
}

/**
 * `readdirplus` entries of `dir` from row `offset` on, as many as fit
 * `sizeMax` bytes; the nodes given a lookup answer are remembered as known.
 */
export function readdirplusEntries(
  cache: AttrCache,
  dir: MirrorNode,
  rows: readonly DirRow[],
  offset: number,
  sizeMax: number,
): DirEntryPlus[] {
  const result: DirEntryPlus[] = [];
  let bytes = 0;
  for (let i = offset; i < rows.length; i++) {
    const { name, kind } = rows[i];
    const size = DIRENTPLUS_FIXED_BYTES + align8(byteLength(name));
    if (bytes + size > sizeMax) break; // the rest would not be counted as lookups
    bytes += size;
    const dots = name === "." || name === "..";
    let node = rows[i].node;
    if (!dots) {
      const current = dir.kids.get(name);
      if (current !== undefined) node = current;
    }
    if (node?.attr === undefined || node.detached || dots) {
      const id = node?.id ?? fallbackIno(dir, name);
      result.push({
        name,
        entry: {
          ino: 0,
          attr: node?.attr ? cache.toAttr(node) : minimalAttr(id, kind),
          entryTimeoutS: 0,
          attrTimeoutS: 0,
        },
      });
      continue;
    }
    cache.nodes.remember(node);
    result.push({ name, entry: cache.entryOf(node) });
  }
  return result;
}

function minimalAttr(ino: bigint, kind: FileKind): Attr {
  return { ino, mode: typeBits(kind), nlink: 1, uid: 0, gid: 0, size: 0, mtimeMs: 0 };
}

/** A d_ino for a listed name without a node: stable, and never a node id. */
function fallbackIno(dir: MirrorNode, name: string): bigint {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193);
  return (1n << 62n) | ((dir.id & 0x3fffffffn) << 32n) | BigInt(hash >>> 0);
}

function align8(n: number): number {
  return (n + 7) & ~7;
}
