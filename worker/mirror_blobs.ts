/**
 * File contents of a mirror: blobs fetched from the master into the worker's
 * content store (by SHA-256, once for every mirror sharing the store), and
 * the descriptors reads are answered from. A blob stored before this mirror
 * first used it is rehashed once, so that one corrupted on disk is fetched
 * again rather than served.
 *
 * Without open requests (zero-message opens) reads come with fh 0: one
 * descriptor is kept per inode, least recently read closed first.
 *
 * Every blob fetch goes through {@link BlobFiles.fetcher}: the place to
 * batch them. A blob whose path is known may first be copied from the
 * worker host's own file at that path (`host_files.ts`), kept only if it
 * hashes as announced.
 *
 * @module
 */

import type { Fetcher, Store } from "../cas/mod.ts";
import { cString } from "../common/c_string.ts";
import { baseName } from "../common/paths.ts";
import { EIO, EISDIR, ENOENT, ESTALE } from "../fuse/errno.ts";
import { type Libc, openLibc } from "../fuse/libc.ts";
import type { NodeTable } from "../fuse/node_table.ts";
import { O_CLOEXEC, O_RDONLY } from "../fuse/structs.ts";
import type { Errno } from "../fuse/types.ts";
import type { Limiter } from "./_mirror_limiter.ts";
import type { MasterLink } from "./master_link.ts";
import type { MirrorNode } from "./mirror_cache.ts";
import type { PeerBlobs } from "./peer_blobs.ts";
import type { BlobSource, HostFiles } from "./host_files.ts";

/** Hashes remembered as checked by this mirror (the set is cleared beyond it). */
const VERIFIED_MAX = 1_000_000;
/** Bytes one mirror copies ahead from host files, at most (a toolchain's are ~300 MB). */
const AHEAD_BYTES_PER_MIRROR = 2 * 1024 ** 3;

/** An open descriptor of a node's blob; the blob stays pinned in the store until closed. */
export interface BlobHandle {
  fd: number;
  hash: string;
  node: MirrorNode;
}

/** The counters {@linkcode BlobFiles} keeps. */
export interface BlobCounters {
  /** Blob fetches started over the link (a blob already stored costs none). */
  blobFetches: number;
  blobBytes: number;
  /** Milliseconds blob fetches took, summed. */
  blobFetchMs: number;
  /** Stored blobs found corrupt when first used by this mirror (discarded, fetched again). */
  corruptBlobs: number;
  /** Blobs (and their bytes) copied from the worker host's own files instead of fetched. */
  hostBlobs: number;
  hostBytes: number;
}

/** Options of {@linkcode BlobFiles}. */
export interface BlobFilesOptions {
  link: MasterLink;
  /** Peer workers blobs may come from (the master says which holds one). */
  peers?: PeerBlobs;
  /** The worker host's own files contents may be copied from (when they hash the same). */
  hostFiles?: HostFiles;
  limiter: Limiter;
  store: Store;
  /** The mirror's nodes: one is dropped when its last handle closes, if unused. */
  nodes: NodeTable<MirrorNode>;
  stats: BlobCounters;
  /** Aborted when the mirror closes. */
  signal: AbortSignal;
  /** Descriptors kept for reads without open requests. */
  fdsMax: number;
  /** Fetches a node's attributes again (with the hash). */
  refresh(node: MirrorNode, withHash: boolean): Promise<void>;
  /** Counts and reports a failure that costs a request; gives EIO. */
  failed(error: unknown, context: string): Errno;
  onError(error: unknown, context: string): void;
}

export class BlobFiles {
  readonly #link: MasterLink;
  readonly #peers: PeerBlobs | undefined;
  readonly #hostFiles: HostFiles | undefined;
  readonly #limiter: Limiter;
  readonly #store: Store;
  readonly #nodes: NodeTable<MirrorNode>;
  readonly #stats: BlobCounters;
  readonly #signal: AbortSignal;
  readonly #fdsMax: number;
  readonly #refresh: (node: MirrorNode, withHash: boolean) => Promise<void>;
  readonly #failed: (error: unknown, context: string) => Errno;
  readonly #onError: (error: unknown, context: string) => void;
  /** Without open requests: a blob descriptor per node id, LRU order. */
  readonly #cached = new Map<bigint, BlobHandle>();
  /**
   * Opens in flight per node, with the attributes they began with: a read
   * after an update (new attributes) never joins an open of the old content.
   */
  readonly #opening = new Map<bigint, { attr: unknown; promise: Promise<BlobHandle | Errno> }>();
  /** Stored blobs rehashed once by this mirror (or fetched, hence verified, by it). */
  readonly #verified = new Set<string>();
  readonly #closing: BlobHandle[] = [];
  /** Bytes this mirror had copied ahead (see `ahead`). */
  #aheadBytes = 0;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #libc: Libc | undefined;

  constructor(options: BlobFilesOptions) {
    this.#link = options.link;
    this.#peers = options.peers;
    this.#hostFiles = options.hostFiles;
    this.#limiter = options.limiter;
    this.#store = options.store;
    this.#nodes = options.nodes;
    this.#stats = options.stats;
    this.#signal = options.signal;
    this.#fdsMax = options.fdsMax;
    this.#refresh = options.refresh;
    this.#failed = options.failed;
    this.#onError = options.onError;
  }

  /** Descriptors kept per inode now. */
  get cachedCount(): number {
    return this.#cached.size;
  }

  /**
   * How the store fetches a blob it lacks: over the link, foreground or
   * background; from a peer worker when the master says one holds it (and
   * `failed` is not that peer).
   */
  fetcher(background: boolean, failed?: string): Fetcher {
    return (hash, sink, signal) =>
      this.#limiter.run(async () => {
        this.#stats.blobFetches++;
        const started = performance.now();
        const counting = {
          write: (chunk: Uint8Array) => {
            this.#stats.blobBytes += chunk.length;
            return sink.write(chunk);
          },
        };
        const peers = this.#peers;
        try {
          const source = await this.#link.fetchBlob(hash, counting, signal, {
            peers: peers?.available === true && failed === undefined,
            failed,
          });
          if (source?.peer !== undefined && peers !== undefined) {
            peers.tried(hash, source.peer);
            await peers.fetch(source.peer, hash, counting, signal);
          }
        } finally {
          this.#stats.blobFetchMs += performance.now() - started;
        }
      }, { signal, background });
  }

  /**
   * Makes sure blob `hash` is in the store (see `Store.ensure`). With a
   * `source`, a host file at the same path may give it (`host_files.ts`).
   * A blob a peer worker could not give, or gave with other bytes, is
   * fetched again from the master, once.
   */
  async ensure(
    hash: string,
    options: { background: boolean; pin?: boolean; signal?: AbortSignal; source?: BlobSource },
  ): Promise<string> {
    const ensureOptions = { pin: options.pin, signal: options.signal };
    const fetcher = this.fetcher(options.background);
    if (options.source !== undefined && this.#hostFiles !== undefined) {
      // A copy ahead of the same file, running: its blob, or none, before a copy of our own.
      const copied = await this.#hostFiles.settled(options.source.path);
      if (copied === hash) this.#noteVerified(hash);
    }
    try {
      return await this.#store.ensure(
        hash,
        options.source === undefined
          ? fetcher
          : this.#fromHost(options.source, fetcher, options.background),
        ensureOptions,
      );
    } catch (error) {
      const peer = this.#peers?.triedFrom(hash);
      if (peer === undefined || options.signal?.aborted || this.#signal.aborted) throw error;
      this.#peers!.failedFrom(peer, hash, error);
      return await this.#store.ensure(
        hash,
        this.fetcher(options.background, peer),
        ensureOptions,
      );
    } finally {
      this.#peers?.settled(hash);
    }
  }

  /** `fetcher`, after a copy from the host file at `source.path` if host files are on. */
  #fromHost(source: BlobSource, fetcher: Fetcher, background: boolean): Fetcher {
    if (this.#hostFiles === undefined) return fetcher;
    return this.#hostFiles.fetcher(source, fetcher, {
      background,
      copied: (bytes) => {
        this.#stats.hostBlobs++;
        this.#stats.hostBytes += bytes;
      },
      onError: (error, context) => {
        try {
          this.#onError(error, context);
        } catch {
          // A failing logger must not cost the fetch.
        }
      },
    });
  }

  /** Records that blob `hash` was checked against its hash (fetched into the store just now). */
  markVerified(hash: string): void {
    if (this.#verified.size >= VERIFIED_MAX) this.#verified.clear();
    this.#verified.add(hash);
  }

  /** Fetches a node's blob if needed, pins it and opens it: a handle to close later. */
  async open(node: MirrorNode): Promise<BlobHandle | Errno> {
    let hash: string;
    let path: string;
    try {
      const known = await this.#hashOf(node);
      if (typeof known === "number") return known;
      hash = known;
      path = await this.#ensureStored(node, hash);
    } catch (error) {
      return this.#failed(error, `open ${node.path}`);
    }
    if (this.#signal.aborted) {
      this.#store.unpin(hash);
      return EIO;
    }
    const libc = this.#libc ??= openLibc();
    const fd = libc.symbols.open(cString(path), O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
      this.#store.unpin(hash);
      return this.#failed(new Error(`Cannot open blob ${path}`), `open ${node.path}`);
    }
    node.opens++;
    return { fd, hash, node };
  }

  /** The cached descriptor of `node`'s current content, made the most recently used. */
  cachedFd(node: MirrorNode): number | undefined {
    const cached = this.#cached.get(node.id);
    if (cached === undefined || cached.hash !== node.attr?.hash) return undefined;
    this.#cached.delete(node.id);
    this.#cached.set(node.id, cached);
    return cached.fd;
  }

  /** Opens (once for concurrent reads) and caches the blob descriptor of a node. */
  openCached(node: MirrorNode): Promise<BlobHandle | Errno> {
    const inflight = this.#opening.get(node.id);
    let opening = inflight?.attr === node.attr ? inflight?.promise : undefined;
    if (opening === undefined) {
      const attr = node.attr;
      const promise: Promise<BlobHandle | Errno> = this.open(node).then((handle) => {
        if (typeof handle === "number") return handle;
        if (this.#signal.aborted) {
          this.close(handle);
          return EIO;
        }
        const old = this.#cached.get(node.id);
        if (old !== undefined) this.#closeLater(old);
        this.#cached.delete(node.id);
        this.#cached.set(node.id, handle);
        for (const [id, oldest] of this.#cached) {
          if (this.#cached.size <= this.#fdsMax) break;
          this.#cached.delete(id);
          this.#closeLater(oldest);
        }
        return handle;
      }).finally(() => {
        if (this.#opening.get(node.id)?.promise === promise) this.#opening.delete(node.id);
      });
      opening = promise;
      this.#opening.set(node.id, { attr, promise });
    }
    return opening;
  }

  /** The kernel forgot inode `ino`: its cached descriptor goes. */
  forget(ino: bigint): void {
    const cached = this.#cached.get(ino);
    if (cached !== undefined) {
      this.#cached.delete(ino);
      this.#closeLater(cached);
    }
  }

  /** Closes a handle: the descriptor, the pin, and the node's hold. */
  close(handle: BlobHandle): void {
    this.#libc?.symbols.close(handle.fd);
    try {
      this.#store.unpin(handle.hash);
    } catch (error) {
      this.#onError(error, "release");
    }
    handle.node.opens--;
    this.#nodes.dropIfUnused(handle.node);
  }

  /** Closes every cached descriptor, at once (the mirror is closing). */
  closeAll(): void {
    for (const [id, handle] of this.#cached) {
      this.#cached.delete(id);
      this.close(handle);
    }
    clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    for (const handle of this.#closing.splice(0)) this.close(handle);
    this.#libc?.close();
    this.#libc = undefined;
  }

  /** The hash of a file node's content, fetching its attributes if needed. */
  async #hashOf(node: MirrorNode): Promise<string | Errno> {
    if (node.attr?.kind !== "file" || node.attr.hash === undefined) {
      if (node.detached) return ESTALE;
      await this.#refresh(node, true);
    }
    const attr = node.attr;
    if (attr === undefined) return node.detached ? ESTALE : ENOENT;
    if (attr.kind === "dir") return EISDIR;
    if (attr.kind !== "file" || attr.hash === undefined) {
      return this.#failed(new Error(`No hash for ${node.path}`), `open ${node.path}`);
    }
    return attr.hash;
  }

  /**
   * Copies a big file just looked up from this host's file at the same path
   * ahead of its hash, when host files are on (`HostFiles.ahead`).
   */
  ahead(path: string, size: number, mode: number): void {
    if (this.#hostFiles === undefined || this.#signal.aborted) return;
    // What a loader maps or a shell execs (a lookup alone, say of `find`, reads nothing).
    if ((mode & 0o111) === 0 && !/\.so(\.|$)/.test(baseName(path))) return;
    if (this.#aheadBytes + size > AHEAD_BYTES_PER_MIRROR) return;
    this.#aheadBytes += size;
    this.#hostFiles.ahead(path, size, this.#store).then((hash) => {
      if (hash === undefined) return;
      this.#stats.hostBlobs++;
      this.#stats.hostBytes += size;
      // Hashed on its way into the store just now: no need to rehash it at its open.
      this.#noteVerified(hash);
    });
  }

  #noteVerified(hash: string): void {
    if (this.#verified.size >= VERIFIED_MAX) this.#verified.clear();
    this.#verified.add(hash);
  }

  /** The stored (fetched if need be) and pinned blob's path. */
  async #ensureStored(node: MirrorNode, hash: string): Promise<string> {
    try {
      const source = node.attr?.hash === hash
        ? { path: node.path, size: node.attr.size }
        : undefined;
      // A copy ahead of the same file, running: its blob, or none, before a copy of our own.
      if (source !== undefined && this.#hostFiles !== undefined) {
        const copied = await this.#hostFiles.settled(source.path);
        if (copied === hash) this.#noteVerified(hash);
      }
      const stored = this.#store.sizeOf(hash) !== undefined;
      let path = await this.ensure(hash, {
        background: false,
        pin: true,
        signal: this.#signal,
        source,
      });
      if (stored && !this.#verified.has(hash)) {
        // Stored before this mirror used it: rehash it once, so that a blob
        // corrupted on disk is discarded and fetched again, never served.
        let whole = false;
        try {
          whole = await this.#store.verify(hash);
        } finally {
          if (!whole) this.#store.unpin(hash);
        }
        if (!whole) {
          this.#stats.corruptBlobs++;
          try {
            this.#onError(new Error(`Blob ${hash} was corrupt on disk`), `open ${node.path}`);
          } catch {
            // A failing logger must not cost the reply.
          }
          path = await this.ensure(hash, {
            background: false,
            pin: true,
            signal: this.#signal,
            source,
          });
        }
      }
      this.#noteVerified(hash);
      return path;
    } catch (error) {
      // The hash may be stale (changed on the master): ask for it again next time.
      if (node.attr?.hash === hash) node.attr = { ...node.attr, hash: undefined };
      throw error;
    }
  }

  /**
   * Closes a cached descriptor after the current requests are answered (a
   * reply may still read from it in this turn of the event loop).
   */
  #closeLater(handle: BlobHandle): void {
    this.#closing.push(handle);
    this.#closeTimer ??= setTimeout(() => {
      this.#closeTimer = undefined;
      for (const each of this.#closing.splice(0)) this.close(each);
    }, 0);
  }
}
