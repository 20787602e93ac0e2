/**
 * The master's view of its tree kept in step: the tree watcher's events
 * mark paths dirty; before a job is sent, the watcher's inotify queue is
 * read synchronously (the kernel queues an event within the call that made
 * the change, so every change made before the job is then known), and dirty
 * paths are read again, their changes logged for the mirrors.
 *
 * @module
 */
import { baseName, parentOf } from "../common/paths.ts";
import { STAGING_DIR } from "./apply.ts";
import type { FileServer } from "./file_server.ts";
import { TreeWatcher } from "./tree_watcher.ts";

/** Dirty paths past this many: every served path is read again instead. */
const DIRTY_MAX = 100_000;

/** Dirty paths of the tree, from its watcher, read again on demand. */
export class TreeSync {
  readonly root: string;
  #files: FileServer;
  #log: (message: string) => void;
  #fsWatcher: TreeWatcher | null = null;
  /** Paths the tree watcher said changed. */
  #dirty = new Set<string>();
  /**
   * Changes may have gone unreported (events lost or dropped, the tree sync
   * failed, a local job ran): every served path is read in full.
   */
  #rereadAll = false;

  constructor(root: string, files: FileServer, log: (message: string) => void) {
    this.root = root;
    this.#files = files;
    this.#log = log;
  }

  /** Starts watching the tree (a failure is logged: every job then reads the tree again). */
  start(): void {
    this.#startWatchingTree();
  }

  /**
   * Takes what the tree watcher has queued now, if it reads (else nothing:
   * the next {@linkcode sync} says every path is to be read again). After
   * the master changed the tree itself (a result applied), its own events
   * join the flush that follows, instead of making the next job's flush read
   * the same paths again.
   */
  take(): void {
    this.#fsWatcher?.drain();
  }

  /** The last flush started (each waits for the one before). */
  #flushing: Promise<void> = Promise.resolve();

  /** Makes sure every change made before this call is known (see {@linkcode TreeSync}). */
  sync(): void {
    this.#syncTree();
  }

  /**
   * Re-reads the dirty paths (and `changed`), logging what changed. Flushes
   * run one after another: one that started earlier may hold changes made
   * before this call (it took them from the dirty set), and a job must not
   * start before they are in the change log.
   */
  flush(changed: Iterable<string> = [], known?: Map<string, string>): Promise<void> {
    const run = this.#flushing.then(() => this.#flushChanges(changed, known));
    this.#flushing = run.catch(() => {});
    return run;
  }

  /** What changed is not known (a local job ran): every served path is read again, whole. */
  rereadAll(): void {
    this.#rereadAll = true;
  }

  /** Whether the watcher reports changes of `path` (see TreeWatcher.covers). */
  covers(path: string, isDir: boolean): boolean {
    return this.#fsWatcher?.covers(path, isDir) ?? false;
  }

  /** The watch of directory `dir`, or null (see TreeWatcher.watchOf). */
  watchOf(dir: string): string | null {
    return this.#fsWatcher?.watchOf(dir) ?? null;
  }

  /** Stops the watcher. */
  async close(): Promise<void> {
    await this.#fsWatcher?.close();
  }

  #startWatchingTree(): void {
    const staging = `${this.root}/${STAGING_DIR}`;
    try {
      // Not Deno.watchFs: it opens what events name (a FIFO blocked it for good).
      this.#fsWatcher = TreeWatcher.start({
        root: this.root,
        // The private directory (staging areas) is the master's own.
        skip: (dir) => dir.startsWith(staging),
        log: this.#log,
        // Taken as read, synchronously: once #syncTree's drain returns, every
        // change it read is in #dirty.
        onEvent: (event) => {
          if (event.kind === "rescan") {
            // Events were lost: whatever the mirrors hold may have changed.
            this.#rereadAll = true;
            return;
          }
          for (const p of event.paths) {
            if (p.startsWith(staging)) continue;
            if (this.#dirty.size > DIRTY_MAX) {
              this.#rereadAll = true;
              return;
            }
            this.#dirty.add(p);
          }
        },
      });
    } catch (err) {
      this.#log(`cannot watch ${this.root} for changes: ${(err as Error).message}`);
    }
  }

  /**
   * Makes sure every change made in the tree before this call (`mkdir` or
   * `rm` by make's own shell just before a compile arrives) is in #dirty:
   * the kernel queues an inotify event within the call that made the
   * change, so reading the watcher's queue now, synchronously, finds them
   * all. Without a watcher that reads (none, or it failed), every served
   * path is read again instead, each directory's listing whole.
   */
  #syncTree(): void {
    if (this.#fsWatcher?.drain()) return;
    this.#rereadAll = true;
  }

  /**
   * Re-reads paths that changed since they were served and logs the changes:
   * those the tree watcher reported and `changed` (what the caller changed
   * itself, with `known` hashes), their directories, and young paths. A
   * directory is read child by child, the changed ones, unless the tree
   * watcher said it changed itself or every path is read again.
   */
  async #flushChanges(changed: Iterable<string> = [], known?: Map<string, string>): Promise<void> {
    const paths = new Set<string>();
    const children = new Map<string, Set<string>>();
    const inDir = (p: string) => {
      if (p === "/") return;
      const dir = parentOf(p);
      paths.add(dir);
      const names = children.get(dir);
      if (names === undefined) children.set(dir, new Set([baseName(p)]));
      else names.add(baseName(p));
    };
    for (const p of changed) {
      paths.add(p);
      inDir(p);
    }
    for (const p of this.#dirty) {
      paths.add(p);
      inDir(p);
    }
    // Changed itself (moved, made again, chmod) or read again whole after a
    // failure: its listing is read in full.
    for (const p of this.#dirty) children.delete(p);
    this.#dirty.clear();
    if (this.#rereadAll) {
      this.#rereadAll = false;
      for (const p of this.#files.servedUnder(this.root)) paths.add(p);
      children.clear();
    }
    for (const p of this.#files.youngPaths()) paths.add(p);
    if (paths.size === 0) return;
    // Changes go to the log as they are found.
    await this.#files.refresh(paths, { known, children });
  }
}
