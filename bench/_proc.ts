/**
 * Process helpers for the farm benchmark: timed commands with the CPU time of
 * everything they ran, process trees from /proc, CPU ticks of a process.
 */

const textDecoder = new TextDecoder();

/** Clock ticks per second of /proc/<pid>/stat times (`getconf CLK_TCK`). */
let ticksPerS = 0;

async function clockTicks(): Promise<number> {
  if (ticksPerS > 0) return ticksPerS;
  const out = await new Deno.Command("getconf", { args: ["CLK_TCK"], stdout: "piped" }).output();
  const n = Number(textDecoder.decode(out.stdout).trim());
  ticksPerS = Number.isFinite(n) && n > 0 ? n : 100;
  return ticksPerS;
}

export interface ProcStat {
  pid: number;
  ppid: number;
  /** User + system CPU of the process itself, seconds. */
  selfS: number;
  /** User + system CPU of its waited-for children (and theirs), seconds. */
  childrenS: number;
}

/** Parses /proc/<pid>/stat; `null` when the process is gone. */
export async function procStat(pid: number | "self"): Promise<ProcStat | null> {
  const tick = await clockTicks();
  let text: string;
  try {
    text = await Deno.readTextFile(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
  const close = text.lastIndexOf(")");
  const head = text.slice(0, text.indexOf(" "));
  const f = text.slice(close + 2).split(" ");
  // f[0] is field 3 (state): field k is f[k - 3].
  return {
    pid: Number(head),
    ppid: Number(f[1]),
    selfS: (Number(f[11]) + Number(f[12])) / tick,
    childrenS: (Number(f[13]) + Number(f[14])) / tick,
  };
}

/** CPU seconds of a process and its reaped children; 0 when it is gone. */
export async function cpuS(pid: number | "self"): Promise<number> {
  const s = await procStat(pid);
  return s ? s.selfS + s.childrenS : 0;
}

/** CPU seconds of the reaped children of a process (and theirs); 0 when it is gone. */
export async function childrenCpuS(pid: number | "self"): Promise<number> {
  return (await procStat(pid))?.childrenS ?? 0;
}

/**
 * User + system CPU of this process's reaped children (and theirs), in ms,
 * to the microsecond: `getrusage(RUSAGE_CHILDREN)` through FFI, where
 * /proc/self/stat counts in clock ticks (10 ms). Deno reaps a command's
 * process when its status is awaited, so the difference across one command
 * is that command's CPU.
 */
export function childrenCpuMs(): number {
  // Opened per call: a library left open fails the tests' resource sanitizer.
  const libc = Deno.dlopen("libc.so.6", {
    // int getrusage(int who, struct rusage *usage)
    getrusage: { parameters: ["i32", "buffer"], result: "i32" },
  });
  const usage = new Uint8Array(144); // sizeof(struct rusage) on x86_64 and aarch64
  const RUSAGE_CHILDREN = -1;
  try {
    if (libc.symbols.getrusage(RUSAGE_CHILDREN, usage) !== 0) return NaN;
  } finally {
    libc.close();
  }
  const v = new DataView(usage.buffer);
  // ru_utime then ru_stime, each a struct timeval { i64 tv_sec; i64 tv_usec; }.
  const us = (off: number) =>
    Number(v.getBigInt64(off, true)) * 1e6 + Number(v.getBigInt64(off + 8, true));
  return (us(0) + us(16)) / 1000;
}

/**
 * CPU of the live threads of a process, in ms, to the nanosecond (the sum of
 * /proc/<pid>/task/<tid>/schedstat); NaN when it is gone. A thread that ends
 * takes its CPU with it: compare across short windows only, and check the
 * sum against {@linkcode cpuS} over long ones.
 */
export async function threadsCpuMs(pid: number): Promise<number> {
  let ns = 0;
  try {
    for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
      const text = await Deno.readTextFile(`/proc/${pid}/task/${task.name}/schedstat`)
        .catch(() => "0");
      ns += Number(text.split(" ")[0]) || 0;
    }
  } catch {
    return NaN;
  }
  return ns / 1e6;
}

/** The pids of `root` and all its descendants (by /proc ppid links), root first. */
export async function processTree(root: number): Promise<number[]> {
  const children = new Map<number, number[]>();
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const s = await procStat(Number(e.name));
    if (!s) continue;
    const list = children.get(s.ppid) ?? [];
    list.push(s.pid);
    children.set(s.ppid, list);
  }
  const out: number[] = [];
  const todo = [root];
  while (todo.length > 0 && out.length < 100_000) {
    const pid = todo.shift()!;
    out.push(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return out;
}

/** Sends `signal` to a process and every descendant (leaves first). */
export async function killTree(root: number, signal: Deno.Signal = "SIGKILL"): Promise<void> {
  const pids = await processTree(root);
  for (const pid of pids.reverse()) {
    try {
      Deno.kill(pid, signal);
    } catch {
      // Already gone.
    }
  }
}

export interface TimedRun {
  code: number;
  wallMs: number;
  /** User + system CPU of the command and everything it waited for, seconds. */
  cpuS: number;
  /** Set when the command outlived its time limit. */
  timedOut: boolean;
}

/**
 * Runs `argv` under bash, output to `logPath`; bash's `times` gives the CPU of
 * every process the command waited for (make, its shells, the wrappers or
 * compilers they ran: rusage of reaped children accumulates up the tree).
 * `cgroupProcs` (a cgroup.procs file) puts the command in a cgroup before it
 * starts. GNU `timeout` kills the whole process group past `timeoutS`.
 */
export async function timedCommand(options: {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  logPath: string;
  timeoutS: number;
  cgroupProcs?: string;
}): Promise<TimedRun> {
  const script = [
    'if [ -n "$BENCH_CGROUP_PROCS" ]; then echo $$ >"$BENCH_CGROUP_PROCS" || exit 97; fi',
    // Not in the build's environment: the log's name changes from run to run,
    // and the action cache keys a command by its whole environment.
    "log=$BENCH_LOG; unset BENCH_LOG BENCH_CGROUP_PROCS",
    '"$@" >"$log" 2>&1',
    "rc=$?",
    "times",
    "exit $rc",
  ].join("\n");
  const start = performance.now();
  const out = await new Deno.Command("timeout", {
    args: [
      "-k",
      "10",
      String(Math.ceil(options.timeoutS)),
      "bash",
      "-c",
      script,
      "bench",
      ...options.argv,
    ],
    cwd: options.cwd,
    env: {
      ...options.env,
      BENCH_LOG: options.logPath,
      BENCH_CGROUP_PROCS: options.cgroupProcs ?? "",
    },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const wallMs = performance.now() - start;
  // `times`: the shell's own user/sys, then its children's: "0m1.230s 0m0.120s".
  const lines = textDecoder.decode(out.stdout).trim().split("\n");
  const seconds = (t: string) => {
    const m = t.match(/^(\d+)m([\d.]+)s$/);
    return m ? Number(m[1]) * 60 + Number(m[2]) : NaN;
  };
  const children = (lines.at(-1) ?? "").trim().split(/\s+/);
  const cpu = seconds(children[0] ?? "") + seconds(children[1] ?? "");
  return {
    code: out.code,
    wallMs,
    cpuS: Number.isFinite(cpu) ? cpu : 0,
    timedOut: out.code === 124 || out.code === 137,
  };
}

/** The last `n` lines of a file ("" when unreadable). */
export async function tail(path: string, n = 15): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trimEnd().split("\n").slice(-n).join("\n");
  } catch {
    return "";
  }
}

/** Races `p` against a deadline; `fallback` on time-out. */
export async function withDeadline<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<T>((r) => timer = setTimeout(() => r(fallback), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * CPU of processes so far, ms: each one's threads (schedstat, to the ns) and
 * its reaped children (a worker's launchers and their jobs, in clock ticks);
 * a process that has exited is skipped.
 */
export async function processesCpuMs(pids: number[]): Promise<number> {
  let ms = 0;
  for (const pid of pids) {
    const threads = await threadsCpuMs(pid);
    const stat = await procStat(pid);
    if (Number.isNaN(threads) || stat === null) continue; // exited
    ms += threads + stat.childrenS * 1000;
  }
  return ms;
}
