/**
 * A read-only mirror of a local directory: the first file system on the node
 * API, and the reference the C mirror in `bench/fuse_c/mirror.c` copies.
 *
 * Node ids are assigned per (st_dev, st_ino) of the source and mapped to a
 * path ({@link NodeTable}: dropped when the kernel forgets them); `stat`
 * shows the source's own inode numbers. File contents are sent by
 * libfuse straight from the source file's descriptor (`FdSlice`), never
 * through JavaScript. The mirror never touches its own mount point: an entry
 * that leads to it is hidden, and a source directory inside the mount is
 * refused at mount time.
 *
 * @module
 */

import { errnoView } from "../common/libc.ts";
import { joinPath } from "../common/paths.ts";
import { EBADF, ENAMETOOLONG, ENOENT, EROFS, ESTALE } from "./errno.ts";
import { type Libc, openLibc } from "./libc.ts";
import { NodeTable, type TableNode } from "./node_table.ts";
import {
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  decodeStat,
  decodeStatvfs,
  DIRENT64_INO,
  DIRENT64_NAME,
  DIRENT64_RECLEN,
  DIRENT64_TYPE,
  FUSE_ROOT_ID,
  O_ACCMODE,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_RDONLY,
  S_IFMT,
  STAT_SIZE,
  type StatResult,
  STATVFS_SIZE,
} from "./structs.ts";
import type {
  AttrReply,
  ConnInfo,
  DirEntry,
  DirEntryPlus,
  Entry,
  Errno,
  FdSlice,
  FileSystem,
  OpenDirReply,
  OpenReply,
  StatFs,
} from "./types.ts";

/** Options of {@link LoopbackFs}. */
export interface LoopbackOptions {
  /** How long the kernel may cache a name → inode answer (default 1 s). */
  entryTimeoutS?: number;
  /** How long the kernel may cache attributes (default 1 s). */
  attrTimeoutS?: number;
  /** How long the kernel may cache "no such name" (default 1 s; 0 = ENOENT, not cached). */
  negativeTimeoutS?: number;
  /** Keep page cache and directory listings across opens (default true). */
  keepCache?: boolean;
  /** Offer READDIRPLUS (listing with attributes) to the kernel (default false). */
  readdirplus?: boolean;
  /**
   * Zero-message opens (default false): the mirror has no `open`, so the
   * session lets the kernel skip OPEN/RELEASE (FUSE_CAP_NO_OPEN_SUPPORT), and
   * the kernel then keeps the page cache across opens. Reads use a
   * descriptor kept per inode (at most `fdsMax`, then opened per read).
   */
  noOpen?: boolean;
  /** Descriptors kept open for reads with `noOpen` (default 512). */
  fdsMax?: number;
  /** Open directories kept at once (default 4096); more opens fail with EMFILE. */
  openDirsMax?: number;
}

/** The source directory cannot be mirrored. */
export class LoopbackError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LoopbackError";
  }
}

interface Node extends TableNode {
  /** Absolute path in the source. */
  path: string;
  key: string;
  /** A descriptor kept for reads (noOpen), or -1. */
  fd: number;
}

const PATH_BYTES_MAX = 4096;
const DIRENTS_BYTES = 64 * 1024;
/** Smallest readdir record (24-byte header + name padded to 8). */
const DIRENT_BYTES_MIN = 32;
/** Smallest readdirplus record (128-byte entry + 24-byte header + name). */
const DIRENTPLUS_BYTES_MIN = 160;
const OPEN_DIRS_MAX_DEFAULT = 4096;

const DT_TO_MODE = [
  0,
  0o010000,
  0o020000,
  0,
  0o040000,
  0,
  0o060000,
  0,
  0o100000,
  0,
  0o120000,
  0,
  0o140000,
];

export class LoopbackFs implements FileSystem, Disposable {
  readonly rootDir: string;
  readonly #entryTimeoutS: number;
  readonly #attrTimeoutS: number;
  readonly #negativeTimeoutS: number;
  readonly #keepCache: boolean;
  readonly #openDirsMax: number;
  readonly #libc: Libc;
  readonly #errno: Int32Array;
  readonly #nodes = new NodeTable<Node>({
    onDrop: (node) => {
      this.#byKey.delete(node.key);
      this.#closeNodeFd(node);
    },
  });
  /** Nodes by source file, `${st_dev}:${st_ino}`. */
  readonly #byKey = new Map<string, Node>();
  readonly #dirs = new Map<number, DirEntry[]>();
  readonly #files = new Set<number>();
  readonly #path = new Uint8Array(PATH_BYTES_MAX + 1);
  readonly #stat = new Uint8Array(STAT_SIZE);
  readonly #statView = new DataView(this.#stat.buffer);
  readonly #dirents = new Uint8Array(DIRENTS_BYTES);
  readonly #direntsView = new DataView(this.#dirents.buffer);
  readonly #link = new Uint8Array(PATH_BYTES_MAX);
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();
  #nextDirFh = 1;
  #hidden = "";
  #closed = false;
  readdirplus?: FileSystem["readdirplus"];
  open?: FileSystem["open"];
  release?: FileSystem["release"];
  read: NonNullable<FileSystem["read"]>;
  readonly #fdsMax: number;
  /** Nodes holding a read descriptor, oldest first (noOpen). */
  readonly #fdNodes = new Set<Node>();

  constructor(rootDir: string, options: LoopbackOptions = {}) {
    try {
      this.rootDir = Deno.realPathSync(rootDir);
      if (!Deno.statSync(this.rootDir).isDirectory) throw new Error("not a directory");
    } catch (error) {
      throw new LoopbackError(`Cannot mirror ${rootDir}: no such directory`, { cause: error });
    }
    this.#entryTimeoutS = options.entryTimeoutS ?? 1;
    this.#attrTimeoutS = options.attrTimeoutS ?? 1;
    this.#negativeTimeoutS = options.negativeTimeoutS ?? 1;
    this.#keepCache = options.keepCache ?? true;
    this.#openDirsMax = options.openDirsMax ?? OPEN_DIRS_MAX_DEFAULT;
    this.#libc = openLibc();
    this.#errno = errnoView(this.#libc);
    this.#nodes.add({ id: FUSE_ROOT_ID, path: this.rootDir, key: "", fd: -1, known: true });
    if (options.readdirplus) this.readdirplus = this.#readdirplus;
    this.#fdsMax = options.fdsMax ?? 512;
    if (options.noOpen) {
      this.read = this.#readByInode;
    } else {
      this.open = this.#open;
      this.release = this.#release;
      this.read = this.#readByHandle;
    }
  }

  init(conn: ConnInfo): void {
    const mountpoint = conn.mountpoint;
    const inside = (path: string, dir: string) => path === dir || path.startsWith(dir + "/");
    if (inside(this.rootDir, mountpoint)) {
      throw new LoopbackError(
        `Cannot mirror ${this.rootDir}: it is inside the mount ${mountpoint}`,
      );
    }
    this.#hidden = inside(mountpoint, this.rootDir) ? mountpoint : "";
  }

  destroy(): void {
    for (const fd of this.#files) this.#libc.symbols.close(fd);
    this.#files.clear();
    for (const node of this.#fdNodes) this.#closeNodeFd(node);
    this.#dirs.clear();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.destroy();
    this.#libc.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Inodes currently known (kernel references, plus the root). */
  get inodeCount(): number {
    return this.#nodes.size;
  }

  /** The C string of `path` in the path scratch; false if too long. */
  #cPath(path: string): boolean {
    const { read, written } = this.#encoder.encodeInto(
      path,
      this.#path.subarray(0, PATH_BYTES_MAX),
    );
    if (read !== path.length) return false;
    this.#path[written] = 0;
    return true;
  }

  /** lstat `path`: the stat, or an errno. */
  #lstat(path: string): StatResult | Errno {
    if (!this.#cPath(path)) return ENAMETOOLONG;
    if (this.#libc.symbols.fstatat(AT_FDCWD, this.#path, this.#stat, AT_SYMLINK_NOFOLLOW) !== 0) {
      return this.#errno[0];
    }
    return decodeStat(this.#statView, 0);
  }

  #childPath(parent: Node, name: string): string | undefined {
    if (name === "" || name === "." || name === ".." || name.includes("/")) return undefined;
    const path = joinPath(parent.path, name);
    return path === this.#hidden ? undefined : path;
  }

  #nodeFor(path: string, st: StatResult): bigint {
    const key = `${st.dev}:${st.ino}`;
    let node = this.#byKey.get(key);
    if (node === undefined) {
      node = this.#nodes.add({ id: this.#nodes.nextId(), path, key, fd: -1, known: true });
      this.#byKey.set(key, node);
    }
    return node.id;
  }

  #negative(): Entry | Errno {
    if (this.#negativeTimeoutS <= 0) return ENOENT;
    return { ino: 0, entryTimeoutS: this.#negativeTimeoutS, attrTimeoutS: 0 };
  }

  lookup(parent: bigint, name: string): Entry | Errno {
    const node = this.#nodes.get(parent);
    if (node === undefined) return ESTALE;
    const path = this.#childPath(node, name);
    if (path === undefined) return this.#negative();
    const st = this.#lstat(path);
    if (typeof st === "number") return st === ENOENT ? this.#negative() : st;
    return {
      ino: this.#nodeFor(path, st),
      attr: st,
      entryTimeoutS: this.#entryTimeoutS,
      attrTimeoutS: this.#attrTimeoutS,
    };
  }

  forget(ino: bigint): void {
    this.#nodes.forget(ino);
  }

  getattr(ino: bigint): AttrReply | Errno {
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    const st = this.#lstat(node.path);
    if (typeof st === "number") return st;
    return { attr: st, attrTimeoutS: this.#attrTimeoutS };
  }

  readlink(ino: bigint): Uint8Array | Errno {
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (!this.#cPath(node.path)) return ENAMETOOLONG;
    const target = this.#link;
    const n = Number(
      this.#libc.symbols.readlinkat(AT_FDCWD, this.#path, target, BigInt(target.length)),
    );
    if (n < 0) return this.#errno[0];
    return target.slice(0, n);
  }

  opendir(ino: bigint): OpenDirReply | Errno {
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (this.#dirs.size >= this.#openDirsMax) return 24; // EMFILE
    const entries = this.#list(node);
    if (typeof entries === "number") return entries;
    const fh = this.#nextDirFh++;
    this.#dirs.set(fh, entries);
    return { fh, cacheReaddir: this.#keepCache, keepCache: this.#keepCache };
  }

  /** Every entry of a directory, "." and ".." first. */
  #list(node: Node): DirEntry[] | Errno {
    const c = this.#libc.symbols;
    if (!this.#cPath(node.path)) return ENAMETOOLONG;
    const fd = c.open(this.#path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) return this.#errno[0];
    const entries: DirEntry[] = [];
    const buf = this.#dirents;
    const view = this.#direntsView;
    try {
      for (;;) {
        const n = Number(c.getdents64(fd, buf, BigInt(buf.length)));
        if (n < 0) return this.#errno[0];
        if (n === 0) break;
        for (let at = 0; at < n;) {
          const reclen = view.getUint16(at + DIRENT64_RECLEN, true);
          const nameEnd = buf.indexOf(0, at + DIRENT64_NAME);
          const name = this.#decoder.decode(buf.subarray(at + DIRENT64_NAME, nameEnd));
          const type = view.getUint8(at + DIRENT64_TYPE);
          const ino = view.getBigUint64(at + DIRENT64_INO, true);
          at += reclen;
          if (name !== "." && name !== ".." && this.#childPath(node, name) === undefined) continue;
          entries.push({ name, ino, mode: DT_TO_MODE[type] ?? 0 });
        }
      }
    } finally {
      c.close(fd);
    }
    const rank = (name: string) => name === "." ? 0 : name === ".." ? 1 : 2;
    entries.sort((a, b) => rank(a.name) - rank(b.name));
    return entries;
  }

  readdir(_ino: bigint, fh: number, offset: number, sizeMax: number): DirEntry[] | Errno {
    const entries = this.#dirs.get(fh);
    if (entries === undefined) return EBADF;
    return entries.slice(offset, offset + Math.ceil(sizeMax / DIRENT_BYTES_MIN));
  }

  #readdirplus = (ino: bigint, fh: number, offset: number, sizeMax: number) => {
    const entries = this.#dirs.get(fh);
    const node = this.#nodes.get(ino);
    if (entries === undefined || node === undefined) return EBADF;
    const out: DirEntryPlus[] = [];
    const end = Math.min(entries.length, offset + Math.ceil(sizeMax / DIRENTPLUS_BYTES_MIN));
    for (let i = offset; i < end; i++) {
      const { name, ino: dirIno, mode } = entries[i];
      const path = name === "." || name === ".." ? undefined : this.#childPath(node, name);
      const st = path === undefined ? undefined : this.#lstat(path);
      if (path === undefined || st === undefined || typeof st === "number") {
        const attr = {
          ino: dirIno,
          mode: mode & S_IFMT,
          nlink: 1,
          uid: 0,
          gid: 0,
          size: 0,
          mtimeMs: 0,
        };
        out.push({ name, entry: { ino: 0, attr, entryTimeoutS: 0, attrTimeoutS: 0 } });
        continue;
      }
      out.push({
        name,
        entry: {
          ino: this.#nodeFor(path, st),
          attr: st,
          entryTimeoutS: this.#entryTimeoutS,
          attrTimeoutS: this.#attrTimeoutS,
        },
      });
    }
    return out;
  };

  releasedir(_ino: bigint, fh: number): void {
    this.#dirs.delete(fh);
  }

  #open = (ino: bigint, flags: number): OpenReply | Errno => {
    if ((flags & O_ACCMODE) !== O_RDONLY) return EROFS;
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    const fd = this.#openRead(node.path);
    if (fd < 0) return -fd;
    this.#files.add(fd);
    return { fh: fd, keepCache: this.#keepCache };
  };

  /** open(2) for reading: the fd, or a negative errno. */
  #openRead(path: string): number {
    if (!this.#cPath(path)) return -ENAMETOOLONG;
    const fd = this.#libc.symbols.open(this.#path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    return fd < 0 ? -this.#errno[0] : fd;
  }

  #readByHandle = (_ino: bigint, fh: number, size: number, offset: number): FdSlice | Errno => {
    if (!this.#files.has(fh)) return EBADF;
    return { fd: fh, offset, size };
  };

  #release = (_ino: bigint, fh: number): void => {
    if (this.#files.delete(fh)) this.#libc.symbols.close(fh);
  };

  /** noOpen: read through a descriptor kept per inode (LRU, at most fdsMax). */
  #readByInode = (ino: bigint, _fh: number, size: number, offset: number): FdSlice | Errno => {
    const node = this.#nodes.get(ino);
    if (node === undefined) return ESTALE;
    if (node.fd < 0) {
      const fd = this.#openRead(node.path);
      if (fd < 0) return -fd;
      if (this.#fdNodes.size >= this.#fdsMax) {
        const oldest = this.#fdNodes.values().next().value;
        if (oldest !== undefined) this.#closeNodeFd(oldest);
      }
      node.fd = fd;
    } else {
      this.#fdNodes.delete(node);
    }
    this.#fdNodes.add(node);
    return { fd: node.fd, offset, size };
  };

  #closeNodeFd(node: Node): void {
    if (node.fd < 0) return;
    this.#libc.symbols.close(node.fd);
    node.fd = -1;
    this.#fdNodes.delete(node);
  }

  statfs(): StatFs | Errno {
    if (!this.#cPath(this.rootDir)) return ENAMETOOLONG;
    const buf = new Uint8Array(STATVFS_SIZE);
    if (this.#libc.symbols.statvfs(this.#path, buf) !== 0) return this.#errno[0];
    return decodeStatvfs(new DataView(buf.buffer), 0);
  }
}
