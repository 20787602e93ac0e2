/**
 * `lstat`/`stat` of a path by FFI into one reused buffer: no `Deno.FileInfo`,
 * no exception for an absent path (the action cache asks hundreds per hit,
 * half of them for names that do not exist; Deno's `lstatSync` costs ~10 µs
 * each there, most of it building the error). What a probe found is read
 * from the buffer until the next probe; a {@linkcode StatPrint} copies the
 * fields that tell one version of a file from another.
 *
 * @module
 */

import { errnoView } from "../common/libc.ts";
import { decodeStat } from "./beneath.ts";
import {
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  O_CLOEXEC,
  O_DIRECTORY,
  O_RDONLY,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
} from "./fs_structs.ts";
import { type LibcFs, openLibcFs } from "./libc_fs.ts";
import {
  DIRENT64_NAME,
  DIRENT64_RECLEN,
  DIRENT64_TYPE,
  DT_DIR,
  DT_LNK,
  DT_REG,
  DT_UNKNOWN,
  STAT_CTIM,
  STAT_DEV,
  STAT_GID,
  STAT_INO,
  STAT_MODE,
  STAT_MTIM,
  STAT_SIZE,
  STAT_SIZE_FIELD,
  STAT_UID,
} from "../fuse/structs.ts";

/** Bytes of a path (UTF-8) a probe takes; longer ones are the caller's to stat otherwise. */
export const PROBE_PATH_BYTES_MAX = 3 * 4096;

/**
 * The 32-bit words of `struct stat` that a change of the file changes (or
 * that differ between two files): st_dev, st_ino, st_mode, st_uid, st_gid,
 * st_size, st_mtim, st_ctim (seconds and nanoseconds each).
 */
const PRINT_WORDS = [
  STAT_DEV / 4,
  STAT_DEV / 4 + 1,
  STAT_INO / 4,
  STAT_INO / 4 + 1,
  STAT_MODE / 4,
  STAT_UID / 4,
  STAT_GID / 4,
  STAT_SIZE_FIELD / 4,
  STAT_SIZE_FIELD / 4 + 1,
  STAT_MTIM / 4,
  STAT_MTIM / 4 + 1,
  STAT_MTIM / 4 + 2,
  STAT_CTIM / 4,
  STAT_CTIM / 4 + 1,
  STAT_CTIM / 4 + 2,
];

/** What one probe found of a file's version (see `PRINT_WORDS`). */
export type StatPrint = Int32Array<ArrayBuffer>;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Bytes `getdents64` fills per call (a directory of ~1,000 names in one or two calls). */
const DIRENTS_BYTES = 32 * 1024;

/** An entry of a directory as its listing tells it (no stat of its own, but where the file system gives no type). */
export interface ListedEntry {
  name: string;
  isFile: boolean;
  isDirectory: boolean;
  isSymlink: boolean;
}

/** One libc handle and one stat buffer; synchronous, for one thread. */
export class StatProbe {
  readonly #lib: LibcFs;
  readonly #errno: Int32Array;
  readonly #stat = new Uint8Array(STAT_SIZE);
  readonly #words = new Int32Array(this.#stat.buffer);
  readonly #view = new DataView(this.#stat.buffer);
  readonly #path = new Uint8Array(PROBE_PATH_BYTES_MAX + 1);
  #dirents: Uint8Array<ArrayBuffer> | undefined;
  #closed = false;

  /** Opens libc (throws a LibcLoadError if it cannot). */
  constructor() {
    this.#lib = openLibcFs();
    this.#errno = errnoView(this.#lib);
  }

  /**
   * `stat(path)` (`follow`) or `lstat(path)`: 0, or the errno; -1 for a path
   * this probe cannot take (too long, a NUL in it).
   */
  probe(path: string, follow: boolean): number {
    if (this.#closed) throw new Error("StatProbe: closed");
    if (path.length > PROBE_PATH_BYTES_MAX || path.includes("\0")) return -1;
    const { read, written } = encoder.encodeInto(path, this.#path);
    if (read !== path.length || written >= this.#path.length) return -1;
    this.#path[written] = 0;
    const flags = follow ? 0 : AT_SYMLINK_NOFOLLOW;
    if (this.#lib.symbols.fstatat(AT_FDCWD, this.#path, this.#stat, flags) === 0) return 0;
    return this.#errno[0] || -1;
  }

  /**
   * The entries of directory `path` (not `.` and `..`), in the order the
   * file system gives them, at most `max` (then the list stops there): one
   * `open` and a `getdents64` per ~1,000 names, where `Deno.readDirSync` builds
   * an object per entry across the op boundary (about a third of the time of
   * a listing on the master, measured). An entry whose type the file system
   * does not give (DT_UNKNOWN) is `lstat`ed, as `Deno.readDirSync` does.
   * The errno (positive) where the directory cannot be opened or read; -1 for
   * a path this probe cannot take.
   */
  list(path: string, max = Infinity): ListedEntry[] | number {
    if (this.#closed) throw new Error("StatProbe: closed");
    if (path.length > PROBE_PATH_BYTES_MAX || path.includes("\0")) return -1;
    const { read, written } = encoder.encodeInto(path, this.#path);
    if (read !== path.length || written >= this.#path.length) return -1;
    this.#path[written] = 0;
    const lib = this.#lib.symbols;
    const fd = lib.openat(AT_FDCWD, this.#path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) return this.#errno[0] || -1;
    const buf = this.#dirents ??= new Uint8Array(DIRENTS_BYTES);
    const view = new DataView(buf.buffer);
    const out: ListedEntry[] = [];
    try {
      while (out.length < max) {
        const n = Number(lib.getdents64(fd, buf, BigInt(buf.length)));
        if (n < 0) return this.#errno[0] || -1;
        if (n === 0) break;
        for (let at = 0; at < n && out.length < max;) {
          const reclen = view.getUint16(at + DIRENT64_RECLEN, true);
          const nameAt = at + DIRENT64_NAME;
          let nameEnd = buf.indexOf(0, nameAt);
          if (nameEnd < 0 || nameEnd > at + reclen) nameEnd = at + reclen;
          let type = buf[at + DIRENT64_TYPE];
          at += reclen;
          // "." and "..": 0x2e, and 0x2e 0x2e.
          if (buf[nameAt] === 0x2e) {
            const len = nameEnd - nameAt;
            if (len === 1 || (len === 2 && buf[nameAt + 1] === 0x2e)) continue;
          }
          if (type === DT_UNKNOWN) {
            // NUL-terminated in place: stat it relative to the directory.
            const st = lib.fstatat(fd, buf.subarray(nameAt), this.#stat, AT_SYMLINK_NOFOLLOW);
            if (st !== 0) continue; // gone meanwhile
            const fmt = this.#view.getUint32(STAT_MODE, true) & S_IFMT;
            type = fmt === S_IFDIR
              ? DT_DIR
              : fmt === S_IFREG
              ? DT_REG
              : fmt === S_IFLNK
              ? DT_LNK
              : 0;
          }
          out.push({
            name: decoder.decode(buf.subarray(nameAt, nameEnd)),
            isFile: type === DT_REG,
            isDirectory: type === DT_DIR,
            isSymlink: type === DT_LNK,
          });
        }
      }
      return out;
    } finally {
      lib.close(fd);
    }
  }

  /** The last probe found a symlink. */
  isSymlink(): boolean {
    return (this.#view.getUint32(STAT_MODE, true) & S_IFMT) === S_IFLNK;
  }

  /** What the last probe found, as `Deno.lstatSync` would say it. */
  info(): Deno.FileInfo {
    return decodeStat(this.#stat).info;
  }

  /** The last probe's st_mode. */
  mode(): number {
    return this.#view.getUint32(STAT_MODE, true);
  }

  /** The last probe's st_ino. */
  ino(): number {
    return Number(this.#view.getBigUint64(STAT_INO, true));
  }

  /** The last probe's st_ctim, in ms (to the nanosecond). */
  ctimeMs(): number {
    return this.#timeMs(STAT_CTIM);
  }

  /** The later of the last probe's st_mtim and st_ctim, in ms. */
  changedMs(): number {
    return Math.max(this.#timeMs(STAT_MTIM), this.#timeMs(STAT_CTIM));
  }

  /** The last probe's version of its file. */
  print(): StatPrint {
    const out = new Int32Array(PRINT_WORDS.length);
    for (let i = 0; i < PRINT_WORDS.length; i++) out[i] = this.#words[PRINT_WORDS[i]];
    return out;
  }

  /** Whether the last probe found the version `print` describes. */
  same(print: StatPrint): boolean {
    const words = this.#words;
    for (let i = 0; i < PRINT_WORDS.length; i++) {
      if (print[i] !== words[PRINT_WORDS[i]]) return false;
    }
    return true;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#lib.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #timeMs(offset: number): number {
    const seconds = Number(this.#view.getBigInt64(offset, true));
    return seconds * 1000 + this.#view.getUint32(offset + 8, true) / 1e6;
  }
}
