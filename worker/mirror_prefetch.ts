/**
 * Content prefetch: a file looked up is likely read next, so its blob is
 * fetched into the store in the background (behind foreground link calls,
 * see {@link Limiter}), up to a size and a number in flight.
 *
 * The place for other prefetch policies (a cold farm warming its store).
 *
 * @module
 */

import type { Store } from "../cas/mod.ts";
import type { Errno } from "../fuse/types.ts";
import type { BlobFiles } from "./mirror_blobs.ts";
import type { MirrorNode } from "./mirror_cache.ts";

/** Options of {@linkcode Prefetcher}. */
export interface PrefetcherOptions {
  store: Store;
  blobs: BlobFiles;
  /** Files up to this size get their content prefetched. */
  bytesMax: number;
  /** Prefetches running or queued at once; beyond, none start. */
  max: number;
  stats: { prefetches: number };
  /** Aborted when the mirror closes. */
  signal: AbortSignal;
  /** Fetches a node's attributes again (with the hash), in the background. */
  refresh(node: MirrorNode, withHash: boolean, background: boolean): Promise<void>;
  /** Counts and reports a failed prefetch. */
  failed(error: unknown, context: string): Errno;
  /** Keeps a background task, to wait for it on close. */
  track(task: Promise<unknown>): void;
}

export class Prefetcher {
  readonly #options: PrefetcherOptions;
  /** Paths being prefetched. */
  readonly #prefetching = new Set<string>();

  constructor(options: PrefetcherOptions) {
    this.#options = options;
  }

  /** Starts fetching a looked-up file's content in the background. */
  maybePrefetch(node: MirrorNode): void {
    const { store, signal } = this.#options;
    const attr = node.attr;
    if (attr?.kind !== "file" || signal.aborted) return;
    // A big file's copy from this host's own file starts now, beside the
    // master's hashing of it (see `HostFiles.ahead`; small ones are not worth it).
    if (attr.hash === undefined || store.sizeOf(attr.hash) === undefined) {
      this.#options.blobs.ahead(node.path, attr.size, attr.mode);
    }
    if (attr.size > this.#options.bytesMax) return;
    if (attr.hash !== undefined && store.sizeOf(attr.hash) !== undefined) return;
    if (this.#prefetching.size >= this.#options.max || this.#prefetching.has(node.path)) return;
    const path = node.path;
    this.#prefetching.add(path);
    this.#options.stats.prefetches++;
    const task = (async () => {
      try {
        if (node.attr?.hash === undefined) await this.#options.refresh(node, true, true);
        const attr = node.attr;
        const hash = attr?.hash;
        if (attr === undefined || hash === undefined || signal.aborted) return;
        const source = { path, size: attr.size };
        await this.#options.blobs.ensure(hash, { background: true, signal, source });
      } catch (error) {
        if (!signal.aborted) this.#options.failed(error, `prefetch ${path}`);
      } finally {
        this.#prefetching.delete(path);
      }
    })();
    this.#options.track(task);
  }
}
