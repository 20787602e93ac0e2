/**
 * Options and counters of a {@linkcode MirrorFs}, with their defaults.
 *
 * @module
 */

import type { Store } from "../cas/mod.ts";
import type { MasterLink } from "./master_link.ts";
import type { PeerBlobs } from "./peer_blobs.ts";
import type { HostFiles } from "./host_files.ts";

/** Options of {@linkcode MirrorFs}. */
export interface MirrorOptions {
  link: MasterLink;
  /** Peer workers blobs may come from, when the master says one holds them. */
  peers?: PeerBlobs;
  /**
   * The worker host's own files: a file's contents are copied from the host
   * file at the same path when it hashes as the master announced (none: off).
   */
  hostFiles?: HostFiles;
  /** The worker's content store (shared by every mirror, kept between jobs). */
  store: Store;
  /**
   * The master's writable root: paths at or under it are owned by uid/gid
   * 65534 (the job user, so jobs can write through an overlay); the rest by root.
   */
  writableRoot: string;
  /** Kernel cache lifetimes in seconds (default 3600 each). */
  entryTimeoutS?: number;
  attrTimeoutS?: number;
  negativeTimeoutS?: number;
  /**
   * Always shown as empty directories, whatever the master says (a sandbox
   * mounts over them). Only shown when their parent exists on the master.
   * Default {@linkcode MOUNT_POINTS_DEFAULT}.
   */
  mountPoints?: readonly string[];
  /** Cached paths kept at most (default 1,000,000); unreferenced ones are dropped, LRU. */
  entriesMax?: number;
  /** Link calls running at once (default 64). */
  linkCallsMax?: number;
  /** Open files and directories at once (default 8192); beyond, `open` answers ENFILE. */
  handlesMax?: number;
  /**
   * Without open requests: blob descriptors kept open, one per recently read
   * file (default 1024; the kernel's page cache answers most reads anyway).
   */
  blobFdsMax?: number;
  /** Files up to this size get their content fetched when looked up (default 16 MiB). */
  prefetchBytesMax?: number;
  /** Bytes of contents fetched for learned warm sets at most (default 1 GiB; 0: none). */
  warmBytesMax?: number;
  /** Content prefetches running or queued at once (default 256); beyond, none start. */
  prefetchesMax?: number;
  /**
   * Answer open and opendir with ENOSYS, so that the kernel sends none (nor
   * releases) and caches pages and listings by itself; reads then come with
   * fh 0 and use a descriptor cached per inode. Default true (if the kernel
   * supports it, else it is turned off at init).
   */
  zeroOpen?: boolean;
  /**
   * Offer READDIRPLUS (listings with lookup answers, so `ls -l`, `find` and
   * the like need no lookup per name). Default true: a store-warm `find` +
   * `cat` of /usr/include took about 30% less time with it (bench/mirror_bench.ts).
   */
  readdirPlus?: boolean;
  /** Told about failures that cost a request or a prefetch (default: ignored). */
  onError?: (error: unknown, context: string) => void;
}

/** Counters of a {@linkcode MirrorFs}. */
export interface MirrorStats {
  lookups: number;
  /** Lookups that had to wait for the network. */
  lookupsWaited: number;
  /** Lookups answered "no such file" from a cached listing. */
  negativeLocal: number;
  dirFetches: number;
  attrFetches: number;
  /** Blob fetches started over the link (a blob already stored costs none). */
  blobFetches: number;
  blobBytes: number;
  prefetches: number;
  /** Updates applied again over fetched answers they overtook. */
  replayed: number;
  /** Listings worked out from updates that did not match the master's fingerprint (forgotten). */
  listingsForgotten: number;
  /** Failures answered EIO (link failures, corrupt blobs) and failed prefetches. */
  errors: number;
  /** Paths cached now. */
  entries: number;
  /** Open file and directory handles now. */
  handles: number;
  /** Stored blobs found corrupt when first used by this mirror (discarded, fetched again). */
  corruptBlobs: number;
  /** Milliseconds lookups waited for the network, summed (concurrent waits add up). */
  lookupWaitMs: number;
  /** Milliseconds reads waited for a blob (fetch, store, open), summed. */
  readWaitMs: number;
  /** Milliseconds directory fetches took, summed. */
  dirFetchMs: number;
  /** Milliseconds blob fetches took (request to stored), summed. */
  blobFetchMs: number;
  /** Blobs (and their bytes) copied from the worker host's own files instead of fetched. */
  hostBlobs: number;
  hostBytes: number;
  /** Warm-set streams asked for, listings and file attributes taken from them. */
  warmStreams: number;
  warmDirs: number;
  warmAttrs: number;
  /** Blobs (and their bytes) fetched for warm sets. */
  warmBlobs: number;
  warmBytes: number;
}

export const MOUNT_POINTS_DEFAULT: readonly string[] = ["/proc", "/dev", "/tmp", "/sys"];
export const TIMEOUT_S_DEFAULT = 3600;
export const ENTRIES_MAX_DEFAULT = 1_000_000;
export const LINK_CALLS_MAX_DEFAULT = 64;
export const HANDLES_MAX_DEFAULT = 8192;
export const BLOB_FDS_MAX_DEFAULT = 1024;
export const PREFETCH_BYTES_MAX_DEFAULT = 16 * 1024 * 1024;
export const PREFETCHES_MAX_DEFAULT = 256;

/** Counters all at 0 (`entries` and `handles` are to be defined as getters). */
export function newStats(): MirrorStats {
  return {
    lookups: 0,
    lookupsWaited: 0,
    negativeLocal: 0,
    dirFetches: 0,
    attrFetches: 0,
    blobFetches: 0,
    blobBytes: 0,
    prefetches: 0,
    replayed: 0,
    listingsForgotten: 0,
    errors: 0,
    entries: 0,
    handles: 0,
    corruptBlobs: 0,
    lookupWaitMs: 0,
    readWaitMs: 0,
    dirFetchMs: 0,
    blobFetchMs: 0,
    hostBlobs: 0,
    hostBytes: 0,
    warmStreams: 0,
    warmDirs: 0,
    warmAttrs: 0,
    warmBlobs: 0,
    warmBytes: 0,
  };
}
