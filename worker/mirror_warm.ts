/**
 * Warm sets: when a mirror's first job of a tool starts, the master streams
 * what that tool's jobs needed before (`fs.warm`): directory listings and
 * files' attributes with hashes, read on the master at that moment. They go
 * into the cache as lazy answers would (same replay of overtaking updates,
 * refused after a reset), and the files' contents are fetched into the store
 * in the background, behind foreground link calls, each checked against its
 * hash by the store. So a cold mirror gets its toolchain in bulk instead of a
 * round trip per lookup and per read.
 *
 * @module
 */

import type { Store } from "../cas/mod.ts";
import type { FileAttr } from "../common/types.ts";
import type { Errno } from "../fuse/types.ts";
import type { MasterLink, WarmChunk } from "./master_link.ts";
import type { BlobFiles } from "./mirror_blobs.ts";
import type { AttrCache, MirrorNode } from "./mirror_cache.ts";
import type { AttrFetches } from "./mirror_fetch.ts";
import type { MirrorUpdates } from "./mirror_updates.ts";

/** Tools a mirror asks warm sets for at most (one stream each, once). */
export const WARM_TOOLS_MAX = 64;
/** Bytes of contents a mirror fetches for warm sets at most, in all. */
export const WARM_BYTES_MAX_DEFAULT = 1024 * 2 ** 20;
/** Files larger than this are left to lazy reads. */
export const WARM_FILE_BYTES_MAX = 256 * 2 ** 20;
/**
 * Warm-set blob fetches in flight at once per mirror: few, in the order the
 * tool first needed them, so that the master and the connection stay free
 * for the lazy fetches a running job waits on (with 8, a cold job's
 * directory fetches took 7× longer behind 400 blob sends).
 */
export const WARM_BLOBS_IN_FLIGHT = 2;
/** Files of at least this size are fetched ahead of the smaller ones queued before them. */
export const WARM_FIRST_BYTES_MIN = 4 * 2 ** 20;
/** Listings, and their attributes, waiting at once for an ancestor's listing at most. */
export const DEFERRED_LISTINGS_MAX = 64;
export const DEFERRED_ATTRS_MAX = 100_000;
/** Warm streams running at once per mirror. */
const WARM_STREAMS_MAX = 2;
/** Parts of one listing at most (a listing is at most 1,000,000 names). */
const LISTING_ATTRS_MAX = 1_000_000;

/** The counters {@linkcode Warmer} keeps. */
export interface WarmCounters {
  warmStreams: number;
  warmDirs: number;
  warmAttrs: number;
  warmBlobs: number;
  warmBytes: number;
}

/** Options of {@linkcode Warmer}. */
export interface WarmerOptions {
  link: MasterLink;
  cache: AttrCache;
  fetches: AttrFetches;
  updates: MirrorUpdates;
  store: Store;
  blobs: BlobFiles;
  stats: WarmCounters;
  /** Aborted when the mirror closes. */
  signal: AbortSignal;
  /** Bytes of contents fetched for warm sets at most (default {@link WARM_BYTES_MAX_DEFAULT}). */
  bytesMax?: number;
  /** Counts and reports a failure. */
  failed(error: unknown, context: string): Errno;
  /** Keeps a background task, to wait for it on close. */
  track(task: Promise<unknown>): void;
}

export class Warmer {
  readonly #options: WarmerOptions;
  readonly #asked = new Set<string>();
  readonly #queue: { hash: string; size: number; path: string }[] = [];
  readonly #queued = new Set<string>();
  #streams = 0;
  #inFlight = 0;
  #bytes = 0;
  /** Listings waiting for their ancestors' fetches, absorbed in the order they came. */
  #deferred: Promise<void> | undefined;
  #deferredListings = 0;
  #deferredAttrs = 0;

  constructor(options: WarmerOptions) {
    this.#options = options;
  }

  /**
   * Asks the master for `tool`'s warm set, once per tool, in the background,
   * once `after` settles.
   */
  warm(tool: string, after: Promise<unknown> = Promise.resolve()): void {
    const { link, signal } = this.#options;
    if (link.warm === undefined || signal.aborted || this.#asked.has(tool)) return;
    if (this.#asked.size >= WARM_TOOLS_MAX || this.#streams >= WARM_STREAMS_MAX) return;
    this.#asked.add(tool);
    this.#streams++;
    this.#options.stats.warmStreams++;
    const task = after.catch(() => {}).then(() => signal.aborted ? undefined : this.#stream(tool))
      .catch((error) => {
        if (!signal.aborted) this.#options.failed(error, `warm set of ${tool}`);
      }).finally(() => this.#streams--);
    this.#options.track(task);
  }

  async #stream(tool: string): Promise<void> {
    const { link, fetches, updates, signal } = this.#options;
    const since = updates.count;
    const epoch = fetches.epoch;
    let parts: { path: string; attrs: FileAttr[] } | undefined;
    await link.warm!(tool, (chunk: WarmChunk) => {
      if ("d" in chunk) {
        if (parts !== undefined && parts.path !== chunk.d) parts = undefined;
        parts ??= { path: chunk.d, attrs: [] };
        if (parts.attrs.length + chunk.a.length > LISTING_ATTRS_MAX) {
          parts = undefined;
          return;
        }
        parts.attrs.push(...chunk.a);
        if (chunk.more) return;
        this.#absorbListing(parts.path, parts.attrs, since, epoch);
        parts = undefined;
      } else {
        for (const attr of chunk.f) this.#absorbFile(attr, since, epoch);
      }
    }, signal);
  }

  /**
   * Takes a listing of the stream, now if its node is known and no listing
   * waits before it, else after those and the ancestors' fetches under way
   * (never awaited here: the stream's reader must stay free to read the
   * replies of those very fetches).
   */
  #absorbListing(path: string, attrs: FileAttr[], since: number, epoch: number): void {
    const { cache, fetches, stats, signal } = this.#options;
    const absorb = (node: MirrorNode | undefined) => {
      if (node === undefined) return; // its parent was not listed: left to lazy lookups
      if (fetches.absorbListing(node, attrs, since, epoch)) stats.warmDirs++;
    };
    if (this.#deferred === undefined) {
      const node = cache.find(path);
      if (node !== undefined) return absorb(node);
    }
    // Held in memory while an ancestor's fetch is slow: bounded, the rest left
    // to lazy lookups.
    if (
      this.#deferredListings >= DEFERRED_LISTINGS_MAX ||
      this.#deferredAttrs + attrs.length > DEFERRED_ATTRS_MAX
    ) return;
    this.#deferredListings++;
    this.#deferredAttrs += attrs.length;
    const chain: Promise<void> = (this.#deferred ?? Promise.resolve())
      .then(async () => absorb(cache.find(path) ?? await this.#listedNode(path)))
      .catch((error) => {
        if (!signal.aborted) this.#options.failed(error, `warm listing of ${path}`);
      })
      .finally(() => {
        this.#deferredListings--;
        this.#deferredAttrs -= attrs.length;
        if (this.#deferred === chain) this.#deferred = undefined;
      });
    this.#deferred = chain;
    this.#options.track(chain);
  }

  /**
   * The node of `path` once the listings of its ancestors being fetched now
   * have arrived (the mount lists the way from `/` to the writable root while
   * the first stream starts: its listings would otherwise find no parent and
   * be dropped); undefined when an ancestor is neither listed nor being listed.
   */
  async #listedNode(path: string): Promise<MirrorNode | undefined> {
    const { cache, fetches, signal } = this.#options;
    let node = cache.root;
    for (const name of path.split("/")) {
      if (name === "") continue;
      if (!node.complete && fetches.isFetching(node)) await fetches.fetchDir(node);
      if (signal.aborted) return undefined;
      const kid = node.kids.get(name);
      if (kid === undefined) return undefined;
      node = kid;
    }
    return node;
  }

  #absorbFile(attr: FileAttr, since: number, epoch: number): void {
    if (this.#options.fetches.absorbAttr(attr, since, epoch)) this.#options.stats.warmAttrs++;
    const hash = attr.hash;
    if (attr.kind !== "file" || typeof hash !== "string") return;
    if (typeof attr.size !== "number" || !(attr.size >= 0) || attr.size > WARM_FILE_BYTES_MAX) {
      return;
    }
    const bytesMax = this.#options.bytesMax ?? WARM_BYTES_MAX_DEFAULT;
    if (this.#bytes + attr.size > bytesMax || this.#queued.has(hash)) return;
    if (this.#options.store.sizeOf(hash) !== undefined) return;
    this.#bytes += attr.size;
    this.#queued.add(hash);
    const item = { hash, size: attr.size, path: attr.path };
    // A big one (a compiler proper) takes longest to copy and is needed soon
    // after the few small ones before it: it goes before the small ones queued
    // (after the big ones, in the order they came).
    const at = attr.size >= WARM_FIRST_BYTES_MIN
      ? this.#queue.findIndex((queued) => queued.size < WARM_FIRST_BYTES_MIN)
      : -1;
    if (at === -1) this.#queue.push(item);
    else this.#queue.splice(at, 0, item);
    this.#pump();
  }

  /** Starts queued blob fetches, up to {@link WARM_BLOBS_IN_FLIGHT} at once. */
  #pump(): void {
    const { store, blobs, stats, signal } = this.#options;
    while (this.#inFlight < WARM_BLOBS_IN_FLIGHT && this.#queue.length > 0) {
      const { hash, size, path } = this.#queue.shift()!;
      if (signal.aborted) return;
      this.#inFlight++;
      const stored = store.sizeOf(hash) !== undefined;
      const source = { path, size };
      const task = blobs.ensure(hash, { background: true, signal, source }).then(() => {
        if (!stored) blobs.markVerified(hash); // the store checked it when it arrived
        stats.warmBlobs++;
        stats.warmBytes += size;
      }).catch((error) => {
        if (!signal.aborted) this.#options.failed(error, `warm content of ${path}`);
      }).finally(() => {
        this.#inFlight--;
        this.#pump();
      });
      this.#options.track(task);
    }
  }
}
