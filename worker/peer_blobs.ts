/**
 * Blobs from peer workers. When a master has already sent a blob to another
 * worker of its farm, it may answer a worker's `blob.get` with that worker's
 * address instead of the bytes (master/blob_holders.ts): the worker then
 * fetches the blob from its peer, over the same authenticated RPC (role
 * "worker", which a worker serves nothing but `blob.get`), and its store
 * checks the bytes against their SHA-256 as for any fetch. A peer that
 * cannot be reached, does not hold the blob or sends other bytes costs one
 * try: the blob is then fetched from the master itself (`direct`).
 *
 * A worker serves its peers only blobs it holds or is fetching from a master
 * directly, never one it is fetching from a peer itself, so that no two
 * workers ever wait for each other.
 *
 * Limits: connections to peers (LRU, idle ones closed), fetches from peers
 * at once, the time a connection and a fetch may take.
 *
 * @module
 */

import { parseHostPort } from "../common/address.ts";
import { errorMessage } from "../common/errors.ts";
import { WorkerMethods } from "../common/protocol.ts";
import { connect, RpcError, type RpcPeer, type TlsConfig } from "../rpc/mod.ts";
import { type BlobSink, CasError } from "../cas/mod.ts";

/** Connections to peer workers kept at most (the least recently used one is closed). */
export const PEER_CONNECTIONS_MAX = 16;
/** Fetches from peers at once at most, over all mirrors; beyond, blobs come from the master. */
export const PEER_FETCHES_MAX = 32;
/** Blobs remembered as asked of a peer at most (a bound; entries go when their fetch settles). */
const TRIED_MAX = 65_536;
/** A connection to a peer unused this long is closed. */
const PEER_IDLE_MS = 60_000;
/** Connecting to a peer (TCP, TLS, handshake) may take this long. */
const PEER_CONNECT_TIMEOUT_MS = 3_000;
/**
 * A peer that could not be reached is not dialled again for this long: the
 * blobs the master sends this worker to it fail at once and come from the
 * master (a firewall between workers costs bytes, not a connect timeout per
 * blob).
 */
const PEER_UNREACHABLE_MS = 30_000;
/** Peers remembered as unreachable at most. */
const UNREACHABLE_MAX = 1024;
/** A blob from a peer may take this long (a peer still fetching it waits for its master). */
const PEER_FETCH_TIMEOUT_MS = 120_000;

/** The counters {@linkcode PeerBlobs} keeps (over the worker's life). */
export interface PeerBlobStats {
  /** Blobs fetched from peers (checked by the store afterwards). */
  fetched: number;
  /** Bytes received from peers. */
  bytes: number;
  /** Fetches from peers that failed (unreachable, not held, cut short); the master sent them. */
  failed: number;
  /** Blobs from peers whose bytes did not match their hash (refused, fetched from the master). */
  corrupt: number;
  /** Fetches not tried: the peer could not be reached a moment before. */
  skipped: number;
}

/** Options of {@linkcode PeerBlobs}. */
export interface PeerBlobsOptions {
  secret: CryptoKey;
  /** The farm's TLS set-up (peers are dialled as the coordinator is), if any. */
  tls?: TlsConfig;
  /** This worker's own address as masters know it: never dialled. */
  self?: () => string;
  log?: (message: string) => void;
}

interface PeerConnection {
  peer: Promise<RpcPeer>;
  lastUsedMs: number;
}

/** This worker's connections to its peers, and the blobs it is fetching from them now. */
export class PeerBlobs {
  readonly stats: PeerBlobStats = { fetched: 0, bytes: 0, failed: 0, corrupt: 0, skipped: 0 };
  /** Peers that could not be reached, and until when they are not dialled again. */
  readonly #unreachable = new Map<string, number>();
  readonly #options: PeerBlobsOptions;
  readonly #log: (message: string) => void;
  /** By address; insertion order is LRU order. */
  readonly #connections = new Map<string, PeerConnection>();
  /** Hashes being fetched from a peer now (never served to other peers meanwhile). */
  readonly #fetching = new Map<string, number>();
  /** Blobs asked of a peer, by hash: the peer's address (see {@link triedFrom}). */
  readonly #tried = new Map<string, { address: string; failed: boolean }>();
  #active = 0;
  #idleTimer: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  constructor(options: PeerBlobsOptions) {
    this.#options = options;
    this.#log = options.log ?? ((m) => console.error(`termite worker: ${m}`));
  }

  /** Whether a fetch of `hash` from a peer is running here (then it is not served to peers). */
  isFetchingFromPeer(hash: string): boolean {
    return this.#fetching.has(hash);
  }

  /** Whether another fetch from a peer may start now (else the blob comes from the master). */
  get available(): boolean {
    return !this.#closed && this.#active < PEER_FETCHES_MAX;
  }

  /**
   * Fetches blob `hash` from the peer at `address` into `sink`. The caller's
   * store checks the hash of what arrives.
   * @throws {RpcError} naming the peer, when it cannot be reached, does not
   * hold the blob or breaks off.
   */
  async fetch(address: string, hash: string, sink: BlobSink, signal: AbortSignal): Promise<void> {
    if (this.#closed) throw new RpcError("CLOSED", "The worker is shutting down");
    if (address === this.#options.self?.()) {
      throw new RpcError("BAD_REQUEST", `Told to fetch blob ${hash} from this worker itself`);
    }
    this.#active++;
    this.#fetching.set(hash, (this.#fetching.get(hash) ?? 0) + 1);
    try {
      const peer = await this.#connection(address, signal);
      await peer.call(WorkerMethods.blobGet, { hash }, {
        timeoutMs: PEER_FETCH_TIMEOUT_MS,
        signal,
        onChunk: (chunk) => {
          if (!(chunk instanceof Uint8Array)) {
            throw new RpcError("BAD_REQUEST", `Bad blob chunk from peer ${address}`);
          }
          this.stats.bytes += chunk.length;
          return sink.write(chunk);
        },
      });
      this.stats.fetched++;
    } catch (error) {
      if (!signal.aborted) this.stats.failed++;
      throw error;
    } finally {
      this.#active--;
      const n = this.#fetching.get(hash) ?? 1;
      if (n <= 1) this.#fetching.delete(hash);
      else this.#fetching.set(hash, n - 1);
    }
  }

  /** Notes that blob `hash` is being fetched from the peer at `address` (see {@link triedFrom}). */
  tried(hash: string, address: string): void {
    if (this.#tried.size >= TRIED_MAX) this.#tried.clear();
    this.#tried.set(hash, { address, failed: false });
  }

  /** The peer a fetch of `hash` in progress or just failed went to, if any. */
  triedFrom(hash: string): string | undefined {
    return this.#tried.get(hash)?.address;
  }

  /** Every caller waiting for `hash` is done: forgets where it came from. */
  settled(hash: string): void {
    this.#tried.delete(hash);
  }

  /**
   * A blob from the peer at `address` did not make it into the store
   * (`error`): counted and logged (once for all who waited for it); the
   * caller fetches it from the master.
   */
  failedFrom(address: string, hash: string, error: unknown): void {
    const tried = this.#tried.get(hash);
    if (tried === undefined || tried.failed) return;
    tried.failed = true;
    if (error instanceof CasError && error.code === "CORRUPT") {
      this.stats.corrupt++;
      this.#log(
        `peer ${address} sent blob ${hash} with other bytes: refused, fetching it from the master`,
      );
      // A peer that lied is not asked again on this connection.
      this.#drop(address);
    } else if (!(error instanceof RpcError && error.code === "UNAVAILABLE")) {
      // (An unreachable peer is logged once, when dialling it fails.)
      this.#log(
        `cannot get blob ${hash} from peer ${address}: ${errorMessage(error)}; ` +
          "fetching it from the master",
      );
    }
  }

  /** Closes every connection. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#idleTimer);
    for (const address of [...this.#connections.keys()]) this.#drop(address);
  }

  async #connection(address: string, signal: AbortSignal): Promise<RpcPeer> {
    const now = Date.now();
    const until = this.#unreachable.get(address);
    if (until !== undefined) {
      if (now < until) {
        this.stats.skipped++;
        throw new RpcError("UNAVAILABLE", `Peer ${address} was unreachable a moment ago`);
      }
      this.#unreachable.delete(address);
    }
    let entry = this.#connections.get(address);
    if (entry !== undefined) {
      this.#connections.delete(address);
      const peer = await entry.peer.catch(() => undefined);
      if (peer !== undefined && !peer.isClosing) {
        entry.lastUsedMs = now;
        this.#connections.set(address, entry);
        return peer;
      }
    }
    const { hostname, port } = parseHostPort(address);
    entry = {
      peer: connect({
        transport: "tcp",
        hostname,
        port,
        secret: this.#options.secret,
        role: "worker",
        tls: this.#options.tls,
        timeoutMs: PEER_CONNECT_TIMEOUT_MS,
        signal,
        log: (m) => this.#log(`peer ${address}: ${m}`),
      }),
      lastUsedMs: now,
    };
    this.#connections.set(address, entry);
    entry.peer.catch((error) => {
      if (this.#connections.get(address) === entry) this.#connections.delete(address);
      if (signal.aborted) return;
      if (this.#unreachable.size >= UNREACHABLE_MAX) this.#unreachable.clear();
      this.#unreachable.set(address, Date.now() + PEER_UNREACHABLE_MS);
      this.#log(
        `cannot reach peer ${address}: ${errorMessage(error)}; not trying it again for ` +
          `${PEER_UNREACHABLE_MS / 1000} s (its blobs come from the master)`,
      );
    });
    while (this.#connections.size > PEER_CONNECTIONS_MAX) {
      this.#drop(this.#connections.keys().next().value!);
    }
    this.#idleTimer ??= setInterval(() => this.#dropIdle(), PEER_IDLE_MS);
    return await entry.peer;
  }

  #dropIdle(): void {
    const before = Date.now() - PEER_IDLE_MS;
    for (const [address, entry] of this.#connections) {
      if (entry.lastUsedMs < before) this.#drop(address);
    }
    if (this.#connections.size === 0) {
      clearInterval(this.#idleTimer);
      this.#idleTimer = undefined;
    }
  }

  #drop(address: string): void {
    const entry = this.#connections.get(address);
    if (entry === undefined) return;
    this.#connections.delete(address);
    entry.peer.then((peer) => peer.close(), () => {});
  }
}
