/**
 * The worker: serves masters over authenticated RPC. Per master, one FUSE
 * mirror of its file system (lazy, contents from the shared content store;
 * `mirrors.ts`); per job, a sandbox chrooted into that mirror with the
 * master's writable root writable through an overlay; the overlay's upper
 * layer becomes the result set (`job_run.ts`).
 */
import { hostname } from "node:os";
import { formatHostPort, ListenError } from "../common/address.ts";
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
import { normalizePath } from "../common/paths.ts";
import {
  type CallContext,
  type Handlers,
  listenAny,
  type ListenOptions,
  RpcError,
  type RpcPeer,
  type RpcServer,
  type TlsConfig,
  TlsConfigError,
} from "../rpc/mod.ts";
import {
  type DynmodsMount,
  ensureLauncher,
  favorCgroupMigrations,
  NetnsPool,
  removeStaleCgroups,
  removeTree,
} from "../sandbox/mod.ts";
import { checkJobParams, JobRunner, startHeartbeat } from "./job_run.ts";
import { ReadTracer } from "./read_trace.ts";
import { JobStdin } from "./job_stdin.ts";
import { type Mirror, Mirrors, MIRRORS_MAX_DEFAULT, removeStaleMirrors } from "./mirrors.ts";
import { FairSlots, SlotsFullError } from "./slots.ts";
import { PeerBlobs } from "./peer_blobs.ts";
import { HostFiles, type HostFilesOptions } from "./host_files.ts";
import { type MetricsServer, serveMetrics, WorkerMetrics } from "./metrics.ts";

/** Jobs waiting for a slot, over all masters, at most this many per slot. */
const WAITING_PER_SLOT_MAX = 16;
/** Why a job's stdin stream stops once the job ended (a reason of its own: no DOMException built). */
const JOB_ENDED = new Error("The job ended");

export { MIRRORS_MAX_DEFAULT };

export interface WorkerOptions {
  secret: CryptoKey;
  /**
   * TLS: masters are served with its certificate and key, the coordinator's
   * certificate is checked against its CAs (plain TCP when undefined).
   */
  tls?: TlsConfig;
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
  /**
   * Record what jobs read when their master asks (for its action cache): one
   * bpftrace process for the worker's life (worker/read_trace.ts). Default false.
   */
  recordReads?: boolean;
  /**
   * Serve Prometheus metrics at `http://metricsHostname:metricsPort/metrics`
   * (`https://` with `tls`; 0 = any free port); none when undefined.
   */
  metricsPort?: number;
  /**
   * Copy a file's contents from this host's own file at the same path when
   * it is a public system file hashing as the master announced, instead of
   * fetching them (worker/host_files.ts). Default true; options for tests.
   */
  hostFiles?: boolean | HostFilesOptions;
  /** Address of the metrics listener; default 127.0.0.1. */
  metricsHostname?: string;
  log?: (message: string) => void;
  /** The coordinator holds another secret (before this worker ever registered). */
  onSecretMismatch?: (error: Error) => void;
}

/** A master's connection: its mirror's parameters and the slots it may use at once. */
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
  /** Slots are taken per job, shared in turn between the masters whose jobs wait. */
  #slots: FairSlots;
  #background = new Set<Promise<void>>();
  #draining = false;
  #idleTimer?: ReturnType<typeof setInterval>;
  #closed = false;
  #dynmods: DynmodsMount | null = null;
  /** The network namespaces jobs reuse (none when jobs share the worker's network). */
  #netnsPool: NetnsPool | undefined;
  #tracer: ReadTracer | null = null;
  #tracerStarting: Promise<void> = Promise.resolve();
  /** Blobs from peer workers (and which ones are being fetched from them now). */
  readonly #peers: PeerBlobs;
  /** Contents from this host's own files (undefined: off). */
  readonly #hostFiles: HostFiles | undefined;
  stats = { jobs: 0, jobsFailed: 0, blobsServed: 0, bytesServed: 0 };
  readonly metrics: WorkerMetrics;
  #metricsServer: MetricsServer | null = null;

  private constructor(options: WorkerOptions, store: Store, netnsPool: NetnsPool | undefined) {
    this.#options = options;
    const log = this.#log = options.log ?? ((m) => console.error(`termite worker: ${m}`));
    this.#store = store;
    this.#slots = new FairSlots({
      slots: options.jobs,
      waitingMax: options.jobs * WAITING_PER_SLOT_MAX,
    });
    this.#peers = new PeerBlobs({
      secret: options.secret,
      tls: options.tls,
      self: () => this.address,
      log,
    });
    if (options.hostFiles !== false) {
      const more = typeof options.hostFiles === "object" ? options.hostFiles : {};
      // Never from the worker's own files: its mounts are there.
      const exclude = [...new Set([absolute(options.cacheDir), realOrSame(options.cacheDir)])];
      this.#hostFiles = new HostFiles({
        ...more,
        exclude: [...exclude, ...(more.exclude ?? [])],
      });
    }
    this.#mirrors = new Mirrors({
      cacheDir: options.cacheDir,
      store,
      peers: this.#peers,
      hostFiles: this.#hostFiles,
      mirrorsMax: options.mirrorsMax,
      log,
    });
    if (options.recordReads) {
      this.#tracer = new ReadTracer({ cacheDir: `${options.cacheDir}/trace`, log });
      // Compiling the probes takes seconds (10-30 here): the worker registers after.
      this.#tracerStarting = this.#tracer.start().catch((err) =>
        log(`cannot record reads: ${err.message}`)
      );
    }
    this.#jobs = new JobRunner({
      ...options,
      store,
      log,
      track: (work) => this.#track(work),
      tracer: this.#tracer ?? undefined,
      netnsPool,
    });
    this.#netnsPool = netnsPool;
    this.metrics = new WorkerMetrics({
      slots: () => this.#draining ? 0 : options.jobs,
      slotsBusy: () => this.#slots.busy,
      jobsWaiting: () => this.#slots.waiting,
      mirrors: () => this.#mirrors.all.size,
      mirrorTotals: () => this.#mirrors.totals(),
      storeBytes: () => store.bytes,
      storeBytesMax: () => store.bytesMax,
      blobsServed: () => this.stats.blobsServed,
      bytesServed: () => this.stats.bytesServed,
      peerBlobs: () => this.#peers.stats,
      hostFiles: () => this.#hostFiles?.stats,
    });
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
    const launcher = await ensureLauncher(`${options.cacheDir}/launcher`);
    // (Also drops the namespaces a crashed worker left.)
    const netnsPool = options.jobNetwork
      ? undefined
      : await NetnsPool.open(`${options.cacheDir}/netns`, launcher, {
        log: options.log ?? ((m) => console.error(`termite worker: ${m}`)),
      });
    const store = await Store.open({
      dir: `${options.cacheDir}/cas`,
      bytesMax: options.storeBytesMax ?? 8 * 2 ** 30,
    });
    const worker = new Worker(options, store, netnsPool);
    worker.#dynmods = dynmods;
    const hostname = options.hostname ?? "0.0.0.0";
    const port = options.port ?? 0;
    try {
      try {
        const rpcOptions: ListenOptions = {
          transport: "tcp",
          hostname,
          port,
          secret: options.secret,
          tls: options.tls,
          role: "worker",
          handlers: (peer) => worker.#handlers(peer),
          log: (m) => worker.#log(m),
        };
        worker.#server = await listenAny(rpcOptions);
      } catch (err) {
        if (err instanceof TlsConfigError) throw err;
        throw new ListenError("masters", hostname, port, { cause: err });
      }
      if (options.metricsPort !== undefined) {
        const metricsHostname = options.metricsHostname ?? "127.0.0.1";
        try {
          worker.#metricsServer = serveMetrics(worker.metrics.registry, {
            hostname: metricsHostname,
            port: options.metricsPort,
            tls: options.tls,
          });
        } catch (err) {
          throw new ListenError("metrics", metricsHostname, options.metricsPort, { cause: err });
        }
      }
    } catch (err) {
      await worker.#server?.close();
      store.close();
      await store.settle();
      await dynmods?.close();
      await netnsPool?.close();
      throw err;
    }
    await worker.#tracerStarting;
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

  /** The metrics listener's URL (`http://host:port/metrics` or `https://`), if any. */
  get metricsUrl(): string | undefined {
    return this.#metricsServer?.url;
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
      tls: this.#options.tls,
      info: () => this.#info(),
      onSecretMismatch: this.#options.onSecretMismatch,
      onDrain: () => {
        this.#draining = true;
        // Running jobs finish; jobs still waiting for a slot go elsewhere.
        this.#slots.resize(0);
        this.#slots.rejectWaiting(
          () => new RpcError("DRAINING", "The worker is draining: it takes no new jobs"),
        );
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
      jobsRunning: this.#slots.busy,
      load: Deno.loadavg()[0],
      version: VERSION,
    };
  }

  #handlers(peer: RpcPeer): Handlers {
    if (peer.peerRole === "worker") {
      // A peer worker may only fetch blobs (worker/peer_blobs.ts).
      return {
        [WorkerMethods.blobGet]: (params: { hash: unknown }, ctx: CallContext) =>
          this.#blobGet(params, ctx),
      };
    }
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

  /**
   * Streams a blob of this worker's store: a job's result to its master, or
   * a file's content to a peer worker (waiting for it if it is being fetched
   * from a master now; never one being fetched from a peer, so that no two
   * workers wait for each other).
   */
  async #blobGet(params: { hash: unknown }, ctx: CallContext): Promise<{ size: number }> {
    const hash = params?.hash;
    if (typeof hash !== "string" || !isHash(hash)) {
      throw new RpcError("BAD_REQUEST", "Bad hash");
    }
    const held = this.#peers.isFetchingFromPeer(hash)
      ? this.#store.has(hash)
      : await this.#store.whenStored(hash, ctx.signal);
    if (!held) throw new RpcError("ENOENT", `No blob ${hash} on this worker`);
    this.#store.pin(hash);
    try {
      const size = await ctx.sendFile(this.#store.pathOf(hash));
      this.stats.blobsServed++;
      this.stats.bytesServed += size;
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
    // Nothing is held for the master while it is idle: slots are taken per job
    // (#jobRun), so every master may use them all and those who wait share.
    const slots = this.#draining
      ? 0
      : Math.max(0, Math.min(Math.floor(params.slots), this.#options.jobs));
    this.#reservations.set(peer, { params, slots });
    return { slots, workerId: this.id };
  }

  async #jobRun(peer: RpcPeer, params: JobParams, ctx: CallContext): Promise<JobReply> {
    const reservation = this.#reservations.get(peer);
    if (!reservation) throw new RpcError("BAD_REQUEST", "No mirror open on this connection");
    checkJobParams(params);
    if (this.#closed) throw new RpcError("CLOSED", "The worker is shutting down");
    if (this.#draining) {
      throw new RpcError("DRAINING", "The worker is draining: it takes no new jobs");
    }
    // The master hears from the job while it waits for its turn.
    const heartbeat = startHeartbeat(ctx, params.heartbeatMs);
    let release: () => void;
    try {
      release = await this.#slots.acquire(reservation.params.masterId, ctx.signal);
    } catch (err) {
      clearInterval(heartbeat);
      if (err instanceof SlotsFullError) throw new RpcError("LIMIT", err.message);
      if (err instanceof RpcError) throw err;
      throw new RpcError("CANCELLED", "Job cancelled while waiting for a slot");
    }
    let mirror: Mirror;
    try {
      mirror = await this.#mirrors.mirrorFor(peer, reservation.params);
    } catch (err) {
      clearInterval(heartbeat);
      release();
      throw err;
    }
    mirror.jobs++;
    this.stats.jobs++;
    const stdinEnd = new AbortController();
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    try {
      await this.#mirrors.applyUpdates(mirror, params.updates, params.reset);
      if (typeof params.warm === "string" && params.warm.length <= WARM_TOOL_KEY_MAX) {
        mirror.fs.warm(params.warm);
      }
      // stdin streams in while the job runs; it need not end before the job.
      const stdin = params.stdin
        ? this.#stdin.stream(params.jobId, AbortSignal.any([ctx.signal, stdinEnd.signal]))
        : undefined;
      const reply = await this.#jobs.run(mirror, params, ctx, stdin);
      const outcome = reply.killedBy !== undefined
        ? "killed"
        : reply.exitCode === 0
        ? "ok"
        : "exit_nonzero";
      this.metrics.jobEnded(outcome, seconds(), reply.killedBy);
      return reply;
    } catch (err) {
      this.metrics.jobEnded(
        ctx.signal.aborted
          ? "cancelled"
          : err instanceof RpcError && err.code === "OUTSIDE"
          ? "outside"
          : "error",
        seconds(),
      );
      this.stats.jobsFailed++;
      // The sandbox failed (say, no room for the launcher's status): the disk?
      if (!(err instanceof RpcError) && !ctx.signal.aborted) await this.#jobs.throwIfDiskFull();
      throw err;
    } finally {
      clearInterval(heartbeat);
      stdinEnd.abort(JOB_ENDED);
      this.#stdin.delete(params.jobId);
      mirror.jobs--;
      mirror.lastUsedMs = Date.now();
      release();
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
    await this.#tracer?.close();
    await this.#metricsServer?.close();
    await Promise.allSettled([...this.#background]);
    this.#jobs.close();
    await this.#mirrors.close();
    this.#peers.close();
    this.#store.close();
    await this.#store.settle();
    await this.#dynmods?.close();
    await this.#netnsPool?.close().catch((err) => this.#log(errorMessage(err)));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export function startWorker(options: WorkerOptions): Promise<Worker> {
  return Worker.start(options);
}

/** `path` made absolute (from the current directory) and normalised. */
function absolute(path: string): string {
  return normalizePath(path.startsWith("/") ? path : `${Deno.cwd()}/${path}`);
}

/** `path` with its symlinks resolved, or {@link absolute} when that fails. */
function realOrSame(path: string): string {
  try {
    return normalizePath(Deno.realPathSync(path));
  } catch {
    return absolute(path);
  }
}
