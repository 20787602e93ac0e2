/**
 * Applies a worker's result set to the master's tree, all or nothing: the set
 * is validated whole (every path inside the writable root, no `..`, no escape
 * through a symlink), every content is fetched and verified into a staging
 * directory inside the tree, and only then is the tree touched, by renames.
 */
import { createHash } from "node:crypto";
import { RESULT_ENTRIES_MAX, RESULT_SET_KEYS, type ResultSet } from "../common/types.ts";
import type { HashCache } from "./hash_cache.ts";
import {
  baseName,
  checkResultPath,
  isInside,
  joinPath,
  parentOf,
  PATH_BYTES_MAX,
  utf8Bytes,
} from "./paths.ts";

export const STAGING_DIR = ".termite-staging";

/** Bytes of file contents one result set may bring, by default. */
export const RESULT_BYTES_MAX = 16 * 2 ** 30;

export class ResultSetError extends Error {
  override name = "ResultSetError";
}

export type BlobFetcher = (
  hash: string,
  sink: { write(chunk: Uint8Array): Promise<void> },
) => Promise<void>;

export interface ApplyOptions {
  writableRoot: string;
  fetchBlob: BlobFetcher;
  /**
   * Contents that came with the reply (small files), by hash: written and
   * verified without a fetch. Unverified bytes: a wrong one fails the set.
   */
  inline?: (hash: string) => Uint8Array | undefined;
  hashCache: HashCache;
  /** Default {@linkcode RESULT_ENTRIES_MAX}. */
  entriesMax?: number;
  /** Default {@linkcode RESULT_BYTES_MAX}. */
  bytesMax?: number;
}

export interface ApplyOutcome {
  /** Every path created, changed or removed, and their parents. */
  touched: string[];
  /** Hashes of the files written. */
  hashes: Map<string, string>;
  bytesFetched: number;
  bytesCopied: number;
}

const HASH_RE = /^[0-9a-f]{64}$/;

function fail(message: string): never {
  throw new ResultSetError(`Refusing result set: ${message}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Names an untrusted value without stringifying it (its toString may be anything). */
function describe(value: unknown): string {
  if (typeof value === "number") return String(value);
  return typeof value === "string" ? JSON.stringify(value.slice(0, 100)) : typeof value;
}

function checkMode(mode: unknown, path: string): number {
  if (typeof mode !== "number" || !Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    fail(`mode ${describe(mode)} of ${path} is not an integer in 0..0o7777`);
  }
  return mode;
}

/** Checks the shape, the limits and every path of an untrusted result set. */
export function validateResultSet(
  raw: unknown,
  root: string,
  limits: { entriesMax: number; bytesMax: number },
): ResultSet {
  if (!isObject(raw)) fail("not an object");
  const { deletions, dirs, files, symlinks } = raw;
  if (
    !Array.isArray(deletions) || !Array.isArray(dirs) || !Array.isArray(files) ||
    !Array.isArray(symlinks)
  ) fail("missing lists");
  const count = deletions.length + dirs.length + files.length + symlinks.length;
  if (count > limits.entriesMax) {
    fail(`${count} entries, more than RESULT_ENTRIES_MAX (${limits.entriesMax})`);
  }
  const checkPath = (p: unknown): string => {
    const why = checkResultPath(p, root);
    if (why !== null) fail(`path ${describe(p)}: ${why}`);
    return p as string;
  };
  const out: ResultSet = { deletions: [], dirs: [], files: [], symlinks: [] };
  for (const d of deletions) out.deletions.push(checkPath(d));
  const created = new Set<string>();
  const claim = (p: string) => {
    if (created.has(p)) fail(`path ${p} listed twice`);
    created.add(p);
  };
  for (const d of dirs) {
    if (!isObject(d)) fail("bad directory entry");
    const path = checkPath(d.path);
    claim(path);
    out.dirs.push({ path, mode: checkMode(d.mode, path) & 0o1777 });
  }
  let bytes = 0;
  const sizes = new Map<string, number>();
  for (const f of files) {
    if (!isObject(f)) fail("bad file entry");
    const path = checkPath(f.path);
    claim(path);
    if (typeof f.hash !== "string" || !HASH_RE.test(f.hash)) fail(`bad hash for ${path}`);
    if (typeof f.size !== "number" || !Number.isSafeInteger(f.size) || f.size < 0) {
      fail(`bad size for ${path}`);
    }
    const mode = checkMode(f.mode, path);
    if ((sizes.get(f.hash as string) ?? f.size) !== f.size) fail(`two sizes for blob ${f.hash}`);
    sizes.set(f.hash as string, f.size as number);
    bytes += f.size as number;
    if (bytes > limits.bytesMax) {
      fail(`more than ${limits.bytesMax} bytes of files (RESULT_BYTES_MAX)`);
    }
    out.files.push({
      path,
      hash: f.hash as string,
      size: f.size as number,
      mode: mode & 0o777,
      mtimeMs: typeof f.mtimeMs === "number" ? f.mtimeMs : 0,
    });
  }
  for (const s of symlinks) {
    if (!isObject(s)) fail("bad symlink entry");
    const path = checkPath(s.path);
    claim(path);
    const target = s.target;
    if (
      typeof target !== "string" || target === "" || target.includes("\0") ||
      !target.isWellFormed() || target.length > PATH_BYTES_MAX ||
      utf8Bytes(target) > PATH_BYTES_MAX
    ) {
      fail(`bad symlink target for ${path} (empty, NUL, not Unicode or past PATH_BYTES_MAX)`);
    }
    out.symlinks.push({ path, target });
  }
  return out;
}

/*
 * Metadata calls on the tree below are synchronous: each takes microseconds
 * on a local disk, where an async call costs a thread-pool round trip of
 * 50-100 µs; a small job's results (an object file) took 1.3-2.6 ms to apply
 * with async calls. Bulk data (fetches, copies of large files) stays async.
 */
function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/** Rejects sets that would write through a symlink or over a directory. */
function checkAgainstTree(set: ResultSet, root: string): void {
  const deleted = (p: string) => set.deletions.some((d) => isInside(p, d));
  const newDirs = new Set(set.dirs.map((d) => d.path));
  const checked = new Map<string, "dir" | "new">();
  const checkAncestors = (path: string) => {
    for (let dir = parentOf(path); dir !== root && isInside(dir, root); dir = parentOf(dir)) {
      if (checked.has(dir)) continue;
      if (deleted(dir)) {
        checked.set(dir, "new");
        continue;
      }
      const info = lstatOrNull(dir);
      if (info === null) {
        checked.set(dir, "new");
        continue;
      }
      if (info.isSymlink) fail(`${path} lies below the symlink ${dir}`);
      if (!info.isDirectory) fail(`${path} lies below ${dir}, which is not a directory`);
      checked.set(dir, "dir");
    }
  };
  for (const p of set.deletions) checkAncestors(p);
  for (const d of set.dirs) {
    checkAncestors(d.path);
    if (!deleted(d.path)) {
      const info = lstatOrNull(d.path);
      if (info && !info.isDirectory) fail(`directory ${d.path} would replace a non-directory`);
    }
  }
  for (const e of [...set.files, ...set.symlinks]) {
    checkAncestors(e.path);
    if (!deleted(e.path)) {
      const info = lstatOrNull(e.path);
      if (info?.isDirectory) fail(`${e.path} would replace a directory`);
    }
    if (newDirs.has(parentOf(e.path)) || deleted(parentOf(e.path))) continue;
  }
}

/** Inline contents a job's parts may bring in all (the worker sends at most 512 KiB). */
export const PART_BLOB_BYTES_MAX = 8 * 2 ** 20;

/**
 * Collects the parts of a large result set (`rs` and `blobs` chunks of a
 * job), bounded: more entries than `entriesMax` or contents past
 * {@linkcode PART_BLOB_BYTES_MAX} fail with {@linkcode ResultSetError}.
 * Entries are validated later, with the reply's own, by `applyResultSet`.
 */
export class ResultParts {
  readonly #entriesMax: number;
  readonly #set: ResultSet = { deletions: [], dirs: [], files: [], symlinks: [] };
  readonly #blobs = new Map<string, Uint8Array>();
  #entries = 0;
  #blobBytes = 0;

  constructor(entriesMax = RESULT_ENTRIES_MAX) {
    this.#entriesMax = entriesMax;
  }

  addEntries(part: unknown): void {
    if (!isObject(part)) fail("a result part is not an object");
    for (const key of RESULT_SET_KEYS) {
      const list = part[key];
      if (list === undefined) continue;
      if (!Array.isArray(list)) fail(`a result part's ${key} is not a list`);
      this.#entries += list.length;
      if (this.#entries > this.#entriesMax) {
        fail(`more than ${this.#entriesMax} result entries (RESULT_ENTRIES_MAX)`);
      }
      const into = this.#set[key] as unknown[];
      for (const entry of list) into.push(entry); // no spread: a part may be long
    }
  }

  addBlobs(blobs: unknown): void {
    if (!isObject(blobs)) fail("a blob batch is not an object");
    for (const [hash, bytes] of Object.entries(blobs)) {
      if (!(bytes instanceof Uint8Array)) fail(`inline content ${hash} is not bytes`);
      this.#blobBytes += bytes.length;
      if (this.#blobBytes > PART_BLOB_BYTES_MAX) {
        fail(`more than ${PART_BLOB_BYTES_MAX} bytes of inline contents`);
      }
      this.#blobs.set(hash, bytes);
    }
  }

  /** The reply's result set with the parts before it (unchecked: `applyResultSet` checks). */
  merge(replySet: unknown): unknown {
    if (this.#entries === 0) return replySet;
    if (!isObject(replySet)) return replySet;
    const merged: Record<string, unknown> = { ...replySet };
    for (const key of RESULT_SET_KEYS) {
      const rest = replySet[key];
      merged[key] = Array.isArray(rest) ? [...this.#set[key], ...rest] : rest;
    }
    return merged;
  }

  blob(hash: string): Uint8Array | undefined {
    return this.#blobs.get(hash);
  }
}

/** Writes bytes that came with the reply into `path` after checking their hash and size. */
function writeVerified(bytes: Uint8Array, hash: string, size: number, path: string): void {
  const actual = createHash("sha256").update(bytes).digest("hex");
  if (actual !== hash || bytes.length !== size) {
    throw new ResultSetError(
      `Blob verification failed: expected ${hash} (${size} bytes), got ${actual} ` +
        `(${bytes.length} bytes)`,
    );
  }
  Deno.writeFileSync(path, bytes, { createNew: true, mode: 0o600 });
}

/** Streams a blob into `path`, verifying its hash and size. */
async function fetchInto(
  fetchBlob: BlobFetcher,
  hash: string,
  size: number,
  path: string,
): Promise<void> {
  const file = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
  const hasher = createHash("sha256");
  let bytes = 0;
  try {
    await fetchBlob(hash, {
      async write(chunk: Uint8Array) {
        bytes += chunk.length;
        if (bytes > size) throw new ResultSetError(`Blob ${hash} is longer than ${size} bytes`);
        hasher.update(chunk);
        let off = 0;
        while (off < chunk.length) off += await file.write(chunk.subarray(off));
      },
    });
  } finally {
    file.close();
  }
  const actual = hasher.digest("hex");
  if (actual !== hash || bytes !== size) {
    throw new ResultSetError(
      `Blob verification failed: expected ${hash} (${size} bytes), got ${actual} (${bytes} bytes)`,
    );
  }
}

/** Validates, stages and applies a result set; the tree is untouched on error. */
export async function applyResultSet(raw: unknown, options: ApplyOptions): Promise<ApplyOutcome> {
  const root = options.writableRoot;
  const set = validateResultSet(raw, root, {
    entriesMax: options.entriesMax ?? RESULT_ENTRIES_MAX,
    bytesMax: options.bytesMax ?? RESULT_BYTES_MAX,
  });
  checkAgainstTree(set, root);

  const staging = joinPath(root, `${STAGING_DIR}-${crypto.randomUUID()}`);
  Deno.mkdirSync(staging, { mode: 0o700 });
  const outcome: ApplyOutcome = {
    touched: [],
    hashes: new Map(),
    bytesFetched: 0,
    bytesCopied: 0,
  };
  try {
    // 1. Every content, fetched and verified, before the tree is touched.
    const staged = new Map<string, string>(); // hash → staged file
    let n = 0;
    for (const f of set.files) {
      const tmp = `${staging}/${n++}`;
      const first = staged.get(f.hash);
      const inline = first ? undefined : options.inline?.(f.hash);
      const local = first || inline ? undefined : options.hashCache.pathOf(f.hash);
      if (first) {
        await Deno.copyFile(first, tmp);
        outcome.bytesCopied += f.size;
      } else if (inline) {
        writeVerified(inline, f.hash, f.size, tmp);
        outcome.bytesFetched += f.size;
      } else if (local && await copyIfSame(local, f.hash, f.size, tmp, options.hashCache)) {
        outcome.bytesCopied += f.size;
      } else {
        await fetchInto(options.fetchBlob, f.hash, f.size, tmp);
        outcome.bytesFetched += f.size;
      }
      staged.set(f.hash, staged.get(f.hash) ?? tmp);
      Deno.chmodSync(tmp, f.mode);
    }
    const links: string[] = [];
    for (const s of set.symlinks) {
      const tmp = `${staging}/${n++}`;
      Deno.symlinkSync(s.target, tmp);
      links.push(tmp);
    }

    // 2. The tree: deletions (deepest first), directories, then renames.
    const touched = new Set<string>();
    const touch = (p: string) => {
      touched.add(p);
      touched.add(parentOf(p));
    };
    const deletions = [...set.deletions].sort((a, b) => b.length - a.length);
    for (const path of deletions) {
      // Async: a deletion may be a large tree.
      await Deno.remove(path, { recursive: true }).catch((err) => {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      });
      touch(path);
    }
    for (const d of set.dirs) {
      const info = lstatOrNull(d.path);
      if (info === null) {
        Deno.mkdirSync(d.path, { recursive: true });
        touch(d.path);
      }
      if (info === null || ((info.mode ?? 0) & 0o7777) !== d.mode) {
        Deno.chmodSync(d.path, d.mode);
        touch(d.path);
      }
    }
    n = 0;
    for (const f of set.files) {
      Deno.mkdirSync(parentOf(f.path), { recursive: true });
      Deno.renameSync(`${staging}/${n++}`, f.path);
      const info = Deno.lstatSync(f.path);
      options.hashCache.record(f.path, info, f.hash);
      outcome.hashes.set(f.path, f.hash);
      touch(f.path);
    }
    for (let i = 0; i < set.symlinks.length; i++) {
      const s = set.symlinks[i];
      Deno.mkdirSync(parentOf(s.path), { recursive: true });
      Deno.renameSync(links[i], s.path);
      touch(s.path);
    }
    outcome.touched = [...touched].filter((p) => isInside(p, root) || isInside(root, p));
    return outcome;
  } finally {
    try {
      Deno.removeSync(staging, { recursive: true });
    } catch {
      // Gone already, or the disk failed: nothing of the tree depends on it.
    }
  }
}

async function copyIfSame(
  path: string,
  hash: string,
  size: number,
  dest: string,
  hashCache: HashCache,
): Promise<boolean> {
  try {
    const info = await Deno.stat(path);
    if (!info.isFile || info.size !== size || hashCache.lookup(path, info) !== hash) return false;
    await Deno.copyFile(path, dest);
    const after = await Deno.stat(path);
    return after.mtime?.getTime() === info.mtime?.getTime() && after.size === size;
  } catch {
    return false;
  }
}

export { baseName };
