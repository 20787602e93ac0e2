/**
 * What the launcher reports: its status file read, and turned into the
 * job's outcome (exit code, which limit ended it, a reason a user can act on).
 *
 * @module
 */
import { SandboxError } from "./errors.ts";
import { type JobOutcome, type JobSpec, limitsOf } from "./job_spec.ts";

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

/** The launcher's status file, parsed. */
export interface StatusReport {
  result: string;
  setupNs?: number;
  /** CPU of the job's processes (user and system), µs: not the launcher's. */
  jobCpuUs?: number;
  processes: boolean;
  /** The writable layer's limit passed, and its value. */
  limit?: { name: string; max: number };
  /** The whole writable layer was measured after the job, within its limits. */
  walked: boolean;
  /** The job ended with its /tmp full: of bytes or of inodes. */
  tmpFull?: string;
  /** The first entry the job left in its /tmp. */
  tmpLeft?: string;
}

/** Reads the launcher's status in `jobDir`; `null` when it wrote none. */
export function readStatus(jobDir: string): StatusReport | null {
  let text: string;
  try {
    // A few lines the launcher just wrote on the worker's disk: no thread hop.
    text = Deno.readTextFileSync(`${jobDir}/status`);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw new SandboxError(`Cannot read the launcher status in ${jobDir}`, { cause: err });
  }
  const lines = text.split("\n").filter((l) => l !== "");
  const report: StatusReport = { result: lines[0] ?? "", processes: false, walked: false };
  for (const line of lines.slice(1)) {
    const [key, value] = splitFirst(line);
    if (key === "setup_ns") report.setupNs = Number(value);
    else if (key === "job_cpu_us") report.jobCpuUs = Number(value);
    else if (key === "processes") report.processes = true;
    else if (key === "walked") report.walked = true;
    else if (key === "tmpfull") report.tmpFull = value;
    else if (key === "tmpleft") report.tmpLeft = value;
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

/** The outcome a status report (or its absence) and the way the launcher ended mean. */
export function interpret(
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
  if (report.jobCpuUs !== undefined && Number.isFinite(report.jobCpuUs)) {
    outcome.jobCpuMs = report.jobCpuUs / 1e3;
  }
  // A job whose /tmp filled up failed on its own limit: that is its outcome,
  // not an output to look for on the master (run there, it would fill the
  // build machine's /tmp).
  if (report.tmpLeft !== undefined && report.tmpFull === undefined) {
    outcome.leftInTmp = report.tmpLeft;
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

/** Which of its own limits a failed job hit (a full /tmp, a file at its size limit), if any. */
export function ownLimitNote(
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

function splitFirst(s: string): [string, string] {
  const i = s.indexOf(" ");
  return i < 0 ? [s, ""] : [s.slice(0, i), s.slice(i + 1)];
}
