/**
 * The worker's Prometheus metrics (`termite_worker_*`) and the small HTTP
 * listener that serves them at `/metrics` (worker.ts's `--metrics-port`).
 * Counters kept elsewhere (the store, the mirrors) are read at scrape time.
 *
 * @module
 */

import { formatHostPort } from "../common/address.ts";
import { JOB_SECONDS_BUCKETS, metricsResponse, Registry } from "../common/metrics.ts";
import { PAGE_HEADERS } from "../common/page.ts";
import type { MirrorTotals } from "./mirrors.ts";
import type { PeerBlobStats } from "./peer_blobs.ts";
import type { HostFileStats } from "./host_files.ts";
import type { TlsConfig } from "../rpc/mod.ts";

/** How a job ended on this worker, as the `outcome` label says it. */
export type WorkerJobOutcome =
  | "ok"
  | "exit_nonzero"
  | "killed"
  | "outside"
  | "error"
  | "cancelled";

const OUTCOMES: readonly WorkerJobOutcome[] = [
  "ok",
  "exit_nonzero",
  "killed",
  "outside",
  "error",
  "cancelled",
];

/** What a sandbox kills a job for (the sandbox's `killedBy`), "signal" being a cancel. */
const KILL_CAUSES: readonly string[] = [
  "timeout",
  "memory",
  "processes",
  "disk",
  "signal",
];

/** Live state the metrics read at scrape time. */
export interface WorkerMetricsSource {
  slots(): number;
  slotsBusy(): number;
  jobsWaiting(): number;
  mirrors(): number;
  mirrorTotals(): MirrorTotals;
  storeBytes(): number;
  storeBytesMax(): number;
  blobsServed(): number;
  bytesServed(): number;
  /** Blobs fetched from peer workers, and how those fetches went. */
  peerBlobs(): PeerBlobStats;
  /** Contents copied from this host's own files, and how those copies went (none: off). */
  hostFiles(): HostFileStats | undefined;
}

/** The worker's registry and the calls that move its own counters. */
export class WorkerMetrics {
  readonly registry: Registry = new Registry();
  readonly #jobs;
  readonly #seconds;
  readonly #kills;

  constructor(source: WorkerMetricsSource) {
    const r = this.registry;
    this.#jobs = r.counter(
      "termite_worker_jobs_total",
      "Jobs ended on this worker, by outcome: ok, exit_nonzero (the command failed), killed (by " +
        "a sandbox limit), outside (it left files in its /tmp: the master runs it itself), " +
        "error (the worker failed it: the master retries elsewhere), cancelled.",
      { labelNames: ["outcome"] },
    );
    for (const outcome of OUTCOMES) this.#jobs.inc({ outcome }, 0);
    this.#seconds = r.histogram(
      "termite_worker_job_duration_seconds",
      "Time from a job's call arriving to its reply, by outcome.",
      { buckets: JOB_SECONDS_BUCKETS, labelNames: ["outcome"] },
    );
    this.#kills = r.counter(
      "termite_worker_sandbox_kills_total",
      "Jobs the sandbox killed, by cause: timeout, memory, processes, disk, signal (cancelled).",
      { labelNames: ["cause"] },
    );
    for (const cause of KILL_CAUSES) this.#kills.inc({ cause }, 0);
    r.collect("termite_worker_slots", "Job slots (0 while draining).", "gauge", source.slots);
    r.collect("termite_worker_slots_busy", "Slots running a job now.", "gauge", source.slotsBusy);
    r.collect(
      "termite_worker_jobs_waiting",
      "Jobs waiting for a slot now, over all masters (slots are taken per job, in turn by master).",
      "gauge",
      source.jobsWaiting,
    );
    r.collect("termite_worker_mirrors", "Masters' mirrors mounted now.", "gauge", source.mirrors);
    const totals = (key: keyof MirrorTotals) => () => source.mirrorTotals()[key];
    r.collect(
      "termite_worker_mirror_lookups_total",
      "Lookups in the mirrors.",
      "counter",
      totals("lookups"),
    );
    r.collect(
      "termite_worker_mirror_lookups_waited_total",
      "Lookups in the mirrors that waited on the network (their master).",
      "counter",
      totals("lookupsWaited"),
    );
    r.collect(
      "termite_worker_fetched_blobs_total",
      "File contents (blobs) the mirrors fetched from masters.",
      "counter",
      totals("blobFetches"),
    );
    r.collect(
      "termite_worker_fetched_bytes_total",
      "Bytes of file contents the mirrors fetched from masters.",
      "counter",
      totals("blobBytes"),
    );
    r.collect(
      "termite_worker_store_bytes",
      "Bytes in the content store.",
      "gauge",
      source.storeBytes,
    );
    r.collect(
      "termite_worker_store_max_bytes",
      "The content store's size limit (--store-max).",
      "gauge",
      source.storeBytesMax,
    );
    r.collect(
      "termite_worker_served_blobs_total",
      "Blobs masters (results) and peer workers (file contents) fetched from this worker.",
      "counter",
      source.blobsServed,
    );
    r.collect(
      "termite_worker_served_bytes_total",
      "Bytes of the blobs masters and peer workers fetched from this worker.",
      "counter",
      source.bytesServed,
    );
    r.collect(
      "termite_worker_peer_fetched_blobs_total",
      "Blobs fetched from peer workers (a master said they held them).",
      "counter",
      () => source.peerBlobs().fetched,
    );
    r.collect(
      "termite_worker_peer_fetched_bytes_total",
      "Bytes received from peer workers.",
      "counter",
      () => source.peerBlobs().bytes,
    );
    r.collect(
      "termite_worker_peer_failed_fetches_total",
      "Fetches from peer workers that failed (unreachable, not held, cut off); the master sent the blob.",
      "counter",
      () => source.peerBlobs().failed,
    );
    r.collect(
      "termite_worker_peer_skipped_fetches_total",
      "Fetches from peer workers not tried: the peer could not be reached shortly before.",
      "counter",
      () => source.peerBlobs().skipped,
    );
    r.collect(
      "termite_worker_peer_corrupt_blobs_total",
      "Blobs from peer workers refused because their bytes did not match their hash.",
      "counter",
      () => source.peerBlobs().corrupt,
    );
    const host = (key: keyof HostFileStats) => () => source.hostFiles()?.[key] ?? 0;
    r.collect(
      "termite_worker_host_blobs_total",
      "File contents copied from this host's own files (same path, same SHA-256) instead of fetched.",
      "counter",
      host("blobs"),
    );
    r.collect(
      "termite_worker_host_bytes_total",
      "Bytes of file contents copied from this host's own files.",
      "counter",
      host("bytes"),
    );
    r.collect(
      "termite_worker_host_mismatched_total",
      "Host files copied and refused: their bytes did not hash as the master announced (fetched).",
      "counter",
      host("mismatched"),
    );
    r.collect(
      "termite_worker_host_failed_total",
      "Host file copies that failed otherwise (a read error, the file changed size); fetched.",
      "counter",
      host("failed"),
    );
    r.collect(
      "termite_worker_host_ahead_bytes_total",
      "Bytes copied from this host's own big files as they were looked up, before the master announced their hash.",
      "counter",
      host("aheadBytes"),
    );
  }

  /** Counts a job that ended, how and after how long. */
  jobEnded(outcome: WorkerJobOutcome, seconds: number, killedBy?: string): void {
    this.#jobs.inc({ outcome });
    this.#seconds.observe(seconds, { outcome });
    if (killedBy !== undefined && KILL_CAUSES.includes(killedBy)) {
      this.#kills.inc({ cause: killedBy });
    }
  }
}

/** The HTTP listener of `/metrics`. */
export interface MetricsServer extends AsyncDisposable {
  /** The port it listens on (the one chosen, for port 0). */
  readonly port: number;
  /** `http://host:port/metrics`, or `https://` with a certificate. */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Serves `registry` at `GET /metrics` on `hostname:port`, nothing else: no
 * action, no page; over HTTPS when `tls` has a certificate and key. Throws
 * `Deno.errors.AddrInUse` and the like as they come.
 */
export function serveMetrics(
  registry: Registry,
  options: { hostname: string; port: number; tls?: TlsConfig },
): MetricsServer {
  const { cert, key } = options.tls ?? {};
  const https = cert !== undefined && key !== undefined;
  const http = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    ...(https ? { cert, key } : {}),
    onListen: () => {},
  }, (req) => {
    const path = new URL(req.url).pathname;
    const text = (status: number, body: string) =>
      new Response(body + "\n", {
        status,
        headers: { ...PAGE_HEADERS, "content-type": "text/plain; charset=utf-8" },
      });
    if (path !== "/metrics" && path !== "/") return text(404, "Not found: see /metrics");
    if (req.method !== "GET" && req.method !== "HEAD") return text(405, "Method not allowed");
    if (path === "/") return text(200, "termite worker: metrics at /metrics");
    return metricsResponse(registry, PAGE_HEADERS);
  });
  const port = http.addr.port;
  let closed: Promise<void> | undefined;
  const close = () => closed ??= http.shutdown();
  return {
    port,
    url: `${https ? "https" : "http"}://${formatHostPort(options.hostname, port)}/metrics`,
    close,
    [Symbol.asyncDispose]: close,
  };
}
