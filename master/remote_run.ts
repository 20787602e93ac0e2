/**
 * One attempt of a job on a worker: the tree synced, the mirror's updates
 * sent with the job, its output held, its reply checked and its result set
 * applied.
 *
 * @module
 */
import { concatBytes } from "../common/bytes.ts";
import { ReadSetParts } from "../common/read_set_parts.ts";
import {
  JOB_HEARTBEAT_MS,
  JOB_SILENCE_MS_MAX,
  type JobChunk,
  type JobParams,
  type JobReply,
  WorkerMethods,
} from "../common/protocol.ts";
import type { ResultSet } from "../common/types.ts";
import { RpcError } from "../rpc/mod.ts";
import {
  type ActionCache,
  incompleteWhy,
  NotCacheable,
  OUTPUT_BYTES_MAX,
  StaleRead,
} from "./action_cache.ts";
import { applyResultSet, type ControlPaths, ResultParts, ResultSetError } from "./apply.ts";
import type { Beneath } from "./beneath.ts";
import type { ChangeLog } from "./change_log.ts";
import type { HashCache } from "./hash_cache.ts";
import type {
  JobIo,
  JobRequest,
  MasterOptions,
  MasterStats,
  WorkerJobStats,
} from "./master_types.ts";
import type { OutputHold } from "./output_hold.ts";
import type { TreeSync } from "./tree_sync.ts";
import { toolKey, type WarmSets } from "./warm_set.ts";
import type { PooledWorker } from "./worker_pool.ts";

/** Names an untrusted decoded value without stringifying it (its toString may be anything). */
export function describe(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value.slice(0, 200)) : typeof value;
}
/** The most a worker may claim one job took, ms (a week): its claims only feed the statistics. */
const CLAIMED_MS_MAX = 7 * 24 * 3600 * 1000;

/** A duration a worker claims, for the statistics: 0 unless a number from 0 to a week. */
export function claimedMs(value: unknown): number {
  return typeof value === "number" && value >= 0 && value <= CLAIMED_MS_MAX ? value : 0;
}

/** Log where each remote job's time went (set TERMITE_DEBUG_TIMINGS=1). */
export const DEBUG_TIMINGS = Boolean(Deno.env.get("TERMITE_DEBUG_TIMINGS"));

/**
 * A silent worker is given up on once the master has been listening this
 * long past the job's silence limit (its own event loop running on time).
 */
const SILENCE_GRACE_MS = 250;

/** What a remote run needs of its master. */
export interface RemoteRunnerOptions {
  root: string;
  masterId: string;
  stats: MasterStats;
  options: MasterOptions;
  changes: ChangeLog;
  tree: Beneath;
  control: ControlPaths;
  hashCache: HashCache;
  sync: TreeSync;
  log: (message: string) => void;
}

/** Runs jobs on workers for one master. */
export class RemoteRunner {
  readonly root: string;
  readonly masterId: string;
  readonly stats: MasterStats;
  #options: MasterOptions;
  #changes: ChangeLog;
  #tree: Beneath;
  #control: ControlPaths;
  #hashCache: HashCache;
  #sync: TreeSync;
  #log: (message: string) => void;
  #jobSeq = 0;
  /** Where runs of cacheable commands are stored (set once the master opened it). */
  actions: ActionCache | null = null;
  /** What mirrors fetch while a tool's jobs run is learned for the tool (set once opened). */
  warm: WarmSets | null = null;

  constructor(o: RemoteRunnerOptions) {
    this.root = o.root;
    this.masterId = o.masterId;
    this.stats = o.stats;
    this.#options = o.options;
    this.#changes = o.changes;
    this.#tree = o.tree;
    this.#control = o.control;
    this.#hashCache = o.hashCache;
    this.#sync = o.sync;
    this.#log = o.log;
  }

  /** One attempt of `request` on `worker`: its exit code; throws when the attempt failed. */
  runOn(
    worker: PooledWorker,
    request: JobRequest,
    io: JobIo,
    hold: OutputHold,
    action: string | null = null,
  ): Promise<number> {
    return this.#runOn(worker, request, io, hold, action);
  }

  /** The master's counters of `worker`. */
  workerStats(worker: PooledWorker): WorkerJobStats {
    return this.#workerStats(worker);
  }

  #syncTree(): void {
    this.#sync.sync();
  }

  #flushChanges(extra?: Iterable<string>, known?: Map<string, string>): Promise<void> {
    return this.#sync.flush(extra, known);
  }

  #workerStats(worker: PooledWorker) {
    return this.stats.perWorker[worker.address] ??= {
      done: 0,
      failed: 0,
      workerMs: 0,
      collectMs: 0,
      applyMs: 0,
      jobCpuMs: 0,
    };
  }

  async #runOn(
    worker: PooledWorker,
    request: JobRequest,
    io: JobIo,
    hold: OutputHold,
    action: string | null,
  ): Promise<number> {
    const now = () => DEBUG_TIMINGS ? performance.now() : 0; // for the log only
    const t0 = now();
    const started = action !== null ? performance.now() : 0;
    const startedMs = Date.now();
    this.#syncTree();
    const tSynced = now();
    await this.#flushChanges();
    const tFlushed = now();
    const { updates, reset, cursor } = this.#changes.since(worker.cursor);
    const timeoutMs = this.#options.jobTimeoutMs ?? 600_000;
    const silenceMs = this.#options.jobSilenceMs ?? JOB_SILENCE_MS_MAX;
    const params: JobParams = {
      jobId: `${this.masterId}-${++this.#jobSeq}`,
      argv: request.argv,
      cwd: request.cwd,
      env: request.env,
      stdin: io.stdin !== null,
      timeoutMs,
      updates,
      reset,
      heartbeatMs: Math.min(JOB_HEARTBEAT_MS, Math.max(250, Math.floor(silenceMs / 4))),
      record: action !== null,
      warm: toolKey(request.argv),
    };
    const output: HeldOutput = { 1: [], 2: [], bytes: 0, keep: action !== null };
    // A large result set arrives in parts ahead of the reply.
    const parts = new ResultParts(this.#options.resultEntriesMax);
    // So does a large read set.
    const reads = new ReadSetParts();
    const reply = await this.#call(worker, params, { io, hold, output, parts, reads, silenceMs });
    const exitCode = exitCodeOf(reply);
    worker.cursor = cursor;
    const merged = parts.merge(reply.resultSet);
    // The inputs' states, taken before the results change the tree.
    const recorded = action !== null
      ? await this.#statesOf(worker, reply, { io, output, merged, reads, startedMs })
      : null;
    const applyStarted = performance.now();
    const outcome = await this.#apply(worker, merged, { io, parts, reply, silenceMs });
    const ws = this.#workerStats(worker);
    ws.applyMs += performance.now() - applyStarted;
    ws.workerMs += Number(reply.timings?.totalMs) || 0;
    ws.collectMs += Number(reply.timings?.collectMs) || 0;
    ws.jobCpuMs += claimedMs(reply.timings?.jobCpuMs);
    if (reply.mirror && typeof reply.mirror === "object") ws.mirror = reply.mirror;
    // The events of its own renames, read with what it touched: once.
    this.#sync.take();
    await this.#flushChanges(outcome.touched, outcome.hashes);
    if (action !== null && recorded !== null) {
      await this.#store(action, recorded, {
        merged,
        output,
        exitCode,
        ranMs: performance.now() - started,
        reply,
      });
    }
    if (DEBUG_TIMINGS) {
      const t = reply.timings ?? {};
      const ms = (a: number, b: number) => (b - a).toFixed(1);
      this.#log(
        `job ${request.argv[0]}: sync ${ms(t0, tSynced)} flush ${ms(tSynced, tFlushed)} ` +
          `call ${ms(tFlushed, applyStarted)} (worker ${Number(t.totalMs).toFixed(1)}, ` +
          `launcher ${Number(t.launcherMs).toFixed(1)}) apply ${
            ms(applyStarted, performance.now())
          } ms`,
      );
    }
    if (reply.killedBy) {
      const why = [reply.reason, reply.killedBy].find((w) => typeof w === "string")
        ?.slice(0, 500) ?? "killed";
      await hold.write(
        2,
        new TextEncoder().encode(`termite: job killed on ${worker.address}: ${why}\n`),
      );
    }
    return exitCode;
  }

  /**
   * Sends the job and waits for its reply, its output held as it streams in.
   * A worker that falls silent (no output, no heartbeat) is given up on, once
   * the master itself has been listening for SILENCE_GRACE_MS past the limit:
   * held up (a long synchronous apply of another job, GC, a loaded host), it
   * may not have read yet what the worker sent meanwhile.
   */
  async #call(
    worker: PooledWorker,
    params: JobParams,
    job: {
      io: JobIo;
      hold: OutputHold;
      output: HeldOutput;
      parts: ResultParts;
      reads: ReadSetParts;
      silenceMs: number;
    },
  ): Promise<JobReply> {
    const { io, hold, output, parts, reads, silenceMs } = job;
    // What this worker's mirror fetches meanwhile is learned for the tool.
    const warmKey = params.warm!;
    this.warm?.jobStarted(worker.peer, warmKey);
    const silence = new AbortController();
    // One timer, moved on only when it fires: a chunk heard just pushes the
    // deadline back (a timer cleared and set again per chunk cost more).
    let heardDue = 0;
    let graceDue = 0;
    let graced = false;
    let silenceTimer: ReturnType<typeof setTimeout> | undefined;
    const check = () => {
      const now = performance.now();
      if (now < heardDue) {
        silenceTimer = setTimeout(check, heardDue - now); // heard meanwhile
        return;
      }
      if (graced && now - graceDue <= SILENCE_GRACE_MS) {
        silence.abort();
        return;
      }
      graced = true; // again, if this grace too was held up
      graceDue = now + SILENCE_GRACE_MS;
      silenceTimer = setTimeout(check, SILENCE_GRACE_MS);
    };
    const heard = () => {
      graced = false;
      heardDue = performance.now() + silenceMs;
    };
    heard();
    silenceTimer = setTimeout(check, silenceMs);
    const unfollow = io.stdin?.follow((data) => {
      worker.peer.notify(WorkerMethods.jobStdin, { jobId: params.jobId, data }).catch(() => {});
    });
    try {
      return await worker.peer.call<JobReply>(WorkerMethods.jobRun, params, {
        timeoutMs: params.timeoutMs + 60_000,
        signal: AbortSignal.any([io.signal, silence.signal]),
        onChunk: async (chunk) => {
          heard();
          const c = chunk as JobChunk;
          if (typeof c !== "object" || c === null) return;
          if ("fd" in c && c.data instanceof Uint8Array) {
            if (output.keep && output.bytes <= OUTPUT_BYTES_MAX) {
              output[c.fd === 1 ? 1 : 2].push(c.data.slice());
              output.bytes += c.data.length;
            }
            await hold.write(c.fd === 1 ? 1 : 2, c.data);
          } else if ("rs" in c) parts.addEntries(c.rs);
          else if ("blobs" in c) parts.addBlobs(c.blobs);
          else if ("reads" in c) reads.add(c);
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
      this.warm?.jobEnded(worker.peer, warmKey);
    }
  }

  /**
   * The states of what a job to be cached read, taken before its results
   * change the tree; `{ reads: null, why }` when it is not to be cached.
   * @throws {RpcError} ESTALE: the worker's copy of an input was old.
   */
  async #statesOf(
    worker: PooledWorker,
    reply: JobReply,
    job: {
      io: JobIo;
      output: HeldOutput;
      merged: unknown;
      reads: ReadSetParts;
      startedMs: number;
    },
  ): Promise<Recorded | null> {
    const actions = this.actions;
    if (actions === null) return null;
    try {
      const readSet = job.reads.merge(reply.reads);
      if (reply.killedBy) throw new NotCacheable(`killed by the sandbox (${reply.killedBy})`);
      if (job.output.bytes > OUTPUT_BYTES_MAX) throw new NotCacheable("too much output");
      if (job.io.stdin !== null && readSet?.complete && readSet.stdin !== false) {
        throw new NotCacheable("the job read its stdin");
      }
      // Not cached, the common case when the workers do not record: said without
      // an exception (its stack trace cost ~50 µs of the master per job).
      if (readSet?.complete !== true) return { reads: null, why: incompleteWhy(readSet) };
      const set = job.merged as Partial<ResultSet>;
      const outputs = new Set(
        [...(set.files ?? []), ...(set.symlinks ?? [])].map((f) => f?.path),
      );
      return { reads: await actions.states(readSet, job.startedMs, outputs), why: "" };
    } catch (err) {
      if (err instanceof StaleRead) {
        // Its output came from an old version: tell the mirrors, run it again.
        await this.#flushChanges([err.path]);
        throw new RpcError("ESTALE", `${worker.address}: ${err.message}`);
      }
      return { reads: null, why: (err as Error).message };
    }
  }

  /** Stores a run in the action cache (or notes why it was not). */
  async #store(
    action: string,
    recorded: Recorded,
    run: {
      merged: unknown;
      output: HeldOutput;
      exitCode: number;
      ranMs: number;
      reply: JobReply;
    },
  ): Promise<void> {
    const actions = this.actions!;
    if (recorded.reads === null) {
      actions.notStored(recorded.why);
      return;
    }
    const reads = run.reply.reads;
    await actions.store(action, recorded.reads, {
      resultSet: run.merged as ResultSet,
      stdout: concatBytes(run.output[1]),
      stderr: concatBytes(run.output[2]),
      exitCode: run.exitCode,
      ranMs: run.ranMs,
      readStdin: reads?.complete === true && reads.stdin !== false,
    }).catch((err) => actions.notStored((err as Error).message));
  }

  /** Applies a job's result set to the tree, contents fetched from `worker` as needed. */
  async #apply(
    worker: PooledWorker,
    merged: unknown,
    job: { io: JobIo; parts: ResultParts; reply: JobReply; silenceMs: number },
  ): Promise<Awaited<ReturnType<typeof applyResultSet>>> {
    const { io, parts, reply, silenceMs } = job;
    const outcome = await applyResultSet(merged, {
      writableRoot: this.root,
      tree: this.#tree,
      control: this.#control,
      hashCache: this.#hashCache,
      entriesMax: this.#options.resultEntriesMax,
      inline: (hash) => {
        const bytes = parts.blob(hash) ?? reply.inline?.[hash];
        return bytes instanceof Uint8Array ? bytes : undefined; // verified before use
      },
      fetchBlob: (hash, sink) => this.#fetchBlob(worker, hash, sink, { io, silenceMs }),
    });
    this.stats.bytesReceived += outcome.bytesFetched;
    return outcome;
  }

  /** Streams one result content from `worker` into `sink`; a stalled transfer is given up on. */
  async #fetchBlob(
    worker: PooledWorker,
    hash: string,
    sink: { write(chunk: Uint8Array): Promise<void> | void },
    job: { io: JobIo; silenceMs: number },
  ): Promise<void> {
    const { io, silenceMs } = job;
    // A transfer that stalls (a cut link) is given up on like a silent job.
    const stalled = new AbortController();
    let stallTimer = setTimeout(() => stalled.abort(), silenceMs);
    try {
      this.stats.blobsReceived++;
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
  }
}

/** A job's output as it streamed in, kept for the action cache (`keep`) up to OUTPUT_BYTES_MAX. */
interface HeldOutput {
  1: Uint8Array[];
  2: Uint8Array[];
  bytes: number;
  keep: boolean;
}

/** What a job to be cached read, and their states; `reads` null: not cached, for `why`. */
interface Recorded {
  reads: Awaited<ReturnType<ActionCache["states"]>> | null;
  why: string;
}

/** A reply's exit status, checked: a reply from a worker is untrusted, and it reaches make. */
function exitCodeOf(reply: JobReply): number {
  if (typeof reply !== "object" || reply === null) {
    throw new ResultSetError("Refusing the reply: not an object");
  }
  const exitCode = reply.exitCode;
  if (!Number.isInteger(exitCode) || exitCode < 0 || exitCode > 255) {
    throw new ResultSetError(`Refusing the reply: bad exit code ${describe(exitCode)}`);
  }
  return exitCode;
}
