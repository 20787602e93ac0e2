/**
 * What the master shows its workers: attributes and contents of its file
 * system, under its rules (exclusions by prefix, nothing unreadable to others
 * anywhere along the path), and the memory of what it served so that changes
 * can be pushed to the mirrors.
 */
import type { FileAttr, FileKind } from "../common/types.ts";
import { openRegular, type RegularFile } from "../common/regular_file.ts";
import type { HashCache } from "./hash_cache.ts";
import { baseName, type Exclusions, isInside, joinPath, parentOf } from "./paths.ts";

export interface FileServerOptions {
  exclusions: Exclusions;
  hashCache: HashCache;
  /** Paths never served, with all below them (the master's cache directory). */
  hidden?: string[];
  /** Path prefixes never served (staging directories: `<root>/.termite-staging`). */
  hiddenPrefixes?: string[];
  /** Children listed per directory at most. */
  childrenMax?: number;
  /** Memory of served attributes, in entries. */
  servedMax?: number;
  /**
   * Told of attributes a read found changed from what was served before
   * (every mirror must hear of them, not only the one that asked).
   */
  onChange?: (attrs: FileAttr[]) => void;
  /**
   * Whether every later change of `path` is reported to the master (the tree
   * watcher watches its directory, and the path itself if it is one): such a
   * path is not read again while young (see `youngPaths`). Default: none.
   */
  watched?: (path: string, kind: FileKind) => boolean;
}

const OTHERS_READ = 0o004;
/**
 * A path served within this long of its last change, that no watcher
 * reports changes of, is read again meanwhile.
 */
const YOUNG_MS = 3_000;
const YOUNG_MAX = 10_000;
/** Children of a listing read per turn of the event loop. */
const DIR_READS_PER_TURN = 1024;
const OTHERS_SEARCH = 0o001;

function kindOf(info: Deno.FileInfo): FileKind | null {
  if (info.isSymlink) return "symlink";
  if (info.isDirectory) return "dir";
  if (info.isFile) return "file";
  return null;
}

function absent(path: string): FileAttr {
  return { path, kind: null, mode: 0, size: 0, mtimeMs: 0 };
}

/** Whether two attribute records describe the same thing for a mirror. */
export function sameAttr(a: FileAttr, b: FileAttr): boolean {
  if (
    a.kind !== b.kind || a.mode !== b.mode || a.size !== b.size || a.mtimeMs !== b.mtimeMs ||
    a.target !== b.target
  ) return false;
  if (a.hash && b.hash && a.hash !== b.hash) return false;
  if (a.kind === "dir") {
    const ac = a.children ?? {}, bc = b.children ?? {};
    const ak = Object.keys(ac), bk = Object.keys(bc);
    if (ak.length !== bk.length) return false;
    for (const k of ak) if (ac[k] !== bc[k]) return false;
  }
  return true;
}

/** Symlinks followed while resolving one path, at most (the kernel's limit). */
const LINKS_MAX = 40;

/** Attempts at a consistent read of a file being hashed while it changes. */
const HASH_READS_MAX = 3;

/** Whether two `lstat`s of one path saw the same file, unchanged. */
function sameFile(a: Deno.FileInfo, b: Deno.FileInfo): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.mode === b.mode &&
    a.mtime?.getTime() === b.mtime?.getTime() && a.ctime?.getTime() === b.ctime?.getTime();
}

/**
 * The real path of directory `dir` if every directory a walk to it passes
 * through (resolving symlinks as the kernel does) is searchable by others,
 * else null. Synchronous: one `lstat` per component, a few microseconds each,
 * where the asynchronous calls cost ~70 µs each (0.8 ms per served path).
 */
export function reachableDir(dir: string): string | null {
  const rest = dir.split("/").reverse();
  let real = "/";
  let links = 0;
  try {
    if (!searchable(Deno.lstatSync("/"))) return null;
    while (rest.length > 0) {
      const name = rest.pop()!;
      if (name === "" || name === ".") continue;
      if (name === "..") {
        real = parentOf(real);
        continue;
      }
      const next = joinPath(real, name);
      const info = Deno.lstatSync(next);
      if (info.isSymlink) {
        if (++links > LINKS_MAX) return null;
        const target = Deno.readLinkSync(next);
        rest.push(...target.split("/").reverse());
        if (target.startsWith("/")) real = "/";
        continue;
      }
      if (!searchable(info)) return null;
      real = next;
    }
  } catch {
    return null;
  }
  return real;
}

function searchable(info: Deno.FileInfo): boolean {
  return info.isDirectory && ((info.mode ?? 0) & OTHERS_SEARCH) !== 0;
}

export class FileServer {
  #exclusions: Exclusions;
  #hashCache: HashCache;
  #hidden: string[];
  #hiddenPrefixes: string[];
  #childrenMax: number;
  #servedMax: number;
  /**
   * Last attributes served per path (what the mirrors believe), with the
   * number of the read that found them. Reads are numbered as they start: the
   * answer of a read that started before the one behind the served attributes
   * is older news and never replaces them (reads overlap: a directory listed
   * while a job's result lands in it).
   */
  #served = new Map<string, { attr: FileAttr; read: number }>();
  #reads = 0;
  #onChange: (attrs: FileAttr[]) => void;
  #watched: (path: string, kind: FileKind) => boolean;
  #young = new Map<string, number>();
  stats = { attrs: 0, dirs: 0, blobs: 0, blobBytes: 0 };

  constructor(options: FileServerOptions) {
    this.#exclusions = options.exclusions;
    this.#hashCache = options.hashCache;
    this.#hidden = options.hidden ?? [];
    this.#hiddenPrefixes = options.hiddenPrefixes ?? [];
    this.#childrenMax = options.childrenMax ?? 100_000;
    this.#servedMax = options.servedMax ?? 2_000_000;
    this.#onChange = options.onChange ?? (() => {});
    this.#watched = options.watched ?? (() => false);
  }

  get hashCache(): HashCache {
    return this.#hashCache;
  }

  #visible(path: string): boolean {
    return !this.#hidden.some((h) => isInside(path, h)) &&
      !this.#hiddenPrefixes.some((p) => path.startsWith(p)) && !this.#exclusions.excluded(path);
  }

  /**
   * The real path of `path` if others may reach it: its parent resolved as
   * the kernel would for another user, every directory passed through (a
   * symlink's target, not the link) searchable by others, and the real path
   * visible. Checked at every serve, never remembered: a `chmod 700`
   * anywhere, in the tree or not, counts at once. A listing checks once for
   * all its children, and a refresh once per directory: `memo` holds the
   * answers of one synchronous stretch of reads, where nothing else runs.
   */
  #reach(path: string, memo?: Map<string, string | null>): string | null {
    const dir = parentOf(path);
    let parent = memo?.get(dir);
    if (parent === undefined) {
      parent = reachableDir(dir);
      memo?.set(dir, parent);
    }
    if (parent === null) return null;
    const real = joinPath(parent, baseName(path));
    return real === path || this.#visible(real) ? real : null;
  }

  /**
   * An answer to a mirror: remembered as served, unless a newer read's answer
   * is; when it differs from what was served before, the other mirrors may
   * hold the old attributes, so it is a change for all of them.
   */
  #serve(attr: FileAttr, read: number): FileAttr {
    const prev = this.#served.get(attr.path);
    if (prev !== undefined && read < prev.read) return attr;
    this.#store(attr, read);
    if (prev !== undefined && !sameAttr(prev.attr, attr)) this.#onChange([attr]);
    return attr;
  }

  #store(attr: FileAttr, read: number): void {
    this.#served.delete(attr.path);
    this.#served.set(attr.path, { attr, read });
    // Served moments after it changed: it may change again before the tree
    // watcher watches it (inotify misses events in a directory it has not
    // added a watch for yet, as in `mkdir -p a/b/c`), so it is read again.
    const now = Date.now();
    if (
      attr.kind !== null && now - attr.mtimeMs < YOUNG_MS && this.#young.size < YOUNG_MAX &&
      !this.#watched(attr.path, attr.kind)
    ) this.#young.set(attr.path, now);
    if (this.#served.size > this.#servedMax) {
      this.#served.delete(this.#served.keys().next().value!);
    }
  }

  /** Attributes of one path; `withHash` hashes a regular file if needed. */
  async attr(path: string, options: { withHash?: boolean } = {}): Promise<FileAttr> {
    this.stats.attrs++;
    const read = ++this.#reads;
    return this.#serve(await this.#attr(path, options.withHash ?? false), read);
  }

  /**
   * Attributes of `path` as others may see them, read at once (see
   * {@linkcode FileServer.#read}); a regular file is hashed if `withHash` and
   * its hash is not cached, and read again until it held still meanwhile.
   */
  async #attr(path: string, withHash: boolean): Promise<FileAttr> {
    for (let attempt = 1;; attempt++) {
      const { attr, info } = this.#read(path);
      if (!withHash || attr.kind !== "file" || attr.hash !== undefined) return attr;
      let hash: string | undefined;
      try {
        hash = await this.#hashCache.hash(path, info!);
      } catch {
        // Not the file `info` described any more (replaced, gone), or unreadable.
      }
      // Served only as it still is after the hash: a change meanwhile (or
      // before the hash opened it) would pair the old size with other content.
      let now: Deno.FileInfo | null = null;
      try {
        now = Deno.lstatSync(path);
      } catch {
        // Gone: read again.
      }
      const held = now !== null && sameFile(info!, now);
      if (held || attempt >= HASH_READS_MAX) {
        if (hash === undefined) return absent(path);
        // Still changing: read it again meanwhile.
        if (!held && this.#young.size < YOUNG_MAX) this.#young.set(path, Date.now());
        attr.hash = hash;
        return attr;
      }
    }
  }

  /**
   * Attributes of `path` as others may see them, read synchronously: a read
   * is one step of the event loop, so nothing the master learns (a tree
   * watcher's event, a refresh) falls between the read and its serving.
   * `real`: its real path, when the caller already checked that others may
   * reach it (a listing's children). `info`: the `lstat` of a regular file,
   * for hashing it.
   */
  #read(
    path: string,
    real?: string,
    memo?: Map<string, string | null>,
  ): { attr: FileAttr; info?: Deno.FileInfo } {
    if (!this.#visible(path)) return { attr: absent(path) };
    if (real === undefined) {
      const reached = path === "/" ? "/" : this.#reach(path, memo);
      if (reached === null) return { attr: absent(path) };
    } else if (real !== path && !this.#visible(real)) return { attr: absent(path) };
    let info: Deno.FileInfo;
    try {
      info = Deno.lstatSync(path);
    } catch {
      return { attr: absent(path) };
    }
    const kind = kindOf(info);
    if (kind === null) return { attr: absent(path) };
    const mode = (info.mode ?? 0) & 0o7777;
    const attr: FileAttr = {
      path,
      kind,
      mode,
      size: info.size,
      mtimeMs: info.mtime?.getTime() ?? 0,
    };
    if (kind === "file") {
      if ((mode & OTHERS_READ) === 0) return { attr: absent(path) };
      const cached = this.#hashCache.lookup(path, info);
      if (cached) attr.hash = cached;
      return { attr, info };
    }
    if (kind === "symlink") {
      try {
        attr.target = Deno.readLinkSync(path);
      } catch {
        return { attr: absent(path) };
      }
      return { attr };
    }
    if ((mode & (OTHERS_READ | OTHERS_SEARCH)) !== (OTHERS_READ | OTHERS_SEARCH)) {
      attr.children = {};
      return { attr };
    }
    const children: Record<string, FileKind> = {};
    let count = 0;
    try {
      for (const entry of Deno.readDirSync(path)) {
        const child = joinPath(path, entry.name);
        if (!this.#visible(child)) continue;
        const childKind: FileKind | null = entry.isSymlink
          ? "symlink"
          : entry.isDirectory
          ? "dir"
          : entry.isFile
          ? "file"
          : null;
        if (childKind === null) continue;
        children[entry.name] = childKind;
        if (++count >= this.#childrenMax) break;
      }
    } catch {
      return { attr: absent(path) };
    }
    attr.children = children;
    return { attr };
  }

  /** Attributes of every child of a directory (hashes only where cached). */
  async dir(path: string): Promise<FileAttr[]> {
    this.stats.dirs++;
    this.stats.attrs++;
    const first = ++this.#reads;
    // Others may reach the children if they may reach and search this directory.
    const real = path === "/" ? "/" : this.#reach(path);
    const self = this.#serve(real === null ? absent(path) : this.#read(path, real).attr, first);
    if (real === null || self.kind !== "dir") return [];
    const names = Object.keys(self.children ?? {});
    const out: FileAttr[] = new Array(names.length);
    for (let i = 0; i < names.length; i++) {
      // A huge directory does not hold up the other requests for long.
      if (i > 0 && i % DIR_READS_PER_TURN === 0) await new Promise((r) => setTimeout(r, 0));
      const read = ++this.#reads;
      const child = this.#read(joinPath(path, names[i]), joinPath(real, names[i])).attr;
      out[i] = this.#serve(child, read);
    }
    return out;
  }

  /**
   * The file holding blob `hash`, open (a regular file others may read and
   * reach, never a FIFO or device put in its place), verified to still hold
   * it; null if unknown. Close it when sent.
   */
  async openBlob(hash: string): Promise<RegularFile | null> {
    const path = this.#hashCache.pathOf(hash);
    if (!path || !this.#visible(path)) return null;
    let file: RegularFile | undefined;
    try {
      const info = Deno.lstatSync(path);
      if (!info.isFile || ((info.mode ?? 0) & OTHERS_READ) === 0) return null;
      if (this.#reach(path) === null) return null;
      file = await openRegular(path, info);
      if (((file.info.mode ?? 0) & OTHERS_READ) === 0) return null;
      if (await this.#hashCache.hash(path, file.info) !== hash) return null;
      const held = file;
      file = undefined;
      return held;
    } catch {
      return null;
    } finally {
      file?.close();
    }
  }

  /**
   * Served paths that had just changed when served and that no watcher
   * reports changes of (see `#store`), to read again for a few seconds;
   * older ones are dropped.
   */
  youngPaths(): string[] {
    const now = Date.now();
    const out: string[] = [];
    for (const [path, servedMs] of this.#young) {
      if (now - servedMs > YOUNG_MS) this.#young.delete(path);
      else out.push(path);
    }
    return out;
  }

  /** Whether mirrors may hold attributes of `path`. */
  wasServed(path: string): boolean {
    return this.#served.has(path);
  }

  /** Served paths inside `root`. */
  servedUnder(root: string): string[] {
    const out: string[] = [];
    const prefix = root === "/" ? "/" : root + "/";
    for (const path of this.#served.keys()) {
      if (path === root || path.startsWith(prefix)) out.push(path);
    }
    return out;
  }

  /**
   * Re-reads the given paths; the attributes that differ from what was served
   * (only for paths the mirrors may hold) go to `onChange` and are returned.
   */
  async refresh(paths: Iterable<string>, known?: Map<string, string>): Promise<FileAttr[]> {
    const changed: FileAttr[] = [];
    // Which directories others may reach, for the reads until the next await.
    let memo = new Map<string, string | null>();
    for (const path of new Set(paths)) {
      if (!this.#served.has(path)) continue;
      const read = ++this.#reads;
      let after = this.#read(path, undefined, memo).attr;
      const served = this.#served.get(path);
      if (served === undefined || read < served.read) continue; // forgotten, or newer news
      const before = served.attr;
      if (
        before.hash && after.kind === "file" && after.hash === undefined && !known?.has(path) &&
        sameAttr(before, after)
      ) {
        // Same size and mtime, but the hash cache no longer vouches for it (its
        // ctime or inode changed): new content is possible, so hash it again.
        after = await this.#attr(path, true);
        memo = new Map();
        const now = this.#served.get(path);
        if (now === undefined || now.read > read) continue;
      }
      const hash = known?.get(path);
      if (hash && after.kind === "file") after.hash = hash;
      if (!sameAttr(before, after) || (after.hash && before.hash !== after.hash)) {
        // Told at once, in the order the reads started: a list told when the
        // whole refresh ends could come after a newer read's news, and a
        // mirror would take the older listing for the latest.
        this.#store(after, read);
        this.#onChange([after]);
        changed.push(after);
      }
    }
    return changed;
  }
}
