/**
 * A worker's result set as the master takes it in, untrusted: its parts
 * collected with bounds ({@linkcode ResultParts}), its shape, limits and
 * paths checked ({@linkcode validateResultSet}), and none of the master's
 * own files touched ({@linkcode checkControlPaths}). The one validation of
 * the message, before anything is staged.
 *
 * @module
 */
import { isHash } from "../common/hash.ts";
import { baseName, isInside, joinPath, parentOf } from "../common/paths.ts";
import { RESULT_ENTRIES_MAX, RESULT_SET_KEYS, type ResultSet } from "../common/types.ts";
import { PRIVATE_DIR_PREFIX } from "./beneath.ts";
import { checkResultPath, PATH_BYTES_MAX, utf8Bytes } from "./paths.ts";

/** Bytes of file contents one result set may bring, by default. */
export const RESULT_BYTES_MAX = 16 * 2 ** 30;

/** A result set refused, or one that could not be applied; the message says why. */
export class ResultSetError extends Error {
  override name = "ResultSetError";
}

/** What a result set may not create, change or delete: the master's own files. */
export interface ControlPaths {
  /** Absolute paths, with everything below them (and no deletion of an ancestor). */
  paths: string[];
  /** Names refused anywhere in the tree (`.termite-socket`: wrappers look for it upwards). */
  names?: string[];
}

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
  /** Files and symlinks of the set: nothing of it may lie below one. */
  const leaves = new Set<string>();
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
    leaves.add(path);
    if (typeof f.hash !== "string" || !isHash(f.hash)) fail(`bad hash for ${path}`);
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
    leaves.add(path);
    out.symlinks.push({ path, target: checkTarget(s.target, path) });
  }
  checkNothingBelowLeaves(created, leaves, root);
  return out;
}

function checkTarget(target: unknown, path: string): string {
  if (
    typeof target !== "string" || target === "" || target.includes("\0") ||
    !target.isWellFormed() || target.length > PATH_BYTES_MAX ||
    utf8Bytes(target) > PATH_BYTES_MAX
  ) {
    fail(`bad symlink target for ${path} (empty, NUL, not Unicode or past PATH_BYTES_MAX)`);
  }
  return target;
}

/**
 * A file or symlink of the set as a directory of another entry: the set
 * would write through its own symlink (or fail half-way on its own file).
 */
function checkNothingBelowLeaves(created: Set<string>, leaves: Set<string>, root: string): void {
  if (leaves.size === 0) return;
  for (const p of created) {
    for (let dir = parentOf(p); dir.length > root.length; dir = parentOf(dir)) {
      if (leaves.has(dir)) fail(`${p} lies below ${dir}, a file or symlink of the same set`);
    }
  }
}

/** Refuses any entry of `set` on the master's own files (and a deletion of an ancestor). */
export function checkControlPaths(set: ResultSet, root: string, control?: ControlPaths): void {
  const paths = control?.paths ?? [];
  const names = control?.names ?? [];
  const prefix = joinPath(root, PRIVATE_DIR_PREFIX);
  const owned = (p: string): string | undefined => {
    if (p.startsWith(prefix)) {
      const slash = p.indexOf("/", root.length + 1);
      return slash < 0 ? p : p.slice(0, slash);
    }
    if (names.length > 0 && names.includes(baseName(p))) return p;
    return paths.find((c) => isInside(p, c));
  };
  const refuse = (p: string, what: string, c: string): never =>
    fail(`${what} ${p}: ${c} is the master's own; no result set may create, change or delete it`);
  for (const p of set.deletions) {
    const c = owned(p) ?? paths.find((c) => isInside(c, p));
    if (c !== undefined) refuse(p, "deletion of", c);
  }
  for (const list of [set.dirs, set.files, set.symlinks]) {
    for (const { path } of list) {
      const c = owned(path);
      if (c !== undefined) refuse(path, "entry", c);
    }
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
