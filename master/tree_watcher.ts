/**
 * Watches the build tree for changes with inotify, through libc. Not
 * `Deno.watchFs`: its thread opens every path an event names (to compare
 * files), so a FIFO made in the tree blocked it for good (the master's next
 * jobs each waited 2 s for a marker event, and SIGTERM no longer stopped it),
 * and a device node was opened by the master. This watcher reads event
 * records only: it lists directories and watches them, without following
 * symlinks, and never opens anything else.
 *
 * @module
 */
import { cString } from "../common/c_string.ts";
import { errnoView, LIBC_PATH, loadLibc } from "../common/libc.ts";
import {
  EAGAIN,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EINTR,
  ENOSPC,
  IN_ATTRIB,
  IN_CLOEXEC,
  IN_CLOSE_WRITE,
  IN_CREATE,
  IN_DELETE,
  IN_DELETE_SELF,
  IN_DONT_FOLLOW,
  IN_EXCL_UNLINK,
  IN_IGNORED,
  IN_ISDIR,
  IN_MODIFY,
  IN_MOVE_SELF,
  IN_MOVED_FROM,
  IN_MOVED_TO,
  IN_NONBLOCK,
  IN_ONLYDIR,
  IN_Q_OVERFLOW,
  INOTIFY_EVENT_HEADER_BYTES,
  INOTIFY_SYMBOLS,
  type InotifyLibc,
  POLLFD_BYTES,
  POLLIN,
} from "./inotify_ffi.ts";
import { isInside, joinPath, parentOf } from "../common/paths.ts";

/**
 * What changed: `paths` (files, directories, links or special files created,
 * written, changed, moved or deleted; for a new directory, everything in it),
 * or `rescan` when events were lost and every path may have changed.
 */
export type TreeEvent = { kind: "paths"; paths: string[] } | { kind: "rescan"; paths: [] };

export interface TreeWatcherOptions {
  root: string;
  /** Directories not to watch (what happens to their names is still seen in their parent). */
  skip?: (dir: string) => boolean;
  log?: (message: string) => void;
  /** Directories watched at most; beyond, their changes are not seen (logged once). */
  watchesMax?: number;
  /** Events held for a slow reader at most; beyond, one `rescan` replaces them. */
  queueMax?: number;
  /**
   * Takes each event as it is read, synchronously (within the read, or within
   * {@linkcode TreeWatcher.drain}), instead of an iterator: nothing is queued.
   */
  onEvent?: (event: TreeEvent) => void;
}

/** Cannot watch the tree: no inotify, or the root is not a directory. */
export class TreeWatcherError extends Error {
  override name = "TreeWatcherError";
}

const WATCH_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO |
  IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW |
  IN_EXCL_UNLINK;
const READ_BYTES = 64 * 1024;

const decoder = new TextDecoder();

export class TreeWatcher implements AsyncIterable<TreeEvent> {
  readonly root: string;
  #lib: InotifyLibc;
  #fd: number;
  #wakeFd: number;
  #skip: (dir: string) => boolean;
  #log: (message: string) => void;
  #watchesMax: number;
  #queueMax: number;
  #onEvent: ((event: TreeEvent) => void) | undefined;
  #buf = new Uint8Array(READ_BYTES);
  #byWd = new Map<number, string>();
  #byPath = new Map<string, number>();
  #queue: TreeEvent[] = [];
  #waiting: ((result: IteratorResult<TreeEvent>) => void) | null = null;
  #closing = false;
  #closed = false;
  #full = false;
  /** Reading events failed: nothing more is reported. */
  #failed = false;
  /** Times events were lost (the kernel's queue or ours overflowed). */
  #losses = 0;
  #loop: Promise<void>;
  #closeDone: Promise<void> | null = null;

  private constructor(options: TreeWatcherOptions, lib: InotifyLibc, fd: number, wakeFd: number) {
    this.root = options.root;
    this.#lib = lib;
    this.#fd = fd;
    this.#wakeFd = wakeFd;
    this.#skip = options.skip ?? (() => false);
    this.#log = options.log ?? ((m) => console.error(`termite master: ${m}`));
    this.#watchesMax = options.watchesMax ?? 500_000;
    this.#queueMax = options.queueMax ?? 10_000;
    this.#onEvent = options.onEvent;
    this.#watch(this.root);
    if (!this.#byPath.has(this.root)) {
      this.#release();
      throw new TreeWatcherError(`Cannot watch ${this.root}: not a directory inotify can watch`);
    }
    this.#loop = this.#run();
  }

  /**
   * Watches `root` and every directory below it (listed now, synchronously:
   * once this returns, every change is seen).
   * @throws {TreeWatcherError} no inotify (or no FFI permission), or a root that cannot be watched.
   */
  static start(options: TreeWatcherOptions): TreeWatcher {
    let lib: InotifyLibc;
    try {
      lib = loadLibc(INOTIFY_SYMBOLS);
    } catch (err) {
      throw new TreeWatcherError(`Cannot load ${LIBC_PATH}`, { cause: err });
    }
    const fd = lib.symbols.inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    const wakeFd = fd < 0 ? -1 : lib.symbols.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0 || wakeFd < 0) {
      const errno = errnoView(lib)[0];
      if (fd >= 0) lib.symbols.close(fd);
      lib.close();
      throw new TreeWatcherError(`Cannot start inotify: errno ${errno}`);
    }
    return new TreeWatcher(options, lib, fd, wakeFd);
  }

  /** Directories watched now. */
  get watches(): number {
    return this.#byWd.size;
  }

  /**
   * Whether every change of `path` from now on will be reported: its
   * directory is watched (and, for a directory, the path itself, which
   * reports changes of its listing). False once events were lost for good
   * (watch limits reached, or reading them failed).
   */
  covers(path: string, isDir: boolean): boolean {
    if (this.#full || this.#failed || this.#closing) return false;
    if (isDir && !this.#byPath.has(path)) return false;
    return path === this.root || this.#byPath.has(parentOf(path));
  }

  /**
   * The watch on directory `dir` now, or null if none: an id that differs
   * whenever the directory was watched anew (moved away and back, made again)
   * or events were lost since. While it stays the same, every change of the
   * directory's listing has been or will be reported, child by child.
   */
  watchOf(dir: string): string | null {
    if (this.#full || this.#failed || this.#closing) return null;
    const wd = this.#byPath.get(dir);
    return wd === undefined ? null : `${this.#losses}:${wd}`;
  }

  /** Watches `dir` and the directories below it; adds every path found to `found`. */
  #watch(dir: string, found?: Set<string>): void {
    const stack = [dir];
    while (stack.length > 0) {
      const d = stack.pop()!;
      if (this.#skip(d)) continue;
      if (this.#byWd.size >= this.#watchesMax) {
        this.#tooMany(`${this.#watchesMax} directories watched`);
        return;
      }
      const wd = this.#lib.symbols.inotify_add_watch(this.#fd, cString(d), WATCH_MASK);
      if (wd < 0) {
        const errno = errnoView(this.#lib)[0];
        if (errno === ENOSPC) {
          this.#tooMany("the inotify watch limit (fs.inotify.max_user_watches) reached");
          return;
        }
        continue; // Gone, or replaced by something that is not a directory.
      }
      const old = this.#byPath.get(d);
      if (old !== undefined && old !== wd) this.#byWd.delete(old);
      this.#byWd.set(wd, d);
      this.#byPath.set(d, wd);
      try {
        for (const entry of Deno.readDirSync(d)) {
          const path = joinPath(d, entry.name);
          found?.add(path);
          if (entry.isDirectory) stack.push(path); // d_type: a symlink is not followed
        }
      } catch {
        // Gone or unreadable meanwhile: its events (if any) still come.
      }
    }
  }

  #tooMany(why: string): void {
    if (this.#full) return;
    this.#full = true;
    this.#log(`not watching every directory of ${this.root} for changes: ${why}`);
  }

  /** Stops watching `dir` and everything below it (it moved away). */
  #unwatch(dir: string): void {
    for (const [path, wd] of this.#byPath) {
      if (!isInside(path, dir)) continue;
      this.#lib.symbols.inotify_rm_watch(this.#fd, wd);
      this.#byPath.delete(path);
      this.#byWd.delete(wd);
    }
  }

  async #run(): Promise<void> {
    const pollfds = new Uint8Array(2 * POLLFD_BYTES);
    const view = new DataView(pollfds.buffer);
    view.setInt32(0, this.#fd, true);
    view.setInt16(4, POLLIN, true);
    view.setInt32(POLLFD_BYTES, this.#wakeFd, true);
    view.setInt16(POLLFD_BYTES + 4, POLLIN, true);
    while (!this.#closing && !this.#failed) {
      view.setInt16(6, 0, true);
      view.setInt16(POLLFD_BYTES + 6, 0, true);
      await this.#lib.symbols.poll_nonblocking(pollfds, 2n, -1);
      if (this.#closing) break;
      this.drain(); // nothing left, if a drain() came first
    }
  }

  /**
   * Reads and reports, synchronously, every event queued so far: the kernel
   * queues an event within the call that made the change, so once this
   * returns, every change made before the call is reported (with `onEvent`:
   * handled). False if events can no longer be read (then changes are lost;
   * a `rescan` said so) or the watcher is closing.
   */
  drain(): boolean {
    if (this.#closing || this.#failed) return false;
    const buf = this.#buf;
    const paths = new Set<string>();
    let rescan = false;
    try {
      for (;;) {
        const n = Number(this.#lib.symbols.read(this.#fd, buf, BigInt(buf.length)));
        if (n > 0) {
          rescan = this.#parse(buf, n, paths) || rescan;
          continue;
        }
        const errno = n < 0 ? errnoView(this.#lib)[0] : 0;
        if (errno === EINTR) continue;
        if (errno !== EAGAIN) throw new TreeWatcherError(`Cannot read inotify events: ${errno}`);
        break;
      }
    } catch (err) {
      this.#failed = true;
      this.#log(`stopped watching ${this.root} for changes: ${(err as Error).message}`);
      this.#push({ kind: "rescan", paths: [] });
      return false;
    }
    if (rescan) this.#push({ kind: "rescan", paths: [] });
    if (paths.size > 0) this.#push({ kind: "paths", paths: [...paths] });
    return true;
  }

  /** Reads the event records in `buf`; returns whether events were lost. */
  #parse(buf: Uint8Array, n: number, paths: Set<string>): boolean {
    const view = new DataView(buf.buffer, buf.byteOffset, n);
    let lost = false;
    for (let off = 0; off + INOTIFY_EVENT_HEADER_BYTES <= n;) {
      const wd = view.getInt32(off, true);
      const mask = view.getUint32(off + 4, true);
      const len = view.getUint32(off + 12, true);
      const raw = buf.subarray(
        off + INOTIFY_EVENT_HEADER_BYTES,
        off + INOTIFY_EVENT_HEADER_BYTES + len,
      );
      off += INOTIFY_EVENT_HEADER_BYTES + len;
      if (mask & IN_Q_OVERFLOW) {
        lost = true;
        this.#losses++;
        continue;
      }
      const dir = this.#byWd.get(wd);
      if (dir === undefined) continue;
      if (mask & IN_IGNORED) {
        this.#byWd.delete(wd);
        if (this.#byPath.get(dir) === wd) this.#byPath.delete(dir);
        continue;
      }
      const end = raw.indexOf(0);
      const name = decoder.decode(end < 0 ? raw : raw.subarray(0, end));
      const path = name === "" ? dir : joinPath(dir, name);
      paths.add(path);
      if ((mask & IN_ISDIR) && name !== "") {
        if (mask & (IN_CREATE | IN_MOVED_TO)) this.#watch(path, paths);
        else if (mask & IN_MOVED_FROM) this.#unwatch(path);
      }
    }
    return lost;
  }

  #push(event: TreeEvent): void {
    if (this.#closed) return;
    if (this.#onEvent) {
      this.#onEvent(event);
      return;
    }
    if (this.#waiting) {
      const resolve = this.#waiting;
      this.#waiting = null;
      resolve({ done: false, value: event });
      return;
    }
    if (this.#queue.length >= this.#queueMax) {
      // A reader this far behind re-reads everything instead.
      this.#losses++;
      this.#queue = [{ kind: "rescan", paths: [] }];
      return;
    }
    this.#queue.push(event);
  }

  #next(): Promise<IteratorResult<TreeEvent>> {
    const event = this.#queue.shift();
    if (event) return Promise.resolve({ done: false, value: event });
    if (this.#closed) return Promise.resolve({ done: true, value: undefined });
    return new Promise((resolve) => this.#waiting = resolve);
  }

  [Symbol.asyncIterator](): AsyncIterator<TreeEvent> {
    return {
      next: () => this.#next(),
      return: async () => {
        await this.close();
        return { done: true, value: undefined };
      },
    };
  }

  /** Stops watching; iterators end once the watcher thread has stopped. */
  close(): Promise<void> {
    this.#closeDone ??= this.#close();
    return this.#closeDone;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    const one = new Uint8Array(8);
    new DataView(one.buffer).setBigUint64(0, 1n, true);
    this.#lib.symbols.write(this.#wakeFd, one, 8n);
    await this.#loop;
    this.#release();
    this.#closed = true;
    this.#queue = [];
    const waiting = this.#waiting;
    this.#waiting = null;
    waiting?.({ done: true, value: undefined });
  }

  #release(): void {
    this.#lib.symbols.close(this.#fd);
    this.#lib.symbols.close(this.#wakeFd);
    this.#lib.close();
  }
}
