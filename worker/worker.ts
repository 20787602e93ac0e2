/**
 * The worker: serves masters over authenticated RPC. Per master, one FUSE
 * mirror of its file system (lazy, contents from the shared content store);
 * per job, a sandbox chrooted into that mirror with the master's writable root
 * writable through an overlay; the overlay's upper layer becomes the result set.
 */
import { hostname } from "node:os";
import { formatHostPort } from "../common/address.ts";
import { registerWorker, type WorkerRegistration } from "../coordinator/mod.ts";
import {
  JOB_HEARTBEAT_MS,
  type JobParams,
  type JobReply,
  MasterMethods,
  type MirrorOpenParams,
  type MirrorOpenReply,
  VERSION,
  WorkerMethods,
} from "../common/protocol.ts";
import type { FileAttr, ResultSet } from "../common/types.ts";
import { hashBytes, Store } from "../cas/mod.ts";
import { isHash } from "../common/hash.ts";
import { type CallContext, listen, RpcError, type RpcPeer, type RpcServer } from "../rpc/mod.ts";
import { FuseSession } from "../fuse/mod.ts";
import { cleanStaleMount } from "../fuse/mod.ts";
import {
  collectResultSet,
  type DynmodsMount,
  ensureLauncher,
  favorCgroupMigrations,
  removeStaleCgroups,
  runJob,
} from "../sandbox/mod.ts";
import type { MasterLink } from "./master_link.ts";
import { MirrorFs, MOUNT_POINTS_DEFAULT } from "./mirror_fs.ts";
import { sendResultParts } from "./result_parts.ts";

export interface WorkerOptions {
  secret: CryptoKey;
  /** Job slots. */
  jobs: number;
  /** RPC listen address. */
  hostname?: string;
  port?: number;
  /** "host:port" masters should use (default: hostname:port). */
  advertise?: string;
  /** Coordinator "host:port"; none = not registered (tests connect directly). */
  coordinator?: string;
  /** Content store, mirrors, job scratch. */
  cacheDir: string;
  storeBytesMax?: number;
  /** A mirror unused this long is unmounted and freed. */
  mirrorIdleMs?: number;
  /** Mirrors (one FUSE mount per master) at once; default {@linkcode MIRRORS_MAX_DEFAULT}. */
  mirrorsMax?: number;
  /** Per-job caps. */
  jobTimeoutMsMax?: number;
  memoryBytesMax?: number;
  processesMax?: number;
  /** Bytes a job may write (files in its writable layer and /tmp); default no limit. */
  jobDiskBytesMax?: number;
  /**
   * Mount a `favordynmods` cgroup hierarchy while running, so that moving each
   * job into its pids cgroup does not wait for an RCU grace period (14–28 ms
   * per job here); see sandbox/cgroup_tuning.ts. Default true.
   */
  favorCgroupMigrations?: boolean;
  log?: (message: string) => void;
  /** The coordinator holds another secret (before this worker ever registered). */
  onSecretMismatch?: (error: Error) => void;
}

interface Mirror {
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

interface Reservation {
  params: MirrorOpenParams;
  slots: number;
}

const DIR_ATTRS_MAX = 1_000_000;
/** Mirrors at once by default: beyond, the least recently used one without a job goes. */
export const MIRRORS_MAX_DEFAULT = 64;
const STDIN_BYTES_MAX = 64 * 2 ** 20;
/** Result files up to this size travel inline in the job's reply... */
const INLINE_FILE_BYTES_MAX = 128 * 1024;
/** ...up to this much in all (a reply is one RPC frame, at most FRAME_BYTES_MAX). */
const INLINE_BYTES_MAX = 512 * 1024;
const STDIN_JOBS_MAX = 1024;

const STALE_TEXT = new TextEncoder().encode("Stale file handle");

/** Whether a chunk of a job's stderr reports ESTALE (strerror text). */
function staleText(data: Uint8Array): boolean {
  outer: for (let i = 0; i + STALE_TEXT.length <= data.length; i++) {
    for (let j = 0; j < STALE_TEXT.length; j++) if (data[i + j] !== STALE_TEXT[j]) continue outer;
    return true;
  }
  return false;
}

/** A job's stdin as it arrives (notifications may come before the job itself). */
interface StdinEntry {
  chunks: Uint8Array[];
  bytes: number;
  ended: boolean;
  wake?: () => void;
}

/** Free space below which a failed job is blamed on the worker's disk. */
const DISK_FREE_BYTES_MIN = 16 * 2 ** 20;

/** Whether an error (or one of its causes) is ENOSPC. */
function isNoSpace(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if ((e as { code?: unknown }).code === "ENOSPC" || /os error 28\b/.test(e.message)) {
      return true;
    }
  }
  return false;
}

function safeName(s: string): string {
  return s.replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 100);
}

export class Worker implements AsyncDisposable {
  readonly id: string = crypto.randomUUID();
  #options: WorkerOptions;
  #log: (message: string) => void;
  #store: Store;
  #launcher: string;
  #server!: RpcServer;
  #registration: WorkerRegistration | null = null;
  #mirrors = new Map<string, Mirror>();
  #mirrorOpening = new Map<string, Promise<Mirror>>();
  #reservations = new Map<RpcPeer, Reservation>();
  #stdin = new Map<string, StdinEntry>();
  #running = 0;
  #mountSeq = 0;
  #background = new Set<Promise<void>>();
  #draining = false;
  #idleTimer?: ReturnType<typeof setInterval>;
  #closed = false;
  #dynmods: DynmodsMount | null = null;
  stats = { jobs: 0, jobsFailed: 0, blobsServed: 0 };

  private constructor(options: WorkerOptions, store: Store, launcher: string) {
    this.#options = options;
    this.#log = options.log ?? ((m) => console.error(`termite worker: ${m}`));
    this.#store = store;
    this.#launcher = launcher;
  }

  static async start(options: WorkerOptions): Promise<Worker> {
    await Deno.mkdir(`${options.cacheDir}/mirrors`, { recursive: true, mode: 0o700 });
    await Deno.mkdir(`${options.cacheDir}/jobs`, { recursive: true, mode: 0o700 });
    // Leftovers of a crashed worker: dead mounts and job directories.
    for await (const entry of Deno.readDir(`${options.cacheDir}/mirrors`)) {
      const dir = `${options.cacheDir}/mirrors/${entry.name}`;
      try {
        for await (const mnt of Deno.readDir(dir)) {
          await cleanStaleMount(`${dir}/${mnt.name}`).catch(() => false);
        }
      } catch {
        // Not a directory: removed below.
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
    await Deno.remove(`${options.cacheDir}/jobs`, { recursive: true }).catch(() => {});
    await Deno.mkdir(`${options.cacheDir}/jobs`, { recursive: true, mode: 0o700 });
    await removeStaleCgroups().catch(() => {});
    let dynmods: DynmodsMount | null = null;
    if (options.favorCgroupMigrations !== false) {
      const tuned = await favorCgroupMigrations(`${options.cacheDir}/cgroup-dynmods`);
      dynmods = tuned.mount;
      if (tuned.mount === null) {
        (options.log ?? console.error)(
          `jobs pay a slow cgroup move each (no favordynmods hierarchy: ${tuned.reason})`,
        );
      }
    }
    const launcher = await ensureLauncher(`${options.cacheDir}/launcher`);
    const store = await Store.open({
      dir: `${options.cacheDir}/cas`,
      bytesMax: options.storeBytesMax ?? 8 * 2 ** 30,
    });
    const worker = new Worker(options, store, launcher);
    worker.#dynmods = dynmods;
    worker.#server = listen({
      transport: "tcp",
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port ?? 0,
      secret: options.secret,
      role: "worker",
      handlers: (peer) => worker.#handlers(peer),
      log: (m) => worker.#log(m),
    });
    if (options.coordinator) {
      worker.#registration = registerWorker({
        coordinator: options.coordinator,
        secret: options.secret,
        info: () => worker.#info(),
        onSecretMismatch: options.onSecretMismatch,
        onDrain: () => {
          worker.#draining = true;
        },
        onStop: () => {
          worker.close().catch(() => {});
        },
        log: (m) => worker.#log(m),
      });
    }
    const idleMs = options.mirrorIdleMs ?? 10 * 60_000;
    worker.#idleTimer = setInterval(
      () => worker.#dropIdleMirrors(idleMs),
      Math.min(idleMs, 30_000),
    );
    return worker;
  }

  get port(): number {
    return this.#server.port;
  }

  get address(): string {
    return this.#options.advertise ??
      formatHostPort(this.#options.hostname ?? "127.0.0.1", this.port);
  }

  get mirrors(): ReadonlyMap<string, Mirror> {
    return this.#mirrors;
  }

  get store(): Store {
    return this.#store;
  }

  #info() {
    return {
      id: this.id,
      address: this.address,
      hostname: hostname(),
      slots: this.#draining ? 0 : this.#options.jobs,
      jobsRunning: this.#running,
      load: Deno.loadavg()[0],
      version: VERSION,
    };
  }

  #reservedSlots(): number {
    let n = 0;
    for (const r of this.#reservations.values()) n += r.slots;
    return n;
  }

  #handlers(peer: RpcPeer) {
    peer.closed.then(() => {
      const r = this.#reservations.get(peer);
      this.#reservations.delete(peer);
      const mirror = r && this.#mirrors.get(safeName(r.params.masterId));
      if (mirror) mirror.lastUsedMs = Date.now();
    });
    return {
      [WorkerMethods.mirrorOpen]: (params: MirrorOpenParams) => this.#mirrorOpen(peer, params),
      [WorkerMethods.jobRun]: (params: JobParams, ctx: CallContext) =>
        this.#jobRun(peer, params, ctx),
      [WorkerMethods.jobStdin]: (params: { jobId: string; data: Uint8Array }) => {
        if (typeof params?.jobId !== "string" || !(params.data instanceof Uint8Array)) return;
        const s = this.#stdinEntry(params.jobId);
        if (!s || s.ended) return;
        if (params.data.length === 0) s.ended = true;
        else if (s.bytes + params.data.length <= STDIN_BYTES_MAX) {
          s.chunks.push(params.data);
          s.bytes += params.data.length;
        }
        s.wake?.();
      },
      [WorkerMethods.blobGet]: async (params: { hash: unknown }, ctx: CallContext) => {
        const hash = params?.hash;
        if (typeof hash !== "string" || !isHash(hash)) {
          throw new RpcError("BAD_REQUEST", "Bad hash");
        }
        if (!this.#store.has(hash)) throw new RpcError("ENOENT", `No blob ${hash} on this worker`);
        this.#store.pin(hash);
        try {
          const size = await ctx.sendFile(this.#store.pathOf(hash));
          this.stats.blobsServed++;
          return { size };
        } finally {
          this.#store.unpin(hash);
        }
      },
      [WorkerMethods.attrsPush]: async (params: { updates: FileAttr[]; reset: boolean }) => {
        const r = this.#reservations.get(peer);
        if (!r) throw new RpcError("BAD_REQUEST", "No mirror open on this connection");
        // A mirror dropped for idleness has nothing cached to update.
        const mirror = this.#mirrors.get(safeName(r.params.masterId));
        if (mirror) await this.#applyUpdates(mirror, params?.updates, params?.reset);
        return {};
      },
    };
  }

  /**
   * Updates the mirror's cache; resolves once the kernel dropped its copies
   * and every update that arrived earlier (for another job) is applied too.
   * A job must not start while earlier updates are in flight: its overlay
   * would hold lower dentries that are invalidated under it, and writing such
   * a path then fails with ESTALE.
   */
  #applyUpdates(mirror: Mirror, updates: unknown, reset: unknown): Promise<void> {
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

  async #mirrorOpen(peer: RpcPeer, params: MirrorOpenParams): Promise<MirrorOpenReply> {
    if (
      typeof params?.masterId !== "string" || typeof params.writableRoot !== "string" ||
      !params.writableRoot.startsWith("/") || params.writableRoot === "/" ||
      typeof params.slots !== "number"
    ) {
      throw new RpcError("BAD_REQUEST", "Bad mirror.open parameters");
    }
    if (this.#closed) throw new RpcError("CLOSED", "The worker is shutting down");
    await this.#mirrorFor(peer, params);
    const free = this.#draining ? 0 : this.#options.jobs - this.#reservedSlots();
    const slots = Math.max(0, Math.min(Math.floor(params.slots), free));
    this.#reservations.set(peer, { params, slots });
    return { slots, workerId: this.id };
  }

  /** The mirror of a master, mounted now if it is not (first use, or dropped when idle). */
  async #mirrorFor(peer: RpcPeer, params: MirrorOpenParams): Promise<Mirror> {
    const key = safeName(params.masterId);
    let mirror = this.#mirrors.get(key);
    if (!mirror) {
      let opening = this.#mirrorOpening.get(key);
      if (!opening) {
        await this.#makeRoomForMirror();
        // Someone else may have mounted it meanwhile.
        const mounted = this.#mirrors.get(key);
        opening = mounted ? Promise.resolve(mounted) : this.#mirrorOpening.get(key);
        if (!opening) {
          opening = this.#mountMirror(key, params, peer).finally(() =>
            this.#mirrorOpening.delete(key)
          );
          this.#mirrorOpening.set(key, opening);
        }
      }
      mirror = await opening;
    }
    mirror.peer = peer;
    mirror.lastUsedMs = Date.now();
    return mirror;
  }

  async #mountMirror(key: string, params: MirrorOpenParams, peer: RpcPeer): Promise<Mirror> {
    // A fresh mount point per mount: a mirror dropped for idleness may still be
    // unmounting when the next one is mounted.
    const dir = `${this.#options.cacheDir}/mirrors/${key}`;
    const mountpoint = `${dir}/root-${++this.#mountSeq}`;
    await Deno.mkdir(mountpoint, { recursive: true });
    await cleanStaleMount(mountpoint).catch(() => false);
    const holder: { mirror?: Mirror } = {};
    const currentPeer = () => holder.mirror?.peer ?? peer;
    const link: MasterLink = {
      attr: (path, options) =>
        currentPeer().call<FileAttr>(MasterMethods.fsAttr, { path, withHash: options.withHash }, {
          timeoutMs: 60_000,
          signal: options.signal,
        }),
      dir: async (path, options) => {
        const out: FileAttr[] = [];
        await currentPeer().call(MasterMethods.fsDir, { path }, {
          timeoutMs: 60_000,
          signal: options.signal,
          onChunk: (chunk) => {
            if (!Array.isArray(chunk) || out.length + chunk.length > DIR_ATTRS_MAX) {
              throw new RpcError("BAD_REQUEST", "Bad directory chunk");
            }
            out.push(...(chunk as FileAttr[]));
          },
        });
        return out;
      },
      fetchBlob: async (hash, sink, signal) => {
        await currentPeer().call(MasterMethods.blobGet, { hash }, {
          timeoutMs: 300_000,
          signal,
          onChunk: (chunk) => {
            if (!(chunk instanceof Uint8Array)) throw new RpcError("BAD_REQUEST", "Bad blob chunk");
            return sink.write(chunk);
          },
        });
      },
    };
    // The sandbox mounts over /proc, /dev, /tmp, /sys: the mirror shows them
    // empty, except one holding the writable root (a build tree in /tmp).
    const root = params.writableRoot;
    const mountPoints = MOUNT_POINTS_DEFAULT.filter((m) => !root.startsWith(m + "/"));
    const fs = new MirrorFs({ link, store: this.#store, writableRoot: root, mountPoints });
    const session = await FuseSession.mount(fs, {
      mountpoint,
      fsName: `termite:${key.slice(0, 16)}`,
      subtype: "termite",
      allowOther: true,
      defaultPermissions: true,
      readOnly: true,
    });
    fs.attach(session);
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
    this.#log(`mirror of master ${params.masterId.slice(0, 8)} mounted at ${mountpoint}`);
    return mirror;
  }

  /** Below the mirror cap: unmounts the least recently used mirror without a job, or refuses. */
  async #makeRoomForMirror(): Promise<void> {
    const max = this.#options.mirrorsMax ?? MIRRORS_MAX_DEFAULT;
    if (this.#mirrors.size + this.#mirrorOpening.size < max) return;
    let oldest: Mirror | undefined;
    for (const m of this.#mirrors.values()) {
      if (m.jobs === 0 && (oldest === undefined || m.lastUsedMs < oldest.lastUsedMs)) oldest = m;
    }
    if (oldest === undefined) {
      throw new RpcError("LIMIT", `Cannot open a mirror: ${max} mirrors are running jobs`);
    }
    this.#mirrors.delete(oldest.key);
    this.#log(`dropping mirror ${oldest.key}: ${max} mirrors at most`);
    await oldest.session.close().catch((err) => this.#log(`unmount: ${err}`));
    await oldest.fs.close();
    await Deno.remove(oldest.mountpoint).catch(() => {});
  }

  async #dropIdleMirrors(idleMs: number): Promise<void> {
    const now = Date.now();
    for (const mirror of [...this.#mirrors.values()]) {
      if (mirror.jobs > 0 || now - mirror.lastUsedMs < idleMs) continue;
      this.#mirrors.delete(mirror.key);
      this.#log(`dropping idle mirror ${mirror.key}`);
      await mirror.session.close().catch((err) => this.#log(`unmount: ${err}`));
      await mirror.fs.close();
      await Deno.remove(mirror.mountpoint).catch(() => {});
    }
  }

  async #jobRun(peer: RpcPeer, params: JobParams, ctx: CallContext): Promise<JobReply> {
    const reservation = this.#reservations.get(peer);
    if (!reservation) throw new RpcError("BAD_REQUEST", "No mirror open on this connection");
    if (
      !Array.isArray(params?.argv) || params.argv.length === 0 ||
      params.argv.some((a) => typeof a !== "string") || typeof params.cwd !== "string" ||
      typeof params.env !== "object" || typeof params.jobId !== "string"
    ) {
      throw new RpcError("BAD_REQUEST", "Bad job parameters");
    }
    if (this.#closed) throw new RpcError("CLOSED", "The worker is shutting down");
    const mirror = await this.#mirrorFor(peer, reservation.params);
    mirror.jobs++;
    this.#running++;
    this.stats.jobs++;
    const heartbeatMs = Math.min(
      JOB_HEARTBEAT_MS,
      Math.max(250, Number(params.heartbeatMs) || JOB_HEARTBEAT_MS),
    );
    const heartbeat = setInterval(() => {
      ctx.sendChunk({ hb: 1 }).catch(() => {});
    }, heartbeatMs);
    const jobDir = `${this.#options.cacheDir}/jobs/${safeName(params.jobId)}`;
    const stdinEnd = new AbortController();
    try {
      await this.#applyUpdates(mirror, params.updates, params.reset);
      // stdin streams in while the job runs; it need not end before the job.
      const stdin = params.stdin
        ? this.#stdinStream(params.jobId, AbortSignal.any([ctx.signal, stdinEnd.signal]))
        : undefined;
      const timeoutMs = Math.min(
        Math.max(1, Number(params.timeoutMs) || 600_000),
        this.#options.jobTimeoutMsMax ?? 3_600_000,
      );
      let resultSet: ResultSet | undefined;
      let staleSeen = false;
      // Small results travel in the reply itself: no store write, no fetch.
      const inline = { blobs: {} as Record<string, Uint8Array>, bytes: 0 };
      const started = performance.now();
      let collectMs = 0;
      const outcome = await runJob({
        argv: params.argv,
        cwd: params.cwd,
        env: params.env,
        stdin,
        timeoutMs,
        memoryBytesMax: this.#options.memoryBytesMax,
        processesMax: this.#options.processesMax,
        diskBytesMax: this.#options.jobDiskBytesMax,
      }, {
        lowerRoot: mirror.mountpoint,
        writableRoot: mirror.writableRoot,
        jobDir,
        launcherCacheDir: `${this.#options.cacheDir}/launcher`,
        signal: ctx.signal,
        deferCleanup: (cleanup) => this.#track(cleanup),
        onStdout: (data) => ctx.sendChunk({ fd: 1, data }),
        onStderr: (data) => {
          if (!staleSeen) staleSeen = staleText(data);
          return ctx.sendChunk({ fd: 2, data });
        },
        onUpper: async (upper, lowerDir, ended) => {
          // A job that failed on a full disk failed because of this worker.
          if (ended.exitCode !== 0) await this.#throwIfDiskFull();
          const t = performance.now();
          try {
            resultSet = await collectResultSet(
              upper,
              mirror.writableRoot,
              (path) => this.#putResult(path, inline),
              { lowerDir },
            );
          } catch (err) {
            if (isNoSpace(err)) {
              throw new RpcError("NOSPACE", `No space left on this worker to store the results`);
            }
            throw err;
          }
          collectMs = performance.now() - t;
        },
      });
      const sandboxEnded = performance.now();
      if (Deno.env.get("TERMITE_DEBUG_TIMINGS")) {
        this.#log(
          `job ${params.argv[0]}: ${(sandboxEnded - started).toFixed(1)} ms, collect ${
            collectMs.toFixed(1)
          } ms, launcher set-up ${(outcome.launcherMs ?? 0).toFixed(1)} ms`,
        );
      }
      if (ctx.signal.aborted) throw new RpcError("CANCELLED", "Job cancelled");
      if (outcome.exitCode !== 0 && staleSeen) {
        // The job failed on ESTALE from the overlay over the mirror (a lower
        // dentry invalidated under it): this worker's fault, not the job's.
        this.#log(`job ${params.argv[0]} failed on a stale file handle; asking for a retry`);
        throw new RpcError("ESTALE", "The job hit a stale file handle in the mirror");
      }
      // Killed by the sandbox (time, processes, disk): its changes are dropped and
      // the kill reported as the job's own outcome. Not an error of this worker,
      // or the master would run the job again elsewhere, and at last unconfined.
      if (!resultSet && outcome.killedBy !== undefined) {
        resultSet = { deletions: [], dirs: [], files: [], symlinks: [] };
      }
      if (!resultSet) throw new RpcError("INTERNAL", "The job's changes could not be collected");
      // A reply must fit one frame: large results go ahead of it in parts.
      const results = await sendResultParts(resultSet, inline.blobs, (c) => ctx.sendChunk(c));
      return {
        exitCode: outcome.exitCode,
        killedBy: outcome.killedBy,
        reason: outcome.reason,
        resultSet: results.resultSet,
        inline: results.inline,
        timings: {
          totalMs: performance.now() - started,
          collectMs,
          launcherMs: outcome.launcherMs ?? 0,
          sandboxMs: sandboxEnded - started - collectMs,
        },
        mirror: { ...mirror.fs.stats },
      };
    } catch (err) {
      this.stats.jobsFailed++;
      // The sandbox failed (say, no room for the launcher's status): the disk?
      if (!(err instanceof RpcError) && !ctx.signal.aborted) await this.#throwIfDiskFull();
      throw err;
    } finally {
      clearInterval(heartbeat);
      stdinEnd.abort();
      this.#stdin.delete(params.jobId);
      mirror.jobs--;
      mirror.lastUsedMs = Date.now();
      this.#running--;
    }
  }

  /** Throws NOSPACE when the file system of the cache dir (jobs, store) is (nearly) full. */
  async #throwIfDiskFull(): Promise<void> {
    const out = await new Deno.Command("stat", {
      args: ["-f", "-c", "%a %S", `${this.#options.cacheDir}/jobs`],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    const [blocks, size] = new TextDecoder().decode(out.stdout).trim().split(" ").map(Number);
    const free = blocks * size;
    if (out.success && Number.isFinite(free) && free < DISK_FREE_BYTES_MIN) {
      throw new RpcError(
        "NOSPACE",
        `No space left on this worker: ${free} bytes free in ${this.#options.cacheDir}`,
      );
    }
  }

  #stdinEntry(jobId: string): StdinEntry | undefined {
    let entry = this.#stdin.get(jobId);
    if (!entry && this.#stdin.size < STDIN_JOBS_MAX) {
      entry = { chunks: [], bytes: 0, ended: false };
      this.#stdin.set(jobId, entry);
    }
    return entry;
  }

  async *#stdinStream(jobId: string, signal: AbortSignal): AsyncGenerator<Uint8Array> {
    const entry = this.#stdinEntry(jobId);
    if (!entry) throw new RpcError("LIMIT", "Too many jobs waiting for stdin");
    let sent = 0;
    for (;;) {
      while (sent < entry.chunks.length) {
        const chunk = entry.chunks[sent];
        entry.chunks[sent++] = new Uint8Array(); // Delivered: let it go.
        yield chunk;
      }
      if (entry.ended || signal.aborted) return;
      await new Promise<void>((resolve) => {
        entry.wake = resolve;
        signal.addEventListener("abort", () => resolve(), { once: true });
      });
    }
  }

  /**
   * Takes one result file: small ones are kept for the reply (up to
   * INLINE_BYTES_MAX in all), the rest go to the store for the master to fetch.
   */
  async #putResult(
    path: string,
    inline: { blobs: Record<string, Uint8Array>; bytes: number },
  ): Promise<{ hash: string; size: number }> {
    const info = await Deno.stat(path);
    if (info.size <= INLINE_FILE_BYTES_MAX && inline.bytes + info.size <= INLINE_BYTES_MAX) {
      const bytes = await Deno.readFile(path);
      if (bytes.length === info.size) {
        const hash = hashBytes(bytes);
        if (!(hash in inline.blobs)) {
          inline.blobs[hash] = bytes;
          inline.bytes += bytes.length;
        }
        return { hash, size: bytes.length };
      }
    }
    return await this.#store.putFile(path);
  }

  /** Background work (job clean-up) awaited at close; failures are logged. */
  #track(work: Promise<void>): void {
    const p = work.catch((err) => this.#log(`${(err as Error).message}`)).finally(() =>
      this.#background.delete(p)
    );
    this.#background.add(p);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#idleTimer);
    await this.#registration?.close();
    await this.#server.close();
    await Promise.allSettled([...this.#mirrorOpening.values(), ...this.#background]);
    for (const mirror of this.#mirrors.values()) {
      await mirror.session.close().catch((err) =>
        this.#log(`unmount ${mirror.mountpoint}: ${err}`)
      );
      await mirror.fs.close();
    }
    this.#mirrors.clear();
    this.#store.close();
    await this.#store.settle();
    await this.#dynmods?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export function startWorker(options: WorkerOptions): Promise<Worker> {
  return Worker.start(options);
}
