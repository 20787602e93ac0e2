/**
 * The master's view of its tree kept in step: the tree watcher's events
 * mark paths dirty, a marker file makes sure every change made before a job
 * was seen, and dirty paths are read again (their changes logged for the
 * mirrors) before the job is sent.
 *
 * @module
 */
import { parentOf } from "../common/paths.ts";
import { STAGING_DIR } from "./apply.ts";
import type { Beneath } from "./beneath.ts";
import type { FileServer } from "./file_server.ts";
import { TreeWatcher } from "./tree_watcher.ts";

/** How long the tree watcher may take to report a marker file. */
const TREE_SYNC_MS = 2_000;

/** Dirty paths of the tree, from its watcher, read again on demand. */
export class TreeSync {
  readonly root: string;
  #tree: Beneath;
  #files: FileServer;
  #log: (message: string) => void;
  #fsWatcher: TreeWatcher | null = null;
  #watching: Promise<void> | null = null;
  #dirty = new Set<string>();
  #syncWaiters = new Map<string, () => void>();

  constructor(root: string, tree: Beneath, files: FileServer, log: (message: string) => void) {
    this.root = root;
    this.#tree = tree;
    this.#files = files;
    this.#log = log;
  }

  /** Starts watching the tree (a failure is logged: every job then reads the tree again). */
  start(): void {
    this.#startWatchingTree();
  }

  /** Waits until every change made before this call was seen. */
  sync(): Promise<void> {
    return this.#syncTree();
  }

  /** Re-reads the dirty paths (and `extra`), logging what changed. */
  flush(extra: Iterable<string> = [], known?: Map<string, string>): Promise<void> {
    return this.#flushChanges(extra, known);
  }

  /** Stops the watcher. */
  async close(): Promise<void> {
    this.#fsWatcher?.close();
    await this.#watching;
  }

  #startWatchingTree(): void {
    const staging = `${this.root}/${STAGING_DIR}`;
    try {
      // Not Deno.watchFs: it opens what events name (a FIFO blocked it for good).
      this.#fsWatcher = TreeWatcher.start({
        root: this.root,
        // The private directory is watched for the markers, not its staging areas.
        skip: (dir) => dir.startsWith(staging) && dir !== this.#tree.privatePath,
        log: this.#log,
      });
    } catch (err) {
      this.#log(`cannot watch ${this.root} for changes: ${(err as Error).message}`);
      return;
    }
    const watcher = this.#fsWatcher;
    this.#watching = (async () => {
      try {
        for await (const event of watcher) {
          if (event.kind === "rescan") {
            // Events were lost: whatever the mirrors hold may have changed.
            for (const p of this.#files.servedUnder(this.root)) this.#dirty.add(p);
            continue;
          }
          for (const p of event.paths) {
            if (p.startsWith(staging)) {
              this.#syncWaiters.get(p)?.();
              continue;
            }
            if (this.#dirty.size > 100_000) continue;
            this.#dirty.add(p);
          }
        }
      } catch {
        // Closed.
      }
    })();
  }

  /**
   * Waits until the tree watcher has seen every change made before this call
   * (`mkdir` or `rm` by make's own shell just before a compile arrives): it
   * creates a marker file and waits for its event, which the kernel queues
   * after the earlier ones. If the watcher does not answer in time, every
   * served path of the tree is read again instead.
   */
  async #syncTree(): Promise<void> {
    let marker = "";
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      if (this.#fsWatcher !== null) {
        // In the private directory, made exclusively, never through a link.
        marker = this.#tree.createMarker();
        const seen = new Promise<boolean>((resolve) => {
          this.#syncWaiters.set(marker, () => resolve(true));
          timer = setTimeout(() => resolve(false), TREE_SYNC_MS);
        });
        if (await seen) return;
      }
    } catch {
      // Could not make the marker (a full disk, say): read everything again.
    } finally {
      clearTimeout(timer);
      if (marker !== "") {
        this.#syncWaiters.delete(marker);
        this.#tree.removeMarker(marker);
      }
    }
    for (const p of this.#files.servedUnder(this.root)) this.#dirty.add(p);
  }

  /** Re-reads paths that changed since they were served and logs the changes. */
  async #flushChanges(extra: Iterable<string> = [], known?: Map<string, string>): Promise<void> {
    const paths = new Set<string>(extra);
    for (const p of this.#dirty) {
      paths.add(p);
      paths.add(parentOf(p));
    }
    this.#dirty.clear();
    for (const p of this.#files.youngPaths()) paths.add(p);
    if (paths.size === 0) return;
    await this.#files.refresh(paths, known); // changes go to the log as they are found
  }
}
