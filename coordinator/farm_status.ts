/**
 * What the coordinator's status page shows, as one JSON value
 * (`/status.json`): the workers with the jobs the masters say they run on
 * them, the masters and their builds, and farm-wide figures.
 *
 * @module
 */

import type { MasterView } from "./server.ts";
import type { WorkerInfo } from "./types.ts";

/** One master's jobs on one worker, from its last report. */
export interface WorkerMasterJobs {
  masterId: string;
  root: string;
  statusUrl?: string;
  running: number;
  /** How long the worker has had at least one of this master's jobs, ms. */
  busyMs: number;
}

/** A worker as the page shows it (a superset of what it registered). */
export interface FarmWorker extends WorkerInfo {
  /** Slots busy: the larger of the worker's own count and the masters' reports. */
  busy: number;
  /** Jobs by master, from the masters' reports. */
  jobs: WorkerMasterJobs[];
  /** Jobs done and failed attempts there, summed over the reporting masters. */
  done: number;
  failed: number;
}

/** Farm-wide figures. */
export interface FarmTotals {
  workers: number;
  drained: number;
  slots: number;
  slotsBusy: number;
  masters: number;
  jobsInFlight: number;
  jobsPerSecond: number;
  jobsFinished: number;
  /** Failed attempts on workers (retried or run locally), over the reporting masters. */
  attemptsFailed: number;
  /** Jobs that ran nowhere. */
  jobsFailed: number;
}

export interface FarmStatus {
  version: string;
  nowMs: number;
  workers: FarmWorker[];
  masters: MasterView[];
  farm: FarmTotals;
}

/** A report older than this is not counted in the workers' jobs. */
export const REPORT_STALE_MS = 10_000;

/**
 * Masters: those that said who they are, plus connections watching the
 * worker list without saying so from hosts where no named master is (a
 * named master's own watch may not say who it is).
 */
function countMasters(masters: readonly MasterView[]): number {
  const host = (addr: string) => addr.replace(/:\d+$/, "");
  const named = masters.filter((m) => m.id !== undefined);
  const hosts = new Set(named.map((m) => host(m.remoteAddr)));
  return named.length + masters.filter((m) => m.id === undefined && !hosts.has(host(m.remoteAddr)))
    .length;
}

/** Joins the workers' registrations with the masters' reports. */
export function farmStatus(
  workers: readonly WorkerInfo[],
  masters: readonly MasterView[],
  options: { version: string; nowMs: number },
): FarmStatus {
  const { nowMs } = options;
  const fresh = masters.filter((m) =>
    m.build !== undefined && m.lastReportMs !== undefined &&
    nowMs - m.lastReportMs <= REPORT_STALE_MS
  );
  const farmWorkers = workers.map((w): FarmWorker => {
    const jobs: WorkerMasterJobs[] = [];
    let done = 0;
    let failed = 0;
    for (const m of fresh) {
      const seen = m.build!.workers.find((x) => x.address === w.address);
      if (seen === undefined) continue;
      done += seen.done;
      failed += seen.failed;
      if (seen.running > 0) {
        jobs.push({
          masterId: m.id!,
          root: m.root!,
          ...(m.statusUrl ? { statusUrl: m.statusUrl } : {}),
          running: seen.running,
          busyMs: seen.busyMs,
        });
      }
    }
    const reported = jobs.reduce((sum, j) => sum + j.running, 0);
    return { ...w, busy: Math.max(w.jobsRunning, reported), jobs, done, failed };
  });
  const active = farmWorkers.filter((w) => !w.draining);
  const sum = (f: (m: MasterView) => number) => fresh.reduce((s, m) => s + f(m), 0);
  return {
    version: options.version,
    nowMs,
    workers: farmWorkers,
    masters: [...masters],
    farm: {
      workers: farmWorkers.length,
      drained: farmWorkers.length - active.length,
      slots: active.reduce((s, w) => s + w.slots, 0),
      slotsBusy: farmWorkers.reduce((s, w) => s + w.busy, 0),
      masters: countMasters(masters),
      jobsInFlight: sum((m) => m.build!.jobsInFlight),
      jobsPerSecond: sum((m) => m.jobsPerSecond ?? 0),
      jobsFinished: sum((m) => m.build!.jobsFinished),
      attemptsFailed: sum((m) => m.build!.workers.reduce((s, w) => s + w.failed, 0)),
      jobsFailed: sum((m) => m.build!.jobsFailed),
    },
  };
}
