/**
 * Runs one job "as if on the master" through the C launcher: chrooted into
 * a read-only view of the master's file system (`lowerRoot`), as nobody, with
 * the writable root writable through a per-job overlay whose upper layer is
 * then turned into a result set.
 *
 * @module
 */
import { normalizePath, parentOf } from "../common/paths.ts";
import { SandboxError } from "./errors.ts";
import { ensureLauncher } from "./launcher.ts";
import { createPidsCgroup, removeCgroup } from "./job_cgroup.ts";
import { feedStdin, Pump, trySignal } from "./job_io.ts";
import {
  DRAIN_GRACE_MS,
  type JobOutcome,
  type JobSpec,
  joinAbsolute,
  KILL_GRACE_MS,
  limitsOf,
  OUTPUT_BYTES_MAX,
  PROCESSES_MAX_DEFAULT,
  type RunJobOptions,
  validate,
} from "./job_spec.ts";
import { interpret, ownLimitNote, readStatus } from "./job_status.ts";

const encoder = new TextEncoder();
/** Why feeding a child's stdin stops once it exited (a reason of its own: no DOMException built). */
const CHILD_EXITED = new Error("The child exited");

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
  const lowerDir = joinAbsolute(options.lowerRoot, options.writableRoot);
  try {
    // On the worker's own disk, a few µs each: not worth a thread hop (~50 µs of CPU).
    Deno.mkdirSync(parentOf(normalizePath(jobDir)), { recursive: true });
    Deno.mkdirSync(jobDir, { mode: 0o700 });
  } catch (err) {
    throw new SandboxError(`Cannot create the job dir: ${jobDir}`, { cause: err });
  }

  let cgroup: string | null = null;
  const netns = (options.network ?? "none") === "none" ? options.netnsPool?.take() : undefined;
  let failure: unknown = undefined;
  let outcome: JobOutcome | undefined;
  // Whether the launcher measured the whole writable layer after the job,
  // within every limit (paths included): then it is safe to walk from here.
  let measured = false;
  // Whether the launcher ended by itself: then the job's every process is gone.
  let ended = false;
  try {
    cgroup = createPidsCgroup(
      options.pidsCgroupRoot,
      spec.processesMax ?? PROCESSES_MAX_DEFAULT,
    );
    await options.onCgroup?.(cgroup);
    const args = launcherArgs(spec, options, cgroup, netns);
    ({ outcome, measured, ended } = await supervise(launcher, args, spec, options));
    if (outcome.killedBy === undefined && options.onUpper) {
      await options.onUpper(`${jobDir}/upper`, lowerDir, outcome);
    }
  } catch (err) {
    failure = err;
  }

  // Cleanup: the mounts lived in the job's namespace and are gone with it.
  // The network namespace is free again once the launcher ended by itself,
  // after every process of the job; killed (its init may outlive it for a
  // moment) or failed (the namespace maybe half made), it is retired.
  const netnsGiven = netns === undefined
    ? undefined
    : options.netnsPool!.give(netns, ended && failure === undefined);
  const cleanup = (async () => {
    const cleanupErrors: unknown[] = [];
    await netnsGiven?.catch((err) => cleanupErrors.push(err));
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

/** The launcher's command line for `spec`, in the job's `cgroup` (null: none, RLIMIT_NPROC). */
function launcherArgs(
  spec: JobSpec,
  options: RunJobOptions,
  cgroup: string | null,
  netns: string | undefined,
): string[] {
  const processesMax = spec.processesMax ?? PROCESSES_MAX_DEFAULT;
  const args = [
    "--job-dir",
    options.jobDir,
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
  if (netns !== undefined) args.push("--netns", netns);
  // The launcher dies with this process: a worker killed hard leaves no job running.
  args.push("--parent-pid", String(Deno.pid));
  args.push("--", ...spec.argv);
  return args;
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

/**
 * Waits for the pipes after the launcher exited. Every process of the job is
 * gone then (unless the launcher was SIGKILLed): they reach EOF now. The wait
 * is bounded anyway, by {@linkcode DRAIN_GRACE_MS}.
 */
async function drain(pumps: Pump[], stdinDone: Promise<void>): Promise<void> {
  let drainTimer: ReturnType<typeof setTimeout> | undefined;
  const drained = Promise.all([...pumps.map((p) => p.done), stdinDone]);
  const late = await Promise.race([
    drained.then(() => false),
    new Promise<boolean>((resolve) => drainTimer = setTimeout(() => resolve(true), DRAIN_GRACE_MS)),
  ]);
  clearTimeout(drainTimer);
  if (late) {
    await Promise.all(pumps.map((p) => p.cancel()));
    await drained;
  }
}

/** Runs the launcher and waits for it: timeout, cancellation, output, stdin, the status. */
async function supervise(
  launcher: string,
  args: string[],
  spec: JobSpec,
  options: RunJobOptions,
): Promise<{ outcome: JobOutcome; measured: boolean; ended: boolean }> {
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
    stdinStop.abort(CHILD_EXITED);
    clearTimeout(timeoutTimer);
    clearTimeout(graceTimer);
    options.signal?.removeEventListener("abort", onAbort);
  }
  await drain([stdoutPump, stderrPump], stdinDone);
  if (sinkError !== undefined) throw sinkError;

  const report = readStatus(options.jobDir);
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
  return { outcome, measured: report?.walked === true, ended: status.signal === null };
}
