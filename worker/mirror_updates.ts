/**
 * Updates the master pushes to a mirror (its own edits, other workers'
 * results): applied to the attribute cache at once, with the kernel told to
 * drop what it cached of them ({@link Invalidations}).
 *
 * They are also kept in a log and replayed: a fetch the master answered
 * before an update but that arrived after it would put back what the update
 * changed (found as a lost file in a rebuilt tree: `ar: lvm.o: No such
 * file`), so the updates that arrived while a fetch was in flight are
 * applied again over its answer (`mirror_fetch.ts` asks).
 *
 * @module
 */

import { listingPrint } from "../common/listing_print.ts";
import { baseName, normalizePath, parentOf } from "../common/paths.ts";
import type { FileAttr } from "../common/types.ts";
import type { MountedSession } from "../fuse/types.ts";
import { type AttrCache, mapOf, type MirrorNode } from "./mirror_cache.ts";

/**
 * Updates remembered to replay over fetches they overtook (halved beyond it; a
 * fetch that began before the oldest one kept is made again). Fetches last
 * milliseconds; a job brings tens of updates.
 */
const RECENT_UPDATES_MAX = 10_000;

/** What the kernel must drop of its caches: entries (names in a directory) and inodes. */
export class Invalidations {
  readonly entries: [bigint, string][] = [];
  /** Inode and the offset its cached data is dropped from (-1: attributes only). */
  readonly inodes: [bigint, number][] = [];

  entry(parent: bigint, name: string): void {
    this.entries.push([parent, name]);
  }

  inode(id: bigint, offset: number): void {
    this.inodes.push([id, offset]);
  }

  get empty(): boolean {
    return this.entries.length === 0 && this.inodes.length === 0;
  }

  /** Tells the kernel (each entry once); settles when it has answered all, never rejects. */
  send(session: MountedSession): Promise<void> {
    const calls: Promise<number>[] = [];
    const seen = new Set<string>();
    for (const [ino, offset] of this.inodes) {
      calls.push(session.notifyInvalInode(ino, offset, 0));
    }
    for (const [parent, name] of this.entries) {
      const key = `${parent}/${name}`;
      if (seen.has(key)) continue;
      seen.add(key);
      calls.push(session.notifyInvalEntry(parent, name));
    }
    return Promise.allSettled(calls).then(() => {});
  }
}

/** The counter {@linkcode MirrorUpdates} keeps. */
export interface UpdateCounters {
  /** Updates applied again over fetched answers they overtook. */
  replayed: number;
  /**
   * Listings worked out from a batch's paths that did not match the master's
   * fingerprint, and were forgotten (fetched again when needed).
   */
  listingsForgotten: number;
}

/** Applies pushed updates to the cache and replays them over fetches they overtook. */
export class MirrorUpdates {
  readonly #cache: AttrCache;
  readonly #stats: UpdateCounters;
  /** The latest updates, in arrival order; update number n is `#recent[n - #base]`. */
  #recent: FileAttr[] = [];
  #base = 0;

  constructor(cache: AttrCache, stats: UpdateCounters) {
    this.#cache = cache;
    this.#stats = stats;
  }

  /** Number of the next update to arrive. */
  get count(): number {
    return this.#base + this.#recent.length;
  }

  /** Whether the updates since number `since` are all still kept (to replay). */
  covers(since: number): boolean {
    return since >= this.#base;
  }

  /** Logs `updates` and applies them to the cache; returns the invalidations they need. */
  apply(updates: readonly FileAttr[]): Invalidations {
    for (const update of updates) this.#recent.push(update);
    if (this.#recent.length > RECENT_UPDATES_MAX) {
      const drop = this.#recent.length - RECENT_UPDATES_MAX / 2;
      this.#recent.splice(0, drop);
      this.#base += drop;
    }
    const invalidations = new Invalidations();
    this.#applyToCache(updates, invalidations);
    return invalidations;
  }

  /**
   * Applies again, to the cache only, the updates since number `since` of
   * `path` and everything under it: what a fetch of `path` that started
   * before them may have undone. The kernel heard nothing from the fetch's
   * answer yet (this runs before it is used), so nothing is invalidated.
   * The fetch was made again if they were forgotten (`since` < the base).
   */
  replaySince(since: number, path: string): void {
    if (since < this.#base) return;
    const prefix = path === "/" ? "/" : `${path}/`;
    const overtaking = this.#recent.slice(since - this.#base).filter((u) => {
      const p = normalizePath(u.path);
      return p === path || p.startsWith(prefix);
    });
    if (overtaking.length > 0) {
      this.#stats.replayed += overtaking.length;
      this.#applyToCache(overtaking, new Invalidations());
    }
  }

  /** Applies pushed attrs to the cache; collects the kernel invalidations they need. */
  #applyToCache(updates: readonly FileAttr[], invalidations: Invalidations): void {
    const cache = this.#cache;
    let printed: FileAttr[] | undefined;
    for (const update of updates) {
      if (update.listingPrint !== undefined && update.children === undefined) {
        (printed ??= []).push(update);
      }
      const path = normalizePath(update.path);
      if (cache.isUnderMountPoint(path)) continue;
      if (path === "/") {
        this.#updateNode(cache.root, update, invalidations);
        continue;
      }
      const parent = cache.find(parentOf(path));
      if (parent === undefined || parent.synthetic) continue; // the kernel cannot know it
      const name = baseName(path);
      const node = parent.kids.get(name);
      if (update.kind === null) {
        const known = parent.listing?.delete(name) === true;
        if (known) parent.rows = undefined;
        if (node) cache.detach(node);
        if (known || node) invalidations.entry(parent.id, name);
        continue;
      }
      if (parent.negatives?.has(name)) {
        cache.forgetNegative(parent, name);
        invalidations.entry(parent.id, name);
      }
      if (parent.listing && parent.listing.get(name) !== update.kind) {
        parent.listing.set(name, update.kind);
        parent.rows = undefined;
        invalidations.entry(parent.id, name);
      }
      if (node) {
        if (node.attr !== undefined && node.attr.kind !== update.kind) {
          cache.detach(node);
          invalidations.entry(parent.id, name);
          if (parent.listing) cache.learnChild(parent, name, update);
        } else {
          this.#updateNode(node, update, invalidations);
        }
      } else if (parent.listing) {
        cache.learnChild(parent, name, update);
      }
    }
    if (printed !== undefined) this.#checkListings(printed, invalidations);
  }

  /**
   * The listings the master left out of a batch (see master/change_log.ts),
   * worked out here from its children's updates: each checked against the
   * master's fingerprint; one that differs is forgotten, with what the kernel
   * cached of it, and fetched again when next needed.
   */
  #checkListings(printed: FileAttr[], invalidations: Invalidations): void {
    const cache = this.#cache;
    for (const update of printed) {
      const node = cache.find(normalizePath(update.path));
      if (node === undefined || node.synthetic || node.listing === undefined) continue;
      // Mount points of the sandboxes are in the listing here, not on the master.
      let mountPoints = false;
      for (const kid of node.kids.values()) if (kid.synthetic) mountPoints = true;
      if (!mountPoints && listingPrint(node.listing) === update.listingPrint) continue;
      this.#stats.listingsForgotten++;
      cache.forgetListing(node, invalidations);
    }
  }

  /** Updates a cached node from a pushed attr and collects kernel invalidations. */
  #updateNode(node: MirrorNode, update: FileAttr, invalidations: Invalidations): void {
    if (node.synthetic || update.kind === null) return;
    const old = node.attr;
    if (update.kind === "dir" && update.children !== undefined && node.listing !== undefined) {
      const next = mapOf(update.children);
      for (const [name, kind] of node.listing) {
        if (next.get(name) !== kind) invalidations.entry(node.id, name);
      }
      for (const name of next.keys()) {
        if (!node.listing.has(name) || node.negatives?.has(name)) {
          invalidations.entry(node.id, name);
        }
      }
    }
    const wasClosed = this.#cache.closed(node);
    this.#cache.setAttr(node, update);
    if (wasClosed !== this.#cache.closed(node)) this.#cache.forgetChildren(node, invalidations);
    if (old === undefined) {
      if (node.known) invalidations.inode(node.id, 0);
      return;
    }
    const contentChanged = old.size !== update.size || old.mtimeMs !== update.mtimeMs ||
      (update.hash !== undefined && old.hash !== undefined && old.hash !== update.hash) ||
      old.target !== update.target;
    const metaChanged = old.mode !== update.mode;
    if (contentChanged) {
      // Attrs and data; for a file the entry too, so the kernel looks the path up
      // again. Never a directory's entry: invalidating a dentry detaches every
      // mount on it, in every namespace, and the jobs' sandboxes mount their
      // overlay (and /proc, /dev, /tmp) on directories of this mirror.
      invalidations.inode(node.id, 0);
      if (node.parent && update.kind !== "dir") invalidations.entry(node.parent.id, node.name);
    } else if (metaChanged) {
      invalidations.inode(node.id, -1);
    }
  }
}
