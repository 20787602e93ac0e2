/**
 * The mirror's answers about one node: lookups, attributes, symlink targets
 * and access checks, from the attribute cache when it can, otherwise after a
 * fetch over the link. `mirror_fs.ts` resolves the kernel's node ids and
 * refuses requests once closed; this file says what a node looks like.
 *
 * @module
 */

import { joinPath } from "../common/paths.ts";
import { EACCES, EINVAL, EIO, ENOENT, ENOTDIR, EROFS, ESTALE } from "../fuse/errno.ts";
import { R_OK, W_OK, X_OK } from "../fuse/structs.ts";
import type { AttrReply, Entry, Errno, RequestContext } from "../fuse/types.ts";
import type { AttrCache, MirrorNode } from "./mirror_cache.ts";
import type { AttrFetches } from "./mirror_fetch.ts";
import type { MirrorStats } from "./mirror_options.ts";
import type { Prefetcher } from "./mirror_prefetch.ts";

/** Turns a failed fetch (and what it was for) into an errno for the kernel. */
export type FailedFn = (error: unknown, context: string) => Errno;

export interface NodeAnswersOptions {
  cache: AttrCache;
  fetches: AttrFetches;
  prefetcher: Prefetcher;
  stats: MirrorStats;
  failed: FailedFn;
}

/** Lookups, getattr, readlink and access for the mirror's nodes. */
export class NodeAnswers {
  readonly #cache: AttrCache;
  readonly #fetches: AttrFetches;
  readonly #prefetcher: Prefetcher;
  readonly #stats: MirrorStats;
  readonly #failed: FailedFn;

  constructor(options: NodeAnswersOptions) {
    this.#cache = options.cache;
    this.#fetches = options.fetches;
    this.#prefetcher = options.prefetcher;
    this.#stats = options.stats;
    this.#failed = options.failed;
  }

  /** `name` in `parent`: from memory, or after fetching the parent's listing. */
  lookup(parent: MirrorNode, name: string): Entry | Errno | Promise<Entry | Errno> {
    const answer = this.#lookupLocal(parent, name, true);
    if (answer !== undefined) return answer;
    this.#stats.lookupsWaited++;
    const started = performance.now();
    return this.#lookupSlow(parent, name).finally(() => {
      this.#stats.lookupWaitMs += performance.now() - started;
    });
  }

  getattr(node: MirrorNode): AttrReply | Errno | Promise<AttrReply | Errno> {
    if (node.attr !== undefined) {
      return { attr: this.#cache.toAttr(node), attrTimeoutS: this.#cache.attrTimeoutS };
    }
    if (node.detached) return ESTALE;
    return this.#refreshed(node, "getattr", () => {
      if (node.attr === undefined) return node.detached ? ESTALE : ENOENT;
      return { attr: this.#cache.toAttr(node), attrTimeoutS: this.#cache.attrTimeoutS };
    });
  }

  readlink(node: MirrorNode): string | Errno | Promise<string | Errno> {
    const local = targetOf(node);
    if (local !== undefined) return local;
    if (node.detached || node.attr !== undefined) return EINVAL;
    return this.#refreshed(
      node,
      "readlink",
      () => targetOf(node) ?? (node.attr === undefined ? ENOENT : EINVAL),
    );
  }

  access(node: MirrorNode, mask: number, ctx: RequestContext): 0 | Errno {
    if (mask & W_OK) return EROFS;
    if (node.attr === undefined) return 0; // the kernel asks getattr first; be lenient
    const attr = this.#cache.toAttr(node);
    if (ctx.uid === 0) {
      // root may read anything, and execute what anyone may execute.
      if ((mask & X_OK) && node.attr.kind === "file" && (attr.mode & 0o111) === 0) return EACCES;
      return 0;
    }
    const bits = ctx.uid === attr.uid
      ? (attr.mode >> 6) & 7
      : ctx.gid === attr.gid
      ? (attr.mode >> 3) & 7
      : attr.mode & 7;
    const wanted = mask & (R_OK | X_OK);
    return (bits & wanted) === wanted ? 0 : EACCES;
  }

  /** Answers from memory, or undefined when the network is needed. */
  #lookupLocal(
    parent: MirrorNode,
    name: string,
    countNegative: boolean,
  ): Entry | Errno | undefined {
    if (parent.attr !== undefined && parent.attr.kind !== "dir") return ENOTDIR;
    if (parent.detached) return parent.attr === undefined ? ESTALE : ENOENT;
    if (this.#cache.closed(parent)) {
      // Nothing in it is served, whatever a listing holds.
      if (countNegative) this.#stats.negativeLocal++;
      return this.#cache.negative(parent, name);
    }
    const listing = parent.listing;
    if (listing === undefined) return undefined;
    if (!listing.has(name)) {
      if (countNegative) this.#stats.negativeLocal++;
      return this.#cache.negative(parent, name);
    }
    const child = parent.kids.get(name);
    if (child?.attr === undefined) return undefined;
    this.#cache.nodes.remember(child);
    this.#cache.nodes.touch(child);
    this.#prefetcher.maybePrefetch(child);
    return this.#cache.entryOf(child);
  }

  async #lookupSlow(parent: MirrorNode, name: string): Promise<Entry | Errno> {
    try {
      if (parent.listing === undefined || !parent.complete) await this.#fetches.fetchDir(parent);
      const answer = this.#lookupLocal(parent, name, false);
      if (answer !== undefined) return answer;
      // A listed child without attrs (evicted, or added by an update): ask for it alone.
      await this.#fetches.fetchPath(joinPath(parent.path, name));
      return this.#lookupLocal(parent, name, false) ?? EIO;
    } catch (error) {
      return this.#failed(error, `lookup ${joinPath(parent.path, name)}`);
    }
  }

  /** Fetches a node's attrs again, then answers `op` with `answer` (EIO if the fetch failed). */
  async #refreshed<T>(node: MirrorNode, op: string, answer: () => T | Errno): Promise<T | Errno> {
    try {
      await this.#fetches.refresh(node, false);
    } catch (error) {
      return this.#failed(error, `${op} ${node.path}`);
    }
    return answer();
  }
}

function targetOf(node: MirrorNode): string | undefined {
  return node.attr?.kind === "symlink" ? node.attr.target : undefined;
}
