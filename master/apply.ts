/**
 * Applies a worker's result set to the master's tree, all or nothing.
 *
 * 1. The set is validated whole: its shape, its limits, every path (inside
 *    the writable root, normalised, names in bytes), nothing below a file or
 *    symlink of the same set, none of the master's own files.
 * 2. Every content is fetched and verified, every symlink made, in a staging
 *    area of the master's private directory; the tree is not touched.
 * 3. The tree is changed in one synchronous run (no other apply, builtin or
 *    marker of this master interleaves), by descriptor (`beneath.ts`): no
 *    symlink is followed, old or planted meanwhile. What is replaced or
 *    deleted is moved into the staging area, and each step is journaled;
 *    on any failure the journal is undone and the tree is as it was. What
 *    was moved aside is removed once the whole set is in.
 */
import { createHash } from "node:crypto";
import { isHash } from "../common/hash.ts";
import { baseName, isInside, joinPath, parentOf } from "../common/paths.ts";
import { RESULT_ENTRIES_MAX, RESULT_SET_KEYS, type ResultSet } from "../common/types.ts";
import { ENOENT, ENOTDIR } from "../fuse/errno.ts";
import {
  Beneath,
  BeneathError,
  DirHandles,
  PRIVATE_DIR_PREFIX,
  type StagingDir,
} from "./beneath.ts";
import { RENAME_EXCHANGE, RENAME_NOREPLACE } from "./fs_structs.ts";
import type { HashCache } from "./hash_cache.ts";
import { checkResultPath, PATH_BYTES_MAX, utf8Bytes } from "./paths.ts";

/** Names in the root starting with this are the master's (its private directory). */
export const STAGING_DIR = PRIVATE_DIR_PREFIX;

/** Bytes of file contents one result set may bring, by default. */
export const RESULT_BYTES_MAX = 16 * 2 ** 30;

export class ResultSetError extends Error {
  override name = "ResultSetError";
}

export type BlobFetcher = (
  hash: string,
  sink: { write(chunk: Uint8Array): Promise<void> },
) => Promise<void>;

/** What a result set may not create, change or delete: the master's own files. */
export interface ControlPaths {
  /** Absolute paths, with everything below them (and no deletion of an ancestor). */
  paths: string[];
  /** Names refused anywhere in the tree (`.termite-socket`: wrappers look for it upwards). */
  names?: string[];
}

export interface ApplyOptions {
  writableRoot: string;
  /** The tree by descriptor (the master's own); without it, one is opened for this call. */
  tree?: Beneath;
  /** Besides `<root>/.termite-staging*`, which is always refused. */
  control?: ControlPaths;
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

/** Bytes copied in one synchronous call before yielding to the event loop. */
const COPY_CHUNK_BYTES = 8 * 2 ** 20;

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
  // A file or symlink of the set as a directory of another entry: the set
  // would write through its own symlink (or fail half-way on its own file).
  if (leaves.size > 0) {
    for (const p of created) {
      for (let dir = parentOf(p); dir.length > root.length; dir = parentOf(dir)) {
        if (leaves.has(dir)) fail(`${p} lies below ${dir}, a file or symlink of the same set`);
      }
    }
  }
  return out;
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

function checkBlob(hash: string, size: number, actual: string, bytes: number): void {
  if (actual !== hash || bytes !== size) {
    throw new ResultSetError(
      `Blob verification failed: expected ${hash} (${size} bytes), got ${actual} (${bytes} bytes)`,
    );
  }
}

/** Copies `size` bytes between descriptors; false if the source ran short. */
async function copyAll(tree: Beneath, from: number, to: number, size: number): Promise<boolean> {
  let done = 0;
  while (done < size) {
    const n = tree.copy(from, to, Math.min(COPY_CHUNK_BYTES, size - done));
    if (n === 0) return false;
    done += n;
    if (done < size) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  return true;
}

/**
 * Copies the file at `path` (a file of the master known to hold `hash`) into
 * `to`, if it still matches the hash cache's record; false otherwise. Never
 * through a symlink inside the tree; never blocks on a FIFO.
 */
async function copyIfSame(
  tree: Beneath,
  path: string,
  hash: string,
  size: number,
  to: number,
  hashCache: HashCache,
): Promise<boolean> {
  let from: number;
  try {
    from = isInside(path, tree.root) && path !== tree.root
      ? tree.openRead(tree.rootFd, tree.relative(path))
      : tree.openReadPath(path);
  } catch {
    return false;
  }
  try {
    const before = tree.fstat(from);
    if (
      before.kind !== "file" || before.info.size !== size ||
      hashCache.lookup(path, before.info) !== hash
    ) return false;
    if (!await copyAll(tree, from, to, size)) return false;
    const after = tree.fstat(from);
    return after.info.mtime?.getTime() === before.info.mtime?.getTime() &&
      after.info.size === size;
  } catch {
    return false;
  } finally {
    tree.closeFd(from);
  }
}

/**
 * Stages every file of the set (fetched, inline, or copied, and verified) and
 * every symlink in `staging`: files as `f<i>`, symlinks as `l<i>`.
 */
async function stage(
  set: ResultSet,
  tree: Beneath,
  staging: StagingDir,
  options: ApplyOptions,
  outcome: ApplyOutcome,
): Promise<void> {
  const first = new Map<string, string>(); // hash → name of its first staged copy
  for (let i = 0; i < set.files.length; i++) {
    const f = set.files[i];
    const name = `f${i}`;
    const create = () => tree.createFile(staging.fd, name, 0o600);
    let fd = create();
    try {
      const copyOf = first.get(f.hash);
      const inline = copyOf ? undefined : options.inline?.(f.hash);
      const local = copyOf || inline ? undefined : options.hashCache.pathOf(f.hash);
      if (copyOf) {
        const from = tree.openRead(staging.fd, copyOf);
        try {
          if (!await copyAll(tree, from, fd, f.size)) throw new Error(`${copyOf} ran short`);
        } finally {
          tree.closeFd(from);
        }
        outcome.bytesCopied += f.size;
      } else if (inline) {
        checkBlob(f.hash, f.size, createHash("sha256").update(inline).digest("hex"), inline.length);
        tree.writeAll(fd, inline as Uint8Array<ArrayBuffer>, name);
        outcome.bytesFetched += f.size;
      } else if (
        local !== undefined &&
        await copyIfSame(tree, local, f.hash, f.size, fd, options.hashCache)
      ) {
        outcome.bytesCopied += f.size;
      } else {
        if (local !== undefined) {
          // A partial copy: start again.
          tree.closeFd(fd);
          fd = -1;
          tree.unlink(staging.fd, name);
          fd = create();
        }
        const hasher = createHash("sha256");
        let bytes = 0;
        const to = fd;
        await options.fetchBlob(f.hash, {
          write(chunk: Uint8Array) {
            bytes += chunk.length;
            if (bytes > f.size) {
              throw new ResultSetError(`Blob ${f.hash} is longer than ${f.size} bytes`);
            }
            hasher.update(chunk);
            tree.writeAll(to, chunk as Uint8Array<ArrayBuffer>, name);
            return Promise.resolve();
          },
        });
        checkBlob(f.hash, f.size, hasher.digest("hex"), bytes);
        outcome.bytesFetched += f.size;
      }
      tree.fchmod(fd, f.mode, name);
    } finally {
      if (fd >= 0) tree.closeFd(fd);
    }
    if (!first.has(f.hash)) first.set(f.hash, name);
  }
  for (let i = 0; i < set.symlinks.length; i++) {
    tree.symlink(set.symlinks[i].target, staging.fd, `l${i}`);
  }
}

/** One step of the tree phase, as it can be undone. */
type Step =
  /** A deleted entry, moved to `staged` in the staging area. */
  | { op: "aside"; rel: string; staged: string }
  /** A directory made. */
  | { op: "made"; rel: string }
  /** `staged` renamed to `rel`, where there was nothing. */
  | { op: "placed"; rel: string; staged: string }
  /** `staged` exchanged with what was at `rel` (now at `staged`). */
  | { op: "swapped"; rel: string; staged: string }
  /** A directory's mode changed from `mode`. */
  | { op: "mode"; rel: string; mode: number };

function splitRel(rel: string): [string, string] {
  const slash = rel.lastIndexOf("/");
  return slash < 0 ? ["", rel] : [rel.slice(0, slash), rel.slice(slash + 1)];
}

const depth = (p: string) => p.split("/").length;

/**
 * Changes the tree to hold the staged set, synchronously, by descriptor;
 * undoes every step on failure. Returns what was touched, and the files
 * written with their attributes for the hash cache.
 */
function commit(
  set: ResultSet,
  tree: Beneath,
  staging: StagingDir,
): { touched: Set<string>; written: [string, Deno.FileInfo, string][] } {
  const journal: Step[] = [];
  const touched = new Set<string>();
  const touch = (p: string) => {
    touched.add(p);
    touched.add(parentOf(p));
  };
  const written: [string, Deno.FileInfo, string][] = [];
  const rel = (p: string) => tree.relative(p);
  const abs = (r: string) => joinPath(tree.root, r);
  const made = (r: string) => {
    journal.push({ op: "made", rel: r });
    touch(abs(r));
  };
  let current = "";
  const dirs = new DirHandles(tree);
  try {
    // 1. Deletions, deepest first: moved aside.
    const deletions = [...set.deletions].sort((a, b) => b.length - a.length);
    for (let i = 0; i < deletions.length; i++) {
      current = deletions[i];
      const [parentRel, name] = splitRel(rel(current));
      let parent: number;
      try {
        parent = dirs.get(parentRel);
      } catch (err) {
        // Nothing there to delete.
        if (err instanceof BeneathError && (err.errno === ENOENT || err.errno === ENOTDIR)) {
          continue;
        }
        throw err;
      }
      const found = tree.stat(parent, name);
      if (found === null) continue;
      tree.rename(parent, name, staging.fd, `d${i}`, RENAME_NOREPLACE);
      journal.push({ op: "aside", rel: rel(current), staged: `d${i}` });
      if (found.kind === "dir") dirs.forget(rel(current));
      touch(current);
    }
    // 2. Directories, parents first; their modes are set last.
    const modes: { rel: string; mode: number; old: number | null }[] = [];
    const newDirs = [...set.dirs].sort((a, b) => depth(a.path) - depth(b.path));
    for (const d of newDirs) {
      current = d.path;
      const r = rel(current);
      const [parentRel, name] = splitRel(r);
      const parent = dirs.ensure(parentRel, 0o777, made);
      const found = tree.stat(parent, name);
      if (found === null) {
        tree.mkdir(parent, name, 0o700);
        made(r);
        modes.push({ rel: r, mode: d.mode, old: null });
      } else if (found.kind !== "dir") {
        throw new ResultSetError(`a directory would replace a ${found.kind}`);
      } else if (found.mode !== d.mode) {
        modes.push({ rel: r, mode: d.mode, old: found.mode });
      }
    }
    // 3. Files and symlinks: renamed into place, what they replace kept aside.
    const place = (path: string, staged: string): [number, string] => {
      current = path;
      const r = rel(path);
      const [parentRel, name] = splitRel(r);
      const parent = dirs.ensure(parentRel, 0o777, made);
      const found = tree.stat(parent, name);
      if (found?.kind === "dir") throw new ResultSetError("it would replace a directory");
      if (found === null) {
        tree.rename(staging.fd, staged, parent, name, RENAME_NOREPLACE);
        journal.push({ op: "placed", rel: r, staged });
      } else {
        tree.rename(staging.fd, staged, parent, name, RENAME_EXCHANGE);
        journal.push({ op: "swapped", rel: r, staged });
      }
      touch(path);
      return [parent, name];
    };
    for (let i = 0; i < set.files.length; i++) {
      const f = set.files[i];
      const [parent, name] = place(f.path, `f${i}`);
      const found = tree.stat(parent, name);
      if (found?.kind === "file") written.push([f.path, found.info, f.hash]);
    }
    for (let i = 0; i < set.symlinks.length; i++) place(set.symlinks[i].path, `l${i}`);
    // 4. Directory modes, deepest first (a parent made unsearchable last).
    modes.sort((a, b) => depth(b.rel) - depth(a.rel));
    for (const m of modes) {
      current = abs(m.rel);
      const [parentRel, name] = splitRel(m.rel);
      tree.chmodDir(dirs.get(parentRel), name, m.mode);
      if (m.old !== null) journal.push({ op: "mode", rel: m.rel, mode: m.old });
      touch(current);
    }
  } catch (err) {
    dirs[Symbol.dispose]();
    const undone = rollback(journal, tree, staging);
    const why = err instanceof ResultSetError || err instanceof BeneathError
      ? err.message
      : String(err);
    throw new ResultSetError(
      `Refusing result set: ${current}: ${why}` +
        (undone.length > 0 ? `; undoing it failed: ${undone.join("; ")}` : ""),
      { cause: err },
    );
  }
  dirs[Symbol.dispose]();
  return { touched, written };
}

/** Undoes `journal`, last step first; the failures (none, normally). */
function rollback(journal: Step[], tree: Beneath, staging: StagingDir): string[] {
  const failures: string[] = [];
  using dirs = new DirHandles(tree);
  for (let i = journal.length - 1; i >= 0; i--) {
    const step = journal[i];
    const [parentRel, name] = splitRel(step.rel);
    try {
      const parent = dirs.get(parentRel);
      switch (step.op) {
        case "aside":
          tree.rename(staging.fd, step.staged, parent, name, RENAME_NOREPLACE);
          break;
        case "made":
          tree.unlink(parent, name, true);
          break;
        case "placed":
          tree.rename(parent, name, staging.fd, step.staged, RENAME_NOREPLACE);
          break;
        case "swapped":
          tree.rename(parent, name, staging.fd, step.staged, RENAME_EXCHANGE);
          break;
        case "mode":
          tree.chmodDir(parent, name, step.mode);
          break;
      }
      dirs.forget(step.rel);
    } catch (err) {
      failures.push((err as Error).message);
    }
  }
  return failures;
}

/** Validates, stages and applies a result set; the tree is as it was on error. */
export async function applyResultSet(raw: unknown, options: ApplyOptions): Promise<ApplyOutcome> {
  const root = options.writableRoot;
  const set = validateResultSet(raw, root, {
    entriesMax: options.entriesMax ?? RESULT_ENTRIES_MAX,
    bytesMax: options.bytesMax ?? RESULT_BYTES_MAX,
  });
  checkControlPaths(set, root, options.control);
  if (options.tree && options.tree.root !== root) {
    throw new Error(`The tree handle is of ${options.tree.root}, not of ${root}`);
  }
  const own = options.tree ? null : Beneath.open(root);
  const tree = options.tree ?? own!;
  const outcome: ApplyOutcome = { touched: [], hashes: new Map(), bytesFetched: 0, bytesCopied: 0 };
  try {
    const staging = tree.makeStaging();
    try {
      await stage(set, tree, staging, options, outcome);
      const { touched, written } = commit(set, tree, staging);
      for (const [path, info, hash] of written) {
        options.hashCache.record(path, info, hash);
        outcome.hashes.set(path, hash);
      }
      outcome.touched = [...touched].filter((p) => isInside(p, root) || isInside(root, p));
      return outcome;
    } finally {
      await tree.discardStaging(staging);
    }
  } finally {
    own?.close();
  }
}
