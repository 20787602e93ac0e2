/**
 * RPC methods between master and worker (over one authenticated connection,
 * opened by the master; both sides serve calls on it).
 */
import type { FileAttr, ResultSet } from "./types.ts";

export const VERSION = "0.1.0";

/** Master → worker. */
export const WorkerMethods = {
  /** Opens (or reuses) the mirror of this master: `MirrorOpenParams` → `MirrorOpenReply`. */
  mirrorOpen: "mirror.open",
  /** Runs a job: `JobParams` → `JobReply`; streams `JobChunk`s. */
  jobRun: "job.run",
  /** Notify: stdin bytes for a running job (`JobStdinParams`). */
  jobStdin: "job.stdin",
  /** Streams a blob of the worker's store (`{ hash }` → `{ size }`, chunks are bytes). */
  blobGet: "blob.get",
  /** Pushes attribute changes outside of a job (`{ updates, reset }`). */
  attrsPush: "attrs.push",
} as const;

/** Worker → master. */
export const MasterMethods = {
  /** `{ path, withHash }` → `FileAttr`. */
  fsAttr: "fs.attr",
  /** `{ path }` → chunks of `FileAttr[]`, reply `{ count }`. */
  fsDir: "fs.dir",
  /**
   * `BlobGetParams` → chunks of bytes, reply `BlobGetReply`: `{ size }`, or
   * (no chunks) `{ size: 0, peer }`, the address of a worker to fetch it from.
   */
  blobGet: "blob.get",
  /**
   * `{ tool }` → the learned warm set of a tool: chunks of listings and file
   * attributes (`WarmChunk` in master/warm_set.ts), reply `{ dirs, files, bytes }`.
   */
  fsWarm: "fs.warm",
} as const;

/** A worker's `blob.get` to its master. */
export interface BlobGetParams {
  hash: unknown;
  /** The worker may be sent to a peer worker holding the blob (worker/peer_blobs.ts). */
  peers?: unknown;
  /** The peer the worker was sent to for this blob and could not get it from. */
  failed?: unknown;
}

/** The master's answer to `blob.get`: the bytes came as chunks, or fetch them from `peer`. */
export interface BlobGetReply {
  size: number;
  /** "host:port" of a worker holding the blob; no chunks were sent. */
  peer?: string;
}

export interface MirrorOpenParams {
  masterId: string;
  writableRoot: string;
  /** Slots the master would like reserved. */
  slots: number;
  /**
   * Tool keys (at most {@link WARM_OPEN_TOOLS_MAX}) whose learned warm sets
   * the mirror asks for at once (`fs.warm`), before their first job.
   */
  warm?: string[];
}

/** Tool keys a `mirror.open` may name for warming at most. */
export const WARM_OPEN_TOOLS_MAX = 4;
/** A tool key's length at most. */
export const WARM_TOOL_KEY_MAX = 256;

export interface MirrorOpenReply {
  /** Slots reserved for this master (0 = none free now). */
  slots: number;
  workerId: string;
}

export interface JobParams {
  jobId: string;
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  /** Whether stdin arrives through `job.stdin` notifications. */
  stdin: boolean;
  timeoutMs: number;
  /** Attribute changes the mirror must apply before the job starts. */
  updates: FileAttr[];
  reset: boolean;
  /** Heartbeat interval the master wants (ms); the worker clamps it to [250, JOB_HEARTBEAT_MS]. */
  heartbeatMs?: number;
  /** Record what the job reads (for the master's action cache); see `JobReply.reads`. */
  record?: boolean;
  /** The job's tool key: a mirror asks once for its learned warm set (`fs.warm`). */
  warm?: string;
}

/** Whether `params` has the shape of {@linkcode JobParams}' command (the one check of it). */
export function isJobParams(params: unknown): params is JobParams {
  const p = params as JobParams;
  return Array.isArray(p?.argv) && p.argv.length !== 0 &&
    !p.argv.some((a) => typeof a !== "string") && typeof p.cwd === "string" &&
    typeof p.env === "object" && typeof p.jobId === "string";
}

/**
 * Streamed during a job: output, or a heartbeat (`{ hb: 1 }`). After the job,
 * a result set too large for the reply's frame comes as parts (`rs`, entries
 * to add to the reply's set) and batches of inline contents (`blobs`); so
 * does a read set (`reads`, with the hashes of those entries: see
 * common/read_set_parts.ts).
 */
export type JobChunk =
  | { fd: 1 | 2; data: Uint8Array }
  | { hb: 1 }
  | { rs: Partial<ResultSet> }
  | { blobs: Record<string, Uint8Array> }
  | ReadSetPart;

/** Entries of a read set sent ahead of the reply, and the hashes the worker held for them. */
export interface ReadSetPart {
  reads: [string, ReadKind[]][];
  hashes: Record<string, string>;
}

/** A reply (or part) is kept below this many bytes; a frame holds 1 MiB. */
export const RESULT_PART_BYTES = 256 * 1024;

export interface JobReply {
  exitCode: number;
  killedBy?: string;
  reason?: string;
  resultSet: ResultSet;
  /** Contents of small result files, by hash (the rest via `blob.get`). */
  inline?: Record<string, Uint8Array>;
  /** Milliseconds spent: in the sandbox, collecting results. */
  timings?: Record<string, number>;
  /** The mirror's counters after the job (lookups, lookupsWaited, fetches...). */
  mirror?: Record<string, number>;
  /** What the job looked at, when the master asked (`JobParams.record`). */
  reads?: ReadSet;
}

/**
 * How a job looked at a path: `r` its content (open, exec), `s` its
 * attributes (stat, access; symlinks followed), `l` the name itself (lstat,
 * readlink: a symlink's target), `d` the directory's listing.
 */
export type ReadKind = "r" | "s" | "l" | "d";

/** A job's read set as its worker recorded it; untrusted (a worker may lie). */
export type ReadSet =
  | {
    complete: true;
    entries: [string, ReadKind[]][];
    /** Whether the job read its stdin (fd 0, or a copy of it). */
    stdin?: boolean;
    /** Content hashes the worker's mirror held for files read (those it can name). */
    hashes?: Record<string, string>;
    /** How many {@linkcode ReadSetPart}s came ahead of the reply (their entries first). */
    parts?: number;
  }
  | { complete: false; why: string };

export interface JobStdinParams {
  jobId: string;
  /** Empty = end of input. */
  data: Uint8Array;
}

/** A worker sends a heartbeat chunk this often while a job runs. */
export const JOB_HEARTBEAT_MS = 5_000;
/** The master gives up on a job whose worker was silent this long. */
export const JOB_SILENCE_MS_MAX = 30_000;
