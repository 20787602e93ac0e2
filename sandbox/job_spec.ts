/**
 * What a sandboxed job is: its spec and options, its outcome, the limits
 * and their defaults, and the one validation of both (before anything runs).
 *
 * @module
 */
import type { NetnsPool } from "./netns_pool.ts";
import { normalizePath } from "../common/paths.ts";
import { SandboxError } from "./errors.ts";
import { RESULT_ENTRIES_MAX } from "./result_set.ts";

/** The command to run and its limits. */
export interface JobSpec {
  argv: string[];
  /** The job's working directory on the master (absolute). */
  cwd: string;
  /** The job's whole environment, passed on exactly. */
  env: Record<string, string>;
  /**
   * Fed to the job's stdin: bytes, or chunks as they arrive (a stream that
   * need not end before the job does); without it stdin is /dev/null.
   */
  stdin?: Uint8Array | AsyncIterable<Uint8Array>;
  /** Wall-clock limit; the whole process tree is killed after it. */
  timeoutMs: number;
  /** Address-space limit of each process (RLIMIT_AS). */
  memoryBytesMax?: number;
  /** Processes (and threads) of the whole job; default {@linkcode PROCESSES_MAX_DEFAULT}. */
  processesMax?: number;
  /**
   * Limit `disk-bytes`: bytes of the worker's disk the job's writable layer
   * may take, as allocated (file data, directories, symlinks, extended
   * attribute blocks; a hard-linked file once; a sparse file's holes not).
   * Default: no limit.
   *
   * The writable layer's limits (this one, `resultBytesMax`, `filesMax` and
   * paths under 4096 bytes) are measured by the launcher while the job runs
   * (every 0.5 s or more, and at once when the disk's used blocks or inodes
   * grew by more than the job has left) and exactly once it ended; past one,
   * the job is killed or its results refused (`killedBy: "disk"`, the reason
   * naming the limit).
   */
  diskBytesMax?: number;
  /**
   * Limit `result-bytes`: bytes of the files (and symlinks) in the writable
   * layer by apparent size (holes count in full, every hard link as a file of
   * its own): what the worker's store holds and the master receives. No
   * single file grows past it (RLIMIT_FSIZE is one byte more: the writer gets
   * SIGXFSZ). Default: {@linkcode RESULT_BYTES_MAX_DEFAULT} or `diskBytesMax`
   * if lower.
   */
  resultBytesMax?: number;
  /**
   * Limit `files`: entries (files, directories, links, deletions) the job may
   * make in its writable layer, and inodes in its /tmp (each).
   * Default {@linkcode FILES_MAX_DEFAULT}.
   */
  filesMax?: number;
  /**
   * Limit `tmp-bytes`: the size of the job's /tmp, a tmpfs (in memory).
   * Default: {@linkcode TMP_BYTES_MAX_DEFAULT} or `diskBytesMax` if lower.
   */
  tmpBytesMax?: number;
  /** Default 0o022. */
  umask?: number;
}

/** Where the job's view comes from and where its scratch space goes. */
export interface SandboxOptions {
  /** The view of the master's `/` (a FUSE mirror in production; any directory tree works). */
  lowerRoot: string;
  /** The master's writable root (absolute master path, not `/`). */
  writableRoot: string;
  /**
   * Scratch directory on local disk, created (it must not exist) and removed
   * by runJob. Must not lie inside `<lowerRoot>/<writableRoot>`.
   */
  jobDir: string;
  /** Default 65534 (nobody). */
  uid?: number;
  /** Default 65534 (nogroup). */
  gid?: number;
  /** Where the compiled launcher is cached (root-only). */
  launcherCacheDir: string;
  /**
   * The cgroup v1 pids hierarchy directory under which each job gets its own
   * cgroup; default `PIDS_CGROUP_ROOT` (job_cgroup.ts). `null`, or a directory that
   * cannot be written, falls back to RLIMIT_NPROC (which counts every process
   * of the uid, across concurrent jobs).
   */
  pidsCgroupRoot?: string | null;
  /** Bytes forwarded per output stream before it is truncated; default {@linkcode OUTPUT_BYTES_MAX}. */
  outputBytesMax?: number;
  /**
   * `none` (the default): the job runs in a network namespace of its own
   * holding only a loopback interface, so it reaches no host, no port of the
   * worker's and none of its sockets (nor sees them in `/proc/net`). `host`:
   * the job shares the worker's network.
   */
  network?: "none" | "host";
  /**
   * With `network` `none`: where the job's namespace comes from, one that no
   * running job holds, reused (sandbox/netns_pool.ts); absent or full: a new
   * one for this job.
   */
  netnsPool?: NetnsPool;
}

/** How a job ended. */
export interface JobOutcome {
  /** The job's exit code, or 128+N when killed by signal N; 126/127 when it could not be executed. */
  exitCode: number;
  /**
   * Set when the sandbox ended the job: `timeout` (wall clock), `processes`
   * (the process cap was hit: the job is killed at the first refused fork),
   * `signal` (cancelled through the AbortSignal), `disk` (its writable layer
   * passed a limit: `diskBytesMax`, `resultBytesMax`, `filesMax` or the path
   * length; its results are dropped). `memory` is reserved: with
   * RLIMIT_AS a refused allocation is not attributable from outside.
   */
  killedBy?: "timeout" | "memory" | "processes" | "signal" | "disk";
  /** Human-readable detail: signal name, exec failure, truncated output. */
  reason?: string;
  /** Launcher start to the job's exec, measured inside the launcher. */
  launcherMs?: number;
  /**
   * CPU (user and system) of the job's processes reaped by the time it ended,
   * measured by the launcher's init: not the launcher's own, nor the worker's.
   */
  jobCpuMs?: number;
  /**
   * The first entry the job left in its private /tmp (thrown away with the
   * sandbox): an output there would be lost.
   */
  leftInTmp?: string;
}

/** Callbacks and cancellation of {@linkcode runJob}. */
export interface RunJobOptions extends SandboxOptions {
  onStdout?(bytes: Uint8Array): void | Promise<void>;
  onStderr?(bytes: Uint8Array): void | Promise<void>;
  /** Aborting kills the whole job tree; the outcome says `killedBy: "signal"`. */
  signal?: AbortSignal;
  /**
   * Called after the job ended by itself (not when the sandbox killed it),
   * before the job dir is removed: collect the result set here, passing
   * `lowerDir` on to {@linkcode collectResultSet}.
   */
  onUpper?(upperDir: string, lowerDir: string, outcome: JobOutcome): Promise<void>;
  /** Told the job's pids cgroup directory before the job starts; `null`: none. */
  onCgroup?(dir: string | null): Promise<void>;
  /**
   * Given, the clean-up after the job (removing its directory and cgroup) is
   * handed over here instead of awaited, so that the outcome returns sooner;
   * the promise rejects with a {@linkcode SandboxError} if it fails.
   */
  deferCleanup?(cleanup: Promise<void>): void;
}

/** Default cap on processes per job. */
export const PROCESSES_MAX_DEFAULT = 1024;
/** Default per-stream output cap. */
export const OUTPUT_BYTES_MAX = 64 * 1024 * 1024;
/** After SIGTERM to the launcher (which kills the tree and waits), SIGKILL after this. */
export const KILL_GRACE_MS = 5_000;
/** After the launcher exited, how long output pipes may stay open. */
export const DRAIN_GRACE_MS = 5_000;
/** Default of {@linkcode JobSpec.resultBytesMax}. */
export const RESULT_BYTES_MAX_DEFAULT = 4 * 2 ** 30;
/** Default of {@linkcode JobSpec.tmpBytesMax}. */
export const TMP_BYTES_MAX_DEFAULT = 2 ** 30;
/** Default of {@linkcode JobSpec.filesMax}: as many as a result set may hold. */
export const FILES_MAX_DEFAULT = RESULT_ENTRIES_MAX;

/** The limits of a job, defaults applied. */
export function limitsOf(
  spec: JobSpec,
): { resultBytesMax: number; filesMax: number; tmpBytesMax: number } {
  const disk = spec.diskBytesMax ?? Infinity;
  return {
    resultBytesMax: spec.resultBytesMax ?? Math.min(disk, RESULT_BYTES_MAX_DEFAULT),
    filesMax: spec.filesMax ?? FILES_MAX_DEFAULT,
    tmpBytesMax: spec.tmpBytesMax ?? Math.min(disk, TMP_BYTES_MAX_DEFAULT),
  };
}

/** Refuses a spec or options the sandbox cannot run as given, naming what is wrong. */
export function validate(spec: JobSpec, options: SandboxOptions): void {
  const fail = (what: string) => {
    throw new SandboxError(`Cannot run the job: ${what}`);
  };
  if (spec.argv.length === 0 || spec.argv[0] === "") fail("empty argv");
  if (!isAbsolute(spec.cwd)) fail(`cwd is not absolute: ${spec.cwd}`);
  if (!(spec.timeoutMs > 0) || !Number.isFinite(spec.timeoutMs)) {
    fail(`bad timeoutMs: ${spec.timeoutMs}`);
  }
  for (
    const [name, value] of [
      ["memoryBytesMax", spec.memoryBytesMax],
      ["processesMax", spec.processesMax],
      ["diskBytesMax", spec.diskBytesMax],
      ["resultBytesMax", spec.resultBytesMax],
      ["filesMax", spec.filesMax],
      ["tmpBytesMax", spec.tmpBytesMax],
    ] as const
  ) {
    if (value !== undefined && !(Number.isSafeInteger(value) && value > 0)) {
      fail(`bad ${name}: ${value}`);
    }
  }
  if (
    spec.umask !== undefined &&
    !(Number.isInteger(spec.umask) && spec.umask >= 0 && spec.umask <= 0o777)
  ) {
    fail(`bad umask: ${spec.umask}`);
  }
  for (const key of Object.keys(spec.env)) {
    if (key === "" || key.includes("=")) fail(`bad environment variable name: ${key}`);
  }
  const w = options.writableRoot;
  if (!isAbsolute(w) || w === "/" || w !== normalizePath(w)) {
    fail(`writable root must be a normalised absolute path other than /: ${w}`);
  }
  for (const dir of ["/proc", "/dev", "/sys"]) {
    if (w === dir || w.startsWith(`${dir}/`)) fail(`writable root lies in ${dir}: ${w}`);
  }
  if (!isAbsolute(options.lowerRoot)) fail(`lower root is not absolute: ${options.lowerRoot}`);
  if (options.network !== undefined && options.network !== "none" && options.network !== "host") {
    fail(`bad network: ${options.network}`);
  }
  if (!isAbsolute(options.jobDir) || normalizePath(options.jobDir) === "/") {
    fail(`bad job dir: ${options.jobDir}`);
  }
  const lowerDir = normalizePath(joinAbsolute(options.lowerRoot, w));
  const jobDir = normalizePath(options.jobDir);
  if (jobDir === lowerDir || jobDir.startsWith(`${lowerDir}/`)) {
    fail(`job dir ${jobDir} lies inside the writable root's lower layer ${lowerDir}`);
  }
  for (const id of [options.uid, options.gid]) {
    if (id !== undefined && !(Number.isInteger(id) && id >= 0 && id < 2 ** 32 - 1)) {
      fail(`bad uid or gid: ${id}`);
    }
  }
}

/** `path` (absolute) below `root`, with one slash between them. */
export function joinAbsolute(root: string, path: string): string {
  return `${root.replace(/\/+$/, "")}/${path.replace(/^\/+/, "")}`;
}

function isAbsolute(p: string): boolean {
  return p.startsWith("/") && !p.includes("\0");
}
