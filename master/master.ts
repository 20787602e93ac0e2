/**
 * The master: serves its files to the workers' mirrors, runs each wrapper
 * request on a worker (or locally, by rule or as a last resort), applies the
 * results to its tree atomically and pushes the changes to every mirror.
 */
import { watchWorkers, type WorkerWatch } from "../coordinator/mod.ts";
import { hostname } from "node:os";
import type { FileAttr } from "../common/types.ts";
import {
  JOB_HEARTBEAT_MS,
  JOB_SILENCE_MS_MAX,
  type JobChunk,
  type JobParams,
  type JobReply,
  MasterMethods,
  VERSION,
  WorkerMethods,
} from "../common/protocol.ts";
import { type CallContext, type Handlers, RpcError } from "../rpc/mod.ts";
import { isHash } from "../cas/mod.ts";
import {
  applyResultSet,
  type ControlPaths,
  ResultParts,
  ResultSetError,
  STAGING_DIR,
} from "./apply.ts";
import { Beneath } from "./beneath.ts";
import { ChangeLog } from "./change_log.ts";
import { FileServer } from "./file_server.ts";
import { HashCache } from "./hash_cache.ts";
import { outsideReason } from "./outside.ts";
import {
  LOCALRC_NAME,
  LocalRules,
  LocalRulesError,
  parseBuiltin,
  runBuiltin,
} from "./local_rules.ts";
import { DEFAULT_EXCLUSIONS, Exclusions, joinPath, normalizeAbsolute, parentOf } from "./paths.ts";
import { SOCKET_NAME } from "../wrapper/client.ts";
import type { StdinBuffer } from "./stdin_buffer.ts";
import { TreeWatcher } from "./tree_watcher.ts";
import { streamWarmSet, toolKey, WARM_TOOL_KEY_MAX, WarmSets } from "./warm_set.ts";
import { type PooledWorker, type PoolPlacement, WorkerPool } from "./worker_pool.ts";
import type { FallbackCause } from "./dispatch.ts";

/** What to change when jobs run locally, by cause. */
const FALLBACK_HINTS: Record<FallbackCause, string> = {
  "no-workers": "start workers with --coordinator pointing at this master's coordinator",
  unusable: "check that each worker's address (its --advertise HOST:PORT) is reachable from " +
    "this host and that it holds the same secret",
  busy: "the farm's slots are all taken: add workers, or lower make's -j",
  failed: "see the failures logged above",
  committed: "see the failures logged above",
  unservable: "jobs on the workers run as nobody and see only what every user may read",
};

/**
 * Why the workers cannot see `root`: a directory on its path that other
 * users may not enter, or the root itself not readable by them; null if none.
 */
export function treeHiddenReason(root: string): string | null {
  for (let dir = root;; dir = parentOf(dir)) {
    let mode: number;
    try {
      mode = (Deno.statSync(dir).mode ?? 0) & 0o7777;
    } catch (err) {
      return `cannot read ${dir}: ${(err as Error).message}`;
    }
    const need = dir === root ? 0o005 : 0o001;
    if ((mode & need) !== need) {
      return `${dir} (mode ${mode.toString(8).padStart(4, "0")}) is closed to other users; run ` +
        `\`chmod o+${dir === root ? "rx" : "x"} ${dir}\` or build in another directory`;
    }
    if (dir === "/") return null;
  }
}

export interface MasterOptions {
  /** The writable root: the build tree. */
  root: string;
  /** Entries (files, dirs, links, deletions) one job may change; default RESULT_ENTRIES_MAX. */
  resultEntriesMax?: number;
  /**
   * Files of the master in the tree that no result set may touch, besides
   * `.termite-socket`, `.termite-localrc`, the private directory and the cache
   * directory (its socket, when elsewhere).
   */
  controlPaths?: string[];
  secret: CryptoKey;
  /** Coordinator "host:port"; none = every job runs locally. */
  coordinator?: string;
  /** Slots wanted per worker. */
  jobs?: number;
  /** Path prefixes never served (defaults: /proc, /sys, /dev, /run, /tmp, ...). */
  exclusions?: string[];
  /** Where the hash cache lives. */
  cacheDir: string;
  /** Other workers tried after a failure before running locally. */
  retries?: number;
  jobTimeoutMs?: number;
  /**
   * Give up on a worker silent this long during a job (no output, no
   * heartbeat) or while it sends a result; default {@linkcode JOB_SILENCE_MS_MAX}.
   */
  jobSilenceMs?: number;
  /** Run a job locally when no worker can. */
  localFallback?: boolean;
  /** Local jobs (fallback) at once. */
  localJobsMax?: number;
  /** Wait this long for a busy worker's slot before running locally. */
  slotWaitMs?: number;
  /** Wait this long for the first worker list at start. */
  startWaitMs?: number;
  log?: (message: string) => void;
  /** The coordinator holds another secret (before any worker list arrived). */
  onSecretMismatch?: (error: Error) => void;
}

export interface JobIo {
  stdout(bytes: Uint8Array): Promise<void>;
  stderr(bytes: Uint8Array): Promise<void>;
  stdin: StdinBuffer | null;
  signal: AbortSignal;
}

export interface JobRequest {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  shell?: boolean;
  /**
   * The caller's PATH with the wrapper's directory still in it: commands the
   * local rules run here (a recursive make) use it, so that their own
   * compiles and `SHELL=termite-sh` go through the wrapper again.
   */
  localPath?: string;
}

export interface WorkerJobStats {
  done: number;
  failed: number;
  /** Sums over the jobs done: time on the worker, collecting results, applying them here. */
  workerMs: number;
  collectMs: number;
  applyMs: number;
  /** The worker's mirror counters after its last job. */
  mirror?: Record<string, number>;
}

export interface MasterStats {
  jobs: number;
  jobsRemote: number;
  jobsLocal: number;
  jobsBuiltin: number;
  jobsFailed: number;
  jobsRunning: number;
  retries: number;
  /** Jobs run locally because they name paths outside what the workers see or ship. */
  jobsOutside: number;
  /** Jobs run locally as a last resort, by why they got no worker. */
  localByCause: Partial<Record<FallbackCause, number>>;
  bytesServed: number;
  bytesReceived: number;
  perWorker: Record<string, WorkerJobStats>;
}

class Semaphore {
  #free: number;
  #queue: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve) => this.#queue.push(resolve));
  }
  release(): void {
    const next = this.#queue.shift();
    if (next) next();
    else this.#free++;
  }
}

const CHUNK_ATTRS = 512;
/** Tools whose warm sets a mirror gets when it opens (the rest at their first job). */
const WARM_OPEN_TOOLS = 1;
/** Warm-set streams at once, per worker connection and in all. */
const WARM_STREAMS_PER_PEER_MAX = 4;
const WARM_STREAMS_MAX = 16;

/** Names an untrusted decoded value without stringifying it (its toString may be anything). */
function describe(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value.slice(0, 200)) : typeof value;
}
/** Log where each remote job's time went (set TERMITE_DEBUG_TIMINGS=1). */
const DEBUG_TIMINGS = Boolean(Deno.env.get("TERMITE_DEBUG_TIMINGS"));

/** Milliseconds and calls per kind of file service (fs.attr, fs.dir, blob open, blob send). */
type ServeTimes = Record<string, { ms: number; calls: number }>;

/** Runs `work`, adding its time to `times[kind]`. */
async function timed<T>(times: ServeTimes, kind: string, work: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await work();
  } finally {
    const t = times[kind] ??= { ms: 0, calls: 0 };
    t.ms += performance.now() - started;
    t.calls++;
  }
}

/** How long the tree watcher may take to report a marker file. */
const TREE_SYNC_MS = 2_000;
/** Output of a remote attempt held back (so that a retry does not print it twice), at most. */
export const OUTPUT_HOLD_BYTES_MAX = 1 << 20;
/** While the job runs, output is held this long after its first byte at most. */
export const OUTPUT_HOLD_MS = 2_000;

/**
 * A remote attempt's output, held until the attempt succeeds so that a retry
 * elsewhere does not repeat it, unless it grows past a size or age: then it
 * is forwarded and the attempt is committed (a failure is no longer retried).
 */
class OutputHold {
  #io: JobIo;
  #held: { fd: 1 | 2; data: Uint8Array }[] = [];
  #bytes = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timed = true;
  #chain: Promise<void> = Promise.resolve();
  committed = false;

  constructor(io: JobIo) {
    this.#io = io;
  }

  write(fd: 1 | 2, data: Uint8Array): Promise<void> {
    if (this.committed) return this.#then(() => this.#forward(fd, data));
    this.#held.push({ fd, data });
    this.#bytes += data.length;
    if (this.#bytes > OUTPUT_HOLD_BYTES_MAX) return this.flush();
    if (this.#timed && this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush().catch(() => {}), OUTPUT_HOLD_MS);
    }
    return Promise.resolve();
  }

  /** The job ended: hold what it printed until the result is applied. */
  stopTimer(): void {
    this.#timed = false;
    clearTimeout(this.#timer);
  }

  /** Forwards what is held; from now on the attempt's output goes straight through. */
  flush(): Promise<void> {
    clearTimeout(this.#timer);
    this.committed = true;
    const held = this.#held.splice(0);
    this.#bytes = 0;
    return this.#then(async () => {
      for (const { fd, data } of held) await this.#forward(fd, data);
    });
  }

  /** The attempt failed before anything was forwarded. */
  discard(): void {
    clearTimeout(this.#timer);
    this.#held = [];
    this.#bytes = 0;
  }

  #forward(fd: 1 | 2, data: Uint8Array): Promise<void> {
    return fd === 1 ? this.#io.stdout(data) : this.#io.stderr(data);
  }

  #then(fn: () => Promise<void>): Promise<void> {
    this.#chain = this.#chain.then(fn);
    return this.#chain;
  }
}

export class Master implements AsyncDisposable {
  readonly root: string;
  readonly masterId: string = crypto.randomUUID();
  readonly stats: MasterStats = {
    jobs: 0,
    jobsRemote: 0,
    jobsLocal: 0,
    jobsBuiltin: 0,
    jobsFailed: 0,
    jobsRunning: 0,
    retries: 0,
    jobsOutside: 0,
    localByCause: {},
    bytesServed: 0,
    bytesReceived: 0,
    perWorker: {},
  };
  #options: MasterOptions;
  #log: (message: string) => void;
  #hashCache: HashCache;
  #files: FileServer;
  #exclusions: Exclusions;
  /** Why the workers cannot see the tree; null once they can. */
  #treeHidden: string | null = "";
  #changes = new ChangeLog();
  #pool: WorkerPool | null = null;
  #watch: WorkerWatch | null = null;
  #fsWatcher: TreeWatcher | null = null;
  #watching: Promise<void> | null = null;
  #dirty = new Set<string>();
  #syncWaiters = new Map<string, () => void>();
  #rules: LocalRules;
  #rulesStamp = "";
  #rulesError: string | null = null;
  #localSlots: Semaphore;
  #tree: Beneath;
  #control: ControlPaths;
  #closed = false;
  #jobSeq = 0;
  #warm: WarmSets;
  /** Warm streams running, per worker connection. */
  #warmStreams = new Map<unknown, number>();
  /** Time spent serving files (debug timings): milliseconds and calls per kind. */
  #serveTimes: ServeTimes = {};

  private constructor(
    options: MasterOptions,
    hashCache: HashCache,
    rules: LocalRules,
    tree: Beneath,
    warm: WarmSets,
  ) {
    this.#options = options;
    this.#warm = warm;
    this.root = options.root;
    this.#tree = tree;
    this.#control = {
      paths: [
        joinPath(this.root, SOCKET_NAME),
        joinPath(this.root, LOCALRC_NAME),
        options.cacheDir,
        ...options.controlPaths ?? [],
      ],
      names: [SOCKET_NAME],
    };
    this.#log = options.log ?? ((m) => console.error(`termite master: ${m}`));
    this.#hashCache = hashCache;
    this.#rules = rules;
    this.#localSlots = new Semaphore(options.localJobsMax ?? navigator.hardwareConcurrency);
    const hidden = [options.cacheDir];
    this.#exclusions = new Exclusions(options.exclusions ?? DEFAULT_EXCLUSIONS, this.root);
    this.#files = new FileServer({
      exclusions: this.#exclusions,
      hashCache,
      hidden,
      hiddenPrefixes: [`${this.root}/${STAGING_DIR}`],
      // A worker's read found a change before the tree watcher did: all hear of it.
      onChange: (attrs) => this.#changes.push(attrs),
    });
  }

  static async start(options: MasterOptions): Promise<Master> {
    const root = normalizeAbsolute(options.root);
    if (root === null) throw new Error(`Cannot use root ${options.root}: not an absolute path`);
    const real = await Deno.realPath(root);
    if (real !== root) {
      throw new Error(`Cannot use root ${root}: it resolves to ${real}; start in ${real} instead`);
    }
    await Deno.mkdir(options.cacheDir, { recursive: true, mode: 0o700 });
    // The real path: the one result sets would name, if it lies in the tree.
    const cacheDir = await Deno.realPath(options.cacheDir);
    const rootKey = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(root))),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("").slice(0, 16);
    const hashCache = await HashCache.open({ file: `${options.cacheDir}/hashes-${rootKey}.json` });
    const rules = await LocalRules.load(root);
    const warm = await WarmSets.open({
      file: `${options.cacheDir}/warm-${rootKey}.json`,
      log: options.log ?? ((m) => console.error(`termite master: ${m}`)),
    });
    // Leftovers of a master that was killed (a link there: the link goes).
    for await (const entry of Deno.readDir(root)) {
      if (entry.name.startsWith(STAGING_DIR)) {
        await Deno.remove(`${root}/${entry.name}`, { recursive: true }).catch(() => {});
      }
    }
    let tree: Beneath;
    try {
      tree = Beneath.open(root);
    } catch (err) {
      await hashCache.close();
      await warm.close();
      throw new Error(`Cannot open ${root}: ${(err as Error).message}`, { cause: err });
    }
    const master = new Master({ ...options, root, cacheDir }, hashCache, rules, tree, warm);
    master.#startWatchingTree();
    if (options.coordinator) {
      const hidden = master.#treeHiddenReason();
      if (hidden !== null) master.#log(`the workers cannot see this tree: ${hidden}`);
      await master.#startPool(options.coordinator);
    }
    return master;
  }

  get changeLog(): ChangeLog {
    return this.#changes;
  }

  get workers(): PooledWorker[] {
    return this.#pool?.workers ?? [];
  }

  get fileServer(): FileServer {
    return this.#files;
  }

  /** What the workers may call on a connection. */
  #handlers(): Handlers {
    const files = this.#files;
    const path = (p: unknown): string => {
      const normal = typeof p === "string" ? normalizeAbsolute(p) : null;
      if (normal === null) throw new RpcError("BAD_REQUEST", `Bad path: ${describe(p)}`);
      return normal;
    };
    const serve = this.#serveTimes;
    return {
      [MasterMethods.fsAttr]: (params: { path: unknown; withHash?: unknown }) =>
        timed(
          serve,
          "attr",
          () => files.attr(path(params?.path), { withHash: params?.withHash === true }),
        ),
      [MasterMethods.fsDir]: async (params: { path: unknown }, ctx: CallContext) => {
        const dir = path(params?.path);
        const attrs = await timed(serve, "dir", () => files.dir(dir));
        if (attrs.length > 0) this.#warm.noteDir(ctx.peer, dir);
        for (let i = 0; i < attrs.length; i += CHUNK_ATTRS) {
          await ctx.sendChunk(attrs.slice(i, i + CHUNK_ATTRS));
        }
        return { count: attrs.length };
      },
      [MasterMethods.blobGet]: async (params: { hash: unknown }, ctx: CallContext) => {
        const hash = params?.hash;
        if (typeof hash !== "string" || !isHash(hash)) {
          throw new RpcError("BAD_REQUEST", `Bad hash: ${describe(hash)}`);
        }
        using file = await timed(serve, "open", () => files.openBlob(hash));
        if (file === null) throw new RpcError("ENOENT", `No content ${hash} on the master`);
        // The inode checked, whatever the name holds now.
        const size = await timed(serve, "send", () => ctx.sendFile(file.path));
        const served = files.hashCache.pathOf(hash);
        if (served !== undefined) this.#warm.noteFile(ctx.peer, served);
        this.stats.bytesServed += size;
        files.stats.blobs++;
        files.stats.blobBytes += size;
        return { size };
      },
      [MasterMethods.fsWarm]: (params: { tool: unknown }, ctx: CallContext) =>
        this.#streamWarm(params?.tool, ctx),
    };
  }

  /** Streams a tool's learned warm set to a mirror, read now as a lazy fetch would be. */
  async #streamWarm(
    tool: unknown,
    ctx: CallContext,
  ): Promise<{ dirs: number; files: number; bytes: number }> {
    if (typeof tool !== "string" || tool.length > WARM_TOOL_KEY_MAX) {
      throw new RpcError("BAD_REQUEST", `Bad tool key: ${describe(tool)}`);
    }
    let all = 0;
    for (const n of this.#warmStreams.values()) all += n;
    const mine = this.#warmStreams.get(ctx.peer) ?? 0;
    if (mine >= WARM_STREAMS_PER_PEER_MAX || all >= WARM_STREAMS_MAX) {
      throw new RpcError("LIMIT", `Cannot stream a warm set: ${all} streams running`);
    }
    this.#warmStreams.set(ctx.peer, mine + 1);
    const files = this.#files;
    try {
      const sent = await streamWarmSet({
        set: this.#warm.setFor(tool),
        dir: (path) => files.dir(path),
        attr: (path) => files.attr(path, { withHash: true }),
        send: (chunk) => ctx.sendChunk(chunk),
        signal: ctx.signal,
      });
      if (DEBUG_TIMINGS) {
        this.#log(
          `warm set of ${JSON.stringify(tool)} sent: ${sent.dirs} directories, ${sent.files} ` +
            `files (${(sent.bytes / 2 ** 20).toFixed(1)} MiB of contents)`,
        );
      }
      return sent;
    } finally {
      const n = (this.#warmStreams.get(ctx.peer) ?? 1) - 1;
      if (n <= 0) this.#warmStreams.delete(ctx.peer);
      else this.#warmStreams.set(ctx.peer, n);
    }
  }

  async #startPool(coordinator: string): Promise<void> {
    this.#pool = new WorkerPool({
      secret: this.#options.secret,
      masterId: this.masterId,
      writableRoot: this.root,
      slotsPerWorker: this.#options.jobs ?? 4,
      handlers: this.#handlers(),
      log: this.#log,
      retries: this.#options.retries,
      slotWaitMs: this.#options.slotWaitMs,
      localFallback: this.#options.localFallback,
      // Only the busiest: a tool's set is fetched whole, used or not.
      warmTools: () => this.#warm.busiestTools(WARM_OPEN_TOOLS),
    });
    const pool = this.#pool;
    this.#watch = watchWorkers({
      coordinator,
      secret: this.#options.secret,
      onChange: (workers) => pool.update(workers),
      onSecretMismatch: this.#options.onSecretMismatch,
      log: this.#log,
      // Who watches: the coordinator lists this master once, beside its reports.
      master: { id: this.masterId, root: this.root, hostname: hostname(), version: VERSION },
    });
    // Commands arriving before the first list must not fail with "no workers".
    const wait = this.#options.startWaitMs ?? 3_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#watch.ready,
      new Promise((resolve) => timer = setTimeout(resolve, wait)),
    ]);
    clearTimeout(timer);
  }

  #startWatchingTree(): void {
    const staging = `${this.root}/${STAGING_DIR}`;
    try {
      // Not Deno.watchFs: it opens what events name (a FIFO blocked it for good).
      this.#fsWatcher = TreeWatcher.start({
        root: this.root,
        // The private directory is watched for the markers, not its staging areas.
        skip: (dir) => dir.startsWith(staging) && dir !== this.#tree.privatePath,
        log: this.#log,
      });
    } catch (err) {
      this.#log(`cannot watch ${this.root} for changes: ${(err as Error).message}`);
      return;
    }
    const watcher = this.#fsWatcher;
    this.#watching = (async () => {
      try {
        for await (const event of watcher) {
          if (event.kind === "rescan") {
            // Events were lost: whatever the mirrors hold may have changed.
            for (const p of this.#files.servedUnder(this.root)) this.#dirty.add(p);
            continue;
          }
          for (const p of event.paths) {
            if (p.startsWith(staging)) {
              this.#syncWaiters.get(p)?.();
              continue;
            }
            if (this.#dirty.size > 100_000) continue;
            this.#dirty.add(p);
          }
        }
      } catch {
        // Closed.
      }
    })();
  }

  /**
   * Waits until the tree watcher has seen every change made before this call
   * (`mkdir` or `rm` by make's own shell just before a compile arrives): it
   * creates a marker file and waits for its event, which the kernel queues
   * after the earlier ones. If the watcher does not answer in time, every
   * served path of the tree is read again instead.
   */
  async #syncTree(): Promise<void> {
    let marker = "";
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      if (this.#fsWatcher !== null) {
        // In the private directory, made exclusively, never through a link.
        marker = this.#tree.createMarker();
        const seen = new Promise<boolean>((resolve) => {
          this.#syncWaiters.set(marker, () => resolve(true));
          timer = setTimeout(() => resolve(false), TREE_SYNC_MS);
        });
        if (await seen) return;
      }
    } catch {
      // Could not make the marker (a full disk, say): read everything again.
    } finally {
      clearTimeout(timer);
      if (marker !== "") {
        this.#syncWaiters.delete(marker);
        this.#tree.removeMarker(marker);
      }
    }
    for (const p of this.#files.servedUnder(this.root)) this.#dirty.add(p);
  }

  /** Re-reads paths that changed since they were served and logs the changes. */
  async #flushChanges(extra: Iterable<string> = [], known?: Map<string, string>): Promise<void> {
    const paths = new Set<string>(extra);
    for (const p of this.#dirty) {
      paths.add(p);
      paths.add(parentOf(p));
    }
    this.#dirty.clear();
    for (const p of this.#files.youngPaths()) paths.add(p);
    if (paths.size === 0) return;
    await this.#files.refresh(paths, known); // changes go to the log as they are found
  }

  /** Runs one wrapper request; resolves with the exit status. */
  async run(request: JobRequest, io: JobIo): Promise<{ code: number; error?: string }> {
    this.stats.jobs++;
    this.stats.jobsRunning++;
    try {
      return await this.#run(request, io);
    } finally {
      this.stats.jobsRunning--;
    }
  }

  async #run(request: JobRequest, io: JobIo): Promise<{ code: number; error?: string }> {
    const builtin = parseBuiltin(request.argv, request.cwd, this.root);
    // Done by descriptor, or left to the real tool when a path crosses a symlink.
    const done = builtin ? await runBuiltin(builtin, this.#tree) : null;
    if (builtin && done) {
      this.stats.jobsBuiltin++;
      if (done.stderr) await io.stderr(new TextEncoder().encode(done.stderr));
      await this.#flushChanges(builtin.paths.flatMap((p) => [p, parentOf(p)]));
      return { code: done.code };
    }
    if (builtin) return await this.#runLocal(request, io, true, false);
    const commandLine = request.shell ? request.argv[2] : request.argv.join(" ");
    let rules: LocalRules;
    try {
      rules = await this.#currentRules();
    } catch (err) {
      this.stats.jobsFailed++;
      return { code: 255, error: (err as Error).message };
    }
    const rule = rules.match(commandLine);
    if (rule?.local) {
      // With the wrapper on its PATH: a recursive make's compiles come back here.
      const env = request.localPath === undefined
        ? request.env
        : { ...request.env, PATH: request.localPath };
      return await this.#runLocal({ ...request, env }, io, !rule.skipRefresh, false);
    }
    const hidden = this.#treeHiddenReason();
    if (hidden !== null) {
      this.#noteFallback("unservable", hidden);
      return await this.#runLocalSlot(request, io);
    }
    const outside = outsideReason(request.argv, request.cwd, {
      root: this.root,
      excluded: (p) => this.#exclusions.excluded(p),
    }, request.shell);
    if (outside !== null) {
      this.stats.jobsOutside++;
      this.#log(`running ${request.argv[0]} here: ${outside}`);
      return await this.#runLocal(request, io, true, false);
    }

    if (this.#pool === null) {
      if (this.#options.localFallback !== false) return await this.#runLocalSlot(request, io);
      this.stats.jobsFailed++;
      return { code: 255, error: `no coordinator, and local fallback is off` };
    }
    const { job, placement: first } = this.#pool.submit(io.signal);
    let placement: PoolPlacement | null = await first;
    for (let attempt = 0; placement?.kind === "run"; attempt++) {
      const worker = placement.worker;
      if (attempt > 0) this.stats.retries++;
      const hold = new OutputHold(io);
      try {
        const code = await this.#runOn(worker, request, io, hold);
        await hold.flush();
        this.stats.jobsRemote++;
        worker.jobsDone++;
        this.#workerStats(worker).done++;
        await this.#pool.end(job, worker, { kind: "ok" });
        return { code };
      } catch (err) {
        hold.discard();
        if (io.signal.aborted) {
          await this.#pool.end(job, worker, { kind: "cancelled" });
          return { code: 130, error: "cancelled" };
        }
        worker.jobsFailed++;
        this.#workerStats(worker).failed++;
        const why = (err as Error).message;
        this.#log(`job ${request.argv[0]} failed on ${worker.address}: ${why}`);
        placement = await this.#pool.end(job, worker, {
          kind: "failed",
          why,
          // Its fault: a bad result set, a broken or silent connection, a full disk.
          workerFault: err instanceof ResultSetError || !(err instanceof RpcError) ||
            err.code === "TIMEOUT" || err.code === "NOSPACE",
          // A transient of the worker's file system view: the same worker may try again.
          transient: err instanceof RpcError && err.code === "ESTALE",
          // Its output was sent: running it again would print it twice.
          committed: hold.committed,
        }, io.signal);
      }
    }
    if (placement === null) throw new Error("A job ended without a result"); // not reached
    if (io.signal.aborted) return { code: 130, error: "cancelled" };
    if (placement.kind === "fail") {
      this.stats.jobsFailed++;
      return { code: 255, error: placement.reason };
    }
    this.#noteFallback(placement.cause, placement.reason);
    return await this.#runLocalSlot(request, io);
  }

  /**
   * Why the workers cannot see the tree (a directory on its path closed to
   * other users), or null. Checked again per job while it fails, so a chmod
   * takes effect at once.
   */
  #treeHiddenReason(): string | null {
    if (this.#treeHidden === null) return null;
    this.#treeHidden = treeHiddenReason(this.root);
    return this.#treeHidden;
  }

  /** A local run as the last resort, bounded by the local slots. */
  async #runLocalSlot(request: JobRequest, io: JobIo): Promise<{ code: number; error?: string }> {
    await this.#localSlots.acquire();
    try {
      return await this.#runLocal(request, io, true, true);
    } finally {
      this.#localSlots.release();
    }
  }

  /**
   * Says once per cause, on the master's terminal, why jobs run locally and
   * what to change: a farm that quietly builds everything here is no farm.
   */
  #noteFallback(cause: FallbackCause, reason: string): void {
    this.stats.localByCause[cause] = (this.stats.localByCause[cause] ?? 0) + 1;
    if (this.stats.localByCause[cause] > 1) return;
    this.#log(`running jobs locally: ${reason}; ${FALLBACK_HINTS[cause]}`);
  }

  /**
   * The local rules, read again when `.termite-localrc` changed (its owner or
   * mode too); while it cannot be used (untrusted, malformed), every job
   * fails with the reason, at the wrapper.
   */
  async #currentRules(): Promise<LocalRules> {
    const info = await Deno.lstat(`${this.root}/${LOCALRC_NAME}`).catch(() => null);
    const stamp = info
      ? [info.mtime?.getTime(), info.ctime?.getTime(), info.size, info.ino, info.mode, info.uid]
        .join(":")
      : "";
    if (stamp !== this.#rulesStamp) {
      try {
        this.#rules = await LocalRules.load(this.root);
        this.#rulesError = null;
      } catch (err) {
        // Said to every wrapper until the file is fixed: a build that quietly
        // ran its rules' commands elsewhere would go wrong in subtle ways.
        this.#rulesError = (err as Error).message;
        this.#log(this.#rulesError);
      }
      this.#rulesStamp = stamp;
    }
    if (this.#rulesError !== null) throw new LocalRulesError(this.#rulesError);
    return this.#rules;
  }

  #workerStats(worker: PooledWorker) {
    return this.stats.perWorker[worker.address] ??= {
      done: 0,
      failed: 0,
      workerMs: 0,
      collectMs: 0,
      applyMs: 0,
    };
  }

  async #runOn(
    worker: PooledWorker,
    request: JobRequest,
    io: JobIo,
    hold: OutputHold,
  ): Promise<number> {
    const t0 = performance.now();
    await this.#syncTree();
    const tSynced = performance.now();
    await this.#flushChanges();
    const tFlushed = performance.now();
    const { updates, reset, cursor } = this.#changes.since(worker.cursor);
    const jobId = `${this.masterId}-${++this.#jobSeq}`;
    const timeoutMs = this.#options.jobTimeoutMs ?? 600_000;
    const silenceMs = this.#options.jobSilenceMs ?? JOB_SILENCE_MS_MAX;
    const params: JobParams = {
      jobId,
      argv: request.argv,
      cwd: request.cwd,
      env: request.env,
      stdin: io.stdin !== null,
      timeoutMs,
      updates,
      reset,
      heartbeatMs: Math.min(JOB_HEARTBEAT_MS, Math.max(250, Math.floor(silenceMs / 4))),
      warm: toolKey(request.argv),
    };
    // What this worker's mirror fetches meanwhile is learned for the tool.
    const warmKey = params.warm!;
    this.#warm.jobStarted(worker.peer, warmKey);
    // A worker that falls silent (no output, no heartbeat) is given up on.
    const silence = new AbortController();
    let silenceTimer = setTimeout(() => silence.abort(), silenceMs);
    const heard = () => {
      clearTimeout(silenceTimer);
      silenceTimer = setTimeout(() => silence.abort(), silenceMs);
    };
    const unfollow = io.stdin?.follow((data) => {
      worker.peer.notify(WorkerMethods.jobStdin, { jobId, data }).catch(() => {});
    });
    // A large result set arrives in parts ahead of the reply.
    const parts = new ResultParts(this.#options.resultEntriesMax);
    let reply: JobReply;
    try {
      reply = await worker.peer.call<JobReply>(WorkerMethods.jobRun, params, {
        timeoutMs: timeoutMs + 60_000,
        signal: AbortSignal.any([io.signal, silence.signal]),
        onChunk: async (chunk) => {
          heard();
          const c = chunk as JobChunk;
          if (typeof c !== "object" || c === null) return;
          if ("fd" in c && c.data instanceof Uint8Array) {
            await hold.write(c.fd === 1 ? 1 : 2, c.data);
          } else if ("rs" in c) parts.addEntries(c.rs);
          else if ("blobs" in c) parts.addBlobs(c.blobs);
        },
      });
    } catch (err) {
      if (silence.signal.aborted && !io.signal.aborted) {
        throw new RpcError(
          "TIMEOUT",
          `worker ${worker.address} silent for ${silenceMs} ms`,
        );
      }
      throw err;
    } finally {
      clearTimeout(silenceTimer);
      unfollow?.();
      hold.stopTimer();
      this.#warm.jobEnded(worker.peer, warmKey);
    }
    // A reply from a worker is untrusted: its exit status reaches make.
    if (typeof reply !== "object" || reply === null) {
      throw new ResultSetError("Refusing the reply: not an object");
    }
    const exitCode = reply.exitCode;
    if (!Number.isInteger(exitCode) || exitCode < 0 || exitCode > 255) {
      throw new ResultSetError(`Refusing the reply: bad exit code ${describe(exitCode)}`);
    }
    worker.cursor = cursor;
    const applyStarted = performance.now();
    const outcome = await applyResultSet(parts.merge(reply.resultSet), {
      writableRoot: this.root,
      tree: this.#tree,
      control: this.#control,
      hashCache: this.#hashCache,
      entriesMax: this.#options.resultEntriesMax,
      inline: (hash) => {
        const bytes = parts.blob(hash) ?? reply.inline?.[hash];
        return bytes instanceof Uint8Array ? bytes : undefined; // verified before use
      },
      fetchBlob: async (hash, sink) => {
        // A transfer that stalls (a cut link) is given up on like a silent job.
        const stalled = new AbortController();
        let stallTimer = setTimeout(() => stalled.abort(), silenceMs);
        try {
          await worker.peer.call(WorkerMethods.blobGet, { hash }, {
            timeoutMs: 120_000,
            signal: AbortSignal.any([io.signal, stalled.signal]),
            onChunk: (chunk) => {
              clearTimeout(stallTimer);
              stallTimer = setTimeout(() => stalled.abort(), silenceMs);
              if (!(chunk instanceof Uint8Array)) {
                throw new ResultSetError("Blob chunk is not bytes");
              }
              return sink.write(chunk);
            },
          });
        } catch (err) {
          if (stalled.signal.aborted && !io.signal.aborted) {
            throw new RpcError(
              "TIMEOUT",
              `worker ${worker.address} stalled for ${silenceMs} ms sending blob ${hash}`,
            );
          }
          throw err;
        } finally {
          clearTimeout(stallTimer);
        }
      },
    });
    this.stats.bytesReceived += outcome.bytesFetched;
    const ws = this.#workerStats(worker);
    ws.applyMs += performance.now() - applyStarted;
    ws.workerMs += Number(reply.timings?.totalMs) || 0;
    ws.collectMs += Number(reply.timings?.collectMs) || 0;
    if (reply.mirror && typeof reply.mirror === "object") ws.mirror = reply.mirror;
    await this.#flushChanges(outcome.touched, outcome.hashes);
    if (DEBUG_TIMINGS) {
      const t = reply.timings ?? {};
      const ms = (a: number, b: number) => (b - a).toFixed(1);
      this.#log(
        `job ${request.argv[0]}: sync ${ms(t0, tSynced)} flush ${ms(tSynced, tFlushed)} ` +
          `call ${ms(tFlushed, applyStarted)} (worker ${Number(t.totalMs).toFixed(1)}, ` +
          `launcher ${Number(t.launcherMs).toFixed(1)}) apply ${
            ms(applyStarted, performance.now())
          } ms; served so far: ${
            Object.entries(this.#serveTimes).map(([k, v]) =>
              `${k} ${v.calls} in ${v.ms.toFixed(0)} ms`
            ).join(", ")
          }, hashed ${(this.#hashCache.stats.bytesHashed / 2 ** 20).toFixed(1)} MiB`,
      );
    }
    if (reply.killedBy) {
      const why = [reply.reason, reply.killedBy].find((w) =>
        typeof w === "string"
      )?.slice(0, 500) ??
        "killed";
      await hold.write(
        2,
        new TextEncoder().encode(`termite: job killed on ${worker.address}: ${why}\n`),
      );
    }
    return exitCode;
  }

  async #runLocal(
    request: JobRequest,
    io: JobIo,
    refresh: boolean,
    fallback: boolean,
  ): Promise<{ code: number; error?: string }> {
    this.stats.jobsLocal++;
    if (fallback) this.#log(`running locally: ${request.argv.join(" ").slice(0, 200)}`);
    const [cmd, ...args] = request.argv;
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(cmd, {
        args,
        cwd: request.cwd,
        env: request.env,
        clearEnv: true,
        stdin: io.stdin ? "piped" : "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (err) {
      const message = err instanceof Deno.errors.NotFound
        ? `${cmd}: command not found\n`
        : `${cmd}: ${(err as Error).message}\n`;
      await io.stderr(new TextEncoder().encode(message));
      return { code: err instanceof Deno.errors.NotFound ? 127 : 126 };
    }
    const kill = () => {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
    };
    io.signal.addEventListener("abort", kill);
    let unfollow: (() => void) | undefined;
    if (io.stdin) {
      const writer = child.stdin.getWriter();
      let chain = Promise.resolve();
      unfollow = io.stdin.follow((chunk) => {
        chain = chain.then(() => chunk.length === 0 ? writer.close() : writer.write(chunk))
          .catch(() => {});
      });
    }
    const pump = async (
      stream: ReadableStream<Uint8Array>,
      out: (b: Uint8Array) => Promise<void>,
    ) => {
      for await (const chunk of stream) await out(chunk);
    };
    try {
      const [status] = await Promise.all([
        child.status,
        pump(child.stdout, io.stdout),
        pump(child.stderr, io.stderr),
      ]);
      // Cancelled by ^C on the wrapper: report it as the interrupt it was.
      return { code: io.signal.aborted ? 130 : status.code };
    } finally {
      unfollow?.();
      io.signal.removeEventListener("abort", kill);
      if (refresh) await this.#flushChanges(this.#files.servedUnder(this.root));
    }
  }

  /** Pushes every pending change to the workers now (normally sent with the next job). */
  async pushChanges(): Promise<void> {
    await this.#flushChanges();
    for (const worker of this.workers) {
      const { updates, reset, cursor } = this.#changes.since(worker.cursor);
      if (updates.length === 0 && !reset) continue;
      await worker.peer.call(WorkerMethods.attrsPush, { updates, reset }, { timeoutMs: 30_000 });
      worker.cursor = cursor;
    }
  }

  /** Attributes the mirrors hold that changed: for tests and the status page. */
  changesSince(cursor: number): FileAttr[] {
    return this.#changes.since(cursor).updates;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#fsWatcher?.close();
    await this.#watching;
    await this.#watch?.close();
    await this.#pool?.close();
    await this.#hashCache.close();
    await this.#warm.close();
    this.#tree.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
