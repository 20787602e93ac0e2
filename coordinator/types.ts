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

function fail(field: string, detail: string): never {
  throw new InvalidWorkerInfoError(`Cannot accept worker info: ${field} ${detail}`);
}

function checkString(value: unknown, field: string, charsMax: number, pattern: RegExp): string {
  if (typeof value !== "string") fail(field, "is not a string");
  if (value.length === 0 || value.length > charsMax) {
    fail(field, `has length ${value.length}, want 1..${charsMax}`);
  }
  if (!pattern.test(value)) fail(field, "has characters outside the allowed set");
  return value;
}

function checkInteger(value: unknown, field: string, max: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0 || value > max) {
    fail(field, `is not an integer in 0..${max}`);
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
