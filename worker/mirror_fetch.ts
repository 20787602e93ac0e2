/**
 * Attribute fetches over the master link, into the mirror's cache: whole
 * directories (`link.dir`: every child's attributes, so that later lookups
 * are answered from memory) and single paths (`link.attr`, with the content
 * hash when a file is to be read).
 *
 * Each runs once for concurrent callers, through the link's {@link Limiter}.
 * An answer that may have missed changes is asked for again: one begun before
 * a reset (the master could not push what changed), or before the oldest
 * update still logged; then the updates that overtook it are replayed over
 * it ({@link MirrorUpdates.replaySince}).
 *
 * @module
 */

import { normalizePath } from "../common/paths.ts";
import type { FileAttr, FileKind } from "../common/types.ts";
import type { Limiter } from "./_mirror_limiter.ts";
import type { MasterLink } from "./master_link.ts";
import { type AttrCache, childName, type MirrorNode } from "./mirror_cache.ts";
import type { MirrorUpdates } from "./mirror_updates.ts";

/** Fetches repeated at most this often when a reset() overtakes them. */
const FETCH_ATTEMPTS_MAX = 3;

/** The counters {@linkcode AttrFetches} keeps. */
export interface FetchCounters {
  dirFetches: number;
  attrFetches: number;
  /** Milliseconds directory fetches took, summed. */
  dirFetchMs: number;
}

/** Options of {@linkcode AttrFetches}. */
export interface AttrFetchesOptions {
  link: MasterLink;
  limiter: Limiter;
  cache: AttrCache;
  updates: MirrorUpdates;
  stats: FetchCounters;
  /** Aborted when the mirror closes. */
  signal: AbortSignal;
}

interface AttrFetch {
  promise: Promise<FileAttr>;
  withHash: boolean;
  /** The number of the first update that may have overtaken the answer. */
  since: number;
}

/** A fetched attr and the number of the first update that may have overtaken it. */
interface Fetched {
  attr: FileAttr;
  since: number;
}

export class AttrFetches {
  readonly #link: MasterLink;
  readonly #limiter: Limiter;
  readonly #cache: AttrCache;
  readonly #updates: MirrorUpdates;
  readonly #stats: FetchCounters;
  readonly #signal: AbortSignal;
  readonly #dirFetches = new Map<MirrorNode, Promise<void>>();
  readonly #attrFetches = new Map<string, AttrFetch>();
  /** Bumped by reset(): fetches started before are not trusted. */
  #epoch = 0;

  constructor(options: AttrFetchesOptions) {
    this.#link = options.link;
    this.#limiter = options.limiter;
    this.#cache = options.cache;
    this.#updates = options.updates;
    this.#stats = options.stats;
    this.#signal = options.signal;
  }

  /** Whether a fetch of `node`'s listing is in flight (it must not be evicted). */
  isFetching(node: MirrorNode): boolean {
    return this.#dirFetches.has(node);
  }

  /** Distrusts every answer in flight: each is asked for again. */
  reset(): void {
    this.#epoch++;
    this.#dirFetches.clear();
    this.#attrFetches.clear();
  }

  /** Fetches a directory's children (once for concurrent callers) and caches them all. */
  fetchDir(node: MirrorNode): Promise<void> {
    if (node.synthetic) return Promise.resolve();
    let promise = this.#dirFetches.get(node);
    if (promise === undefined) {
      const fetching: Promise<void> = this.#doFetchDir(node).finally(() => {
        if (this.#dirFetches.get(node) === fetching) this.#dirFetches.delete(node);
      });
      promise = fetching;
      this.#dirFetches.set(node, promise);
    }
    return promise;
  }

  async #doFetchDir(node: MirrorNode): Promise<void> {
    const signal = this.#signal;
    let attrs: FileAttr[];
    let since: number;
    for (let attempt = 1;; attempt++) {
      this.#stats.dirFetches++;
      const epoch = this.#epoch;
      since = this.#updates.count;
      const started = performance.now();
      try {
        attrs = await this.#limiter.run(() => this.#link.dir(node.path, { signal }), { signal });
      } finally {
        this.#stats.dirFetchMs += performance.now() - started;
      }
      // An answer from before a reset may miss changes the master could not push.
      if (
        (epoch === this.#epoch && this.#updates.covers(since)) || attempt === FETCH_ATTEMPTS_MAX
      ) break;
    }
    if (node.detached || signal.aborted) return;
    const listing = new Map<string, FileKind>();
    for (const attr of attrs) {
      if (attr.kind === null) continue;
      const name = childName(node.path, attr.path);
      if (name === undefined) continue;
      listing.set(name, attr.kind);
      this.#cache.learnChild(node, name, attr);
    }
    this.#cache.setListing(node, listing);
    node.complete = true;
    this.#updates.replaySince(since, node.path);
    this.#cache.evictIfNeeded();
  }

  /** Bumped by every reset: an answer asked for before one is not trusted. */
  get epoch(): number {
    return this.#epoch;
  }

  /**
   * Takes a listing that arrived unasked (a warm set), asked for when update
   * number `since` was next and reset `epoch` current: stored as a fetched
   * one would be, with the updates that overtook it replayed. Refused (false)
   * when it cannot be trusted (a reset since, updates forgotten) or is not
   * needed (the listing is known, or a fetch of it is on its way).
   */
  absorbListing(
    node: MirrorNode,
    attrs: readonly FileAttr[],
    since: number,
    epoch: number,
  ): boolean {
    if (epoch !== this.#epoch || !this.#updates.covers(since) || this.#signal.aborted) return false;
    if (node.synthetic || node.detached || node.complete || this.#dirFetches.has(node)) {
      return false;
    }
    if (node.attr !== undefined && node.attr.kind !== "dir") return false;
    const listing = new Map<string, FileKind>();
    for (const attr of attrs) {
      if (attr.kind === null) continue;
      const name = childName(node.path, attr.path);
      if (name !== undefined) listing.set(name, attr.kind);
    }
    // Unasked, it must not drop a node the kernel holds (that is for pushed
    // updates, which invalidate the kernel's entry): left to a lazy fetch.
    for (const [name, kid] of node.kids) {
      const kind = listing.get(name);
      const dropped = kind === undefined || (kid.attr !== undefined && kid.attr.kind !== kind);
      if (dropped && (kid.known || kid.opens > 0)) return false;
    }
    for (const attr of attrs) {
      if (attr.kind === null) continue;
      const name = childName(node.path, attr.path);
      if (name !== undefined) this.#cache.learnChild(node, name, attr);
    }
    this.#cache.setListing(node, listing);
    node.complete = true;
    this.#updates.replaySince(since, node.path);
    this.#cache.evictIfNeeded();
    return true;
  }

  /**
   * Takes one path's attrs that arrived unasked (a warm set), like
   * {@linkcode AttrFetches.absorbListing}; a node already holding a hash,
   * or being fetched, is left as it is.
   */
  absorbAttr(attr: FileAttr, since: number, epoch: number): boolean {
    if (epoch !== this.#epoch || !this.#updates.covers(since) || this.#signal.aborted) return false;
    const path = normalizePath(attr.path);
    if (this.#attrFetches.has(path)) return false;
    const known = this.#cache.find(path);
    if (known?.attr?.hash !== undefined || known?.detached) return false;
    // Nor may it detach or retype a node the kernel holds (see absorbListing).
    if (
      known !== undefined && (known.known || known.opens > 0) &&
      (attr.kind === null || (known.attr !== undefined && known.attr.kind !== attr.kind))
    ) return false;
    this.#absorbFetched({ attr, since });
    return true;
  }

  /** Fetches one path's attrs into the cache. */
  async fetchPath(path: string): Promise<void> {
    this.#absorbFetched(await this.#fetchFresh(path, false, false));
  }

  /** Refetches a node's own attrs and stores them (the node may get detached). */
  async refresh(node: MirrorNode, withHash: boolean, background = false): Promise<void> {
    const fetched = await this.#fetchFresh(node.path, withHash, background);
    if (node.detached || this.#signal.aborted) return;
    if (node === this.#cache.root) {
      if (fetched.attr.kind === "dir") this.#cache.setAttr(node, fetched.attr);
      this.#updates.replaySince(fetched.since, "/");
      return;
    }
    this.#absorbFetched(fetched);
  }

  /** Fetches one path's attrs (once for concurrent callers wanting no more). */
  #fetchAttr(path: string, withHash: boolean, background: boolean): AttrFetch {
    const inflight = this.#attrFetches.get(path);
    if (inflight !== undefined && (inflight.withHash || !withHash)) return inflight;
    this.#stats.attrFetches++;
    const signal = this.#signal;
    const since = this.#updates.count;
    const promise = this.#limiter.run(
      () => this.#link.attr(path, { withHash, signal }),
      { signal, background },
    ).finally(() => {
      if (this.#attrFetches.get(path)?.promise === promise) this.#attrFetches.delete(path);
    });
    const fetch = { promise, withHash, since };
    this.#attrFetches.set(path, fetch);
    return fetch;
  }

  /** Like #fetchAttr, but asks again when a reset happened meanwhile. */
  async #fetchFresh(path: string, withHash: boolean, background: boolean): Promise<Fetched> {
    for (let attempt = 1;; attempt++) {
      const epoch = this.#epoch;
      const fetch = this.#fetchAttr(path, withHash, background);
      const attr = await fetch.promise;
      if (
        (epoch === this.#epoch && this.#updates.covers(fetch.since)) ||
        attempt === FETCH_ATTEMPTS_MAX
      ) return { attr, since: fetch.since };
    }
  }

  /** Stores a fetched attr, then the updates that overtook it. */
  #absorbFetched(fetched: Fetched): void {
    this.#cache.absorb(fetched.attr);
    this.#updates.replaySince(fetched.since, normalizePath(fetched.attr.path));
  }
}
