/**
 * Which workers hold which blobs, so that a master sends each blob to its
 * farm about once: the first worker that asks for a blob gets it from the
 * master; the others, told where it is, fetch it from that worker (see
 * worker/peer_blobs.ts) and check it against its hash. A worker counts as
 * holding a blob from the moment the master starts sending it: a peer asked
 * for a blob it is still fetching waits for it.
 *
 * A blob of at least {@link PEER_BLOB_BYTES_MIN} bytes leaves the master
 * once; a smaller one to {@link SMALL_BLOB_MASTER_COPIES} workers, the
 * others being sent to those: the first few workers pay no detour (a round
 * trip costs more than sending a header), and the master's bytes do not grow
 * with the farm (every worker reads the same headers). Only workers the master
 * is connected to now are named. Bounded: hashes remembered (LRU) and holders
 * per hash.
 *
 * @module
 */

/** Smallest blob a worker is sent to a peer for as soon as one holds it. */
export const PEER_BLOB_BYTES_MIN = 64 * 1024;
/** Workers the master sends a smaller blob to itself; the next ones get it from these. */
export const SMALL_BLOB_MASTER_COPIES = 2;
/** Hashes whose holders are remembered at most (least recently used forgotten). */
export const HOLDERS_HASHES_MAX = 200_000;
/** Holders remembered per hash at most. */
export const HOLDERS_PER_HASH_MAX = 4;

/**
 * A holder that failed this many peers (unreachable, lacking the blob, or
 * sending other bytes) within {@link HOLDER_FAILURES_WINDOW_MS} is not
 * named to anyone for the rest of the window: a firewalled or lying worker
 * costs a few detours, not one per blob.
 */
export const HOLDER_FAILURES_MAX = 3;
export const HOLDER_FAILURES_WINDOW_MS = 5 * 60_000;

/** The counters {@linkcode BlobHolders} keeps. */
export interface BlobHolderStats {
  /** Blob requests answered with a peer's address instead of the bytes. */
  redirected: number;
  /** Bytes the redirected blobs hold (what the master did not send). */
  redirectedBytes: number;
}

export class BlobHolders {
  readonly stats: BlobHolderStats = { redirected: 0, redirectedBytes: 0 };
  /** Hash → size and holder addresses; insertion order is LRU order. */
  readonly #holders = new Map<string, { size: number; at: string[]; next: number }>();
  /** Per holder: failures reported since the start of its window (one entry per worker seen). */
  readonly #failures = new Map<string, { count: number; sinceMs: number }>();
  readonly #now: () => number;

  constructor(options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
  }

  /** The master starts sending blob `hash` (`size` bytes) to the worker at `address`. */
  sending(hash: string, size: number, address: string): void {
    let entry = this.#holders.get(hash);
    if (entry === undefined) {
      entry = { size, at: [], next: 0 };
    } else {
      this.#holders.delete(hash);
    }
    this.#holders.set(hash, entry);
    if (!entry.at.includes(address)) {
      entry.at.push(address);
      if (entry.at.length > HOLDERS_PER_HASH_MAX) entry.at.shift();
    }
    if (this.#holders.size > HOLDERS_HASHES_MAX) {
      this.#holders.delete(this.#holders.keys().next().value!);
    }
  }

  /**
   * Where the worker at `requester` should fetch `hash` from: another holder
   * that `live` says is connected (taken in turn), or undefined (send it).
   */
  holderFor(
    hash: string,
    requester: string,
    live: (address: string) => boolean,
  ): string | undefined {
    const entry = this.#holders.get(hash);
    if (entry === undefined) return undefined;
    if (entry.size < PEER_BLOB_BYTES_MIN && entry.at.length < SMALL_BLOB_MASTER_COPIES) {
      return undefined;
    }
    for (let i = 0; i < entry.at.length; i++) {
      const address = entry.at[(entry.next + i) % entry.at.length];
      if (address === requester || !live(address) || this.#shunned(address)) continue;
      entry.next = (entry.next + i + 1) % entry.at.length;
      this.stats.redirected++;
      this.stats.redirectedBytes += entry.size;
      return address;
    }
    return undefined;
  }

  /**
   * The worker at `address` could not give `hash` to a peer: it is not asked
   * for it again, and after {@link HOLDER_FAILURES_MAX} such reports for a
   * while not for anything.
   */
  failed(hash: string, address: string): void {
    const now = this.#now();
    const failures = this.#failures.get(address);
    if (failures === undefined || now - failures.sinceMs > HOLDER_FAILURES_WINDOW_MS) {
      if (this.#failures.size >= HOLDERS_HASHES_MAX) this.#failures.clear();
      this.#failures.set(address, { count: 1, sinceMs: now });
    } else {
      failures.count++;
    }
    const entry = this.#holders.get(hash);
    if (entry === undefined) return;
    entry.at = entry.at.filter((a) => a !== address);
    entry.next = 0;
    if (entry.at.length === 0) this.#holders.delete(hash);
  }

  /** Whether the worker at `address` failed too many peers lately. */
  #shunned(address: string): boolean {
    const failures = this.#failures.get(address);
    if (failures === undefined) return false;
    if (this.#now() - failures.sinceMs > HOLDER_FAILURES_WINDOW_MS) {
      this.#failures.delete(address);
      return false;
    }
    return failures.count >= HOLDER_FAILURES_MAX;
  }

  /** Hashes remembered now. */
  get size(): number {
    return this.#holders.size;
  }
}
