/**
 * The coordinator's Prometheus metrics: gauges read from the registry when
 * scraped, counters it increments.
 *
 * @module
 */
import type { Counter, Registry } from "../common/metrics.ts";
import type { FarmStatus } from "./farm_status.ts";
import type { WorkerInfo } from "./types.ts";

/** The counters the registry increments. */
export interface CoordinatorCounters {
  registrations: Counter;
  dropped: Counter;
  reports: Counter;
  pushes: Counter;
  actions: Counter;
}

/** What the gauges read, when scraped. */
export interface CoordinatorView {
  workers(): WorkerInfo[];
  status(): FarmStatus;
  /** The masters (counted only). */
  masters(): readonly unknown[];
}

/** Registers the coordinator's metrics on `m`; returns its counters. */
export function registerCoordinatorMetrics(
  m: Registry,
  view: CoordinatorView,
): CoordinatorCounters {
  const workers = view.workers;
  m.collect("termite_coordinator_workers", "Workers listed.", "gauge", () => workers().length);
  m.collect(
    "termite_coordinator_workers_draining",
    "Workers listed that take no new jobs.",
    "gauge",
    () => workers().filter((w) => w.draining).length,
  );
  m.collect(
    "termite_coordinator_slots",
    "Job slots of the workers that take jobs.",
    "gauge",
    () => workers().filter((w) => !w.draining).reduce((s, w) => s + w.slots, 0),
  );
  m.collect(
    "termite_coordinator_slots_busy",
    "Job slots busy, as the workers register them (every 5 s) or the masters report them.",
    "gauge",
    () => view.status().farm.slotsBusy,
  );
  m.collect(
    "termite_coordinator_worker_slots_busy",
    "Job slots busy on each worker.",
    "gauge",
    () => view.status().workers.map((w) => [{ worker: w.address }, w.busy] as const),
    { labelNames: ["worker"] },
  );
  m.collect(
    "termite_coordinator_masters",
    "Masters connected (watching the worker list or reporting).",
    "gauge",
    () => view.masters().length,
  );
  m.collect(
    "termite_coordinator_jobs_in_flight",
    "Jobs the reporting masters hold: on workers, waiting for a slot or running locally.",
    "gauge",
    () => view.status().farm.jobsInFlight,
  );
  return {
    registrations: m.counter(
      "termite_coordinator_registrations_total",
      "Worker registrations accepted (each worker registers every 5 s).",
    ),
    dropped: m.counter("termite_coordinator_workers_dropped_total", "Workers dropped.", {
      labelNames: ["reason"],
    }),
    reports: m.counter("termite_coordinator_reports_total", "Master reports accepted."),
    pushes: m.counter(
      "termite_coordinator_list_pushes_total",
      "Worker lists pushed to watching masters.",
    ),
    actions: m.counter(
      "termite_coordinator_admin_actions_total",
      "Drain and stop requests from the status page, by result.",
      { labelNames: ["action", "result"] },
    ),
  };
}
