/**
 * Opening a file of a tree that others can shape: only a regular file, never
 * through a symlink, never blocking on a FIFO or waking a device. The name is
 * lstat'ed first; it is opened with `O_NONBLOCK | O_NOFOLLOW | O_NOCTTY`
 * (Deno's own `open` takes no flags: `node:fs` passes them through); the
 * descriptor is then stat'ed and must be the regular file the name showed.
 * Every later read goes through `/proc/self/fd/N`, the same inode, whatever
 * the name holds by then.
 *
 * @module
 */
import { closeSync, constants, open, openSync, readSync } from "node:fs";

const FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW |
  constants.O_NOCTTY;

/** The path is not (or is no longer) a regular file: a symlink, FIFO, socket, device or directory. */
export class NotRegularFileError extends Error {
  override name = "NotRegularFileError";
}

/** What a file-info record describes, in words for a message. */
export function kindName(info: Deno.FileInfo): string {
  if (info.isFile) return "a regular file";
  if (info.isDirectory) return "a directory";
  if (info.isSymlink) return "a symlink";
  if (info.isFifo) return "a FIFO";
  if (info.isSocket) return "a socket";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  return "not a regular file";
}

/** A regular file held open by descriptor; close it (or `using`) when done. */
export class RegularFile implements Disposable {
  /** The name it was opened by. */
  readonly name: string;
  /** Its attributes, from the open descriptor. */
  readonly info: Deno.FileInfo;
  #fd: number;

  constructor(name: string, fd: number, info: Deno.FileInfo) {
    this.name = name;
    this.#fd = fd;
    this.info = info;
  }

  /** A path to this very inode while the file is open (`/proc/self/fd/N`). */
  get path(): string {
    if (this.#fd < 0) throw new Error(`${this.name} is closed`);
    return `/proc/self/fd/${this.#fd}`;
  }

  /** Another handle for reading, on the same inode. */
  open(): Promise<Deno.FsFile> {
    return Deno.open(this.path, { read: true });
  }

  /** Its whole contents. */
  read(): Promise<Uint8Array> {
    return Deno.readFile(this.path);
  }

  /**
   * Reads into `buffer` from `position`, or from the descriptor's position
   * (which it moves) if none: the bytes read, or `null` at the end (as
   * `Deno.FsFile.readSync`). Blocks the thread: for small files, where a
   * thread hop costs more than the read.
   */
  readSync(buffer: Uint8Array, position?: number): number | null {
    if (this.#fd < 0) throw new Error(`${this.name} is closed`);
    const n = readSync(this.#fd, buffer, 0, buffer.length, position ?? null);
    return n === 0 && buffer.length > 0 ? null : n;
  }

  /** Its attributes now, from the descriptor (the same inode, whatever the name holds). */
  statSync(): Deno.FileInfo {
    return Deno.statSync(this.path);
  }

  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeSync(fd); // a read-only descriptor: nothing to flush, a few µs
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function openFd(path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    open(path, FLAGS, (err, fd) => err ? reject(err) : resolve(fd));
  });
}

/** Errors of node's open, in the words of this module. */
function openError(path: string, err: unknown): unknown {
  if ((err as { code?: string }).code === "ELOOP") {
    return new NotRegularFileError(`${path} is a symlink`, { cause: err });
  }
  if ((err as { code?: string }).code === "ENOENT") {
    return new Deno.errors.NotFound(`${path}: no such file`, { cause: err });
  }
  return err;
}

/** The opened descriptor's attributes must be those of the regular file `before` showed. */
function checkOpened(path: string, fd: number, before: Deno.FileInfo, info: Deno.FileInfo): void {
  if (!info.isFile || info.ino !== before.ino || info.dev !== before.dev) {
    closeSync(fd);
    throw new NotRegularFileError(
      info.isFile ? `${path} changed while it was opened` : `${path} is ${kindName(info)}`,
    );
  }
}

/**
 * Opens `path` for reading if it is a regular file, without following a
 * symlink or blocking; `seen` (an lstat of the path made by the caller) must
 * then still describe it (same device and inode).
 * @throws {NotRegularFileError} a symlink, FIFO, socket, device or directory,
 *   or a file other than `seen`.
 * @throws {Deno.errors.NotFound} and other file system errors as they come.
 */
export async function openRegular(path: string, seen?: Deno.FileInfo): Promise<RegularFile> {
  const before = seen ?? await Deno.lstat(path);
  if (!before.isFile) throw new NotRegularFileError(`${path} is ${kindName(before)}`);
  let fd: number;
  try {
    fd = await openFd(path);
  } catch (err) {
    throw openError(path, err);
  }
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(`/proc/self/fd/${fd}`);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  checkOpened(path, fd, before, info);
  return new RegularFile(path, fd, info);
}

/**
 * {@link openRegular} with synchronous calls (a few µs each, where an
 * asynchronous one costs a thread hop of ~55 µs here): for a small file read
 * at once.
 */
export function openRegularSync(path: string, seen?: Deno.FileInfo): RegularFile {
  const before = seen ?? Deno.lstatSync(path);
  if (!before.isFile) throw new NotRegularFileError(`${path} is ${kindName(before)}`);
  let fd: number;
  try {
    fd = openSync(path, FLAGS);
  } catch (err) {
    throw openError(path, err);
  }
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(`/proc/self/fd/${fd}`);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  checkOpened(path, fd, before, info);
  return new RegularFile(path, fd, info);
}
