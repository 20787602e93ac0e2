/**
 * The build tree reached through descriptors only. Every path is resolved
 * from a descriptor of the root with `openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS)`, in the kernel and atomically: no `..` and no
 * symlink, old or planted meanwhile, leads out of the tree (EXDEV, ELOOP).
 * Names are then changed with the `*at` calls on the descriptor of their
 * directory; files are created `O_CREAT | O_EXCL | O_NOFOLLOW`, never
 * written through a link.
 *
 * The master's private directory (`.termite-staging-<random>`, 0700, made
 * exclusively at start) holds the staging areas of result sets and the tree
 * watcher's marker files. Every call is synchronous (a libc call through FFI
 * costs ~0.1 µs): a batch of them runs with nothing else of the master
 * interleaved.
 *
 * @module
 */
import { cString } from "../common/c_string.ts";
import { errnoView } from "../common/libc.ts";
import { EEXIST, EISDIR, ELOOP, ENOENT, ENOTDIR, ENOTEMPTY, EXDEV } from "../fuse/errno.ts";
import {
  STAT_BLKSIZE,
  STAT_BLOCKS,
  STAT_CTIM,
  STAT_DEV,
  STAT_GID,
  STAT_INO,
  STAT_MODE,
  STAT_MTIM,
  STAT_NLINK,
  STAT_RDEV,
  STAT_SIZE,
  STAT_SIZE_FIELD,
  STAT_UID,
} from "../fuse/structs.ts";
import {
  AT_FDCWD,
  AT_REMOVEDIR,
  AT_SYMLINK_NOFOLLOW,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECTORY,
  O_EXCL,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_PATH,
  O_RDONLY,
  O_WRONLY,
  OPEN_HOW_FLAGS,
  OPEN_HOW_MODE,
  OPEN_HOW_RESOLVE,
  OPEN_HOW_SIZE,
  RESOLVE_BENEATH,
  RESOLVE_NO_SYMLINKS,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  SYS_OPENAT2,
} from "./fs_structs.ts";
import { type LibcFs, openLibcFs } from "./libc_fs.ts";

/** The prefix of the master's private directory (and of its leftovers) in the root. */
export const PRIVATE_DIR_PREFIX = ".termite-staging";

const BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;

const WHY: Record<number, string> = {
  [ENOENT]: "no such file or directory",
  [ENOTDIR]: "a non-directory on the way",
  [ELOOP]: "a symlink on the way",
  [EXDEV]: "outside the tree",
  [EEXIST]: "exists already",
  [EISDIR]: "is a directory",
  [ENOTEMPTY]: "directory not empty",
};

/** A call on the tree failed; `errno` says why. */
export class BeneathError extends Error {
  override name = "BeneathError";
  readonly errno: number;
  readonly path: string;

  constructor(op: string, path: string, errno: number) {
    super(`Cannot ${op} ${path || "."}: ${WHY[errno] ?? `errno ${errno}`}`);
    this.errno = errno;
    this.path = path;
  }
}

export type EntryKind = "file" | "dir" | "symlink" | "other";

/** What `fstatat(AT_SYMLINK_NOFOLLOW)` found. */
export interface EntryStat {
  kind: EntryKind;
  /** Permission bits (0o7777). */
  mode: number;
  /** As `Deno.lstatSync` reports it (ctime in whole seconds, as Deno gives it). */
  info: Deno.FileInfo;
}

/**
 * A staging area for one batch of changes: the names starting with `prefix`
 * in the private directory (`fd`, owned by the tree: never close it). Every
 * name staged is `prefix` + a name of the batch's own (`f0`, `l3`, `d1`).
 */
export interface StagingDir {
  readonly fd: number;
  readonly prefix: string;
}

/**
 * A name of one directory entry as a C string. The `*at` calls below resolve
 * a name with a slash as a path, through symlinks: a programmer error.
 */
function entryName(name: string): Uint8Array<ArrayBuffer> {
  if (name === "" || name === "." || name === ".." || name.includes("/")) {
    throw new Error(`Not an entry name: ${JSON.stringify(name)}`);
  }
  return cString(name);
}

/** 96 random bits in hex: a name nobody can guess ahead. */
function randomName(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A `struct stat` as `fstatat` filled it, as `Deno.lstatSync` would report it. */
export function decodeStat(buf: Uint8Array<ArrayBuffer>): EntryStat {
  const v = new DataView(buf.buffer);
  const rawMode = v.getUint32(STAT_MODE, true);
  const format = rawMode & S_IFMT;
  const time = (off: number) => {
    const sec = Number(v.getBigInt64(off, true));
    const nsec = Number(v.getBigInt64(off + 8, true));
    return { sec, ms: sec * 1000 + Math.floor(nsec / 1e6) };
  };
  const mtime = time(STAT_MTIM);
  const ctime = time(STAT_CTIM);
  const kind: EntryKind = format === S_IFREG
    ? "file"
    : format === S_IFDIR
    ? "dir"
    : format === S_IFLNK
    ? "symlink"
    : "other";
  const info: Deno.FileInfo = {
    isFile: kind === "file",
    isDirectory: kind === "dir",
    isSymlink: kind === "symlink",
    size: Number(v.getBigInt64(STAT_SIZE_FIELD, true)),
    mtime: new Date(mtime.ms),
    atime: null,
    birthtime: null,
    ctime: new Date(ctime.sec * 1000),
    dev: Number(v.getBigUint64(STAT_DEV, true)),
    ino: Number(v.getBigUint64(STAT_INO, true)),
    mode: rawMode,
    nlink: Number(v.getBigUint64(STAT_NLINK, true)),
    uid: v.getUint32(STAT_UID, true),
    gid: v.getUint32(STAT_GID, true),
    rdev: Number(v.getBigUint64(STAT_RDEV, true)),
    blksize: Number(v.getBigInt64(STAT_BLKSIZE, true)),
    blocks: Number(v.getBigInt64(STAT_BLOCKS, true)),
    isBlockDevice: format === S_IFBLK,
    isCharDevice: format === S_IFCHR,
    isFifo: format === S_IFIFO,
    isSocket: format === S_IFSOCK,
  };
  return { kind, mode: rawMode & 0o7777, info };
}

/** The build tree, by descriptor. Owns libc, the root's descriptor and the private directory. */
export class Beneath implements Disposable {
  readonly root: string;
  /** The private directory's name in the root. */
  readonly privateName: string;
  readonly #lib: LibcFs;
  readonly #errno: Int32Array;
  readonly #how = new Uint8Array(OPEN_HOW_SIZE);
  readonly #howView = new DataView(this.#how.buffer);
  readonly #stat = new Uint8Array(STAT_SIZE);
  readonly #rootFd: number;
  readonly #privateFd: number;
  /** Staging areas made, for their prefixes. */
  #stagings = 0;
  #closed = false;

  /**
   * Opens `root` (an absolute path without symlinks, trusted as given) and
   * makes the private directory in it, exclusively.
   */
  static open(root: string): Beneath {
    return new Beneath(root);
  }

  private constructor(root: string) {
    this.root = root;
    this.#lib = openLibcFs();
    this.#errno = errnoView(this.#lib);
    let rootFd = -1;
    let privateFd = -1;
    try {
      rootFd = this.#openat2(AT_FDCWD, root, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, 0, "open");
      this.privateName = `${PRIVATE_DIR_PREFIX}-${randomName()}`;
      this.mkdir(rootFd, this.privateName, 0o700);
      privateFd = this.openDirAt(rootFd, this.privateName);
    } catch (err) {
      if (rootFd >= 0) this.#lib.symbols.close(rootFd);
      this.#lib.close();
      throw err;
    }
    this.#rootFd = rootFd;
    this.#privateFd = privateFd;
  }

  /** The descriptor of the root (owned here: never close it). */
  get rootFd(): number {
    return this.#rootFd;
  }

  get privatePath(): string {
    return this.#abs(this.privateName);
  }

  /** `path` (absolute, normalised, inside the root) relative to the root; "" for the root. */
  relative(path: string): string {
    if (path === this.root) return "";
    return this.root === "/" ? path.slice(1) : path.slice(this.root.length + 1);
  }

  #abs(rel: string): string {
    return this.root === "/" ? `/${rel}` : `${this.root}/${rel}`;
  }

  #fail(op: string, path: string): never {
    throw new BeneathError(op, path, this.#errno[0]);
  }

  #openat2(
    dirFd: number,
    path: string,
    flags: number,
    mode: number,
    resolve: number,
    op: string,
  ): number {
    this.#howView.setBigUint64(OPEN_HOW_FLAGS, BigInt(flags), true);
    this.#howView.setBigUint64(OPEN_HOW_MODE, BigInt(mode), true);
    this.#howView.setBigUint64(OPEN_HOW_RESOLVE, BigInt(resolve), true);
    const fd = Number(
      this.#lib.symbols.openat2(
        SYS_OPENAT2,
        dirFd,
        cString(path),
        this.#how,
        BigInt(OPEN_HOW_SIZE),
      ),
    );
    if (fd < 0) this.#fail(op, path);
    return fd;
  }

  /** A descriptor (O_PATH) of the directory `rel` below `dirFd`, through no symlink. */
  openDirAt(dirFd: number, rel: string): number {
    return this.#openat2(dirFd, rel || ".", O_PATH | O_DIRECTORY | O_CLOEXEC, 0, BENEATH, "open");
  }

  /** A descriptor (O_PATH) of the directory `rel` of the tree, through no symlink. */
  openDir(rel: string): number {
    return this.openDirAt(this.#rootFd, rel);
  }

  /** Opens the file `rel` below `dirFd` for reading (never a link, never blocking on a FIFO). */
  openRead(dirFd: number, rel: string): number {
    return this.#openat2(
      dirFd,
      rel,
      O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
      0,
      BENEATH,
      "open",
    );
  }

  /** Opens a file outside the tree for reading by its absolute path (a final symlink refused). */
  openReadPath(path: string): number {
    return this.#openat2(
      AT_FDCWD,
      path,
      O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
      0,
      0,
      "open",
    );
  }

  /** Creates `name` in `dirFd` exclusively (never through a link) for writing. */
  createFile(dirFd: number, name: string, mode: number): number {
    return this.#openat2(
      dirFd,
      name,
      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
      mode,
      BENEATH,
      "create",
    );
  }

  /**
   * The entry `name` of `dirFd`, not followed; null if there is none. Here
   * and below, `name` is one component.
   */
  stat(dirFd: number, name: string): EntryStat | null {
    if (this.#lib.symbols.fstatat(dirFd, entryName(name), this.#stat, AT_SYMLINK_NOFOLLOW) !== 0) {
      if (this.#errno[0] === ENOENT) return null;
      this.#fail("stat", name);
    }
    return decodeStat(this.#stat);
  }

  fstat(fd: number): EntryStat {
    if (this.#lib.symbols.fstat(fd, this.#stat) !== 0) this.#fail("stat", `descriptor ${fd}`);
    return decodeStat(this.#stat);
  }

  mkdir(dirFd: number, name: string, mode: number): void {
    if (this.#lib.symbols.mkdirat(dirFd, entryName(name), mode) !== 0) this.#fail("make", name);
  }

  /** `renameat2`: never follows either name; `flags` RENAME_NOREPLACE or RENAME_EXCHANGE. */
  rename(fromFd: number, from: string, toFd: number, to: string, flags: number): void {
    if (this.#lib.symbols.renameat2(fromFd, entryName(from), toFd, entryName(to), flags) !== 0) {
      this.#fail("move", `${from} to ${to}`);
    }
  }

  /** Removes the name `name` of `dirFd` (a link itself, never its target). */
  unlink(dirFd: number, name: string, dir = false): void {
    if (this.#lib.symbols.unlinkat(dirFd, entryName(name), dir ? AT_REMOVEDIR : 0) !== 0) {
      this.#fail("remove", name);
    }
  }

  symlink(target: string, dirFd: number, name: string): void {
    if (this.#lib.symbols.symlinkat(cString(target), dirFd, entryName(name)) !== 0) {
      this.#fail("make the symlink", name);
    }
  }

  /** Sets the mode of the directory `name` of `dirFd` through a descriptor of it. */
  chmodDir(dirFd: number, name: string, mode: number): void {
    const fd = this.#openat2(
      dirFd,
      name || ".",
      O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
      0,
      BENEATH,
      "open",
    );
    try {
      this.fchmod(fd, mode, name);
    } finally {
      this.closeFd(fd);
    }
  }

  fchmod(fd: number, mode: number, what = `descriptor ${fd}`): void {
    if (this.#lib.symbols.fchmod(fd, mode) !== 0) this.#fail("change the mode of", what);
  }

  writeAll(fd: number, bytes: Uint8Array<ArrayBuffer>, what = `descriptor ${fd}`): void {
    let off = 0;
    while (off < bytes.length) {
      const n = Number(
        this.#lib.symbols.write(fd, bytes.subarray(off), BigInt(bytes.length - off)),
      );
      if (n < 0) this.#fail("write", what);
      off += n;
    }
  }

  /** Copies up to `bytes` bytes from `inFd` to `outFd` at their offsets; the bytes copied. */
  copy(inFd: number, outFd: number, bytes: number, what = `descriptor ${inFd}`): number {
    const n = Number(this.#lib.symbols.copy_file_range(inFd, null, outFd, null, BigInt(bytes), 0));
    if (n < 0) this.#fail("copy", what);
    return n;
  }

  closeFd(fd: number): void {
    this.#lib.symbols.close(fd);
  }

  /**
   * A staging area of its own in the private directory (0700): a prefix no
   * other area of this tree uses. No directory is made (a mkdir and an rmdir
   * per batch: ~180 µs of CPU on ext4 here).
   */
  makeStaging(): StagingDir {
    return { fd: this.#privateFd, prefix: `${++this.#stagings}-` };
  }

  /**
   * Removes what a staging area holds: files at once, directories (a deleted
   * tree moved aside) with an asynchronous recursive removal. `left`: when
   * the caller knows every name the area holds, none of them a directory (a
   * commit's journal), those are unlinked without listing the private
   * directory; else, or if one of them cannot be unlinked (a directory
   * swapped in meanwhile says EISDIR), the names with the area's prefix are
   * looked for.
   */
  discardStaging(staging: StagingDir, left?: readonly string[]): Promise<void> | void {
    if (this.#closed) return; // the private directory went with the tree
    if (left !== undefined) {
      let all = true;
      for (const name of left) {
        // ENOENT: gone already.
        if (
          this.#lib.symbols.unlinkat(staging.fd, entryName(name), 0) !== 0 &&
          this.#errno[0] !== ENOENT
        ) {
          all = false;
          break;
        }
      }
      if (all) return;
    }
    const dirs: string[] = [];
    for (const entry of Deno.readDirSync(this.privatePath)) {
      if (!entry.name.startsWith(staging.prefix)) continue;
      if (
        this.#lib.symbols.unlinkat(staging.fd, entryName(entry.name), 0) !== 0 &&
        this.#errno[0] !== ENOENT
      ) dirs.push(`${this.privatePath}/${entry.name}`);
    }
    if (dirs.length === 0) return;
    return Promise.all(dirs.map((d) =>
      Deno.remove(d, { recursive: true }).catch(() => {
        // Gone already, or not removable: the private directory goes at close.
      })
    )).then(() => {});
  }

  /**
   * Creates an empty marker file with an unpredictable name in the private
   * directory, exclusively; its absolute path.
   */
  createMarker(): string {
    const name = `sync-${randomName()}`;
    this.closeFd(this.createFile(this.#privateFd, name, 0o600));
    return `${this.privatePath}/${name}`;
  }

  removeMarker(path: string): void {
    const name = path.slice(path.lastIndexOf("/") + 1);
    this.#lib.symbols.unlinkat(this.#privateFd, entryName(name), 0);
  }

  /** Closes every descriptor and removes the private directory. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#lib.symbols.close(this.#privateFd);
    this.#lib.symbols.close(this.#rootFd);
    this.#lib.close();
    try {
      Deno.removeSync(this.privatePath, { recursive: true });
    } catch {
      // Gone already: the next start removes leftovers.
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Descriptors of the tree's directories for one batch of changes (a bounded
 * cache, closed at dispose), resolved through no symlink, made on demand.
 */
export class DirHandles implements Disposable {
  readonly #tree: Beneath;
  readonly #fds = new Map<string, number>();
  readonly #max: number;

  constructor(tree: Beneath, max = 64) {
    this.#tree = tree;
    this.#max = max;
  }

  /** The directory `rel` (throws BeneathError: ENOENT, ENOTDIR, ELOOP). */
  get(rel: string): number {
    if (rel === "") return this.#tree.rootFd;
    const known = this.#fds.get(rel);
    if (known !== undefined) return known;
    return this.#keep(rel, this.#tree.openDir(rel));
  }

  /**
   * The directory `rel`, made with its missing parents (`mode`, less the
   * umask) if need be; `made` hears of each directory made, parents first.
   */
  ensure(rel: string, mode: number, made: (rel: string) => void): number {
    try {
      return this.get(rel);
    } catch (err) {
      if (!(err instanceof BeneathError) || err.errno !== ENOENT) throw err;
    }
    const slash = rel.lastIndexOf("/");
    const parent = this.ensure(slash < 0 ? "" : rel.slice(0, slash), mode, made);
    const name = rel.slice(slash + 1);
    try {
      this.#tree.mkdir(parent, name, mode);
      made(rel);
    } catch (err) {
      // Made by someone else meanwhile: use it, if it is a directory.
      if (!(err instanceof BeneathError) || err.errno !== EEXIST) throw err;
    }
    return this.#keep(rel, this.#tree.openDirAt(parent, name));
  }

  /** Drops `rel` and everything below it (it was moved away). */
  forget(rel: string): void {
    for (const [key, fd] of this.#fds) {
      if (key === rel || key.startsWith(rel + "/")) {
        this.#tree.closeFd(fd);
        this.#fds.delete(key);
      }
    }
  }

  #keep(rel: string, fd: number): number {
    if (this.#fds.size >= this.#max) {
      const [oldest, oldFd] = this.#fds.entries().next().value!;
      this.#tree.closeFd(oldFd);
      this.#fds.delete(oldest);
    }
    this.#fds.set(rel, fd);
    return fd;
  }

  [Symbol.dispose](): void {
    for (const fd of this.#fds.values()) this.#tree.closeFd(fd);
    this.#fds.clear();
  }
}
