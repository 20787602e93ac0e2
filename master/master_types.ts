/**
 * The master's options, a job as the wrapper server hands it in (request
 * and I/O), and the master's counters.
 *
 * @module
 */
import type { TlsConfig } from "../rpc/mod.ts";
import type { ActionCacheStats } from "./action_cache.ts";
import type { FallbackCause } from "./dispatch.ts";
import type { StdinBuffer } from "./stdin_buffer.ts";

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
  /** TLS to the coordinator and the workers, their certificates checked (plain TCP when undefined). */
  tls?: TlsConfig;
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
  /** Replay commands whose inputs are unchanged (master/action_cache.ts); default true. */
  actionCache?: boolean;
  /** Bytes the action cache may take in the cache dir; default 2 GiB. */
  actionCacheBytesMax?: number;
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
  /** The CPU its jobs' own processes took there, as the worker says (its launchers' not). */
  jobCpuMs: number;
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
  /** Result contents fetched from workers (calls made; inline ones not counted). */
  blobsReceived: number;
  /** Jobs running on this host now (local rules, outside paths, fallbacks). */
  jobsLocalRunning: number;
  perWorker: Record<string, WorkerJobStats>;
  /** Jobs replayed from the action cache (no worker, no local run). */
  jobsCached: number;
  actionCache?: ActionCacheStats;
}
