/**
 * The master: serves its files to the workers' mirrors, runs each wrapper
 * request on a worker (or locally, by rule or as a last resort), applies the
 * results to its tree atomically and pushes the changes to every mirror.
 */
import { watchWorkers, type WorkerWatch } from "../coordinator/mod.ts";
import { hostname } from "node:os";
import type { FileAttr } from "../common/types.ts";
import { type BlobGetParams, VERSION, WorkerMethods } from "../common/protocol.ts";
import { RpcError, type RpcPeer } from "../rpc/mod.ts";
import { type ControlPaths, ResultSetError, STAGING_DIR } from "./apply.ts";
import { ActionCache } from "./action_cache.ts";
import { Beneath } from "./beneath.ts";
import { BlobHolders, type BlobHolderStats } from "./blob_holders.ts";
import { ChangeLog } from "./change_log.ts";
import { FileServer } from "./file_server.ts";
import { HashCache } from "./hash_cache.ts";
import { outsideReason } from "./outside.ts";
import { commandFinder, directCommand } from "./shell_fast_path.ts";
import {
  LOCAL_DEPTH_MAX,
  LOCAL_DEPTH_VAR,
  LOCALRC_NAME,
  LocalRules,
  LocalRulesError,
  parseBuiltin,
  runBuiltin,
} from "./local_rules.ts";
import { joinPath, parentOf } from "../common/paths.ts";
import { DEFAULT_EXCLUSIONS, Exclusions, normalizeAbsolute } from "./paths.ts";
import { SOCKET_NAME } from "../wrapper/client.ts";
import type { FarmSlots } from "../wrapper/protocol.ts";
import { type PooledWorker, type PoolPlacement, WorkerPool } from "./worker_pool.ts";
import type { FallbackCause } from "./dispatch.ts";
import { LocalRunner, Semaphore } from "./local_run.ts";
import type { JobIo, JobRequest, MasterOptions, MasterStats } from "./master_types.ts";
import { OutputHold } from "./output_hold.ts";
import { RemoteRunner } from "./remote_run.ts";
import { ActionReplay } from "./replay.ts";
import { TreeSync } from "./tree_sync.ts";
import { WarmSets } from "./warm_set.ts";
import { PathStat } from "./path_stat.ts";
import { WarmStreams } from "./warm_stream.ts";
import { workerHandlers } from "./worker_service.ts";

/** Tools whose warm sets a mirror gets when it opens (the rest at their first job). */
const WARM_OPEN_TOOLS = 1;

export type {
  JobIo,
  JobRequest,
  MasterOptions,
  MasterStats,
  WorkerJobStats,
} from "./master_types.ts";
export { OUTPUT_HOLD_BYTES_MAX, OUTPUT_HOLD_MS } from "./output_hold.ts";

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
    jobsCached: 0,
    localByCause: {},
    bytesServed: 0,
    bytesReceived: 0,
    blobsReceived: 0,
    jobsLocalRunning: 0,
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
  #sync: TreeSync;
  #remote: RemoteRunner;
  #local: LocalRunner;
  #rules: LocalRules;
  #rulesStamp = "";
  #rulesError: string | null = null;
  readonly #localJobsMax: number;
  #tree: Beneath;
  /** `lstat` through libc for the file server and the local rules' stamp. */
  readonly #pathStat = new PathStat();
  #control: ControlPaths;
  #closed = false;
  #actions: ActionCache | null = null;
  #replay: ActionReplay | null = null;
  #warm!: WarmSets;
  /** Which workers hold which blobs (peers fetch from each other). */
  readonly #holders = new BlobHolders();
  #warmStreams!: WarmStreams;

  private constructor(
    options: MasterOptions,
    hashCache: HashCache,
    rules: LocalRules,
    tree: Beneath,
  ) {
    this.#options = options;
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
    this.#localJobsMax = options.localJobsMax ?? navigator.hardwareConcurrency;
    const hidden = [options.cacheDir];
    this.#exclusions = new Exclusions(options.exclusions ?? DEFAULT_EXCLUSIONS, this.root);
    this.#files = new FileServer({
      exclusions: this.#exclusions,
      hashCache,
      hidden,
      hiddenPrefixes: [`${this.root}/${STAGING_DIR}`],
      // A worker's read found a change before the tree watcher did: all hear of it.
      onChange: (attrs) => this.#changes.push(attrs),
      // What the tree watcher reports: paths it covers are not read again while
      // young, and the listings it watches are read child by child.
      watch: {
        covers: (path, isDir) => this.#sync.covers(path, isDir),
        watchOf: (dir) => this.#sync.watchOf(dir),
      },
      lstat: this.#pathStat,
    });
    this.#sync = new TreeSync(this.root, this.#files, this.#log);
    this.#remote = new RemoteRunner({
      root: this.root,
      masterId: this.masterId,
      stats: this.stats,
      options,
      changes: this.#changes,
      tree,
      control: this.#control,
      hashCache,
      sync: this.#sync,
      log: this.#log,
    });
    this.#local = new LocalRunner({
      root: this.root,
      stats: this.stats,
      files: this.#files,
      sync: this.#sync,
      localSlots: new Semaphore(this.#localJobsMax),
      log: this.#log,
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
    const master = new Master({ ...options, root, cacheDir }, hashCache, rules, tree);
    master.#warm = warm;
    master.#warmStreams = new WarmStreams({ sets: warm, files: master.#files, log: master.#log });
    master.#remote.warm = warm;
    if (options.actionCache !== false) {
      master.#actions = await ActionCache.open({
        dir: `${cacheDir}/actions-${rootKey}`,
        root,
        hashCache,
        bytesMax: options.actionCacheBytesMax,
        // What the workers are shown is part of what a job sees.
        salt: JSON.stringify(options.exclusions ?? DEFAULT_EXCLUSIONS),
        log: (m) => master.#log(m),
      });
      master.stats.actionCache = master.#actions.stats;
      master.#remote.actions = master.#actions;
      master.#replay = new ActionReplay({
        actions: master.#actions,
        root,
        tree,
        control: master.#control,
        hashCache,
        entriesMax: options.resultEntriesMax,
        flush: (touched, hashes) => master.#sync.flush(touched, hashes),
        stats: master.stats,
        log: master.#log,
      });
    }
    master.#sync.start();
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

  /** Jobs this master can run at once now: on its connected workers, and here. */
  farmSlots(): FarmSlots {
    let remote = 0;
    for (const w of this.workers) remote += Math.max(0, w.slots);
    return { remote, local: this.#localJobsMax };
  }

  /** Jobs waiting for a worker's slot now. */
  get jobsQueued(): number {
    return this.#pool?.waiting ?? 0;
  }

  /** Blob requests sent to peer workers. */
  get blobHolderStats(): BlobHolderStats {
    return this.#holders.stats;
  }

  /**
   * A worker of the pool other than the requester that holds (or is being
   * sent) blob `hash`, when the requester may fetch from peers; else the
   * requester is noted as holding it, since it is sent to it now.
   */
  #blobHolder(
    hash: string,
    size: number,
    params: BlobGetParams,
    peer: RpcPeer,
  ): string | undefined {
    const pool = this.#pool;
    const from = pool?.addressOf(peer);
    if (pool === null || from === undefined) return undefined;
    if (typeof params.failed === "string") this.#holders.failed(hash, params.failed);
    if (params.peers === true) {
      const holder = this.#holders.holderFor(hash, from, (address) => pool.isLive(address));
      if (holder !== undefined) return holder;
    }
    this.#holders.sending(hash, size, from);
    return undefined;
  }

  get fileServer(): FileServer {
    return this.#files;
  }

  async #startPool(coordinator: string): Promise<void> {
    this.#pool = new WorkerPool({
      secret: this.#options.secret,
      tls: this.#options.tls,
      masterId: this.masterId,
      writableRoot: this.root,
      slotsPerWorker: this.#options.jobs ?? 4,
      handlers: workerHandlers({
        files: this.#files,
        warm: this.#warm,
        streams: this.#warmStreams,
        stats: this.stats,
        holderFor: (hash, size, params, peer) => this.#blobHolder(hash, size, params, peer),
      }),
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
      tls: this.#options.tls,
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
      await this.#sync.flush(builtin.paths.flatMap((p) => [p, parentOf(p)]));
      return { code: done.code };
    }
    if (builtin) return await this.#local.run(request, io, true, false);
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
      // A command a local rule keeps here, started again and again by what it
      // runs (a rule naming a wrapped tool, say): stopped, not a fork bomb.
      const depth = Number(request.env[LOCAL_DEPTH_VAR] ?? 0) || 0;
      if (depth >= LOCAL_DEPTH_MAX) {
        this.stats.jobsFailed++;
        return {
          code: 255,
          error: `${request.argv[0]}: ${depth} local runs nested, each started by the one before ` +
            `(a .termite-localrc rule naming a wrapped tool needs "recurse": false)`,
        };
      }
      // With the wrapper on its PATH: a recursive make's compiles come back here.
      const env = request.localPath === undefined || rule.recurse === false
        ? request.env
        : { ...request.env, PATH: request.localPath, [LOCAL_DEPTH_VAR]: String(depth + 1) };
      return await this.#local.run({ ...request, env }, io, !rule.skipRefresh, false);
    }
    const hidden = this.#treeHiddenReason();
    if (hidden !== null) {
      this.#noteFallback("unservable", hidden);
      return await this.#local.runInSlot(request, io);
    }
    const outside = outsideReason(request.argv, request.cwd, {
      root: this.root,
      excluded: (p) => this.#exclusions.excluded(p),
    }, request.shell);
    if (outside !== null) {
      this.stats.jobsOutside++;
      this.#log(`running ${request.argv[0]} here: ${outside}`);
      return await this.#local.run(request, io, true, false);
    }

    // make's own fast path: a plain command from `make SHELL=termite-sh` runs
    // without the shell, as make would run it (shell_fast_path.ts); the local
    // rules and the outside check above saw the script as written.
    const direct = request.shell
      ? await directCommand(
        request.argv,
        request.cwd,
        request.env,
        // Where the workers see it: not under an excluded prefix.
        commandFinder((p) => this.#exclusions.excluded(p)),
      )
      : null;
    if (direct !== null) request = { ...request, ...direct, shell: false };
    // Not its stdin: a job that read the stdin it was sent is not cached, one
    // that read /dev/null is replayed only to jobs without a stdin.
    const action = this.#actions !== null && rules.cacheable(request.argv, request.shell === true)
      ? this.#actions.key(request.argv, request.cwd, request.env)
      : null;
    if (action !== null && this.#replay !== null) {
      const code = await this.#replay.replay(action, io);
      if (code !== null) return { code };
    }
    return await this.#runRemote(request, io, action);
  }

  /**
   * Runs a job on the workers, retried elsewhere on failure, at last here
   * (or failed) as the dispatch policy says. `action`: its action cache key,
   * when its run is to be recorded.
   */
  async #runRemote(
    request: JobRequest,
    io: JobIo,
    action: string | null,
  ): Promise<{ code: number; error?: string }> {
    if (this.#pool === null) {
      if (this.#options.localFallback !== false) return await this.#local.runInSlot(request, io);
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
        const code = await this.#remote.runOn(worker, request, io, hold, action);
        await hold.flush();
        this.stats.jobsRemote++;
        worker.jobsDone++;
        this.#remote.workerStats(worker).done++;
        await this.#pool.end(job, worker, { kind: "ok" });
        return { code };
      } catch (err) {
        hold.discard();
        if (io.signal.aborted) {
          await this.#pool.end(job, worker, { kind: "cancelled" });
          return { code: 130, error: "cancelled" };
        }
        if (err instanceof RpcError && err.code === "OUTSIDE" && !hold.committed) {
          // It wrote where the worker ships nothing back (its private /tmp,
          // say through a variable no argv check sees): it runs here, once.
          await this.#pool.end(job, worker, { kind: "cancelled" });
          this.stats.jobsOutside++;
          this.#log(`running ${request.argv[0]} here: ${err.message}`);
          return await this.#local.run(request, io, true, false);
        }
        worker.jobsFailed++;
        this.#remote.workerStats(worker).failed++;
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
    return await this.#local.runInSlot(request, io);
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
    // A few µs; async: a thread hop. Null: none, or unreadable: the default
    // rules (LocalRules.load says why).
    const info = this.#pathStat.info(`${this.root}/${LOCALRC_NAME}`);
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

  /** Pushes every pending change to the workers now (normally sent with the next job). */
  async pushChanges(): Promise<void> {
    await this.#sync.flush();
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
    await this.#sync.close();
    await this.#watch?.close();
    await this.#pool?.close();
    await this.#hashCache.close();
    await this.#warm.close();
    this.#actions?.close();
    this.#tree.close();
    this.#pathStat.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
