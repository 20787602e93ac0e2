/**
 * What the master shows of its build: the status page's JSON, the report it
 * sends the coordinator each second, and its Prometheus metrics. Everything
 * is read from `Master.stats` and the master's other counters, plus a
 * {@linkcode JobLog} of the jobs the wrappers hand in.
 *
 * @module
 */

import type { BlobHolderStats } from "./blob_holders.ts";
import { hostname } from "node:os";
import type { Master, MasterStats } from "./master.ts";
import type { FallbackCause } from "./dispatch.ts";
import { commandText, type FinishedJob, JOB_OUTCOMES, JobLog } from "./job_log.ts";
import { JOB_SECONDS_BUCKETS, Registry } from "../common/metrics.ts";
import { RateWindow } from "../common/rate.ts";
import { VERSION } from "../common/protocol.ts";
import { type MasterReport, REPORT_JOBS_MAX } from "../coordinator/types.ts";

/** One worker on the master's page. */
export interface MasterWorkerStatus {
  address: string;
  slots: number;
  running: number;
  done: number;
  failed: number;
  /** How long it has had at least one of this master's jobs without a break, ms; 0 when idle. */
  busyMs: number;
  /** Sums over its jobs done: time on the worker, collecting results there, applying them here. */
  workerMs: number;
  collectMs: number;
  applyMs: number;
  /** CPU of the jobs' own processes there, as the worker says (not its own, nor its launchers'). */
  jobCpuMs: number;
  /** The worker's mirror counters after its last job. */
  mirror?: Record<string, number>;
}

/** Where local runs come from, by cause. */
export interface LocalRuns {
  total: number;
  /** Named in `.termite-localrc` (or every job, without a coordinator). */
  byRule: number;
  /** Naming paths outside what the workers see or ship. */
  outside: number;
  /** As a last resort, by why no worker ran them. */
  fallback: Partial<Record<FallbackCause, number>>;
}

/** The master's `/status.json`. */
export interface MasterStatus {
  root: string;
  masterId: string;
  version: string;
  hostname: string;
  nowMs: number;
  /** The coordinator's "host:port" and, once it said, its status page. */
  coordinator?: { address: string; statusUrl?: string };
  /** The master's own counters, as they are. */
  jobs: MasterStats;
  build: {
    inFlight: number;
    onWorkers: number;
    /** In flight but not on a worker: waiting for a slot, or running here. */
    waitingOrLocal: number;
    /** Waiting for a worker's slot (the queue). */
    queued: number;
    /** Running on this host now (local rules, outside paths, fallbacks). */
    localRunning: number;
    finished: number;
    byOutcome: Record<string, number>;
    jobsPerSecond: number;
    remote: number;
    builtin: number;
    retried: number;
    /** Jobs that ran nowhere. */
    failed: number;
    local: LocalRuns;
    /** Result contents fetched from workers, and file contents served to them. */
    bytesFetched: number;
    bytesServed: number;
    /** The action cache, when on: replayed jobs, misses, their recorded run times. */
    cached?: {
      hits: number;
      misses: number;
      savedMs: number;
      stored: number;
      notStored: number;
      lastNotStored: string;
      entries: number;
      bytes: number;
    };
  };
  /** Jobs in flight, longest first (where each runs is not known here). */
  running: { command: string; elapsedMs: number }[];
  /** The slowest finished jobs, slowest first. */
  slowest: readonly FinishedJob[];
  workers: MasterWorkerStatus[];
  files: { attrs: number; dirs: number; blobs: number; blobBytes: number };
  /** Blob requests sent to a peer worker holding the blob, and the bytes not sent. */
  peerBlobs: BlobHolderStats;
  hashCache: {
    entries: number;
    hits: number;
    misses: number;
    hitRate: number;
    bytesHashed: number;
  };
  changeLogSeq: number;
}

/** Jobs in flight listed on the page. */
const RUNNING_SHOWN = 20;

/** Watches one master: its jobs, its workers' busy spells, its rate. */
export class MasterMonitor implements Disposable {
  readonly jobs: JobLog;
  readonly metrics: Registry = new Registry();
  readonly #master: Master;
  readonly #now: () => number;
  readonly #busySince = new Map<string, number>();
  readonly #rate = new RateWindow();
  readonly #timer: ReturnType<typeof setInterval>;
  readonly #hostname = hostname();
  /** Set by the caller once known. */
  statusUrl: string | undefined;
  coordinator: { address: string; statusUrl?: string } | undefined;

  constructor(master: Master, options: { now?: () => number } = {}) {
    this.#master = master;
    this.#now = options.now ?? Date.now;
    const durations = this.metrics.histogram(
      "termite_master_job_duration_seconds",
      "Time from a wrapper handing in a job to its exit status going back, by outcome.",
      { buckets: JOB_SECONDS_BUCKETS, labelNames: ["outcome"] },
    );
    this.jobs = new JobLog({
      now: this.#now,
      onFinish: (job) => durations.observe(job.ms / 1000, { outcome: job.outcome }),
    });
    this.#registerMetrics();
    this.#timer = setInterval(() => this.sample(), 1000);
    Deno.unrefTimer(this.#timer);
  }

  /**
   * The master as the wrapper server should see it: `run` noted in the job
   * log. Only `run` may be used on it (the master's private state is not
   * reachable through it).
   */
  wrapperFacing(): Master {
    const master = this.#master;
    const jobs = this.jobs;
    const facing: Master = Object.create(master, {
      run: {
        value: async (...args: Parameters<Master["run"]>) => {
          const [request] = args;
          const end = jobs.start(commandOf(request));
          let result = { code: 255, error: "master failed" } as Awaited<ReturnType<Master["run"]>>;
          try {
            result = await master.run(...args);
            return result;
          } finally {
            end(result);
          }
        },
      },
      // Called on the master itself: its private fields are not the facade's.
      farmSlots: { value: () => master.farmSlots() },
    });
    return facing;
  }

  /** Notes which workers are busy now and the finished count (each second, and when asked). */
  sample(): void {
    const nowMs = this.#now();
    const busy = new Set<string>();
    for (const w of this.#master.workers) {
      if (w.running <= 0) continue;
      busy.add(w.address);
      if (!this.#busySince.has(w.address)) this.#busySince.set(w.address, nowMs);
    }
    for (const address of this.#busySince.keys()) {
      if (!busy.has(address)) this.#busySince.delete(address);
    }
    this.#rate.add(nowMs, this.jobs.finished);
  }

  #workers(nowMs: number): MasterWorkerStatus[] {
    const stats = this.#master.stats.perWorker;
    return this.#master.workers.map((w) => {
      const s = stats[w.address];
      const since = this.#busySince.get(w.address);
      return {
        address: w.address,
        slots: w.slots,
        running: w.running,
        done: w.jobsDone,
        failed: w.jobsFailed,
        busyMs: since === undefined ? 0 : Math.max(0, nowMs - since),
        workerMs: s?.workerMs ?? 0,
        collectMs: s?.collectMs ?? 0,
        applyMs: s?.applyMs ?? 0,
        jobCpuMs: s?.jobCpuMs ?? 0,
        ...(s?.mirror ? { mirror: s.mirror } : {}),
      };
    }).sort((a, b) => a.address < b.address ? -1 : a.address > b.address ? 1 : 0);
  }

  status(): MasterStatus {
    this.sample();
    const master = this.#master;
    const stats = master.stats;
    const nowMs = this.#now();
    const workers = this.#workers(nowMs);
    const onWorkers = workers.reduce((sum, w) => sum + w.running, 0);
    const fallback = stats.localByCause;
    const fallbacks = Object.values(fallback).reduce((sum, n) => sum + (n ?? 0), 0);
    const hashes = master.fileServer.hashCache.stats;
    const lookups = hashes.hits + hashes.misses;
    return {
      root: master.root,
      masterId: master.masterId,
      version: VERSION,
      hostname: this.#hostname,
      nowMs,
      ...(this.coordinator ? { coordinator: this.coordinator } : {}),
      jobs: stats,
      build: {
        inFlight: stats.jobsRunning,
        onWorkers,
        waitingOrLocal: Math.max(0, stats.jobsRunning - onWorkers),
        queued: master.jobsQueued,
        localRunning: stats.jobsLocalRunning,
        finished: this.jobs.finished,
        byOutcome: { ...this.jobs.byOutcome },
        jobsPerSecond: this.#rate.perSecond(nowMs),
        remote: stats.jobsRemote,
        builtin: stats.jobsBuiltin,
        retried: stats.retries,
        failed: stats.jobsFailed,
        local: {
          total: stats.jobsLocal,
          byRule: Math.max(0, stats.jobsLocal - stats.jobsOutside - fallbacks),
          outside: stats.jobsOutside,
          fallback: { ...fallback },
        },
        bytesFetched: stats.bytesReceived,
        bytesServed: stats.bytesServed,
        ...(stats.actionCache ? { cached: { ...stats.actionCache } } : {}),
      },
      running: this.jobs.running(RUNNING_SHOWN),
      slowest: this.jobs.slowest(),
      workers,
      files: { ...master.fileServer.stats },
      peerBlobs: { ...master.blobHolderStats },
      hashCache: {
        entries: master.fileServer.hashCache.size,
        hits: hashes.hits,
        misses: hashes.misses,
        hitRate: lookups === 0 ? 0 : hashes.hits / lookups,
        bytesHashed: hashes.bytesHashed,
      },
      changeLogSeq: master.changeLog.seq,
    };
  }

  /** The report for the coordinator. */
  report(): MasterReport {
    const s = this.status();
    return {
      master: {
        id: s.masterId,
        root: s.root,
        hostname: s.hostname,
        version: s.version,
        ...(this.statusUrl ? { statusUrl: this.statusUrl } : {}),
      },
      build: {
        jobsInFlight: s.build.inFlight,
        jobsOnWorkers: s.build.onWorkers,
        jobsFinished: s.build.finished,
        jobsFailed: s.build.failed,
        jobsExitNonZero: s.build.byOutcome.exit_nonzero ?? 0,
        jobsRemote: s.build.remote,
        jobsLocal: s.build.local.total,
        retries: s.build.retried,
        bytesFetched: s.build.bytesFetched,
        workers: s.workers.map((w) => ({
          address: w.address,
          running: w.running,
          done: w.done,
          failed: w.failed,
          busyMs: Math.round(w.busyMs),
        })),
        running: s.running.slice(0, REPORT_JOBS_MAX),
      },
    };
  }

  /** The Prometheus metrics, read from the master when scraped (in this order). */
  #registerMetrics(): void {
    this.#registerJobMetrics();
    this.#registerWorkerMetrics();
    this.#registerFallbackMetrics();
    this.#registerServingMetrics();
    this.#registerMirrorMetrics();
  }

  /** Jobs: how they ended, where they ran, in flight. */
  #registerJobMetrics(): void {
    const m = this.metrics;
    const master = this.#master;
    const stats = () => this.#master.stats;
    m.collect(
      "termite_master_jobs_total",
      "Jobs finished, by how they ended: ok, exit_nonzero (the command failed), error (ran " +
        "nowhere), cancelled.",
      "counter",
      () => JOB_OUTCOMES.map((o) => [{ outcome: o }, this.jobs.byOutcome[o]] as const),
      { labelNames: ["outcome"] },
    );
    m.collect(
      "termite_master_jobs_run_total",
      "Jobs run, by where: worker, local (this host) or builtin (mkdir -p, rm -f run by the master).",
      "counter",
      () => [
        [{ where: "worker" }, stats().jobsRemote],
        [{ where: "local" }, stats().jobsLocal],
        [{ where: "builtin" }, stats().jobsBuiltin],
      ],
      { labelNames: ["where"] },
    );
    m.collect(
      "termite_master_jobs_in_flight",
      "Jobs the master holds now.",
      "gauge",
      () => stats().jobsRunning,
    );
    m.collect(
      "termite_master_jobs_waiting",
      "Jobs in flight not on a worker: waiting for a slot (the queue), or running here.",
      "gauge",
      () => Math.max(0, stats().jobsRunning - master.workers.reduce((s, w) => s + w.running, 0)),
    );
    m.collect(
      "termite_master_jobs_queued",
      "Jobs waiting for a worker's slot (the queue).",
      "gauge",
      () => master.jobsQueued,
    );
    m.collect(
      "termite_master_jobs_local_running",
      "Jobs running on this host now (local rules, outside paths, fallbacks).",
      "gauge",
      () => stats().jobsLocalRunning,
    );
  }

  /** Each worker: slots held and busy, jobs done and failed, time. */
  #registerWorkerMetrics(): void {
    const m = this.metrics;
    const perWorker = <T>(f: (w: MasterWorkerStatus) => T) =>
      this.#workers(this.#now()).map((w) => [{ worker: w.address }, f(w)] as const);
    const byWorker = { labelNames: ["worker"] };
    m.collect(
      "termite_master_worker_slots",
      "Slots this master holds on each worker.",
      "gauge",
      () => perWorker((w) => w.slots),
      byWorker,
    );
    m.collect(
      "termite_master_worker_slots_busy",
      "Slots busy with this master's jobs on each worker.",
      "gauge",
      () => perWorker((w) => w.running),
      byWorker,
    );
    m.collect(
      "termite_master_worker_jobs_done_total",
      "Jobs done on each worker.",
      "counter",
      () => perWorker((w) => w.done),
      byWorker,
    );
    m.collect(
      "termite_master_worker_attempts_failed_total",
      "Failed attempts on each worker (the job was retried elsewhere or run here).",
      "counter",
      () => perWorker((w) => w.failed),
      byWorker,
    );
    m.collect(
      "termite_master_worker_job_seconds_total",
      "Time this master's jobs spent on each worker.",
      "counter",
      () => perWorker((w) => w.workerMs / 1000),
      byWorker,
    );
    m.collect(
      "termite_master_worker_job_cpu_seconds_total",
      "CPU the processes of this master's jobs took on each worker, as the worker says.",
      "counter",
      () => perWorker((w) => w.jobCpuMs / 1000),
      byWorker,
    );
  }

  /** Retries, and jobs that ran nowhere or here. */
  #registerFallbackMetrics(): void {
    const m = this.metrics;
    const stats = () => this.#master.stats;
    m.collect(
      "termite_master_retries_total",
      "Attempts on another worker after a failed one.",
      "counter",
      () => stats().retries,
    );
    m.collect(
      "termite_master_jobs_failed_total",
      "Jobs that ran nowhere (no worker, and local fallback off).",
      "counter",
      () => stats().jobsFailed,
    );
    m.collect(
      "termite_master_local_fallbacks_total",
      "Jobs run here as a last resort, by why no worker ran them.",
      "counter",
      () => Object.entries(stats().localByCause).map(([cause, n]) => [{ cause }, n ?? 0] as const),
      { labelNames: ["cause"] },
    );
    m.collect(
      "termite_master_jobs_outside_total",
      "Jobs run here because they name paths the workers do not see or ship.",
      "counter",
      () => stats().jobsOutside,
    );
  }

  /** Contents fetched from and served to the workers, the hash cache. */
  #registerServingMetrics(): void {
    const m = this.metrics;
    const master = this.#master;
    const stats = () => this.#master.stats;
    m.collect(
      "termite_master_fetched_bytes_total",
      "Result contents fetched from workers.",
      "counter",
      () => stats().bytesReceived,
    );
    m.collect(
      "termite_master_fetched_blobs_total",
      "Result contents (blobs) fetched from workers; those inline in a reply not counted.",
      "counter",
      () => stats().blobsReceived,
    );
    m.collect(
      "termite_master_served_bytes_total",
      "File contents served to the workers' mirrors.",
      "counter",
      () => stats().bytesServed,
    );
    m.collect(
      "termite_master_served_blobs_total",
      "File contents (blobs) served to the workers' mirrors.",
      "counter",
      () => master.fileServer.stats.blobs,
    );
    m.collect(
      "termite_master_peer_redirects_total",
      "Blob requests answered with a peer worker that holds the blob instead of the bytes.",
      "counter",
      () => master.blobHolderStats.redirected,
    );
    m.collect(
      "termite_master_peer_redirected_bytes_total",
      "Bytes of the blobs that workers were sent to fetch from a peer.",
      "counter",
      () => master.blobHolderStats.redirectedBytes,
    );
    m.collect(
      "termite_master_served_attrs_total",
      "Attribute lookups served to the workers' mirrors.",
      "counter",
      () => master.fileServer.stats.attrs,
    );
    m.collect(
      "termite_master_hash_cache_hits_total",
      "Contents whose SHA-256 came from the cache (size, mtime, ctime and inode unchanged).",
      "counter",
      () => master.fileServer.hashCache.stats.hits,
    );
    m.collect(
      "termite_master_hash_cache_misses_total",
      "Contents hashed again.",
      "counter",
      () => master.fileServer.hashCache.stats.misses,
    );
    m.collect(
      "termite_master_hashed_bytes_total",
      "Bytes read to hash contents.",
      "counter",
      () => master.fileServer.hashCache.stats.bytesHashed,
    );
  }

  /** Each worker's mirror of this master, as of its last job. */
  #registerMirrorMetrics(): void {
    const m = this.metrics;
    const stats = () => this.#master.stats;
    const byWorker = { labelNames: ["worker"] };
    m.collect(
      "termite_master_action_cache_hits_total",
      "Jobs replayed from the action cache (inputs unchanged): no worker, no local run.",
      "counter",
      () => stats().actionCache?.hits ?? 0,
    );
    m.collect(
      "termite_master_action_cache_misses_total",
      "Cacheable jobs with no entry whose inputs all held.",
      "counter",
      () => stats().actionCache?.misses ?? 0,
    );
    m.collect(
      "termite_master_action_cache_saved_seconds_total",
      "What the replayed jobs took when they ran.",
      "counter",
      () => (stats().actionCache?.savedMs ?? 0) / 1000,
    );
    m.collect(
      "termite_master_worker_mirror_lookups_total",
      "Lookups in each worker's mirror of this master, as of its last job.",
      "counter",
      () => mirrorCounter(stats(), "lookups"),
      byWorker,
    );
    m.collect(
      "termite_master_worker_mirror_lookups_waited_total",
      "Lookups in each worker's mirror that waited for this master (cache misses).",
      "counter",
      () => mirrorCounter(stats(), "lookupsWaited"),
      byWorker,
    );
    m.collect(
      "termite_master_worker_mirror_fetched_bytes_total",
      "Contents each worker's mirror fetched from this master, as of its last job.",
      "counter",
      () => mirrorCounter(stats(), "blobBytes"),
      byWorker,
    );
  }

  [Symbol.dispose](): void {
    clearInterval(this.#timer);
  }
}

function mirrorCounter(stats: MasterStats, key: string) {
  return Object.entries(stats.perWorker)
    .filter(([, w]) => typeof w.mirror?.[key] === "number")
    .map(([worker, w]) => [{ worker }, w.mirror![key]] as const);
}

function commandOf(request: { argv: string[]; shell?: boolean }): string {
  return commandText(request.argv, request.shell === true);
}
