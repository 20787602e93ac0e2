/**
 * What the master shows its workers: attributes and contents of its file
 * system, under its rules (exclusions by prefix, nothing unreadable to others
 * anywhere along the path), and the memory of what it served so that changes
 * can be pushed to the mirrors.
 */
import type { FileAttr, FileKind } from "../common/types.ts";
import { openRegular, type RegularFile } from "../common/regular_file.ts";
import type { HashCache } from "./hash_cache.ts";
import { baseName, isInside, joinPath, parentOf } from "../common/paths.ts";
import type { Exclusions } from "./paths.ts";
import { S_IFDIR, S_IFLNK, S_IFMT } from "./fs_structs.ts";
import { denoLstat, type Lstat } from "./path_stat.ts";

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
  /** What a tree watcher reports (see {@linkcode ChangeWatch}); default: nothing. */
  watch?: ChangeWatch;
  /** How paths are `lstat`ed (the master's: through libc); default `Deno.lstatSync`. */
  lstat?: Lstat;
}

/**
 * What the master learns of changes (its tree watcher): which paths it will
 * hear of, and of which directories every change of the listing.
 */
export interface ChangeWatch {
  /**
   * Whether every later change of `path` is reported to the master: such a
   * path is not read again while young (see `youngPaths`).
   */
  covers(path: string, isDir: boolean): boolean;
  /**
   * An id of the watch on directory `dir` that stays the same only while
   * every change of its listing is reported child by child; null if none.
   * While it holds, a refresh told which children changed reads only them.
   */
  watchOf(dir: string): string | null;
}

/**
 * A listing of a directory no watcher covers (outside the tree: the
 * toolchain's) is given again to mirrors asking within this long, while the
 * directory's own inode, mtime and ctime hold and nothing in it was found
 * changed: a fresh farm's workers all list the same system directories at
 * once (`/usr/lib/x86_64-linux-gnu`: 1,160 lstats, ~30 ms), and a listing read
 * a moment ago is as current as one read now for paths whose changes nothing
 * reports.
 */
const DIR_REUSE_MS = 2_000;
/** Listings kept for reuse, at most. */
const DIR_REUSE_MAX = 256;

/** A directory listing as read in full: under which watch, of which inode. */
interface Listing {
  watch: string;
  dev: number;
  ino: number;
}

/** A read: the attributes, the file's lstat (for hashing), the listing if one was read in full. */
interface Read {
  attr: FileAttr;
  info?: Deno.FileInfo;
  listing?: Listing;
}

const OTHERS_READ = 0o004;
/**
 * A path served within this long of its last change, that no watcher
 * reports changes of, is read again meanwhile.
 */
const YOUNG_MS = 3_000;
const YOUNG_MAX = 10_000;
/** Directories whose hiding rules are remembered, at most. */
const HIDES_CHILDREN_MAX = 10_000;
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
 * What a walk found at a path: a directory others may search (true), a
 * symlink (its target), or anything else, or nothing (false).
 */
export type WalkStep = boolean | string;

/**
 * The real path of directory `dir` if every directory a walk to it passes
 * through (resolving symlinks as the kernel does) is searchable by others,
 * else null. Synchronous: one `lstat` per component, a few microseconds each,
 * where the asynchronous calls cost ~70 µs each (0.8 ms per served path).
 * `seen`: the steps of walks made in the same synchronous stretch (nothing
 * can change between them), shared so that directories on the way to
 * several paths are looked at once.
 */
export function reachableDir(
  dir: string,
  seen?: Map<string, WalkStep>,
  lstat: Lstat = denoLstat,
): string | null {
  const look = (path: string): WalkStep => {
    let step = seen?.get(path);
    if (step !== undefined) return step;
    const mode = lstat.mode(path);
    if (mode === null) step = false;
    else if ((mode & S_IFMT) === S_IFLNK) {
      try {
        step = Deno.readLinkSync(path);
      } catch {
        step = false;
      }
    } else step = (mode & S_IFMT) === S_IFDIR && (mode & OTHERS_SEARCH) !== 0;
    seen?.set(path, step);
    return step;
  };
  const rest = dir.split("/").reverse();
  let real = "/";
  let links = 0;
  if (look("/") !== true) return null;
  while (rest.length > 0) {
    const name = rest.pop()!;
    if (name === "" || name === ".") continue;
    if (name === "..") {
      real = parentOf(real);
      continue;
    }
    const next = joinPath(real, name);
    const step = look(next);
    if (typeof step === "string") {
      if (++links > LINKS_MAX) return null;
      rest.push(...step.split("/").reverse());
      if (step.startsWith("/")) real = "/";
      continue;
    }
    if (!step) return null;
    real = next;
  }
  return real;
}

export class FileServer {
  #exclusions: Exclusions;
  #hashCache: HashCache;
  #hidden: string[];
  #hiddenPrefixes: string[];
  #childrenMax: number;
  #servedMax: number;
  #lstat: Lstat;
  /**
   * Last attributes served per path (what the mirrors believe), with the
   * number of the read that found them. Reads are numbered as they start: the
   * answer of a read that started before the one behind the served attributes
   * is older news and never replaces them (reads overlap: a directory listed
   * while a job's result lands in it).
   */
  #served = new Map<string, { attr: FileAttr; read: number; listing?: Listing }>();
  #reads = 0;
  #onChange: (attrs: FileAttr[]) => void;
  #watch: ChangeWatch | undefined;
  #young = new Map<string, number>();
  /** Listings of unwatched directories, being read or read moments ago (see DIR_REUSE_MS). */
  #dirReuse = new Map<string, { attrs: Promise<FileAttr[]>; atMs: number; print?: string }>();
  /** Directory → whether a name in it may be hidden or excluded (the rules are fixed). */
  #hidesChildren = new Map<string, boolean>();
  stats = { attrs: 0, dirs: 0, dirsReused: 0, blobs: 0, blobBytes: 0 };

  constructor(options: FileServerOptions) {
    this.#exclusions = options.exclusions;
    this.#hashCache = options.hashCache;
    this.#hidden = options.hidden ?? [];
    this.#hiddenPrefixes = options.hiddenPrefixes ?? [];
    this.#childrenMax = options.childrenMax ?? 100_000;
    this.#servedMax = options.servedMax ?? 2_000_000;
    const onChange = options.onChange ?? (() => {});
    this.#onChange = (attrs) => {
      // A listing kept for reuse would hide the change from the next mirror.
      for (const attr of attrs) {
        this.#dirReuse.delete(attr.path);
        this.#dirReuse.delete(parentOf(attr.path));
      }
      onChange(attrs);
    };
    this.#watch = options.watch;
    this.#lstat = options.lstat ?? denoLstat;
  }

  get hashCache(): HashCache {
    return this.#hashCache;
  }

  #visible(path: string): boolean {
    return !this.#hidden.some((h) => isInside(path, h)) &&
      !this.#hiddenPrefixes.some((p) => path.startsWith(p)) && !this.#exclusions.excluded(path);
  }

  /**
   * Whether a child of `dir`, itself visible, may be hidden or excluded: a
   * rule names a path right below it, or a prefix that its children may
   * start with (else the children need no check of their own).
   */
  #mayHideChildren(dir: string): boolean {
    let hides = this.#hidesChildren.get(dir);
    if (hides !== undefined) return hides;
    const slash = dir === "/" ? "/" : dir + "/";
    hides = this.#hidden.some((h) => h.startsWith(slash) || isInside(dir, h)) ||
      this.#hiddenPrefixes.some((p) => p.startsWith(slash) || slash.startsWith(p)) ||
      this.#exclusions.prefixes.some((e) => e.startsWith(slash) || isInside(dir, e));
    if (this.#hidesChildren.size >= HIDES_CHILDREN_MAX) this.#hidesChildren.clear();
    this.#hidesChildren.set(dir, hides);
    return hides;
  }

  /**
   * The real path of `path` if others may reach it: its parent resolved as
   * the kernel would for another user, every directory passed through (a
   * symlink's target, not the link) searchable by others, and the real path
   * visible. Checked at every serve, never remembered: a `chmod 700`
   * anywhere, in the tree or not, counts at once. A listing checks once for
   * all its children, and a refresh each directory on the way once: `seen`
   * holds the walks of one synchronous stretch of reads, where nothing else runs.
   */
  #reach(path: string, seen?: Map<string, WalkStep>): string | null {
    const parent = reachableDir(parentOf(path), seen, this.#lstat);
    if (parent === null) return null;
    const real = joinPath(parent, baseName(path));
    return real === path || this.#visible(real) ? real : null;
  }

  /**
   * An answer to a mirror: remembered as served, unless a newer read's answer
   * is; when it differs from what was served before, the other mirrors may
   * hold the old attributes, so it is a change for all of them.
   */
  #serve({ attr, listing }: Read, read: number): FileAttr {
    const prev = this.#served.get(attr.path);
    if (prev !== undefined && read < prev.read) return attr;
    this.#store(attr, read, listing);
    if (prev !== undefined && !sameAttr(prev.attr, attr)) this.#onChange([attr]);
    return attr;
  }

  #store(attr: FileAttr, read: number, listing?: Listing): void {
    this.#served.delete(attr.path);
    this.#served.set(attr.path, { attr, read, listing });
    // Served moments after it changed and no watcher reports its changes
    // (outside the tree, or in a directory not watched yet): it may change
    // again unseen, so it is read again for a while.
    const now = Date.now();
    if (
      attr.kind !== null && now - attr.mtimeMs < YOUNG_MS && this.#young.size < YOUNG_MAX &&
      !this.#watch?.covers(attr.path, attr.kind === "dir")
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
  async #attr(path: string, withHash: boolean): Promise<Read> {
    for (let attempt = 1;; attempt++) {
      const got = this.#read(path);
      const { attr, info } = got;
      if (!withHash || attr.kind !== "file" || attr.hash !== undefined) return got;
      let hash: string | undefined;
      try {
        hash = await this.#hashCache.hash(path, info!);
      } catch {
        // Not the file `info` described any more (replaced, gone), or unreadable.
      }
      // Served only as it still is after the hash: a change meanwhile (or
      // before the hash opened it) would pair the old size with other content.
      // Null if gone: read again.
      const now = this.#lstat.info(path);
      const held = now !== null && sameFile(info!, now);
      if (held || attempt >= HASH_READS_MAX) {
        if (hash === undefined) return { attr: absent(path) };
        // Still changing: read it again meanwhile.
        if (!held && this.#young.size < YOUNG_MAX) this.#young.set(path, Date.now());
        attr.hash = hash;
        return { attr, info };
      }
    }
  }

  /**
   * Attributes of `path` as others may see them, read synchronously: a read
   * is one step of the event loop, so nothing the master learns (a tree
   * watcher's event, a refresh) falls between the read and its serving.
   * `real`: its real path, when the caller already checked that others may
   * reach it (a listing's children). `list: false`: a directory's children
   * are not read (the caller knows which changed).
   */
  #read(
    path: string,
    options: { real?: string; seen?: Map<string, WalkStep>; list?: boolean } = {},
  ): Read {
    const real = options.real;
    if (!this.#visible(path)) return { attr: absent(path) };
    if (real === undefined) {
      const reached = path === "/" ? "/" : this.#reach(path, options.seen);
      if (reached === null) return { attr: absent(path) };
    } else if (real !== path && !this.#visible(real)) return { attr: absent(path) };
    const info = this.#lstat.info(path);
    if (info === null) return { attr: absent(path) };
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
    if (options.list === false) return { attr, info };
    if ((mode & (OTHERS_READ | OTHERS_SEARCH)) !== (OTHERS_READ | OTHERS_SEARCH)) {
      attr.children = {};
      return { attr };
    }
    const children: Record<string, FileKind> = {};
    let count = 0;
    // Before the listing: a change made after it is then reported under this watch.
    const watch = this.#watch?.watchOf(path) ?? null;
    const hides = this.#mayHideChildren(path);
    // Hidden names and other kinds are read too: a listing cut short at twice
    // the limit is not taken as whole (as one of more than the limit is not).
    const rawMax = 2 * this.#childrenMax;
    const entries = this.#lstat.list(path, rawMax);
    if (entries === null) return { attr: absent(path) };
    let cut = entries.length >= rawMax;
    for (const entry of entries) {
      if (hides && !this.#visible(joinPath(path, entry.name))) continue;
      const childKind: FileKind | null = entry.isSymlink
        ? "symlink"
        : entry.isDirectory
        ? "dir"
        : entry.isFile
        ? "file"
        : null;
      if (childKind === null) continue;
      children[entry.name] = childKind;
      if (++count >= this.#childrenMax) {
        cut = true;
        break;
      }
    }
    attr.children = children;
    const listing = watch === null || cut
      ? undefined
      : { watch, dev: info.dev, ino: info.ino ?? 0 };
    return { attr, listing };
  }

  /**
   * A served directory's attributes read again where only the children named
   * in `names` may have changed: none other if its listing was read in full
   * under the same watch (every change since was reported), of the same
   * inode, with the same mode. Undefined where that does not hold: then the
   * whole listing is read.
   */
  #relist(
    path: string,
    served: { attr: FileAttr; listing?: Listing },
    names: Set<string>,
    seen: Map<string, WalkStep>,
  ): Read | undefined {
    const { attr: before, listing } = served;
    if (listing === undefined || before.children === undefined) return undefined;
    if (this.#watch?.watchOf(path) !== listing.watch) return undefined;
    const { attr, info } = this.#read(path, { seen, list: false });
    if (
      attr.kind !== "dir" || info === undefined || info.ino !== listing.ino ||
      info.dev !== listing.dev || attr.mode !== before.mode
    ) return undefined;
    const children = { ...before.children };
    const hides = this.#mayHideChildren(path);
    for (const name of names) {
      const child = joinPath(path, name);
      if (hides && !this.#visible(child)) continue;
      const found = this.#lstat.info(child);
      const kind = found === null ? null : kindOf(found); // null: gone
      if (kind === null) delete children[name];
      else children[name] = kind;
    }
    attr.children = children;
    if (Object.keys(children).length >= this.#childrenMax) return undefined;
    return { attr, listing };
  }

  /**
   * Attributes of every child of a directory (hashes only where cached). A
   * directory no watcher covers is read once for mirrors asking at about the
   * same time (see DIR_REUSE_MS).
   */
  dir(path: string): Promise<FileAttr[]> {
    if (this.#watch?.covers(path, true)) return this.#readDir(path);
    const now = Date.now();
    const kept = this.#dirReuse.get(path);
    if (kept !== undefined && now - kept.atMs <= DIR_REUSE_MS && !this.#young.has(path)) {
      // Being read (no print yet), or read moments ago and the directory itself
      // held still; others may still reach it (a chmod on the way counts at once).
      const held = kept.print === undefined || kept.print === this.#dirPrint(path);
      if (held && (path === "/" || this.#reach(path) !== null)) {
        this.stats.dirsReused++;
        return kept.attrs;
      }
    }
    this.#dirReuse.delete(path);
    const entry: { attrs: Promise<FileAttr[]>; atMs: number; print?: string } = {
      attrs: Promise.resolve([]),
      atMs: now,
    };
    const print = this.#dirPrint(path);
    entry.attrs = this.#readDir(path).then((attrs) => {
      // Kept only if nothing changed it meanwhile (a change deletes the entry),
      // and not when empty (refused: closed to others, gone, not a directory).
      const keep = print !== undefined && attrs.length > 0;
      if (this.#dirReuse.get(path) === entry && keep) entry.print = print;
      else if (this.#dirReuse.get(path) === entry) this.#dirReuse.delete(path);
      return attrs;
    }, (err) => {
      if (this.#dirReuse.get(path) === entry) this.#dirReuse.delete(path);
      throw err;
    });
    if (this.#dirReuse.size >= DIR_REUSE_MAX) {
      this.#dirReuse.delete(this.#dirReuse.keys().next().value!);
    }
    this.#dirReuse.set(path, entry);
    return entry.attrs;
  }

  /** What tells one version of directory `path` from another (its own lstat), or undefined. */
  #dirPrint(path: string): string | undefined {
    return this.#lstat.version(path) ?? undefined;
  }

  async #readDir(path: string): Promise<FileAttr[]> {
    this.stats.dirs++;
    this.stats.attrs++;
    const first = ++this.#reads;
    // Others may reach the children if they may reach and search this directory.
    const real = path === "/" ? "/" : this.#reach(path);
    const self = this.#serve(
      real === null ? { attr: absent(path) } : this.#read(path, { real }),
      first,
    );
    if (real === null || self.kind !== "dir") return [];
    const names = Object.keys(self.children ?? {});
    const out: FileAttr[] = new Array(names.length);
    for (let i = 0; i < names.length; i++) {
      // A huge directory does not hold up the other requests for long.
      if (i > 0 && i % DIR_READS_PER_TURN === 0) await new Promise((r) => setTimeout(r, 0));
      const read = ++this.#reads;
      const child = this.#read(joinPath(path, names[i]), { real: joinPath(real, names[i]) });
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
      const info = this.#lstat.info(path);
      if (info === null || !info.isFile || ((info.mode ?? 0) & OTHERS_READ) === 0) return null;
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
   * `known`: hashes the caller knows (it wrote those files). `children`:
   * directory → the names in it that changed; such a directory is read child
   * by child where its listing allows (see `#relist`).
   */
  async refresh(
    paths: Iterable<string>,
    options: { known?: Map<string, string>; children?: Map<string, Set<string>> } = {},
  ): Promise<FileAttr[]> {
    const { known, children } = options;
    const changed: FileAttr[] = [];
    // What the walks to the paths found, for the reads until the next await.
    let seen = new Map<string, WalkStep>();
    for (const path of new Set(paths)) {
      const served = this.#served.get(path);
      if (served === undefined) continue;
      const read = ++this.#reads;
      const names = children?.get(path);
      let got = (names && this.#relist(path, served, names, seen)) ||
        this.#read(path, { seen });
      const before = served.attr;
      if (
        before.hash && got.attr.kind === "file" && got.attr.hash === undefined &&
        !known?.has(path) && sameAttr(before, got.attr)
      ) {
        // Same size and mtime, but the hash cache no longer vouches for it (its
        // ctime or inode changed): new content is possible, so hash it again.
        got = await this.#attr(path, true);
        seen = new Map();
        const now = this.#served.get(path);
        if (now === undefined || now.read > read) continue; // forgotten, or newer news
      }
      const after = got.attr;
      const hash = known?.get(path);
      if (hash && after.kind === "file") after.hash = hash;
      if (!sameAttr(before, after) || (after.hash && before.hash !== after.hash)) {
        // Told at once, in the order the reads started: a list told when the
        // whole refresh ends could come after a newer read's news, and a
        // mirror would take the older listing for the latest.
        this.#store(after, read, got.listing);
        this.#onChange([after]);
        changed.push(after);
      } else if (got.listing !== served.listing) {
        this.#store(before, read, got.listing); // the same listing, read under a newer watch
      }
    }
    return changed;
  }
}
