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
import { close, constants, open } from "node:fs";

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

  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    close(fd, () => {});
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
    if ((err as { code?: string }).code === "ELOOP") {
      throw new NotRegularFileError(`${path} is a symlink`, { cause: err });
    }
    if ((err as { code?: string }).code === "ENOENT") {
      throw new Deno.errors.NotFound(`${path}: no such file`, { cause: err });
    }
    throw err;
  }
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(`/proc/self/fd/${fd}`);
  } catch (err) {
    close(fd, () => {});
    throw err;
  }
  if (!info.isFile || info.ino !== before.ino || info.dev !== before.dev) {
    close(fd, () => {});
    throw new NotRegularFileError(
      info.isFile ? `${path} changed while it was opened` : `${path} is ${kindName(info)}`,
    );
  }
  return new RegularFile(path, fd, info);
}
