/**
 * The worker record the coordinator keeps, and validation of what workers
 * send to register.
 *
 * @module
 */

import { ADDRESS_CHARS_MAX, parseHostPort } from "../common/address.ts";

/** One live worker, as listed by the coordinator. */
export interface WorkerInfo {
  /** Stable per worker process, e.g. random hex. */
  id: string;
  /** "host:port" the worker's RPC listens on, as the worker announces it. */
  address: string;
  hostname: string;
  slots: number;
  jobsRunning: number;
  /** 1-minute load average. */
  load: number;
  version: string;
  /** When the coordinator last heard from the worker, epoch ms. */
  lastContactMs: number;
  /** The worker takes no new jobs. */
  draining: boolean;
}

/** What a worker sends with each "register" call. */
export interface RegisterParams extends Omit<WorkerInfo, "lastContactMs" | "draining"> {
  /** The worker was told to drain (kept across coordinator restarts). */
  draining?: boolean;
}

/** The coordinator's reply to "register". */
export interface RegisterReply {
  /** The coordinator's version. */
  version: string;
  /** Whether the coordinator holds this worker as draining. */
  draining: boolean;
}

/** The list pushed to masters ("workers" notification) and returned by "subscribe". */
export interface WorkerList {
  /** Increases with every change, per coordinator process. */
  seq: number;
  workers: WorkerInfo[];
}

/** Most workers a coordinator lists (and a master accepts) by default. */
export const WORKERS_MAX_DEFAULT = 1024;
export const WORKER_ID_CHARS_MAX = 64;
export const HOSTNAME_CHARS_MAX = 255;
export const VERSION_CHARS_MAX = 64;
export const SLOTS_MAX = 4096;
export const JOBS_RUNNING_MAX = 65536;
export const LOAD_MAX = 1e6;

const WORKER_ID_PATTERN = /^[A-Za-z0-9_.-]+$/;
// Printable ASCII without controls: what ends up on the status page and logs.
const PRINTABLE_PATTERN = /^[\x20-\x7e]*$/;

/** Error for register params that fail validation. */
export class InvalidWorkerInfoError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "InvalidWorkerInfoError";
  }
}

function fail(field: string, detail: string, what = "worker info"): never {
  throw new InvalidWorkerInfoError(`Cannot accept ${what}: ${field} ${detail}`);
}

function checkString(
  value: unknown,
  field: string,
  charsMax: number,
  pattern: RegExp,
  what?: string,
): string {
  if (typeof value !== "string") fail(field, "is not a string", what);
  if (value.length === 0 || value.length > charsMax) {
    fail(field, `has length ${value.length}, want 1..${charsMax}`, what);
  }
  if (!pattern.test(value)) fail(field, "has characters outside the allowed set", what);
  return value;
}

function checkInteger(value: unknown, field: string, max: number, what?: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0 || value > max) {
    fail(field, `is not an integer in 0..${max}`, what);
  }
  return value;
}

/**
 * Checks the params of a "register" call and returns a clean copy (unknown
 * fields dropped).
 *
 * @throws {InvalidWorkerInfoError} naming the first bad field.
 */
export function validateRegisterParams(params: unknown): RegisterParams {
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    fail("params", "is not an object");
  }
  const p = params as Record<string, unknown>;
  const id = checkString(p.id, "id", WORKER_ID_CHARS_MAX, WORKER_ID_PATTERN);
  const address = checkString(p.address, "address", ADDRESS_CHARS_MAX, PRINTABLE_PATTERN);
  try {
    parseHostPort(address);
  } catch {
    fail("address", "is not host:port");
  }
  const hostname = checkString(p.hostname, "hostname", HOSTNAME_CHARS_MAX, PRINTABLE_PATTERN);
  const slots = checkInteger(p.slots, "slots", SLOTS_MAX);
  const jobsRunning = checkInteger(p.jobsRunning, "jobsRunning", JOBS_RUNNING_MAX);
  const load = p.load;
  if (typeof load !== "number" || !Number.isFinite(load) || load < 0 || load > LOAD_MAX) {
    fail("load", `is not a number in 0..${LOAD_MAX}`);
  }
  const version = checkString(p.version, "version", VERSION_CHARS_MAX, PRINTABLE_PATTERN);
  if (p.draining !== undefined && typeof p.draining !== "boolean") {
    fail("draining", "is not a boolean");
  }
  return {
    id,
    address,
    hostname,
    slots,
    jobsRunning,
    load,
    version,
    draining: p.draining === true,
  };
}

/**
 * Checks a worker list received from a coordinator (masters do not trust the
 * shape blindly).
 *
 * @throws {InvalidWorkerInfoError} on the first bad entry.
 */
export function validateWorkerList(value: unknown, workersMax: number): WorkerList {
  if (typeof value !== "object" || value === null) fail("list", "is not an object");
  const v = value as Record<string, unknown>;
  const seq = checkInteger(v.seq, "seq", Number.MAX_SAFE_INTEGER);
  if (!Array.isArray(v.workers) || v.workers.length > workersMax) {
    fail("workers", `is not an array of at most ${workersMax}`);
  }
  const workers = v.workers.map((entry: unknown): WorkerInfo => {
    const info = validateRegisterParams(entry);
    const e = entry as Record<string, unknown>;
    const lastContactMs = checkInteger(e.lastContactMs, "lastContactMs", Number.MAX_SAFE_INTEGER);
    return { ...info, lastContactMs, draining: info.draining === true };
  });
  return { seq, workers };
}

/** Most characters of a master's root (a path) or status URL. */
export const ROOT_CHARS_MAX = 4096;
export const URL_CHARS_MAX = 2048;
/** Most of one master's in-flight jobs listed in a report. */
export const REPORT_JOBS_MAX = 64;
/** Most characters of a job's command line in a report. */
export const COMMAND_CHARS_MAX = 200;
const COUNT_MAX = Number.MAX_SAFE_INTEGER;
// Any text without control characters: paths may be UTF-8.
// deno-lint-ignore no-control-regex
const TEXT_PATTERN = /^[^\x00-\x1f\x7f]*$/u;
const URL_PATTERN = /^https?:\/\/[\x21-\x7e]+$/;

/** Who a master is: sent with "subscribe" (optional) and with each "report". */
export interface MasterAnnouncement {
  /** The master process's id (Master.masterId). */
  id: string;
  /** The build tree it serves. */
  root: string;
  hostname: string;
  version: string;
  /** Its status page, when it serves one (on its own host's loopback by default). */
  statusUrl?: string;
}

/** One worker as one master sees it. */
export interface MasterWorkerReport {
  address: string;
  /** This master's jobs running there now. */
  running: number;
  done: number;
  /** Failed attempts there (retried elsewhere or run locally). */
  failed: number;
  /** How long the worker has had at least one of this master's jobs without a break, ms; 0 when idle. */
  busyMs: number;
}

/** One job in flight on a master (where it runs is not known to the report). */
export interface MasterJobReport {
  /** The command, shortened to {@linkcode COMMAND_CHARS_MAX} characters. */
  command: string;
  elapsedMs: number;
}

/** A master's build as it reports it to the coordinator, about once a second. */
export interface MasterBuild {
  /** Jobs the master holds now: on workers, waiting for a slot or running locally. */
  jobsInFlight: number;
  /** Of those, on workers. */
  jobsOnWorkers: number;
  /** Jobs finished since the master started, whatever their exit status. */
  jobsFinished: number;
  /** Jobs that ran nowhere (no worker, local fallback off). */
  jobsFailed: number;
  /** Finished jobs whose command exited non-zero (compile errors). */
  jobsExitNonZero: number;
  jobsRemote: number;
  jobsLocal: number;
  retries: number;
  /** Bytes of results fetched from workers. */
  bytesFetched: number;
  workers: MasterWorkerReport[];
  /** The longest-running jobs in flight, longest first. */
  running: MasterJobReport[];
}

/** The params of "report". */
export interface MasterReport {
  master: MasterAnnouncement;
  build: MasterBuild;
}

/** The coordinator's reply to "report". */
export interface ReportReply {
  version: string;
  /** The coordinator's status page: port, and host unless it listens on every address. */
  statusPage?: { hostname: string | null; port: number };
}

const MASTER = "master report";

function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    fail(field, "is not an object", MASTER);
  }
  return value as Record<string, unknown>;
}

/**
 * Checks a master's announcement and returns a clean copy.
 *
 * @throws {InvalidWorkerInfoError} naming the first bad field.
 */
export function validateMasterAnnouncement(value: unknown): MasterAnnouncement {
  const v = object(value, "master");
  const clean: MasterAnnouncement = {
    id: checkString(v.id, "master.id", WORKER_ID_CHARS_MAX, WORKER_ID_PATTERN, MASTER),
    root: checkString(v.root, "master.root", ROOT_CHARS_MAX, TEXT_PATTERN, MASTER),
    hostname: checkString(
      v.hostname,
      "master.hostname",
      HOSTNAME_CHARS_MAX,
      PRINTABLE_PATTERN,
      MASTER,
    ),
    version: checkString(v.version, "master.version", VERSION_CHARS_MAX, PRINTABLE_PATTERN, MASTER),
  };
  if (v.statusUrl !== undefined) {
    clean.statusUrl = checkString(
      v.statusUrl,
      "master.statusUrl",
      URL_CHARS_MAX,
      URL_PATTERN,
      MASTER,
    );
  }
  return clean;
}

/**
 * Checks a "report" call's params and returns a clean copy (unknown fields
 * dropped; at most `workersMax` workers and {@linkcode REPORT_JOBS_MAX} jobs).
 *
 * @throws {InvalidWorkerInfoError} naming the first bad field.
 */
export function validateMasterReport(value: unknown, workersMax: number): MasterReport {
  const v = object(value, "report");
  const master = validateMasterAnnouncement(v.master);
  const b = object(v.build, "build");
  const count = (field: string) => checkInteger(b[field], `build.${field}`, COUNT_MAX, MASTER);
  if (!Array.isArray(b.workers) || b.workers.length > workersMax) {
    fail("build.workers", `is not an array of at most ${workersMax}`, MASTER);
  }
  const workers = b.workers.map((entry: unknown): MasterWorkerReport => {
    const w = object(entry, "build.workers[]");
    const address = checkString(
      w.address,
      "worker address",
      ADDRESS_CHARS_MAX,
      PRINTABLE_PATTERN,
      MASTER,
    );
    return {
      address,
      running: checkInteger(w.running, "worker running", JOBS_RUNNING_MAX, MASTER),
      done: checkInteger(w.done, "worker done", COUNT_MAX, MASTER),
      failed: checkInteger(w.failed, "worker failed", COUNT_MAX, MASTER),
      busyMs: checkInteger(w.busyMs, "worker busyMs", COUNT_MAX, MASTER),
    };
  });
  if (!Array.isArray(b.running) || b.running.length > REPORT_JOBS_MAX) {
    fail("build.running", `is not an array of at most ${REPORT_JOBS_MAX}`, MASTER);
  }
  const running = b.running.map((entry: unknown): MasterJobReport => {
    const j = object(entry, "build.running[]");
    return {
      command: checkString(j.command, "job command", COMMAND_CHARS_MAX, TEXT_PATTERN, MASTER),
      elapsedMs: checkInteger(j.elapsedMs, "job elapsedMs", COUNT_MAX, MASTER),
    };
  });
  return {
    master,
    build: {
      jobsInFlight: count("jobsInFlight"),
      jobsOnWorkers: count("jobsOnWorkers"),
      jobsFinished: count("jobsFinished"),
      jobsFailed: count("jobsFailed"),
      jobsExitNonZero: count("jobsExitNonZero"),
      jobsRemote: count("jobsRemote"),
      jobsLocal: count("jobsLocal"),
      retries: count("retries"),
      bytesFetched: count("bytesFetched"),
      workers,
      running,
    },
  };
}
