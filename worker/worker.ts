/**
 * The worker: serves masters over authenticated RPC. Per master, one FUSE
 * mirror of its file system (lazy, contents from the shared content store;
 * `mirrors.ts`); per job, a sandbox chrooted into that mirror with the
 * master's writable root writable through an overlay; the overlay's upper
 * layer becomes the result set (`job_run.ts`).
 */
import { hostname } from "node:os";
import { formatHostPort } from "../common/address.ts";
import { registerWorker, type WorkerRegistration } from "../coordinator/mod.ts";
import {
  type JobParams,
  type JobReply,
  type MirrorOpenParams,
  type MirrorOpenReply,
  VERSION,
  WARM_OPEN_TOOLS_MAX,
  WARM_TOOL_KEY_MAX,
  WorkerMethods,
} from "../common/protocol.ts";
import type { FileAttr } from "../common/types.ts";
import { Store } from "../cas/mod.ts";
import { errorMessage } from "../common/errors.ts";
import { isHash } from "../common/hash.ts";
import { type CallContext, listen, RpcError, type RpcPeer, type RpcServer } from "../rpc/mod.ts";
import {
  type DynmodsMount,
  ensureLauncher,
  favorCgroupMigrations,
  removeStaleCgroups,
  removeTree,
} from "../sandbox/mod.ts";
import { checkJobParams, JobRunner, startHeartbeat } from "./job_run.ts";
import { JobStdin } from "./job_stdin.ts";
import { type Mirror, Mirrors, MIRRORS_MAX_DEFAULT, removeStaleMirrors } from "./mirrors.ts";

export { MIRRORS_MAX_DEFAULT };

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
  /**
   * Bytes of disk a job's writable layer may take (allocated; its results, by
   * apparent size, up to the same or 4 GiB; its /tmp up to the same or 1 GiB);
   * default no limit. See sandbox/job.ts's JobSpec.
   */
  jobDiskBytesMax?: number;
  /** Jobs share the worker's network; by default each has only a loopback of its own. */
  jobNetwork?: boolean;
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

interface Reservation {
  params: MirrorOpenParams;
  slots: number;
}

export class Worker implements AsyncDisposable {
  readonly id: string = crypto.randomUUID();
  #options: WorkerOptions;
  #log: (message: string) => void;
  #store: Store;
  #server!: RpcServer;
  #registration: WorkerRegistration | null = null;
  #mirrors: Mirrors;
  #jobs: JobRunner;
  #reservations = new Map<RpcPeer, Reservation>();
  #stdin = new JobStdin();
  #running = 0;
  #background = new Set<Promise<void>>();
  #draining = false;
  #idleTimer?: ReturnType<typeof setInterval>;
  #closed = false;
  #dynmods: DynmodsMount | null = null;
  stats = { jobs: 0, jobsFailed: 0, blobsServed: 0 };

  private constructor(options: WorkerOptions, store: Store) {
    this.#options = options;
    const log = this.#log = options.log ?? ((m) => console.error(`termite worker: ${m}`));
    this.#store = store;
    this.#mirrors = new Mirrors({
      cacheDir: options.cacheDir,
      store,
      mirrorsMax: options.mirrorsMax,
      log,
    });
    this.#jobs = new JobRunner({ ...options, store, log, track: (work) => this.#track(work) });
  }

  static async start(options: WorkerOptions): Promise<Worker> {
    await Deno.mkdir(`${options.cacheDir}/mirrors`, { recursive: true, mode: 0o700 });
    await Deno.mkdir(`${options.cacheDir}/jobs`, { recursive: true, mode: 0o700 });
    // Leftovers of a crashed worker: dead mounts and job directories.
    await removeStaleMirrors(options.cacheDir);
    // (At any depth: a crashed job may have left a tree too deep for Deno.remove.)
    await removeTree(`${options.cacheDir}/jobs`).catch(() => {});
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
    await ensureLauncher(`${options.cacheDir}/launcher`);
    const store = await Store.open({
      dir: `${options.cacheDir}/cas`,
      bytesMax: options.storeBytesMax ?? 8 * 2 ** 30,
    });
    const worker = new Worker(options, store);
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
    if (options.coordinator) worker.#register(options.coordinator);
    const idleMs = options.mirrorIdleMs ?? 10 * 60_000;
    worker.#idleTimer = setInterval(
      () => worker.#mirrors.dropIdle(idleMs),
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
    return this.#mirrors.all;
  }

  get store(): Store {
    return this.#store;
  }

  #register(coordinator: string): void {
    this.#registration = registerWorker({
      coordinator,
      secret: this.#options.secret,
      info: () => this.#info(),
      onSecretMismatch: this.#options.onSecretMismatch,
      onDrain: () => {
        this.#draining = true;
      },
      onStop: () => {
        this.close().catch(() => {});
      },
      log: (m) => this.#log(m),
    });
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
      const mirror = r && this.#mirrors.get(r.params.masterId);
      if (mirror) mirror.lastUsedMs = Date.now();
    });
    return {
      [WorkerMethods.mirrorOpen]: (params: MirrorOpenParams) => this.#mirrorOpen(peer, params),
      [WorkerMethods.jobRun]: (params: JobParams, ctx: CallContext) =>
        this.#jobRun(peer, params, ctx),
      [WorkerMethods.jobStdin]: (params: { jobId: string; data: Uint8Array }) =>
        this.#stdin.push(params),
      [WorkerMethods.blobGet]: (params: { hash: unknown }, ctx: CallContext) =>
        this.#blobGet(params, ctx),
      [WorkerMethods.attrsPush]: async (params: { updates: FileAttr[]; reset: boolean }) => {
        const r = this.#reservations.get(peer);
        if (!r) throw new RpcError("BAD_REQUEST", "No mirror open on this connection");
        // A mirror dropped for idleness has nothing cached to update.
        const mirror = this.#mirrors.get(r.params.masterId);
        if (mirror) await this.#mirrors.applyUpdates(mirror, params?.updates, params?.reset);
        return {};
      },
    };
  }

  /** Streams a blob of this worker's store (a job's result) to the master. */
  async #blobGet(params: { hash: unknown }, ctx: CallContext): Promise<{ size: number }> {
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
    const mirror = await this.#mirrors.mirrorFor(peer, params);
    if (Array.isArray(params.warm)) {
      // The master's most used tools: their warm sets stream in before their first job.
      for (const tool of params.warm.slice(0, WARM_OPEN_TOOLS_MAX)) {
        if (typeof tool === "string" && tool.length <= WARM_TOOL_KEY_MAX) mirror.fs.warm(tool);
      }
    }
    const free = this.#draining ? 0 : this.#options.jobs - this.#reservedSlots();
    const slots = Math.max(0, Math.min(Math.floor(params.slots), free));
    this.#reservations.set(peer, { params, slots });
    return { slots, workerId: this.id };
  }

  async #jobRun(peer: RpcPeer, params: JobParams, ctx: CallContext): Promise<JobReply> {
    const reservation = this.#reservations.get(peer);
    if (!reservation) throw new RpcError("BAD_REQUEST", "No mirror open on this connection");
    checkJobParams(params);
    if (this.#closed) throw new RpcError("CLOSED", "The worker is shutting down");
    const mirror = await this.#mirrors.mirrorFor(peer, reservation.params);
    mirror.jobs++;
    this.#running++;
    this.stats.jobs++;
    const heartbeat = startHeartbeat(ctx, params.heartbeatMs);
    const stdinEnd = new AbortController();
    try {
      await this.#mirrors.applyUpdates(mirror, params.updates, params.reset);
      if (typeof params.warm === "string" && params.warm.length <= WARM_TOOL_KEY_MAX) {
        mirror.fs.warm(params.warm);
      }
      // stdin streams in while the job runs; it need not end before the job.
      const stdin = params.stdin
        ? this.#stdin.stream(params.jobId, AbortSignal.any([ctx.signal, stdinEnd.signal]))
        : undefined;
      return await this.#jobs.run(mirror, params, ctx, stdin);
    } catch (err) {
      this.stats.jobsFailed++;
      // The sandbox failed (say, no room for the launcher's status): the disk?
      if (!(err instanceof RpcError) && !ctx.signal.aborted) await this.#jobs.throwIfDiskFull();
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

  /** Background work (job clean-up) awaited at close; failures are logged. */
  #track(work: Promise<void>): void {
    const p = work.catch((err) => this.#log(errorMessage(err))).finally(() =>
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
    await Promise.allSettled([...this.#background]);
    await this.#mirrors.close();
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
