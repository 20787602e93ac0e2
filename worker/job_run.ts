/**
 * One job on a worker: run in a sandbox over its master's mirror, then what
 * it changed collected as a result set. Small result files travel inline in
 * the reply, the rest go to the store for the master to fetch; a result set
 * too large for the reply's frame goes ahead of it in parts. Failures that
 * are the worker's (a full disk, a stale file handle in the mirror) are
 * reported as such, so that the master runs the job again elsewhere.
 *
 * @module
 */

import type { Store } from "../cas/mod.ts";
import { hashBytes } from "../cas/mod.ts";
import {
  isJobParams,
  JOB_HEARTBEAT_MS,
  type JobParams,
  type JobReply,
  type ReadSet,
} from "../common/protocol.ts";
import type { ResultSet } from "../common/types.ts";
import { type CallContext, RpcError } from "../rpc/mod.ts";
import {
  collectResultSet,
  type JobOutcome,
  type NetnsPool,
  runJob,
  XattrReader,
} from "../sandbox/mod.ts";
import { type Mirror, safeName } from "./mirrors.ts";
import type { ReadTracer } from "./read_trace.ts";
import type { MirrorStats } from "./mirror_options.ts";
import { sendResultParts } from "./result_parts.ts";
import { splitReadSet } from "../common/read_set_parts.ts";

/** Result files up to this size travel inline in the job's reply... */
const INLINE_FILE_BYTES_MAX = 128 * 1024;
/** ...up to this much in all (a reply is one RPC frame, at most FRAME_BYTES_MAX). */
const INLINE_BYTES_MAX = 512 * 1024;
/** Free space below which a failed job is blamed on the worker's disk. */
const DISK_FREE_BYTES_MIN = 16 * 2 ** 20;

const STALE_TEXT = new TextEncoder().encode("Stale file handle");

/** Options of {@linkcode JobRunner}: the worker's per-job caps and where jobs work. */
export interface JobRunnerOptions {
  /** Job directories go under `${cacheDir}/jobs`; the launcher under `${cacheDir}/launcher`. */
  cacheDir: string;
  store: Store;
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
  log(message: string): void;
  /** Keeps background work (a job's clean-up) to wait for at close. */
  track(work: Promise<void>): void;
  /** Records what jobs read when the master asks (`JobParams.record`); absent: never. */
  tracer?: ReadTracer;
  /** The network namespaces jobs reuse; absent: a new one per job. */
  netnsPool?: NetnsPool;
}

/** Result files kept for the reply, by hash. */
interface Inline {
  blobs: Record<string, Uint8Array>;
  bytes: number;
}

/** What a job left when its sandbox ended. */
interface SandboxRun {
  outcome: JobOutcome;
  resultSet: ResultSet | undefined;
  inline: Inline;
  /** Whether the job's stderr reported a stale file handle. */
  staleSeen: boolean;
  /** The output that reported it (its first 400 bytes). */
  staleLine: string;
  collectMs: number;
  reads?: ReadSet;
}

/** Throws BAD_REQUEST unless `params` is a job (`JobParams`). */
export function checkJobParams(params: JobParams): void {
  if (!isJobParams(params)) throw new RpcError("BAD_REQUEST", "Bad job parameters");
}

/** Sends heartbeat chunks while a job runs, as often as the master asked (clamped). */
export function startHeartbeat(
  ctx: CallContext,
  requestedMs: unknown,
): ReturnType<typeof setInterval> {
  const heartbeatMs = Math.min(
    JOB_HEARTBEAT_MS,
    Math.max(250, Number(requestedMs) || JOB_HEARTBEAT_MS),
  );
  return setInterval(() => {
    ctx.sendChunk({ hb: 1 }).catch(() => {});
  }, heartbeatMs);
}

/** What a mirror's counters did while a job ran (other jobs on it count too), for debug timings. */
function mirrorDelta(before: MirrorStats, after: MirrorStats): string {
  const keys: (keyof MirrorStats)[] = [
    "lookupsWaited",
    "lookupWaitMs",
    "readWaitMs",
    "dirFetches",
    "dirFetchMs",
    "attrFetches",
    "blobFetches",
    "blobFetchMs",
    "blobBytes",
    "hostBlobs",
    "hostBytes",
  ];
  return keys.map((k) => `${k} ${Math.round((after[k] ?? 0) - (before[k] ?? 0))}`).join(", ");
}

export class JobRunner {
  readonly #options: JobRunnerOptions;
  /** Kept open for every job's result set (see CollectOptions.xattrs). */
  #xattrs: XattrReader | undefined;

  constructor(options: JobRunnerOptions) {
    this.#options = options;
  }

  /** Releases what the runner keeps between jobs. */
  close(): void {
    this.#xattrs?.close();
    this.#xattrs = undefined;
  }

  /** Runs a job over `mirror` (updates applied); its reply, results ahead of it when large. */
  async run(
    mirror: Mirror,
    params: JobParams,
    ctx: CallContext,
    stdin: AsyncIterable<Uint8Array> | undefined,
  ): Promise<JobReply> {
    const started = performance.now();
    const before = { ...mirror.fs.stats };
    const ran = await this.#sandbox(mirror, params, ctx, stdin);
    const { outcome, collectMs } = ran;
    const sandboxEnded = performance.now();
    if (Deno.env.get("TERMITE_DEBUG_TIMINGS")) {
      this.#options.log(
        `job ${params.argv[0]}: ${(sandboxEnded - started).toFixed(1)} ms, collect ${
          collectMs.toFixed(1)
        } ms, launcher set-up ${(outcome.launcherMs ?? 0).toFixed(1)} ms; mirror meanwhile: ${
          mirrorDelta(before, mirror.fs.stats)
        }`,
      );
    }
    if (ctx.signal.aborted) throw new RpcError("CANCELLED", "Job cancelled");
    if (outcome.exitCode !== 0 && ran.staleSeen) {
      // The job failed on ESTALE from the overlay over the mirror (a lower
      // dentry invalidated under it): this worker's fault, not the job's.
      this.#options.log(
        `job ${params.argv[0]} failed on a stale file handle; asking for a retry: ${
          JSON.stringify(ran.staleLine)
        }`,
      );
      throw new RpcError("ESTALE", "The job hit a stale file handle in the mirror");
    }
    if (outcome.leftInTmp !== undefined && outcome.killedBy === undefined) {
      // Its private /tmp goes with the sandbox: what it wrote there (say
      // `gcc -o /tmp/x.o`, or a path behind a variable) would be lost here.
      throw new RpcError(
        "OUTSIDE",
        `The job left ${outcome.leftInTmp} in its /tmp, which is not shipped back`,
      );
    }
    let resultSet = ran.resultSet;
    // Killed by the sandbox (time, processes, disk): its changes are dropped and
    // the kill reported as the job's own outcome. Not an error of this worker,
    // or the master would run the job again elsewhere, and at last unconfined.
    if (!resultSet && outcome.killedBy !== undefined) {
      resultSet = { deletions: [], dirs: [], files: [], symlinks: [] };
    }
    if (!resultSet) throw new RpcError("INTERNAL", "The job's changes could not be collected");
    // A reply must fit one frame: large results go ahead of it in parts.
    const results = await sendResultParts(resultSet, ran.inline.blobs, (c) => ctx.sendChunk(c));
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
        jobCpuMs: outcome.jobCpuMs ?? 0,
        sandboxMs: sandboxEnded - started - collectMs,
      },
      mirror: { ...mirror.fs.stats },
      reads: ran.reads,
    };
  }

  /** Throws NOSPACE when the file system of the cache dir (jobs, store) is (nearly) full. */
  async throwIfDiskFull(): Promise<void> {
    const cacheDir = this.#options.cacheDir;
    const out = await new Deno.Command("stat", {
      args: ["-f", "-c", "%a %S", `${cacheDir}/jobs`],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    const [blocks, size] = new TextDecoder().decode(out.stdout).trim().split(" ").map(Number);
    const free = blocks * size;
    if (out.success && Number.isFinite(free) && free < DISK_FREE_BYTES_MIN) {
      throw new RpcError(
        "NOSPACE",
        `No space left on this worker: ${free} bytes free in ${cacheDir}`,
      );
    }
  }

  /** Runs the job in its sandbox and collects what it changed. */
  async #sandbox(
    mirror: Mirror,
    params: JobParams,
    ctx: CallContext,
    stdin: AsyncIterable<Uint8Array> | undefined,
  ): Promise<SandboxRun> {
    const options = this.#options;
    const timeoutMs = Math.min(
      Math.max(1, Number(params.timeoutMs) || 600_000),
      options.jobTimeoutMsMax ?? 3_600_000,
    );
    let resultSet: ResultSet | undefined;
    let staleSeen = false;
    let staleLine = "";
    // Small results travel in the reply itself: no store write, no fetch.
    const inline: Inline = { blobs: {}, bytes: 0 };
    let collectMs = 0;
    const tracer = options.tracer;
    const recording = params.record === true ? tracer?.begin(params.cwd) ?? null : null;
    let outcome: JobOutcome;
    try {
      outcome = await this.#runJob(mirror, params, ctx, stdin, timeoutMs, {
        onCgroup: (dir) => recording ? tracer!.attach(recording, dir) : Promise.resolve(),
        // The tracer follows only the jobs under its own directory.
        cgroupRoot: recording ? tracer!.cgroupRoot : undefined,
        onStderr: (data) => {
          if (staleSeen) return;
          staleSeen = staleText(data);
          // The line that says so, to find which path went stale.
          if (staleSeen) staleLine = new TextDecoder().decode(data.slice(0, 400)).trim();
        },
        onCollected: (rs, ms) => {
          resultSet = rs;
          collectMs = ms;
        },
        inline,
      });
    } catch (err) {
      if (recording) await tracer!.end(recording).catch(() => {});
      throw err;
    }
    let reads: ReadSet | undefined;
    if (recording) {
      reads = await tracer!.end(recording);
      // What the job saw: the master refuses to cache a run over a stale file.
      if (reads.complete) {
        reads.hashes = {};
        for (const [path, kinds] of reads.entries) {
          const hash = kinds.includes("r") ? mirror.fs.hashOf(path) : undefined;
          if (hash !== undefined) reads.hashes[path] = hash;
        }
        // The reply is one frame, shared with the inline results: a large
        // read set goes ahead of it in parts.
        const split = splitReadSet(reads);
        for (const part of split.parts) await ctx.sendChunk(part);
        reads = split.reply;
      }
    } else if (params.record === true) {
      reads = { complete: false, why: tracer?.deadReason ?? "this worker records no reads" };
    }
    return { outcome, resultSet, inline, staleSeen, staleLine, collectMs, reads };
  }

  #runJob(
    mirror: Mirror,
    params: JobParams,
    ctx: CallContext,
    stdin: AsyncIterable<Uint8Array> | undefined,
    timeoutMs: number,
    hooks: {
      onCgroup(dir: string | null): Promise<void>;
      cgroupRoot?: string;
      onStderr(data: Uint8Array): void;
      onCollected(resultSet: ResultSet, collectMs: number): void;
      inline: Inline;
    },
  ): Promise<JobOutcome> {
    const options = this.#options;
    const inline = hooks.inline;
    return runJob({
      argv: params.argv,
      cwd: params.cwd,
      env: params.env,
      stdin,
      timeoutMs,
      memoryBytesMax: options.memoryBytesMax,
      processesMax: options.processesMax,
      diskBytesMax: options.jobDiskBytesMax,
    }, {
      lowerRoot: mirror.mountpoint,
      writableRoot: mirror.writableRoot,
      jobDir: `${options.cacheDir}/jobs/${safeName(params.jobId)}`,
      launcherCacheDir: `${options.cacheDir}/launcher`,
      network: options.jobNetwork ? "host" : "none",
      netnsPool: options.netnsPool,
      signal: ctx.signal,
      deferCleanup: (cleanup) => options.track(cleanup),
      onCgroup: hooks.onCgroup,
      pidsCgroupRoot: hooks.cgroupRoot,
      onStdout: (data) => ctx.sendChunk({ fd: 1, data }),
      onStderr: (data) => {
        hooks.onStderr(data);
        return ctx.sendChunk({ fd: 2, data });
      },
      onUpper: async (upper, lowerDir, ended) => {
        // A job that failed on a full disk failed because of this worker.
        if (ended.exitCode !== 0) await this.throwIfDiskFull();
        const t = performance.now();
        try {
          const resultSet = await collectResultSet(
            upper,
            mirror.writableRoot,
            (path) => this.#putResult(path, inline),
            { lowerDir, xattrs: this.#xattrs ??= new XattrReader() },
          );
          hooks.onCollected(resultSet, performance.now() - t);
        } catch (err) {
          if (isNoSpace(err)) {
            throw new RpcError("NOSPACE", `No space left on this worker to store the results`);
          }
          throw err;
        }
      },
    });
  }

  /**
   * Takes one result file: small ones are kept for the reply (up to
   * INLINE_BYTES_MAX in all), the rest go to the store for the master to fetch.
   */
  async #putResult(path: string, inline: Inline): Promise<{ hash: string; size: number }> {
    // A file of the job's upper layer, on this worker's disk, just written:
    // a small one is read without a thread hop (~50 µs of CPU each).
    const info = Deno.statSync(path);
    if (info.size <= INLINE_FILE_BYTES_MAX && inline.bytes + info.size <= INLINE_BYTES_MAX) {
      const bytes = Deno.readFileSync(path);
      if (bytes.length === info.size) {
        const hash = hashBytes(bytes);
        if (!(hash in inline.blobs)) {
          inline.blobs[hash] = bytes;
          inline.bytes += bytes.length;
        }
        return { hash, size: bytes.length };
      }
    }
    return await this.#options.store.putFile(path, { sizeHint: info.size });
  }
}

/** Whether a chunk of a job's stderr reports ESTALE (strerror text). */
function staleText(data: Uint8Array): boolean {
  outer: for (let i = 0; i + STALE_TEXT.length <= data.length; i++) {
    for (let j = 0; j < STALE_TEXT.length; j++) if (data[i + j] !== STALE_TEXT[j]) continue outer;
    return true;
  }
  return false;
}

/** Whether an error (or one of its causes) is ENOSPC. */
function isNoSpace(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if ((e as { code?: unknown }).code === "ENOSPC" || /os error 28\b/.test(e.message)) {
      return true;
    }
  }
  return false;
}
