/**
 * The worker's mirrors: one FUSE mount of a {@link MirrorFs} per master,
 * mounted on first use, kept while jobs run and for a while after, unmounted
 * when idle or to make room (at most `mirrorsMax`), and on close.
 *
 * @module
 */

import type { Store } from "../cas/mod.ts";
import type { MirrorOpenParams } from "../common/protocol.ts";
import type { FileAttr } from "../common/types.ts";
import { cleanStaleMount, FuseSession, setReadahead } from "../fuse/mod.ts";
import { RpcError, type RpcPeer } from "../rpc/mod.ts";
import type { PeerBlobs } from "./peer_blobs.ts";
import type { HostFiles } from "./host_files.ts";
import { rpcMasterLink } from "./master_link.ts";
import { MirrorFs, MOUNT_POINTS_DEFAULT } from "./mirror_fs.ts";

/** Mirrors at once by default: beyond, the least recently used one without a job goes. */
export const MIRRORS_MAX_DEFAULT = 64;
/**
 * Readahead of a mirror mount, KiB: a cold job's first reads of its compiler
 * and libraries take one request per MiB instead of per 128 KiB (816 -> 341
 * read requests per worker in a cold lua build); 1 MiB is libfuse's largest
 * request.
 */
export const MIRROR_READAHEAD_KIB = 1024;

/** A master's mirror, mounted. */
export interface Mirror {
  key: string;
  masterId: string;
  writableRoot: string;
  fs: MirrorFs;
  session: FuseSession;
  mountpoint: string;
  /** The connection currently serving this master's files. */
  peer: RpcPeer;
  jobs: number;
  lastUsedMs: number;
  /** Updates applied in the order they arrived. */
  updating: Promise<void>;
}

/** Options of {@linkcode Mirrors}. */
export interface MirrorsOptions {
  /** Mount points go under `${cacheDir}/mirrors`. */
  cacheDir: string;
  /** The content store every mirror shares. */
  store: Store;
  /** Mirrors at once; default {@linkcode MIRRORS_MAX_DEFAULT}. */
  mirrorsMax?: number;
  /** Peer workers blobs may come from, when a master says one holds them. */
  peers?: PeerBlobs;
  /** The worker host's own files, contents may be copied from (none: off). */
  hostFiles?: HostFiles;
  log(message: string): void;
}

/** A string made safe as one file name (masters' and jobs' ids). */
export function safeName(s: string): string {
  return s.replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 100);
}

/** Removes what a crashed worker left in `${cacheDir}/mirrors`: dead mounts and their directories. */
export async function removeStaleMirrors(cacheDir: string): Promise<void> {
  for await (const entry of Deno.readDir(`${cacheDir}/mirrors`)) {
    const dir = `${cacheDir}/mirrors/${entry.name}`;
    try {
      for await (const mnt of Deno.readDir(dir)) {
        await cleanStaleMount(`${dir}/${mnt.name}`).catch(() => false);
      }
    } catch {
      // Not a directory: removed below.
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Counters of {@linkcode MirrorStats} summed over a worker's mirrors, unmounted ones too. */
export const MIRROR_TOTALS = ["lookups", "lookupsWaited", "blobFetches", "blobBytes"] as const;

/** Totals of {@linkcode MIRROR_TOTALS}. */
export type MirrorTotals = Record<(typeof MIRROR_TOTALS)[number], number>;

export class Mirrors {
  readonly #options: MirrorsOptions;
  /** What unmounted mirrors counted, so that totals never go down. */
  readonly #retired: MirrorTotals = { lookups: 0, lookupsWaited: 0, blobFetches: 0, blobBytes: 0 };
  /** Mirrors off the list, still counted until unmounted. */
  readonly #unmounting = new Set<Mirror>();
  readonly #mirrors = new Map<string, Mirror>();
  readonly #opening = new Map<string, Promise<Mirror>>();
  #mountSeq = 0;

  constructor(options: MirrorsOptions) {
    this.#options = options;
  }

  /** The mounted mirrors by key. */
  get all(): ReadonlyMap<string, Mirror> {
    return this.#mirrors;
  }

  /** Counters over every mirror this worker mounted (for /metrics). */
  totals(): MirrorTotals {
    const t = { ...this.#retired };
    for (const m of [...this.#mirrors.values(), ...this.#unmounting]) {
      for (const k of MIRROR_TOTALS) t[k] += m.fs.stats[k];
    }
    return t;
  }

  /** The mirror of master `masterId`, if mounted. */
  get(masterId: string): Mirror | undefined {
    return this.#mirrors.get(safeName(masterId));
  }

  /** The mirror of a master, mounted now if it is not (first use, or dropped when idle). */
  async mirrorFor(peer: RpcPeer, params: MirrorOpenParams): Promise<Mirror> {
    const key = safeName(params.masterId);
    let mirror = this.#mirrors.get(key);
    if (!mirror) {
      let opening = this.#opening.get(key);
      if (!opening) {
        await this.#makeRoom();
        // Someone else may have mounted it meanwhile.
        const mounted = this.#mirrors.get(key);
        opening = mounted ? Promise.resolve(mounted) : this.#opening.get(key);
        if (!opening) {
          opening = this.#mount(key, params, peer).finally(() => this.#opening.delete(key));
          this.#opening.set(key, opening);
        }
      }
      mirror = await opening;
    }
    mirror.peer = peer;
    mirror.lastUsedMs = Date.now();
    return mirror;
  }

  /**
   * Updates the mirror's cache; resolves once the kernel dropped its copies
   * and every update that arrived earlier (for another job) is applied too.
   * A job must not start while earlier updates are in flight: its overlay
   * would hold lower dentries that are invalidated under it, and writing such
   * a path then fails with ESTALE.
   */
  applyUpdates(mirror: Mirror, updates: unknown, reset: unknown): Promise<void> {
    const apply = async () => {
      if (reset === true) await mirror.fs.reset();
      if (Array.isArray(updates) && updates.length > 0) {
        await mirror.fs.applyUpdates(updates as FileAttr[]);
      }
    };
    const done = mirror.updating.then(apply);
    mirror.updating = done.catch(() => {});
    return done;
  }

  /** Unmounts every mirror without a job unused for `idleMs`. */
  async dropIdle(idleMs: number): Promise<void> {
    const now = Date.now();
    for (const mirror of [...this.#mirrors.values()]) {
      if (mirror.jobs > 0 || now - mirror.lastUsedMs < idleMs) continue;
      this.#mirrors.delete(mirror.key);
      this.#options.log(`dropping idle mirror ${mirror.key}`);
      await this.#unmount(mirror, { removeMountpoint: true });
    }
  }

  /** Waits for mirrors being mounted, then unmounts every mirror. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#opening.values()]);
    const mirrors = [...this.#mirrors.values()];
    this.#mirrors.clear();
    for (const mirror of mirrors) await this.#unmount(mirror, { removeMountpoint: false });
  }

  async #mount(key: string, params: MirrorOpenParams, peer: RpcPeer): Promise<Mirror> {
    // A fresh mount point per mount: a mirror dropped for idleness may still be
    // unmounting when the next one is mounted.
    const dir = `${this.#options.cacheDir}/mirrors/${key}`;
    const mountpoint = `${dir}/root-${++this.#mountSeq}`;
    await Deno.mkdir(mountpoint, { recursive: true });
    await cleanStaleMount(mountpoint).catch(() => false);
    const holder: { mirror?: Mirror } = {};
    const link = rpcMasterLink(() => holder.mirror?.peer ?? peer);
    // The sandbox mounts over /proc, /dev, /tmp, /sys: the mirror shows them
    // empty, except one holding the writable root (a build tree in /tmp).
    const root = params.writableRoot;
    const mountPoints = MOUNT_POINTS_DEFAULT.filter((m) => !root.startsWith(m + "/"));
    const fs = new MirrorFs({
      link,
      store: this.#options.store,
      peers: this.#options.peers,
      hostFiles: this.#options.hostFiles,
      writableRoot: root,
      mountPoints,
    });
    const session = await FuseSession.mount(fs, {
      mountpoint,
      fsName: `termite:${key.slice(0, 16)}`,
      subtype: "termite",
      allowOther: true,
      defaultPermissions: true,
      readOnly: true,
    });
    fs.attach(session);
    if (!await setReadahead(mountpoint, MIRROR_READAHEAD_KIB)) {
      this.#options.log(
        `mirror at ${mountpoint}: cannot raise its readahead to ${MIRROR_READAHEAD_KIB} KiB ` +
          "(sysfs not writable?): big files are read 128 KiB at a time",
      );
    }
    fs.warmPath(root);
    const mirror: Mirror = {
      key,
      masterId: params.masterId,
      writableRoot: params.writableRoot,
      fs,
      session,
      mountpoint,
      peer,
      jobs: 0,
      lastUsedMs: Date.now(),
      updating: Promise.resolve(),
    };
    holder.mirror = mirror;
    this.#mirrors.set(key, mirror);
    this.#options.log(`mirror of master ${params.masterId.slice(0, 8)} mounted at ${mountpoint}`);
    return mirror;
  }

  /** Below the mirror cap: unmounts the least recently used mirror without a job, or refuses. */
  async #makeRoom(): Promise<void> {
    const max = this.#options.mirrorsMax ?? MIRRORS_MAX_DEFAULT;
    if (this.#mirrors.size + this.#opening.size < max) return;
    let oldest: Mirror | undefined;
    for (const m of this.#mirrors.values()) {
      if (m.jobs === 0 && (oldest === undefined || m.lastUsedMs < oldest.lastUsedMs)) oldest = m;
    }
    if (oldest === undefined) {
      throw new RpcError("LIMIT", `Cannot open a mirror: ${max} mirrors are running jobs`);
    }
    this.#mirrors.delete(oldest.key);
    this.#options.log(`dropping mirror ${oldest.key}: ${max} mirrors at most`);
    await this.#unmount(oldest, { removeMountpoint: true });
  }

  /** Unmounts a mirror already taken off the list, and frees it. */
  async #unmount(mirror: Mirror, options: { removeMountpoint: boolean }): Promise<void> {
    this.#unmounting.add(mirror);
    try {
      await mirror.session.close().catch((err) =>
        this.#options.log(`unmount ${mirror.mountpoint}: ${err}`)
      );
      await mirror.fs.close();
    } finally {
      for (const k of MIRROR_TOTALS) this.#retired[k] += mirror.fs.stats[k];
      this.#unmounting.delete(mirror);
    }
    if (options.removeMountpoint) await Deno.remove(mirror.mountpoint).catch(() => {});
  }
}
