/**
 * Runs one job "as if on the master" through the C launcher: chrooted into
 * a read-only view of the master's file system (`lowerRoot`), as nobody, with
 * the writable root writable through a per-job overlay whose upper layer is
 * then turned into a result set.
 *
 * @module
 */
import { SandboxError } from "./errors.ts";
import { ensureLauncher } from "./launcher.ts";
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
   * cgroup; default {@linkcode PIDS_CGROUP_ROOT}. `null`, or a directory that
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
/** Where per-job pids cgroups are created. */
export const PIDS_CGROUP_ROOT = "/sys/fs/cgroup/pids/termite";
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
/** How long a job's cgroup may stay busy after the job before removal is given up. */
const CGROUP_REMOVE_MS = 2_000;

const SIGNAL_NAMES: Record<number, string> = {
  1: "SIGHUP",
  2: "SIGINT",
  3: "SIGQUIT",
  4: "SIGILL",
  5: "SIGTRAP",
  6: "SIGABRT",
  7: "SIGBUS",
  8: "SIGFPE",
  9: "SIGKILL",
  10: "SIGUSR1",
  11: "SIGSEGV",
  12: "SIGUSR2",
  13: "SIGPIPE",
  14: "SIGALRM",
  15: "SIGTERM",
  24: "SIGXCPU",
  25: "SIGXFSZ",
};

const encoder = new TextEncoder();

/**
 * Runs `spec` in a fresh sandbox and returns its outcome. Throws
 * {@linkcode SandboxError} when the sandbox itself fails (launcher build,
 * mounts, chroot, privileges, working directory) or cannot be cleaned up.
 */
export async function runJob(spec: JobSpec, options: RunJobOptions): Promise<JobOutcome> {
  validate(spec, options);
  if (options.signal?.aborted) {
    return { exitCode: 130, killedBy: "signal", reason: "Cancelled before the job started" };
  }
  const launcher = await ensureLauncher(options.launcherCacheDir);
  const jobDir = options.jobDir;
  const lowerDir = joinPath(options.lowerRoot, options.writableRoot);
  try {
    await Deno.mkdir(parentOf(jobDir), { recursive: true });
    await Deno.mkdir(jobDir, { mode: 0o700 });
  } catch (err) {
    throw new SandboxError(`Cannot create the job dir: ${jobDir}`, { cause: err });
  }

  let cgroup: string | null = null;
  let failure: unknown = undefined;
  let outcome: JobOutcome | undefined;
  // Whether the launcher measured the whole writable layer after the job,
  // within every limit (paths included): then it is safe to walk from here.
  let measured = false;
  try {
    const processesMax = spec.processesMax ?? PROCESSES_MAX_DEFAULT;
    cgroup = await createPidsCgroup(options.pidsCgroupRoot, processesMax);
    const args = [
      "--job-dir",
      jobDir,
      "--lower-root",
      options.lowerRoot,
      "--writable-root",
      options.writableRoot,
      "--cwd",
      spec.cwd,
      "--uid",
      String(options.uid ?? 65534),
      "--gid",
      String(options.gid ?? 65534),
      "--umask",
      (spec.umask ?? 0o022).toString(8),
    ];
    if (spec.memoryBytesMax !== undefined) args.push("--memory-bytes", String(spec.memoryBytesMax));
    const limits = limitsOf(spec);
    args.push("--file-bytes", String(limits.resultBytesMax + 1));
    args.push("--result-bytes", String(limits.resultBytesMax));
    args.push("--files", String(limits.filesMax));
    args.push("--tmp-bytes", String(limits.tmpBytesMax), "--tmp-files", String(limits.filesMax));
    if (spec.diskBytesMax !== undefined) args.push("--disk-bytes", String(spec.diskBytesMax));
    if (cgroup !== null) args.push("--cgroup", cgroup);
    else args.push("--nproc", String(processesMax));
    args.push("--network", options.network ?? "none");
    // The launcher dies with this process: a worker killed hard leaves no job running.
    args.push("--parent-pid", String(Deno.pid));
    args.push("--", ...spec.argv);

    ({ outcome, measured } = await supervise(launcher, args, spec, options));
    if (outcome.killedBy === undefined && options.onUpper) {
      await options.onUpper(`${jobDir}/upper`, lowerDir, outcome);
    }
  } catch (err) {
    failure = err;
  }

  // Cleanup: the mounts lived in the job's namespace and are gone with it.
  const cleanup = (async () => {
    const cleanupErrors: unknown[] = [];
    if (cgroup !== null) {
      await removeCgroup(cgroup).catch((err) => cleanupErrors.push(err));
    }
    await removeTree(jobDir, measured).catch((err) => cleanupErrors.push(err));
    if (cleanupErrors.length > 0) {
      throw new SandboxError(`Cannot clean up after the job in ${jobDir}`, {
        cause: cleanupErrors[0],
      });
    }
  })();
  if (options.deferCleanup && failure === undefined) {
    options.deferCleanup(cleanup);
    return outcome!;
  }
  await cleanup.catch((err) => {
    if (failure === undefined) failure = err;
  });
  if (failure !== undefined) throw failure;
  return outcome!;
}

/**
 * Removes a job's directory. A tree the launcher did not measure may be
 * deeper than any recursive removal in this process survives (Deno's
 * `remove` overflowed its stack on 20,000 levels and aborted the worker):
 * `rm` removes it, at any depth.
 */
export async function removeTree(dir: string, measured = false): Promise<void> {
  if (measured) {
    await Deno.remove(dir, { recursive: true });
    return;
  }
  const rm = await new Deno.Command("rm", {
    args: ["-rf", "--one-file-system", "--", dir],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!rm.success) {
    throw new SandboxError(
      `Cannot remove ${dir}: rm exited with ${rm.code}: ${
        new TextDecoder().decode(rm.stderr).slice(0, 500)
      }`,
    );
  }
}

/** The limits of a job, defaults applied. */
function limitsOf(
  spec: JobSpec,
): { resultBytesMax: number; filesMax: number; tmpBytesMax: number } {
  const disk = spec.diskBytesMax ?? Infinity;
  return {
    resultBytesMax: spec.resultBytesMax ?? Math.min(disk, RESULT_BYTES_MAX_DEFAULT),
    filesMax: spec.filesMax ?? FILES_MAX_DEFAULT,
    tmpBytesMax: spec.tmpBytesMax ?? Math.min(disk, TMP_BYTES_MAX_DEFAULT),
  };
}

async function supervise(
  launcher: string,
  args: string[],
  spec: JobSpec,
  options: RunJobOptions,
): Promise<{ outcome: JobOutcome; measured: boolean }> {
  const child = new Deno.Command(launcher, {
    args,
    env: spec.env,
    clearEnv: true,
    cwd: "/",
    stdin: spec.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  let killedBy: JobOutcome["killedBy"];
  let graceTimer: ReturnType<typeof setTimeout> | undefined;
  let sinkError: unknown = undefined;
  const terminate = (why: NonNullable<JobOutcome["killedBy"]>) => {
    if (killedBy !== undefined) return;
    killedBy = why;
    // The launcher kills the init of the job's PID namespace and waits until
    // every process in it is gone; SIGKILL only if that hangs.
    trySignal(child, "SIGTERM");
    graceTimer = setTimeout(() => trySignal(child, "SIGKILL"), KILL_GRACE_MS);
  };
  const timeoutTimer = setTimeout(() => terminate("timeout"), spec.timeoutMs);
  const onAbort = () => terminate("signal");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const onSinkError = (err: unknown) => {
    if (sinkError === undefined) sinkError = err;
    terminate("signal");
  };

  const bytesMax = options.outputBytesMax ?? OUTPUT_BYTES_MAX;
  const stdoutPump = new Pump(child.stdout, "stdout", bytesMax, options.onStdout, onSinkError);
  const stderrPump = new Pump(child.stderr, "stderr", bytesMax, options.onStderr, onSinkError);
  const stdinStop = new AbortController();
  const stdinDone = spec.stdin
    ? feedStdin(child.stdin, spec.stdin, stdinStop.signal)
    : Promise.resolve();

  let status: Deno.CommandStatus;
  try {
    status = await child.status;
  } finally {
    stdinStop.abort();
    clearTimeout(timeoutTimer);
    clearTimeout(graceTimer);
    options.signal?.removeEventListener("abort", onAbort);
  }
  // Every process of the job is gone once the launcher has exited (unless it
  // was SIGKILLed): the pipes reach EOF now. Bound the wait anyway.
  let drainTimer: ReturnType<typeof setTimeout> | undefined;
  const drained = Promise.all([stdoutPump.done, stderrPump.done, stdinDone]);
  const late = await Promise.race([
    drained.then(() => false),
    new Promise<boolean>((resolve) => drainTimer = setTimeout(() => resolve(true), DRAIN_GRACE_MS)),
  ]);
  clearTimeout(drainTimer);
  if (late) {
    await Promise.all([stdoutPump.cancel(), stderrPump.cancel()]);
    await drained;
  }
  if (sinkError !== undefined) throw sinkError;

  const report = await readStatus(options.jobDir);
  const outcome = interpret(report, status, killedBy);
  const notes = [stdoutPump.note, stderrPump.note].filter((n) => n !== undefined);
  // A job that failed on a limit of its own (a full /tmp, a file at its size
  // limit) sees only ENOSPC or SIGXFSZ: say which limit it was.
  const limitNote = outcome.exitCode !== 0 && outcome.killedBy === undefined
    ? ownLimitNote(report, outcome, spec)
    : undefined;
  if (limitNote !== undefined) {
    notes.push(limitNote);
    await options.onStderr?.(encoder.encode(`termite: ${limitNote}\n`));
  }
  if (notes.length > 0) outcome.reason = [outcome.reason, ...notes].filter(Boolean).join("; ");
  return { outcome, measured: report?.walked === true };
}

function ownLimitNote(
  report: StatusReport | null,
  outcome: JobOutcome,
  spec: JobSpec,
): string | undefined {
  const limits = limitsOf(spec);
  if (report?.tmpFull === "bytes") {
    return `the job's /tmp is full: ${limits.tmpBytesMax} bytes at most (limit tmp-bytes)`;
  }
  if (report?.tmpFull === "files") {
    return `the job's /tmp is full: ${limits.filesMax} files at most (limit files)`;
  }
  if (outcome.exitCode === 128 + 25) {
    return `a file reached the job's size limit: ${limits.resultBytesMax} bytes ` +
      `(limit result-bytes; sparse files count by apparent size)`;
  }
  return undefined;
}

function trySignal(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // Already exited.
  }
}

async function feedStdin(
  stream: WritableStream<Uint8Array>,
  input: Uint8Array | AsyncIterable<Uint8Array>,
  stop: AbortSignal,
): Promise<void> {
  const writer = stream.getWriter();
  const stopped = new Promise<"stop">((resolve) => {
    if (stop.aborted) resolve("stop");
    stop.addEventListener("abort", () => resolve("stop"), { once: true });
  });
  try {
    if (input instanceof Uint8Array) {
      await Promise.race([writer.write(input), stopped]);
    } else {
      const it = input[Symbol.asyncIterator]();
      try {
        for (;;) {
          // The job may end while its stdin is still open: stop waiting then.
          const next = await Promise.race([it.next(), stopped]);
          if (next === "stop" || next.done) break;
          await Promise.race([writer.write(next.value), stopped]);
          if (stop.aborted) break;
        }
      } finally {
        it.return?.()?.catch?.(() => {});
      }
    }
    if (stop.aborted) await writer.abort().catch(() => {});
    else await writer.close();
  } catch {
    // The job exited without reading everything.
    await writer.abort().catch(() => {});
  }
}

/** Forwards one output stream to its sink, up to a byte cap, and drains the rest. */
class Pump {
  readonly done: Promise<void>;
  note: string | undefined;
  #reader: ReadableStreamDefaultReader<Uint8Array>;

  constructor(
    stream: ReadableStream<Uint8Array>,
    name: string,
    bytesMax: number,
    sink: ((bytes: Uint8Array) => void | Promise<void>) | undefined,
    onSinkError: (err: unknown) => void,
  ) {
    this.#reader = stream.getReader();
    this.done = this.#run(name, bytesMax, sink, onSinkError);
  }

  async #run(
    name: string,
    bytesMax: number,
    sink: ((bytes: Uint8Array) => void | Promise<void>) | undefined,
    onSinkError: (err: unknown) => void,
  ): Promise<void> {
    let bytes = 0;
    let forwarding = sink !== undefined;
    try {
      for (;;) {
        const { done, value } = await this.#reader.read();
        if (done) break;
        if (!forwarding) continue;
        try {
          if (bytes + value.length <= bytesMax) {
            bytes += value.length;
            await sink!(value);
          } else {
            forwarding = false;
            await sink!(value.subarray(0, bytesMax - bytes));
            this.note = `${name} truncated after ${bytesMax} bytes`;
            await sink!(encoder.encode(`\n[termite: ${this.note}]\n`));
          }
        } catch (err) {
          forwarding = false;
          onSinkError(err);
        }
      }
    } catch {
      // Cancelled.
    } finally {
      this.#reader.releaseLock();
    }
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

interface StatusReport {
  result: string;
  setupNs?: number;
  processes: boolean;
  /** The writable layer's limit passed, and its value. */
  limit?: { name: string; max: number };
  /** The whole writable layer was measured after the job, within its limits. */
  walked: boolean;
  /** The job ended with its /tmp full: of bytes or of inodes. */
  tmpFull?: string;
}

async function readStatus(jobDir: string): Promise<StatusReport | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${jobDir}/status`);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw new SandboxError(`Cannot read the launcher status in ${jobDir}`, { cause: err });
  }
  const lines = text.split("\n").filter((l) => l !== "");
  const report: StatusReport = { result: lines[0] ?? "", processes: false, walked: false };
  for (const line of lines.slice(1)) {
    const [key, value] = splitFirst(line);
    if (key === "setup_ns") report.setupNs = Number(value);
    else if (key === "processes") report.processes = true;
    else if (key === "walked") report.walked = true;
    else if (key === "tmpfull") report.tmpFull = value;
    else if (key === "limit") {
      const [name, max] = splitFirst(value);
      report.limit = { name, max: Number(max) };
    }
  }
  return report;
}

/** What each limit of the writable layer counts, for the reason of a job that passed it. */
const LIMIT_TEXTS: Record<string, (max: number) => string> = {
  files: (max) => `more than ${max} files, directories and links written (limit files)`,
  "disk-bytes": (max) => `more than ${max} bytes of disk taken by its files (limit disk-bytes)`,
  "result-bytes": (max) =>
    `files of more than ${max} bytes in all (limit result-bytes: apparent sizes, holes and ` +
    `every hard link included)`,
  "path-bytes": (max) => `a path longer than ${max} bytes (limit path-bytes)`,
};

function interpret(
  report: StatusReport | null,
  status: Deno.CommandStatus,
  killedBy: JobOutcome["killedBy"],
): JobOutcome {
  if (report === null) {
    if (killedBy !== undefined) {
      return { exitCode: 137, killedBy, reason: "Launcher killed" };
    }
    throw new SandboxError(
      `Cannot run the job: the launcher exited with ${status.code}` +
        (status.signal ? ` (${status.signal})` : "") + " without a status",
    );
  }
  const [kind, rest] = splitFirst(report.result);
  const outcome: JobOutcome = { exitCode: 137 };
  if (report.setupNs !== undefined && Number.isFinite(report.setupNs)) {
    outcome.launcherMs = report.setupNs / 1e6;
  }
  if (kind === "error") {
    throw new SandboxError(`Cannot start the job: ${rest}`);
  } else if (kind === "exit") {
    outcome.exitCode = Number(rest);
  } else if (kind === "signal") {
    const signal = Number(rest);
    outcome.exitCode = 128 + signal;
    outcome.reason = `Killed by ${SIGNAL_NAMES[signal] ?? `signal ${signal}`}`;
  } else if (kind === "nocmd") {
    const [code, message] = splitFirst(rest);
    outcome.exitCode = Number(code);
    outcome.reason = `Cannot execute ${message}`;
  } else if (kind === "killed") {
    outcome.reason = "Killed by SIGKILL";
  } else {
    throw new SandboxError(`Cannot run the job: bad launcher status: ${report.result}`);
  }
  if (killedBy !== undefined) outcome.killedBy = killedBy;
  else if (report.processes) outcome.killedBy = "processes";
  else if (report.limit !== undefined) {
    outcome.killedBy = "disk";
    // Past a limit once it had ended: its results are refused, so it failed.
    if (outcome.exitCode === 0) outcome.exitCode = 1;
    const text = LIMIT_TEXTS[report.limit.name]?.(report.limit.max) ??
      `limit ${report.limit.name} passed`;
    outcome.reason = `Disk limit reached: ${text}`;
    return outcome;
  }
  if (outcome.killedBy === "timeout") outcome.reason = "Wall-clock timeout";
  else if (outcome.killedBy === "processes") outcome.reason = "Process limit reached";
  else if (outcome.killedBy === "signal") outcome.reason = "Cancelled";
  return outcome;
}

/** Creates the job's pids cgroup; `null` when cgroups are unavailable. */
async function createPidsCgroup(
  root: string | null | undefined,
  processesMax: number,
): Promise<string | null> {
  if (root === null) return null;
  root ??= PIDS_CGROUP_ROOT;
  const dir = `${root}/job-${crypto.randomUUID()}`;
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch {
    return null;
  }
  try {
    await Deno.writeTextFile(`${dir}/pids.max`, String(processesMax));
    return dir;
  } catch {
    await Deno.remove(dir).catch(() => {});
    return null;
  }
}

async function removeCgroup(dir: string): Promise<void> {
  const deadline = Date.now() + CGROUP_REMOVE_MS;
  for (;;) {
    try {
      await Deno.remove(dir);
      return;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      if (!(err instanceof Deno.errors.Busy) || Date.now() > deadline) {
        throw new SandboxError(`Cannot remove the job's cgroup: ${dir}`, { cause: err });
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}

/** A job cgroup younger than this is never taken for a leftover (see removeStaleCgroups). */
export const STALE_CGROUP_AGE_MS = 10 * 60_000;

/**
 * Removes the job cgroups a previous run of the worker left under `root`
 * (after a crash); call it at start-up, before any job runs. Returns how
 * many were removed. Cgroups still holding processes are left alone, and so
 * are young ones: the root is shared by every worker on the host, and one
 * made a moment ago by a running neighbour is empty until its launcher joins
 * it (removing it failed that job: `Cannot join cgroup`).
 */
export async function removeStaleCgroups(
  root: string = PIDS_CGROUP_ROOT,
  options: { minAgeMs?: number; now?: number } = {},
): Promise<number> {
  const minAgeMs = options.minAgeMs ?? STALE_CGROUP_AGE_MS;
  const now = options.now ?? Date.now();
  let removed = 0;
  try {
    for await (const entry of Deno.readDir(root)) {
      if (!entry.isDirectory || !entry.name.startsWith("job-")) continue;
      try {
        const info = await Deno.stat(`${root}/${entry.name}`);
        const madeMs = (info.birthtime ?? info.mtime ?? info.ctime)?.getTime() ?? 0;
        if (now - madeMs < minAgeMs) continue;
        await Deno.remove(`${root}/${entry.name}`);
        removed++;
      } catch {
        // Busy: still running (another worker?) — not ours to touch.
      }
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new SandboxError(`Cannot list stale cgroups in ${root}`, { cause: err });
    }
  }
  return removed;
}

function validate(spec: JobSpec, options: SandboxOptions): void {
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
  if (!isAbsolute(w) || w === "/" || w !== normalize(w)) {
    fail(`writable root must be a normalised absolute path other than /: ${w}`);
  }
  for (const dir of ["/proc", "/dev", "/sys"]) {
    if (w === dir || w.startsWith(`${dir}/`)) fail(`writable root lies in ${dir}: ${w}`);
  }
  if (!isAbsolute(options.lowerRoot)) fail(`lower root is not absolute: ${options.lowerRoot}`);
  if (options.network !== undefined && options.network !== "none" && options.network !== "host") {
    fail(`bad network: ${options.network}`);
  }
  if (!isAbsolute(options.jobDir) || normalize(options.jobDir) === "/") {
    fail(`bad job dir: ${options.jobDir}`);
  }
  const lowerDir = normalize(joinPath(options.lowerRoot, w));
  const jobDir = normalize(options.jobDir);
  if (jobDir === lowerDir || jobDir.startsWith(`${lowerDir}/`)) {
    fail(`job dir ${jobDir} lies inside the writable root's lower layer ${lowerDir}`);
  }
  for (const id of [options.uid, options.gid]) {
    if (id !== undefined && !(Number.isInteger(id) && id >= 0 && id < 2 ** 32 - 1)) {
      fail(`bad uid or gid: ${id}`);
    }
  }
}

function isAbsolute(p: string): boolean {
  return p.startsWith("/") && !p.includes("\0");
}

function normalize(p: string): string {
  const out: string[] = [];
  for (const part of p.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return `/${out.join("/")}`;
}

function joinPath(a: string, b: string): string {
  return `${a.replace(/\/+$/, "")}/${b.replace(/^\/+/, "")}`;
}

function parentOf(p: string): string {
  const n = normalize(p);
  return n.slice(0, n.lastIndexOf("/")) || "/";
}

function splitFirst(s: string): [string, string] {
  const i = s.indexOf(" ");
  return i < 0 ? [s, ""] : [s.slice(0, i), s.slice(i + 1)];
}
