/**
 * Termite side by side with local make and distcc, on real projects.
 *
 * - Builds: each project (Debian source packages: lua 5.4, zstd) is built from
 *   a clean copy of its pristine tree by every contender at the same `make -j`,
 *   interleaved (local, termite, distcc, local, ...): (1) local make; (2) a
 *   Termite farm, two workers each in a network namespace of its own, started
 *   once per project (its first, cold build is recorded apart); (3) distcc,
 *   two `distccd` each in a network namespace of its own.
 * - Cold builds, every time on a new farm, interleaved with local make: fresh
 *   worker caches with the master's caches from the warm runs ("cold"), and
 *   with a fresh master cache too ("cold-master"); the master's bytes sent
 *   per build, and per worker count in the scaling runs.
 * - Round trips: sequential trivial commands and small compiles, directly, via
 *   the wrapper and via distcc; wall time and client CPU per command.
 * - Client cost: CPU seconds on the master host per compile job (make, shells,
 *   wrappers or distcc clients: bash `times` after the build, i.e. the rusage
 *   of every reaped descendant; plus the master process, /proc/<pid>/stat).
 * - Scaling: hosts of 0.4 core each (cgroup v1 CPU quotas): the master host
 *   alone (local make) against the master with 1..4 and 6 workers.
 *
 * Every run starts from a clean tree (by default reset in place, like
 * `git clean -fdx`); a failed build is recorded and tried again (3 tries in
 * all), so that a flaky contender still gets figures and its failures show.
 *
 * Writes bench/results/farm.json (raw), farm.md (tables) and scaling.svg.
 * - Rebuilds from a cache (issue 16): "termite-cached", a farm whose workers
 *   record reads (bpftrace, started once per project) with the master's
 *   action cache on ("termite-cached-native": the same farm through the
 *   native wrapper client), and "ccache" (warm, Debian's package): each fills its
 *   cache with a first build, then rebuilds after every reset of the tree,
 *   interleaved with local make (a cold build).
 *
 * Run alone: `deno run -A bench/farm_bench.ts [--quick] [--projects lua,zstd]
 * [--contenders local,termite,termite-native,distcc,termite-cached,termite-cached-native,ccache]
 * [--runs N] [--cold-runs N]
 * [--round-trips N] [--scaling 0,1,2] [--scaling-client deno|native]
 * [--tree-reset in-place|recopy|new-path] [--out-dir DIR]`;
 * `--action-cache` runs only local, termite-cached(-native) and ccache on lua and zstd (with
 * `--quick`: one run each), into bench/results/action-cache/ unless --out-dir says.
 */
import { parseArgs } from "node:util";
import { Farm, ROOT } from "../farm/mod.ts";
import { removeHost } from "../farm/netns.ts";
import { cpuCgroupsAvailable, CpuGroup } from "./_cgroup.ts";
import { renderChart } from "./_chart.ts";
import { DistccCluster, ensureDistcc } from "./_distcc.ts";
import { Ccache, ensureCcache } from "./_ccache.ts";
import { buildClient } from "../wrapper/native/build.ts";
import {
  childrenCpuMs,
  processesCpuMs,
  processTree,
  procStat,
  tail,
  threadsCpuMs,
  timedCommand,
  withDeadline,
} from "./_proc.ts";
import {
  LUA,
  type Project,
  PROJECTS,
  resetTree,
  TREE_RESETS,
  type TreeReset,
  ZSTD,
} from "./_projects.ts";

export type BenchResult = { name: string; value: number; unit: string; note?: string };

export type ContenderName =
  | "local"
  | "termite"
  | "termite-native"
  | "distcc"
  | "termite-cached"
  | "termite-cached-native"
  | "ccache";
/**
 * termite-native: the termite contender's farm, its tools linked to the
 * native wrapper client (bin/termite-client) instead of the Deno wrapper.
 */
export const CONTENDERS: readonly ContenderName[] = [
  "local",
  "termite",
  "termite-native",
  "distcc",
  "termite-cached",
  "termite-cached-native",
  "ccache",
];
/**
 * Contenders that rebuild from a cache their first ("fill") build filled:
 * termite-cached (a farm whose workers record reads, the master's action
 * cache on) and ccache (warm, through Debian's masquerade directory).
 */
export const CACHING_CONTENDERS: readonly ContenderName[] = [
  "termite-cached",
  "termite-cached-native",
  "ccache",
];
/** The action cache's comparison alone (`--action-cache`). */
export const ACTION_CACHE_CONTENDERS: readonly ContenderName[] = [
  "local",
  "termite-cached",
  "termite-cached-native",
  "ccache",
];

/** Goals from the issue. */
export const GOAL_BUILD_OVERHEAD = 1.10;
export const GOAL_SCALING_PER_WORKER = 0.7;
/** Issue 14 (build-host cost per job): the master's own CPU per compile job, ms. */
export const GOAL_MASTER_CPU_PER_JOB_MS = 2;
/** Issue 14: the wrapper's start (`termite-sh -c true`) / a bare `deno run` of an empty script. */
export const GOAL_WRAPPER_START_VS_DENO = 1.05;
/** Issue 14: a warm build through the farm / local make. */
export const GOAL_WARM_BUILD_ISSUE14 = 1.15;
/** Issue 14: the workers' CPU per job beyond the job itself (worker, FUSE, launcher), ms. */
export const GOAL_WORKER_OVERHEAD_MS = 8;
/** Issue 16: a rebuild from the action cache / a local (cold) make. */
export const GOAL_CACHED_VS_LOCAL = 0.10;
/** Issue 16: a rebuild from the action cache / ccache's warm rebuild (below: faster). */
export const GOAL_CACHED_VS_CCACHE = 1;

export interface HarnessOptions {
  /** One run per contender, lua only, fewer round trips, scaling to 2 workers. */
  quick?: boolean;
  projects?: Project[];
  contenders?: ContenderName[];
  /** Where farm.json, farm.md and scaling.svg go (default bench/results). */
  outDir?: string;
  /** Scratch directory (default .cache/bench-farm). */
  workDir?: string;
  /** Measured (warm) runs per contender and project (default 3, quick 1). */
  runs?: number;
  /** `make -j` for every contender (default workers × slotsPerWorker). */
  jobs?: number;
  workers?: number;
  slotsPerWorker?: number;
  /** Commands of each kind in the round-trip test (default 100, quick 20; 0 skips). */
  roundTrips?: number;
  /** Worker counts for scaling, 0 = master alone (default 0..4 and 6, quick 0..2; [] skips). */
  scalingWorkers?: number[];
  /** Project for scaling (default the first). */
  scalingProject?: Project;
  /**
   * Cold rounds per project (default 2, quick 1): each a local make, then a
   * farm with fresh worker caches and the warm run's master cache ("cold"),
   * then one with a fresh master cache too ("cold-master"), every time.
   */
  coldRuns?: number;
  /** Measured runs per scaling point (default 2, quick 1). */
  scalingRuns?: number;
  /** CPU of each emulated host in the scaling test (default 0.4). */
  coresPerHost?: number;
  /**
   * First veth number (farm/netns.ts) for the farms' workers; distcc's hosts
   * follow them. Default: the first free block in 202..250 (other farms use
   * 1..201), so that concurrent runs do not take each other's links.
   */
  hostBase?: number;
  /**
   * How each run gets a clean tree: "in-place" (default) removes what the last
   * build added and restores what it changed, like `git clean -fdx`; "recopy"
   * deletes the tree and copies it anew, so every directory is a new inode.
   */
  treeReset?: TreeReset;
  /**
   * The same for the scaling runs; default "new-path" (every run in a new
   * directory): scaling is about spreading jobs, and same-path resets used to
   * trip the mirrors' stale handles (ESTALE, before dd8cee5).
   */
  scalingTreeReset?: TreeReset;
  /** The wrapper the scaling runs' tools are linked to (default the Deno wrapper). */
  scalingClient?: "deno" | "native";
  /** Progress messages (default: stderr). */
  log?: (message: string) => void;
}

export interface BuildRun {
  project: string;
  contender: ContenderName;
  /**
   * 0-based warm round; "cold-master": a farm's first build, every cache
   * fresh (the warm farm's first, and in the cold rounds); "cold": fresh
   * worker caches, the master's from the warm runs; "cold-local": the local
   * make interleaved with the cold rounds.
   */
  round: number | ColdRound;
  /** 0 for the first try; a failed build is tried again (ATTEMPTS_MAX in all). */
  attempt: number;
  /** Caching contenders: compiles served from the cache, and those run (over the build). */
  cacheHits?: number;
  cacheMisses?: number;
  ok: boolean;
  wallMs?: number;
  /** CPU of make and everything it ran on the master host, seconds. */
  clientCpuS?: number;
  /** CPU of the Termite master process over the build (with local jobs it ran), seconds. */
  masterCpuS?: number;
  /** Of which the master's own (its process, not its children), seconds. */
  masterOwnCpuS?: number;
  /**
   * CPU of the workers' processes over the build: the worker processes (FUSE
   * serving included), their launchers and the jobs, seconds.
   */
  workerCpuS?: number;
  /** Object files the build left: the compile jobs. */
  objects?: number;
  /** Termite master job counters over the build. */
  termiteJobs?: Record<string, number>;
  /** /proc/loadavg (1 min) before and after: load from elsewhere shows here. */
  loadBefore?: number;
  loadAfter?: number;
  error?: string;
  /** The end of the build log, when it failed. */
  logTail?: string;
}

/**
 * Rounds of the cold builds (see {@linkcode BuildRun.round}), and "fill": a
 * caching contender's first build, which fills its cache (not a measured run).
 */
export type ColdRound = "cold" | "cold-master" | "cold-local" | "fill";

export interface BuildSummary {
  project: string;
  contender: ContenderName;
  ok: boolean;
  runs: number;
  medianMs?: number;
  minMs?: number;
  maxMs?: number;
  /** Median of the "cold" builds (fresh workers, the master's caches from the warm runs). */
  coldMs?: number;
  /** Median of the "cold-master" builds (every cache fresh). */
  coldMasterMs?: number;
  /** Caching contenders: the build that filled the cache, and it against the median local make. */
  fillMs?: number;
  fillVsLocal?: number;
  /** Caching contenders: compiles from the cache, and run, over the measured runs. */
  cacheHits?: number;
  cacheMisses?: number;
  /** Median bytes the master sent per build: warm, cold and cold-master. */
  bytesServed?: number;
  coldBytesServed?: number;
  coldMasterBytesServed?: number;
  /** coldMs and coldMasterMs against the median local make (cold rounds' included). */
  coldVsLocal?: number;
  coldMasterVsLocal?: number;
  /** coldMs against this contender's own warm median. */
  coldVsWarm?: number;
  objects?: number;
  /** Master-host CPU per compile job (make + clients + master), ms. */
  clientCpuPerJobMs?: number;
  /** Of which the Termite master process, ms. */
  masterCpuPerJobMs?: number;
  /** Of that, the master's own CPU (not the local jobs it ran), ms. */
  masterOwnCpuPerJobMs?: number;
  /** Termite: the workers' CPU per remote job (jobs included), ms. */
  workerCpuPerJobMs?: number;
  /**
   * Termite: beyond the jobs themselves (worker process, FUSE serving,
   * launcher): the workers' CPU per remote job minus what the jobs' own
   * processes took (the launchers' inits measure it), ms; median over builds.
   */
  workerOverheadPerJobMs?: number;
  /** Median time / median local make time. */
  vsLocal?: number;
  /** Builds (cold included) that failed and were tried again or given up. */
  failedAttempts?: number;
  /** Termite: jobs the master ran on workers, and in all (over the warm runs). */
  remoteJobs?: number;
  allJobs?: number;
  error?: string;
}

export interface RoundTripKind {
  name: string;
  via: "direct" | "termite" | "distcc";
  ok: boolean;
  /** Wall time of each command (spawn to exit), ms. */
  wallMs: number[];
  medianMs?: number;
  meanMs?: number;
  p90Ms?: number;
  /**
   * CPU of the command's processes per command (getrusage of the reaped
   * children, to the µs), and of the master's threads for termite, ms.
   */
  clientCpuPerCmdMs?: number;
  /** Median CPU of one command's processes, ms. */
  clientCpuMedianMs?: number;
  masterCpuPerCmdMs?: number;
  /** CPU of the workers' processes per command (worker, FUSE, launcher, the job), ms. */
  workerCpuPerCmdMs?: number;
  /** Termite jobs the master ran on workers over this kind's timed commands. */
  remoteJobs?: number;
  /** Commands meant for a worker that ran on the master instead (not timed). */
  notRemote?: number;
  /** The master's job counters over the last of those. */
  lastNotRemote?: string;
  error?: string;
}

export interface RoundTripDerived {
  /** `termite-sh -c true` / `deno run empty.js`: medians of wall time, and of CPU per command. */
  wrapperStartVsDeno?: number;
  wrapperStartVsDenoCpu?: number;
  /**
   * Worker-side CPU of a remote `gcc -c tiny.c` beyond the compile: the
   * workers' CPU per command minus the CPU of the same command run directly, ms.
   */
  workerOverheadTinyCompileMs?: number;
  /** termite gcc -c tiny.c / distcc gcc -c tiny.c, median round trips. */
  remoteCompileVsDistcc?: number;
  /** The same with the native wrapper client. */
  nativeRemoteCompileVsDistcc?: number;
  /** `termite-sh -c true` through the native client minus `/bin/true`, ms. */
  nativeStartMs?: number;
  /** `termite-sh -c true` (a builtin: the wrapper alone) minus `/bin/true`, ms. */
  wrapperStartMs?: number;
  /** termite gcc -c minus gcc -c, minus the wrapper start, ms. */
  termiteCompileBeyondWrapperMs?: number;
  /** termite-sh -c '/bin/true x' minus sh -c '/bin/true x', minus the wrapper start, ms. */
  termiteTrueBeyondWrapperMs?: number;
  /** distcc gcc -c minus gcc -c, ms. */
  distccCompileOverheadMs?: number;
}

export interface ScalingPoint {
  workers: number;
  ok: boolean;
  /** `make -j` used. */
  jobs: number;
  wallMs: number[];
  medianMs?: number;
  /** First build of a new farm, no quotas (not part of the figure). */
  coldMs?: number;
  /** Bytes the master sent over that first build (every cache fresh). */
  coldBytesServed?: number;
  speedup?: number;
  /** Time the quota held the groups back over the measured runs, seconds. */
  throttledS?: number;
  /**
   * The build host's CPU per compile job over the measured runs: make and
   * what it ran here (the wrappers, or the compiles with 0 workers), the
   * master and the coordinator; milliseconds.
   */
  hostCpuMsPerJob?: number;
  /** Builds that failed and were tried again (or given up), with why. */
  failedTries: string[];
  error?: string;
}

export interface Goal {
  name: string;
  measured: number | null;
  /** Unit of `measured` for bench/main.ts (default: × for ratios, ms for overheads). */
  unit?: string;
  target: string;
  met: boolean | null;
  detail: string;
}

export interface HarnessReport {
  date: string;
  quick: boolean;
  machine: { cpus: number; kernel: string; loadAtStart: number; loadAtEnd: number };
  settings: {
    jobs: number;
    workers: number;
    slotsPerWorker: number;
    runs: number;
    roundTrips: number;
    coresPerHost: number;
    scalingProject: string | null;
    treeReset: TreeReset;
    scalingTreeReset: TreeReset;
    scalingClient: "deno" | "native";
  };
  builds: BuildRun[];
  summaries: BuildSummary[];
  roundTrips: RoundTripKind[];
  roundTripDerived: RoundTripDerived;
  scaling: ScalingPoint[];
  goals: Goal[];
  notes: string[];
  results: BenchResult[];
  /** Markdown tables (also in farm.md). */
  table: string;
  files: { json: string; markdown: string; chart: string };
}

// ---------------------------------------------------------------- helpers

function errorText(err: unknown): string {
  const e = err as Error;
  const text = e?.message ?? String(err);
  return text.length > 2000 ? `${text.slice(0, 2000)}…` : text;
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

function round(n: number, digits = 3): number {
  return Number(n.toPrecision(digits));
}

async function freshDir(path: string): Promise<void> {
  await Deno.remove(path, { recursive: true }).catch(() => {});
  await Deno.mkdir(path, { recursive: true });
  await Deno.chmod(path, 0o755);
}

const DIAGNOSIS =
  /Stale file handle|Fatal error|error:|Error \d|No such file|Permission denied|Killed/;

/** Why a build failed, in one line: the first telling line of its log. */
async function diagnose(code: number, timedOut: boolean, logPath: string): Promise<string> {
  const lines = (await tail(logPath, 200)).split("\n");
  const telling = lines.find((l) => DIAGNOSIS.test(l)) ?? lines.at(-1) ?? "";
  return `${timedOut ? "timed out" : `exit ${code}`}: ${
    telling.trim().slice(0, 300)
  } (log ${logPath})`;
}

/** The 1-minute load average. */
async function loadAverage(): Promise<number> {
  const text = await Deno.readTextFile("/proc/loadavg").catch(() => "0");
  return Number(text.split(" ")[0]) || 0;
}

async function countObjects(dir: string): Promise<number> {
  let n = 0;
  const todo = [dir];
  while (todo.length > 0) {
    const d = todo.pop()!;
    for await (const e of Deno.readDir(d)) {
      if (e.isDirectory) todo.push(`${d}/${e.name}`);
      else if (e.isFile && e.name.endsWith(".o")) n++;
    }
  }
  return n;
}

const JOB_COUNTERS = [
  "jobs",
  "jobsRemote",
  "jobsLocal",
  "jobsBuiltin",
  "jobsFailed",
  "retries",
  "bytesServed",
  "jobsCached",
  /** From the action cache's own figures: lookups that missed, results not stored. */
  "cacheMisses",
  "cacheNotStored",
  /** The CPU of the remote jobs' own processes, as the workers said (ms, summed over them). */
  "jobCpuMs",
];

async function termiteCounters(farm: Farm): Promise<Record<string, number>> {
  try {
    const status = await withDeadline(farm.status(), 5_000, null);
    const jobs = (status?.jobs ?? {}) as Record<string, unknown>;
    const cached = ((status?.build ?? {}) as { cached?: Record<string, unknown> }).cached ?? {};
    const perWorker = Object.values(
      (jobs.perWorker ?? {}) as Record<string, { jobCpuMs?: number }>,
    );
    const jobCpuMs = perWorker.reduce((a, w) => a + (Number(w.jobCpuMs) || 0), 0);
    const all = {
      ...jobs,
      cacheMisses: cached.misses,
      cacheNotStored: cached.notStored,
      jobCpuMs,
    };
    return Object.fromEntries(
      JOB_COUNTERS.map((k) => [k, Number((all as Record<string, unknown>)[k] ?? 0)]),
    );
  } catch {
    return Object.fromEntries(JOB_COUNTERS.map((k) => [k, 0]));
  }
}

function counterDelta(a: Record<string, number>, b: Record<string, number>) {
  return Object.fromEntries(JOB_COUNTERS.map((k) => [k, (b[k] ?? 0) - (a[k] ?? 0)]));
}

/** A farm that knows its namespaces, so that a stuck stop can still be cleaned up. */
interface BenchFarm {
  farm: Farm;
  prefix: string;
  firstHost: number;
  workers: number;
  /** The farm's pids right after start (inner workers included). */
  pids: number[];
}

async function startFarm(options: {
  dir: string;
  tree: string;
  workers: number;
  slotsPerWorker: number;
  prefix: string;
  firstHost: number;
  /** A master cache dir to start from (a copy of it); default a fresh one. */
  masterCacheFrom?: string;
  /** Extra worker flags (`--record-reads`). */
  workerArgs?: string[];
}): Promise<BenchFarm> {
  await freshDir(options.dir);
  if (options.masterCacheFrom !== undefined) {
    const cp = await new Deno.Command("cp", {
      args: ["-a", options.masterCacheFrom, `${options.dir}/master-cache`],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!cp.success) {
      throw new Error(
        `Cannot copy ${options.masterCacheFrom}: ${new TextDecoder().decode(cp.stderr)}`,
      );
    }
  }
  await Deno.mkdir(options.tree, { recursive: true });
  await Deno.chmod(options.tree, 0o755);
  const farm = await Farm.start({
    dir: options.dir,
    tree: options.tree,
    workers: options.workers,
    slotsPerWorker: options.slotsPerWorker,
    prefix: options.prefix,
    firstHost: options.firstHost,
    workerArgs: options.workerArgs,
  });
  const bf: BenchFarm = {
    farm,
    workers: options.workers,
    prefix: options.prefix,
    firstHost: options.firstHost,
    pids: [],
  };
  bf.pids = await farmPids(bf);
  return bf;
}

/** The workers' long-lived pids (outer, unshare, inner worker): taken while the farm is idle. */
async function workerPids(bf: BenchFarm): Promise<number[]> {
  const all: number[] = [];
  for (const w of bf.farm.workers) all.push(...await processTree(w.child.pid));
  return all;
}

/** Every pid of the farm's process trees (the workers re-exec themselves under unshare). */
async function farmPids(bf: BenchFarm): Promise<number[]> {
  const roots = [bf.farm.master, bf.farm.coordinator, ...bf.farm.workers]
    .filter((p) => p !== undefined).map((p) => p.child.pid);
  const all = new Set<number>();
  for (const root of roots) for (const pid of await processTree(root)) all.add(pid);
  return [...all];
}

/**
 * Aborts the FUSE connections of the farm's worker mirrors (found in the
 * workers' mount namespaces, under the farm's directory): a wedged mirror
 * otherwise leaves its readers in uninterruptible sleep, and a reader that
 * holds a file system's rename lock stalls every rename on that file system.
 * Returns how many connections were aborted.
 */
async function abortFuse(bf: BenchFarm): Promise<number> {
  const minors = new Set<string>();
  for (const pid of await farmPids(bf)) {
    const info = await Deno.readTextFile(`/proc/${pid}/mountinfo`).catch(() => "");
    for (const line of info.split("\n")) {
      const f = line.split(" ");
      const dash = f.indexOf("-");
      if (dash < 0 || !f[dash + 1]?.startsWith("fuse")) continue;
      if (!f[4]?.startsWith(`${bf.farm.dir}/`)) continue;
      const [major, minor] = (f[2] ?? "").split(":");
      if (major === "0" && /^\d+$/.test(minor)) minors.add(minor);
    }
  }
  let n = 0;
  for (const minor of minors) {
    try {
      await Deno.writeTextFile(`/sys/fs/fuse/connections/${minor}/abort`, "1");
      n++;
    } catch {
      // Gone already.
    }
  }
  return n;
}

/**
 * Stops a farm. The workers' inner processes (children of the pids the farm
 * knows) get SIGTERM first: a worker's outer process does not pass signals on,
 * and an orphaned inner worker would hold the log pipes open. Past the
 * deadline every pid of the farm gets SIGKILL and its namespaces are removed.
 */
async function stopFarm(bf: BenchFarm, notes: string[]): Promise<void> {
  const pids = new Set([...bf.pids, ...await farmPids(bf)]);
  const outer = new Set(bf.farm.workers.map((w) => w.child.pid));
  for (const w of bf.farm.workers) {
    for (const pid of (await processTree(w.child.pid)).filter((p) => !outer.has(p))) {
      try {
        Deno.kill(pid, "SIGTERM");
      } catch {
        // Gone.
      }
    }
  }
  const stopping = bf.farm.stop().then(() => true, (err) => {
    notes.push(`farm stop failed: ${errorText(err)}`);
    return true;
  });
  if (!await withDeadline(stopping, 30_000, false)) {
    const aborted = await abortFuse(bf);
    notes.push(
      `farm ${bf.prefix} did not stop in 30 s: killed (${aborted} FUSE connections aborted)`,
    );
    for (const pid of pids) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // Gone.
      }
    }
    await withDeadline(stopping, 30_000, false);
    for (let i = 0; i < bf.workers; i++) {
      await removeHost(`${bf.prefix}-w${i}`, bf.firstHost + i);
    }
  }
}

/** The first n in 202..250 with veth links tmh<n>..tmh<n + count - 1> all absent. */
async function freeHostBlock(count: number): Promise<number> {
  const taken = async (n: number) =>
    await Deno.lstat(`/sys/class/net/tmh${n}`).then(() => true, () => false);
  for (let base = 202; base + count - 1 <= 250; base++) {
    let free = true;
    for (let n = base; n < base + count && free; n++) free = !await taken(n);
    if (free) return base;
  }
  throw new RangeError(`No ${count} free host numbers in 202..250`);
}

// ---------------------------------------------------------------- builds

interface BuildContext {
  project: Project;
  src: string;
  jobs: number;
  pdir: string;
  treeReset: TreeReset;
  farm: BenchFarm | null;
  farmError: string;
  /** Set after a farm build timed out: later farm runs are skipped. */
  farmBroken?: boolean;
  distcc: DistccCluster | null;
  distccError: string;
  /** termite-cached's farm: workers with --record-reads, the master's action cache on. */
  cachedFarm?: BenchFarm | null;
  cachedFarmError?: string;
  cachedFarmBroken?: boolean;
  ccache?: Ccache | null;
  ccacheError?: string;
}

const nativeLinks = new Map<Farm, Promise<{ bin: string; env: Record<string, string> }>>();

/**
 * The farm's tools linked to the native wrapper client, in a folder of their
 * own: termite-native's PATH (made once per farm).
 */
function nativeLinksOf(farm: Farm): Promise<{ bin: string; env: Record<string, string> }> {
  let links = nativeLinks.get(farm);
  if (!links) {
    links = (async () => {
      const bin = `${farm.dir}/bin-native`;
      const client = await buildClient();
      await Deno.mkdir(bin, { recursive: true });
      for await (const e of Deno.readDir(farm.binDir)) {
        await Deno.remove(`${bin}/${e.name}`).catch(() => {});
        await Deno.symlink(client, `${bin}/${e.name}`);
      }
      return { bin, env: { ...farm.env, PATH: `${bin}:${Deno.env.get("PATH")}` } };
    })();
    nativeLinks.set(farm, links);
  }
  return links;
}

/** The farm a contender builds on, if any. */
function farmOf(ctx: BuildContext, contender: ContenderName): BenchFarm | null {
  if (contender === "termite" || contender === "termite-native") {
    return ctx.farmBroken ? null : ctx.farm;
  }
  if (contender === "termite-cached" || contender === "termite-cached-native") {
    return ctx.cachedFarmBroken ? null : ctx.cachedFarm ?? null;
  }
  return null;
}

/** Why a contender cannot build now; null when it can. */
function unavailable(ctx: BuildContext, contender: ContenderName): string | null {
  switch (contender) {
    case "termite":
    case "termite-native":
      return farmOf(ctx, contender) ? null : ctx.farmError;
    case "termite-cached":
    case "termite-cached-native":
      return farmOf(ctx, contender) ? null : ctx.cachedFarmError ?? "no farm";
    case "distcc":
      return ctx.distcc ? null : ctx.distccError;
    case "ccache":
      return ctx.ccache ? null : ctx.ccacheError ?? "no ccache";
    case "local":
      return null;
  }
}

async function buildOnce(
  ctx: BuildContext,
  contender: ContenderName,
  roundNo: number | ColdRound,
  attempt: number,
): Promise<BuildRun> {
  const run: BuildRun = {
    project: ctx.project.name,
    contender,
    round: roundNo,
    attempt,
    ok: false,
  };
  const why = unavailable(ctx, contender);
  if (why !== null) return { ...run, error: why };
  const bf = farmOf(ctx, contender);
  const base = bf ? `${bf.farm.tree}/build` : `${ctx.pdir}/${contender}/build`;
  const label = `${roundNo}${attempt ? `-try${attempt}` : ""}`;
  const dir = ctx.treeReset === "new-path" ? `${base}-${label}` : base;
  const logPath = `${ctx.pdir}/logs/${contender}-${label}.log`;
  try {
    await Deno.mkdir(`${ctx.pdir}/${contender}`, { recursive: true });
    await resetTree(ctx.src, dir, ctx.treeReset);
    const env = bf
      ? contender.endsWith("-native") ? (await nativeLinksOf(bf.farm)).env : bf.farm.env
      : contender === "distcc"
      ? ctx.distcc!.env(true)
      : contender === "ccache"
      ? ctx.ccache!.env
      : Deno.env.toObject();
    const farm = bf?.farm ?? null;
    const before = farm ? await termiteCounters(farm) : null;
    const ccacheBefore = contender === "ccache" ? await ctx.ccache!.stats() : null;
    const masterBefore = farm ? await procStat(farm.master.child.pid) : null;
    const workers = bf ? await workerPids(bf) : [];
    const workersBefore = farm ? await processesCpuMs(workers) : 0;
    run.loadBefore = await loadAverage();
    const timed = await timedCommand({
      argv: ctx.project.command(ctx.jobs),
      cwd: dir,
      env,
      logPath,
      timeoutS: ctx.project.timeoutS,
    });
    if (farm) {
      const after = await procStat(farm.master.child.pid);
      if (after && masterBefore) {
        run.masterCpuS = round(
          after.selfS + after.childrenS - masterBefore.selfS - masterBefore.childrenS,
          4,
        );
        run.masterOwnCpuS = round(after.selfS - masterBefore.selfS, 4);
      }
      run.workerCpuS = round((await processesCpuMs(workers) - workersBefore) / 1000, 4);
      run.termiteJobs = counterDelta(before!, await termiteCounters(farm));
      if (contender === "termite-cached" || contender === "termite-cached-native") {
        run.cacheHits = run.termiteJobs.jobsCached;
        run.cacheMisses = run.termiteJobs.cacheMisses;
      }
    }
    if (ccacheBefore) {
      const after = await ctx.ccache!.stats();
      run.cacheHits = after.hits - ccacheBefore.hits;
      run.cacheMisses = after.misses - ccacheBefore.misses;
    }
    run.loadAfter = await loadAverage();
    run.wallMs = Math.round(timed.wallMs);
    run.clientCpuS = round(timed.cpuS, 4);
    if (timed.timedOut && bf) {
      const aborted = await abortFuse(bf);
      const error =
        `skipped: an earlier farm build timed out (${aborted} FUSE connections aborted)`;
      if (contender === "termite" || contender === "termite-native") {
        ctx.farmError = error;
        ctx.farmBroken = true;
      } else {
        ctx.cachedFarmError = error;
        ctx.cachedFarmBroken = true;
      }
    }
    if (timed.code !== 0) {
      run.logTail = await tail(logPath, 12);
      throw new Error(await diagnose(timed.code, timed.timedOut, logPath));
    }
    await ctx.project.check(dir);
    run.objects = await countObjects(dir);
    const rebuild = (contender === "termite-cached" || contender === "termite-cached-native") &&
      roundNo !== "fill";
    // termite-cached-native's fill finds termite-cached's entries (same farm, same commands).
    const filled = contender === "termite-cached-native";
    if (run.termiteJobs && !rebuild && !filled && run.termiteJobs.jobsRemote === 0) {
      throw new Error(
        `no job ran on a worker (${run.termiteJobs.jobsLocal} ran on the master; see ` +
          `${bf!.farm.dir}/logs/master.log)`,
      );
    }
    if (run.termiteJobs && rebuild && run.termiteJobs.jobsCached === 0) {
      throw new Error(
        `no job came from the action cache (${run.termiteJobs.cacheMisses} misses, ` +
          `${run.termiteJobs.cacheNotStored} results not stored; see ${bf!.farm.dir}/logs)`,
      );
    }
    run.ok = true;
  } catch (err) {
    run.error = errorText(err);
  } finally {
    if (ctx.treeReset === "new-path") await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return run;
}

/** A failed build is tried again, up to this many tries in all; every try is recorded. */
export const ATTEMPTS_MAX = 3;

async function buildWithRetries(
  ctx: BuildContext,
  contender: ContenderName,
  roundNo: number | ColdRound,
  record: (b: BuildRun) => void,
): Promise<void> {
  for (let attempt = 0; attempt < ATTEMPTS_MAX; attempt++) {
    const b = await buildOnce(ctx, contender, roundNo, attempt);
    record(b);
    if (b.ok || unavailable(ctx, contender) !== null) return;
  }
}

// ---------------------------------------------------------------- cold rounds

/**
 * Cold builds, interleaved with local make: each run a farm with fresh worker
 * caches and a copy of the warm farm's master cache ("cold": a master that
 * has run before), then one with a fresh master cache too ("cold-master").
 * Same tree path as the warm farm, so the master's caches apply.
 */
async function coldRounds(options: {
  ctx: BuildContext;
  runs: number;
  workers: number;
  slotsPerWorker: number;
  hostBase: number;
  withLocal: boolean;
  /** The farm contenders that get cold builds (termite, termite-native). */
  contenders: ContenderName[];
  notes: string[];
  log: (message: string) => void;
  record: (build: BuildRun) => void;
}): Promise<void> {
  const { ctx, log } = options;
  const warm = ctx.farm!;
  const masterCache = `${warm.farm.dir}/master-cache`;
  const name = ctx.project.name;
  for (let r = 0; r < options.runs; r++) {
    if (options.withLocal) {
      log(`${name}: local, cold round ${r + 1}/${options.runs}`);
      await buildWithRetries(ctx, "local", "cold-local", options.record);
    }
    for (const contender of options.contenders) {
      for (const round of ["cold", "cold-master"] as const) {
        log(`${name}: ${contender}, ${round} round ${r + 1}/${options.runs}`);
        let bf: BenchFarm | null = null;
        try {
          bf = await startFarm({
            dir: `${ctx.pdir}/cold/farm`,
            tree: warm.farm.tree,
            workers: options.workers,
            slotsPerWorker: options.slotsPerWorker,
            prefix: `termite-bc${Deno.pid}`,
            firstHost: options.hostBase,
            masterCacheFrom: round === "cold" ? masterCache : undefined,
          });
          await buildWithRetries({ ...ctx, farm: bf, farmBroken: false }, contender, round, (b) => {
            if (!b.ok) log(`${name}: ${contender} ${round} failed: ${b.error?.split("\n")[0]}`);
            options.record(b);
          });
        } catch (err) {
          options.record({
            project: name,
            contender,
            round,
            attempt: 0,
            ok: false,
            error: `farm did not start: ${errorText(err)}`,
          });
        } finally {
          if (bf) await stopFarm(bf, options.notes);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- round trips

interface RoundTripSpec {
  name: string;
  via: RoundTripKind["via"];
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  /** Must run on a worker (checked with the master's counters). */
  remote: boolean;
  unavailable?: string;
}

const ROUND_TRIP_TIMEOUT_MS = 30_000;
const TINY_C = "int tiny(int x) { return x * 3 + 1; }\n";

async function measureRoundTrips(options: {
  n: number;
  dir: string;
  farm: BenchFarm | null;
  farmError: string;
  /** Set after a farm build timed out: later farm runs are skipped. */
  farmBroken?: boolean;
  distcc: DistccCluster | null;
  distccError: string;
  log: (message: string) => void;
}): Promise<RoundTripKind[]> {
  const { farm, distcc } = options;
  const plainEnv = Deno.env.toObject();
  const localDir = `${options.dir}/direct`, distccDir = `${options.dir}/distcc`;
  for (const d of [localDir, distccDir]) {
    await freshDir(d);
    await Deno.writeTextFile(`${d}/tiny.c`, TINY_C);
  }
  await Deno.writeTextFile(`${localDir}/empty.js`, "");
  let farmDir = "";
  if (farm) {
    farmDir = `${farm.farm.tree}/rt`;
    await freshDir(farmDir);
    await Deno.writeTextFile(`${farmDir}/tiny.c`, TINY_C);
  }
  const bin = farm?.farm.binDir ?? "";
  const native = farm ? await nativeLinksOf(farm.farm) : null;
  const nativeBin = native?.bin ?? "";
  // Its own links first in PATH, not the Deno wrapper's: a job's PATH is the one it was given.
  const nativeEnv = native?.env ?? plainEnv;
  const farmEnv = farm?.farm.env ?? plainEnv;
  const noFarm = farm ? undefined : options.farmError || "no farm";
  const noDistcc = distcc ? undefined : options.distccError || "no distcc";
  const specs: RoundTripSpec[] = [
    {
      name: "/bin/true x",
      via: "direct",
      argv: ["/bin/true", "x"],
      env: plainEnv,
      cwd: localDir,
      remote: false,
    },
    {
      name: "sh -c '/bin/true x'",
      via: "direct",
      argv: ["sh", "-c", "/bin/true x"],
      env: plainEnv,
      cwd: localDir,
      remote: false,
    },
    {
      // What the wrapper's start is measured against: Deno's own start.
      name: "deno run empty.js (bare Deno start)",
      via: "direct",
      argv: [Deno.execPath(), "run", `${localDir}/empty.js`],
      env: plainEnv,
      cwd: localDir,
      remote: false,
    },
    {
      name: "termite-sh -c true (builtin: wrapper start)",
      via: "termite",
      argv: [`${bin}/termite-sh`, "-c", "true"],
      env: farmEnv,
      cwd: farmDir,
      remote: false,
      unavailable: noFarm,
    },
    {
      name: "termite-sh -c '/bin/true x' (remote)",
      via: "termite",
      argv: [`${bin}/termite-sh`, "-c", "/bin/true x"],
      env: farmEnv,
      cwd: farmDir,
      remote: true,
      unavailable: noFarm,
    },
    {
      name: "termite-sh -c true (builtin: native client start)",
      via: "termite",
      argv: [`${nativeBin}/termite-sh`, "-c", "true"],
      env: nativeEnv,
      cwd: farmDir,
      remote: false,
      unavailable: noFarm,
    },
    {
      name: "termite-sh -c '/bin/true x' (remote, native client)",
      via: "termite",
      argv: [`${nativeBin}/termite-sh`, "-c", "/bin/true x"],
      env: nativeEnv,
      cwd: farmDir,
      remote: true,
      unavailable: noFarm,
    },
    {
      name: "gcc -c tiny.c",
      via: "direct",
      argv: ["gcc", "-c", "tiny.c"],
      env: plainEnv,
      cwd: localDir,
      remote: false,
    },
    {
      name: "gcc -c tiny.c (termite wrapper)",
      via: "termite",
      argv: [`${bin}/gcc`, "-c", "tiny.c"],
      env: farmEnv,
      cwd: farmDir,
      remote: true,
      unavailable: noFarm,
    },
    {
      name: "gcc -c tiny.c (native client)",
      via: "termite",
      argv: [`${nativeBin}/gcc`, "-c", "tiny.c"],
      env: nativeEnv,
      cwd: farmDir,
      remote: true,
      unavailable: noFarm,
    },
    {
      name: "distcc gcc -c tiny.c",
      via: "distcc",
      argv: ["distcc", "gcc", "-c", "tiny.c"],
      env: distcc?.env(false) ?? plainEnv,
      cwd: distccDir,
      remote: true,
      unavailable: noDistcc,
    },
  ];
  const kinds: RoundTripKind[] = specs.map((s) => ({
    name: s.name,
    via: s.via,
    ok: s.unavailable === undefined,
    wallMs: [],
    ...(s.unavailable === undefined ? {} : { error: s.unavailable }),
  }));
  const clientCpu = specs.map(() => [] as number[]), masterCpu = specs.map(() => 0);
  const remote = specs.map(() => 0);
  /** Commands whose master CPU could not be told (a master thread ended meanwhile). */
  const masterUnknown = specs.map(() => 0);
  const masterPid = farm?.farm.master.child.pid ?? 0;
  const workersOf = farm ? await workerPids(farm) : [];
  const workerCpu = specs.map(() => 0);
  const decoder = new TextDecoder();
  // Interleaved (one of each kind per iteration) so that load from elsewhere
  // spreads over all kinds; iteration 0 warms up and is not counted.
  for (let i = 0; i <= options.n; i++) {
    for (const [k, spec] of specs.entries()) {
      if (!kinds[k].ok) continue;
      const counters = spec.via === "termite" ? await termiteCounters(farm!.farm) : null;
      const masterBefore = spec.via === "termite" ? await threadsCpuMs(masterPid) : 0;
      const workersBefore = spec.via === "termite" ? await processesCpuMs(workersOf) : 0;
      const selfBefore = childrenCpuMs();
      const start = performance.now();
      let out: Deno.CommandOutput;
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), ROUND_TRIP_TIMEOUT_MS);
      try {
        out = await new Deno.Command(spec.argv[0], {
          args: spec.argv.slice(1),
          cwd: spec.cwd,
          env: spec.env,
          clearEnv: true,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
          signal: abort.signal,
        }).output();
      } catch (err) {
        kinds[k] = { ...kinds[k], ok: false, error: errorText(err) };
        continue;
      } finally {
        clearTimeout(timer);
      }
      if (abort.signal.aborted) {
        kinds[k] = { ...kinds[k], ok: false, error: `timed out after ${ROUND_TRIP_TIMEOUT_MS} ms` };
        continue;
      }
      const wall = performance.now() - start;
      const selfAfter = childrenCpuMs();
      const masterAfter = spec.via === "termite" ? await threadsCpuMs(masterPid) : 0;
      const workersAfter = spec.via === "termite" ? await processesCpuMs(workersOf) : 0;
      if (out.code !== 0) {
        kinds[k] = {
          ...kinds[k],
          ok: false,
          error: `exit ${out.code}: ${decoder.decode(out.stderr).trim().slice(0, 500)}`,
        };
        continue;
      }
      if (counters) {
        const d = counterDelta(counters, await termiteCounters(farm!.farm));
        if (spec.remote && d.jobsRemote < 1) {
          // Not timed: it ran on the master (after a failed remote try, say).
          const n = (kinds[k].notRemote ?? 0) + 1;
          kinds[k].notRemote = n;
          kinds[k].lastNotRemote = JSON.stringify(d);
          if (n > Math.max(3, options.n / 2)) {
            kinds[k] = {
              ...kinds[k],
              ok: false,
              error: `${n} commands did not run on a worker, last: ${kinds[k].lastNotRemote}`,
            };
          }
          continue;
        }
        if (i > 0) remote[k] += d.jobsRemote;
      }
      if (i === 0) continue;
      kinds[k].wallMs.push(round(wall, 4));
      clientCpu[k].push(selfAfter - selfBefore);
      workerCpu[k] += workersAfter - workersBefore;
      if (masterAfter >= masterBefore) masterCpu[k] += masterAfter - masterBefore;
      else masterUnknown[k]++;
    }
    if (i % 20 === 0) options.log(`round trips: ${i}/${options.n}`);
  }
  return kinds.map((kind, k) => {
    if (!kind.ok || kind.wallMs.length === 0) return { ...kind, ok: false };
    const n = kind.wallMs.length;
    return {
      ...kind,
      medianMs: round(median(kind.wallMs)),
      meanMs: round(kind.wallMs.reduce((a, b) => a + b, 0) / n),
      p90Ms: round(percentile(kind.wallMs, 0.9)),
      clientCpuPerCmdMs: round(clientCpu[k].reduce((a, b) => a + b, 0) / n),
      clientCpuMedianMs: round(median(clientCpu[k])),
      ...(kind.via === "termite"
        ? {
          masterCpuPerCmdMs: round(masterCpu[k] / Math.max(1, n - masterUnknown[k])),
          workerCpuPerCmdMs: round(workerCpu[k] / n),
          remoteJobs: remote[k],
        }
        : {}),
    };
  });
}

function deriveRoundTrips(kinds: RoundTripKind[]): RoundTripDerived {
  const found = (name: string) => kinds.find((k) => k.name === name && k.ok);
  const m = (name: string) => found(name)?.medianMs;
  const trueMs = m("/bin/true x"), shTrue = m("sh -c '/bin/true x'");
  const wrapper = m("termite-sh -c true (builtin: wrapper start)");
  const remoteTrue = m("termite-sh -c '/bin/true x' (remote)");
  const gcc = m("gcc -c tiny.c"), tgcc = m("gcc -c tiny.c (termite wrapper)");
  const dgcc = m("distcc gcc -c tiny.c");
  const out: RoundTripDerived = {};
  if (wrapper !== undefined && trueMs !== undefined) out.wrapperStartMs = round(wrapper - trueMs);
  if (out.wrapperStartMs !== undefined && tgcc !== undefined && gcc !== undefined) {
    out.termiteCompileBeyondWrapperMs = round(tgcc - gcc - out.wrapperStartMs);
  }
  if (out.wrapperStartMs !== undefined && remoteTrue !== undefined && shTrue !== undefined) {
    out.termiteTrueBeyondWrapperMs = round(remoteTrue - shTrue - out.wrapperStartMs);
  }
  if (dgcc !== undefined && gcc !== undefined) out.distccCompileOverheadMs = round(dgcc - gcc);
  const deno = found("deno run empty.js (bare Deno start)");
  const start = found("termite-sh -c true (builtin: wrapper start)");
  if (deno?.medianMs && start?.medianMs) {
    out.wrapperStartVsDeno = round(start.medianMs / deno.medianMs);
    if (deno.clientCpuMedianMs && start.clientCpuMedianMs) {
      out.wrapperStartVsDenoCpu = round(start.clientCpuMedianMs / deno.clientCpuMedianMs);
    }
  }
  if (tgcc !== undefined && dgcc) out.remoteCompileVsDistcc = round(tgcc / dgcc);
  const ngcc = m("gcc -c tiny.c (native client)");
  if (ngcc !== undefined && dgcc) out.nativeRemoteCompileVsDistcc = round(ngcc / dgcc);
  const nstart = m("termite-sh -c true (builtin: native client start)");
  if (nstart !== undefined && trueMs !== undefined) out.nativeStartMs = round(nstart - trueMs);
  const onWorker = found("gcc -c tiny.c (termite wrapper)")?.workerCpuPerCmdMs;
  const direct = found("gcc -c tiny.c")?.clientCpuMedianMs;
  if (onWorker !== undefined && direct !== undefined) {
    out.workerOverheadTinyCompileMs = round(onWorker - direct);
  }
  return out;
}

// ---------------------------------------------------------------- scaling

function scalingClientArg(value: string | undefined): "deno" | "native" | undefined {
  if (value === undefined || value === "deno" || value === "native") return value;
  throw new Error(`--scaling-client: deno or native, not ${value}`);
}

async function measureScaling(options: {
  project: Project;
  counts: number[];
  treeReset: TreeReset;
  runs: number;
  cores: number;
  slotsPerWorker: number;
  dir: string;
  hostBase: number;
  client: "deno" | "native";
  notes: string[];
  log: (message: string) => void;
}): Promise<ScalingPoint[]> {
  const points: ScalingPoint[] = [];
  const failAll = (error: string) =>
    options.counts.map((workers) => ({
      workers,
      ok: false,
      jobs: options.slotsPerWorker * Math.max(1, workers),
      wallMs: [],
      failedTries: [],
      error,
    }));
  if (!await cpuCgroupsAvailable()) {
    const why = "no writable cgroup v1 cpu controller at /sys/fs/cgroup/cpu";
    options.notes.push(`scaling skipped: ${why}`);
    return failAll(why);
  }
  let src: string;
  try {
    src = await options.project.source();
  } catch (err) {
    return failAll(errorText(err));
  }
  const groups: CpuGroup[] = [];
  try {
    const masterGroup = await CpuGroup.create(`termite-bench-${Deno.pid}-master`);
    groups.push(masterGroup);
    for (const workers of options.counts) {
      const jobs = options.slotsPerWorker * Math.max(1, workers);
      const point: ScalingPoint = { workers, ok: false, jobs, wallMs: [], failedTries: [] };
      points.push(point);
      options.log(`scaling: ${workers} workers`);
      const pdir = `${options.dir}/n${workers}`;
      let bf: BenchFarm | null = null;
      const workerGroups: CpuGroup[] = [];
      try {
        await freshDir(pdir);
        await freshDir(`${pdir}/logs`);
        let buildDir = `${pdir}/local/build`;
        let env = Deno.env.toObject();
        if (workers > 0) {
          bf = await startFarm({
            dir: `${pdir}/farm`,
            tree: `${pdir}/tree`,
            workers,
            slotsPerWorker: options.slotsPerWorker,
            prefix: `termite-bs${Deno.pid}`,
            firstHost: options.hostBase,
          });
          buildDir = `${bf.farm.tree}/build`;
          env = options.client === "native" ? (await nativeLinksOf(bf.farm)).env : bf.farm.env;
          await masterGroup.moveTree(bf.farm.master.child.pid);
          await masterGroup.moveTree(bf.farm.coordinator.child.pid);
          for (const [i, w] of bf.farm.workers.entries()) {
            const g = await CpuGroup.create(`termite-bench-${Deno.pid}-w${i}`);
            groups.push(g);
            workerGroups.push(g);
            await g.moveTree(w.child.pid);
          }
        } else {
          await Deno.mkdir(`${pdir}/local`, { recursive: true });
        }
        const all = [masterGroup, ...workerGroups];
        /** CPU of the measured runs on the build host, seconds, and their compile jobs. */
        const host = { cpuS: 0, jobs: 0 };
        const build = async (label: string) => {
          for (let attempt = 0;; attempt++) {
            const name = `${label}${attempt ? `-try${attempt}` : ""}`;
            const dir = options.treeReset === "new-path" ? `${buildDir}-${name}` : buildDir;
            await resetTree(src, dir, options.treeReset);
            const logPath = `${pdir}/logs/${name}.log`;
            const daemons = bf ? [bf.farm.master.child.pid, bf.farm.coordinator.child.pid] : [];
            const cpuOf = async (pid: number) => (await procStat(pid))?.selfS ?? NaN;
            const daemonsBefore = await Promise.all(daemons.map(cpuOf));
            const t = await timedCommand({
              argv: options.project.command(jobs),
              cwd: dir,
              env,
              logPath,
              timeoutS: options.project.timeoutS,
              cgroupProcs: masterGroup.procsFile,
            });
            try {
              if (t.code !== 0) throw new Error(await diagnose(t.code, t.timedOut, logPath));
              await options.project.check(dir);
              if (label.startsWith("run")) {
                const daemonsAfter = await Promise.all(daemons.map(cpuOf));
                host.cpuS += t.cpuS +
                  daemonsAfter.reduce((sum, s, i) => sum + s - daemonsBefore[i], 0);
                host.jobs += await countObjects(dir);
              }
              return t.wallMs;
            } catch (err) {
              point.failedTries.push(`${label}, try ${attempt + 1}: ${errorText(err)}`);
              if (t.timedOut || attempt + 1 >= ATTEMPTS_MAX) throw err;
            } finally {
              if (options.treeReset === "new-path") {
                await Deno.remove(dir, { recursive: true }).catch(() => {});
              }
            }
          }
        };
        if (workers > 0) {
          // Warm the farm (mirrors, stores, hash cache) without quotas.
          for (const g of all) await g.setCores(null);
          const before = await termiteCounters(bf!.farm);
          point.coldMs = Math.round(await build("cold"));
          point.coldBytesServed = (await termiteCounters(bf!.farm)).bytesServed -
            before.bytesServed;
        }
        for (const g of all) await g.setCores(options.cores);
        const throttledBefore = await Promise.all(all.map((g) => g.throttledS()));
        for (let r = 0; r < options.runs; r++) {
          point.wallMs.push(Math.round(await build(`run${r}`)));
        }
        const throttledAfter = await Promise.all(all.map((g) => g.throttledS()));
        point.throttledS = round(
          throttledAfter.reduce((a, b, i) => a + b - throttledBefore[i], 0),
        );
        point.medianMs = Math.round(median(point.wallMs));
        if (host.jobs > 0) point.hostCpuMsPerJob = round((host.cpuS * 1000) / host.jobs);
        point.ok = true;
      } catch (err) {
        point.error = errorText(err);
        options.log(`scaling ${workers}: ${point.error}`);
      } finally {
        for (const g of [masterGroup, ...workerGroups]) await g.setCores(null).catch(() => {});
        if (bf) await stopFarm(bf, options.notes);
        for (const g of workerGroups) {
          await g.remove().catch((err) => options.notes.push(errorText(err)));
          groups.splice(groups.indexOf(g), 1);
        }
      }
    }
  } finally {
    for (const g of groups) await g.remove().catch((err) => options.notes.push(errorText(err)));
  }
  const base = points.find((p) => p.workers === 0 && p.ok)?.medianMs;
  for (const p of points) {
    if (p.ok && base !== undefined && p.medianMs) p.speedup = round(base / p.medianMs);
  }
  return points;
}

// ---------------------------------------------------------------- report

function summarize(builds: BuildRun[], projects: Project[], contenders: ContenderName[]) {
  const out: BuildSummary[] = [];
  for (const p of projects) {
    for (const c of contenders) {
      const mine = builds.filter((b) => b.project === p.name && b.contender === c);
      const runs = mine.filter((b) => typeof b.round === "number");
      const ok = runs.filter((b) => b.ok);
      const colds = mine.filter((b) => typeof b.round !== "number");
      const okIn = (round: ColdRound) => colds.filter((b) => b.ok && b.round === round);
      const bytes = (list: BuildRun[]) => {
        const known = list.map((b) => b.termiteJobs?.bytesServed).filter((x) => x !== undefined);
        return known.length > 0 ? Math.round(median(known)) : undefined;
      };
      const s: BuildSummary = { project: p.name, contender: c, ok: ok.length > 0, runs: ok.length };
      if (okIn("cold").length > 0) {
        s.coldMs = Math.round(median(okIn("cold").map((b) => b.wallMs!)));
        s.coldBytesServed = bytes(okIn("cold"));
      }
      if (okIn("cold-master").length > 0) {
        s.coldMasterMs = Math.round(median(okIn("cold-master").map((b) => b.wallMs!)));
        s.coldMasterBytesServed = bytes(okIn("cold-master"));
      }
      if (c === "termite") s.bytesServed = bytes(ok);
      if (okIn("fill").length > 0) {
        s.fillMs = Math.round(median(okIn("fill").map((b) => b.wallMs!)));
      }
      if (CACHING_CONTENDERS.includes(c)) {
        s.cacheHits = ok.reduce((a, b) => a + (b.cacheHits ?? 0), 0);
        s.cacheMisses = ok.reduce((a, b) => a + (b.cacheMisses ?? 0), 0);
      }
      if (ok.length > 0) {
        const walls = ok.map((b) => b.wallMs!);
        s.medianMs = Math.round(median(walls));
        s.minMs = Math.min(...walls);
        s.maxMs = Math.max(...walls);
        s.objects = ok[0].objects;
        const perJob = ok.map((b) =>
          ((b.clientCpuS ?? 0) + (b.masterCpuS ?? 0)) * 1000 / Math.max(1, b.objects ?? 1)
        );
        s.clientCpuPerJobMs = round(median(perJob));
        if (c !== "local" && c !== "distcc" && c !== "ccache") {
          s.masterCpuPerJobMs = round(
            median(ok.map((b) => (b.masterCpuS ?? 0) * 1000 / Math.max(1, b.objects ?? 1))),
          );
          s.masterOwnCpuPerJobMs = round(
            median(ok.map((b) => (b.masterOwnCpuS ?? 0) * 1000 / Math.max(1, b.objects ?? 1))),
          );
          s.remoteJobs = ok.reduce((a, b) => a + (b.termiteJobs?.jobsRemote ?? 0), 0);
          s.allJobs = ok.reduce((a, b) => a + (b.termiteJobs?.jobs ?? 0), 0);
        }
        if (c === "termite" || c === "termite-native") {
          s.workerCpuPerJobMs = round(
            median(
              ok.map((b) =>
                (b.workerCpuS ?? 0) * 1000 / Math.max(1, b.termiteJobs?.jobsRemote ?? 1)
              ),
            ),
          );
          const measured = ok.filter((b) => (b.termiteJobs?.jobCpuMs ?? 0) > 0);
          if (measured.length > 0) {
            s.workerOverheadPerJobMs = round(
              median(measured.map((b) =>
                ((b.workerCpuS ?? 0) * 1000 - b.termiteJobs!.jobCpuMs) /
                Math.max(1, b.termiteJobs?.jobsRemote ?? 1)
              )),
            );
          }
        }
      }
      const failed = [...colds, ...runs].filter((b) => !b.ok);
      s.failedAttempts = failed.length;
      if (failed.length > 0) s.error = failed[0].error;
      out.push(s);
    }
    const localSummary = out.find((s) => s.project === p.name && s.contender === "local");
    const local = localSummary?.medianMs;
    const locals = builds.filter((b) =>
      b.project === p.name && b.contender === "local" && b.ok &&
      (typeof b.round === "number" || b.round === "cold-local")
    ).map((b) => b.wallMs!);
    const localAll = locals.length > 0 ? median(locals) : undefined;
    for (const s of out.filter((s) => s.project === p.name)) {
      if (local && s.medianMs) s.vsLocal = round(s.medianMs / local, 4);
      if (localAll && s.coldMs) s.coldVsLocal = round(s.coldMs / localAll, 4);
      if (localAll && s.coldMasterMs) s.coldMasterVsLocal = round(s.coldMasterMs / localAll, 4);
      if (s.medianMs && s.coldMs) s.coldVsWarm = round(s.coldMs / s.medianMs, 4);
      if (local && s.fillMs) s.fillVsLocal = round(s.fillMs / local, 4);
    }
  }
  return out;
}

function goals(
  summaries: BuildSummary[],
  derived: RoundTripDerived,
  scaling: ScalingPoint[],
  /** Whether round trips were measured (`--round-trips 0`, `--action-cache`: not). */
  roundTrips: boolean,
): Goal[] {
  const out: Goal[] = [];
  for (const s of summaries.filter((s) => s.contender === "termite")) {
    const v = s.vsLocal ?? null;
    out.push({
      name: `${s.project}: build time farm / local make (same -j, warm)`,
      measured: v,
      target: `≤ ${GOAL_BUILD_OVERHEAD}`,
      met: v === null ? null : v <= GOAL_BUILD_OVERHEAD,
      detail: v === null
        ? `no figure: ${s.error ?? "local or farm build missing"}`
        : v <= GOAL_BUILD_OVERHEAD
        ? `met, ${round((GOAL_BUILD_OVERHEAD - v) * 100, 2)} points to spare`
        : `not met: ${round((v / GOAL_BUILD_OVERHEAD - 1) * 100, 2)}% over the goal`,
    });
  }
  const t = derived.termiteCompileBeyondWrapperMs, d = derived.distccCompileOverheadMs;
  if (roundTrips) {
    out.push({
      name: "per-command overhead beyond wrapper start (gcc -c tiny.c), termite vs distcc",
      measured: t ?? null,
      target: d === undefined ? "≤ distcc's (not measured)" : `≤ ${d} ms (distcc)`,
      met: t === undefined || d === undefined ? null : t <= d,
      detail: t === undefined || d === undefined
        ? "no figure: a contender failed or was skipped"
        : t <= d
        ? `met: ${round(d - t)} ms less than distcc`
        : `not met: ${round(t - d)} ms more than distcc (${round(t / Math.max(d, 0.001))}×)`,
    });
  }
  out.push(...issue14Goals(summaries, roundTrips ? derived : null), ...issue16Goals(summaries));
  for (const p of scaling.filter((p) => p.workers > 0)) {
    const target = GOAL_SCALING_PER_WORKER * p.workers;
    const v = p.speedup ?? null;
    out.push({
      name: `scaling: speed-up with ${p.workers} worker${p.workers > 1 ? "s" : ""}`,
      measured: v,
      target: `≥ ${round(target)}`,
      met: v === null ? null : v >= target,
      detail: v === null
        ? `no figure: ${p.error ?? "no baseline"}`
        : v >= target
        ? `met (${round(v / p.workers)} per worker)`
        : `not met: ${round(v / p.workers)} per worker, ${round((1 - v / target) * 100, 2)}% short`,
    });
  }
  return out;
}

/** A goal "measured ≤ target", with the verdict said the same way for each. */
function atMost(name: string, measured: number | undefined, target: number | undefined, options: {
  unit: string;
  targetText?: string;
  missing?: string;
}): Goal {
  const u = options.unit;
  const targetText = options.targetText ?? (target === undefined ? "—" : `≤ ${target}${u}`);
  const unit = u.trim() === "ms" ? "ms" : "×";
  if (measured === undefined || target === undefined) {
    return {
      name,
      unit,
      measured: measured ?? null,
      target: targetText,
      met: null,
      detail: `no figure: ${options.missing ?? "a contender failed or was skipped"}`,
    };
  }
  const met = measured <= target;
  return {
    name,
    unit,
    measured,
    target: targetText,
    met,
    detail: met
      ? `met: ${round(target - measured)}${u} to spare`
      : `not met: ${round(measured - target)}${u} over (${round(measured / target)}× the target)`,
  };
}

/** The goals of issue 14: what the build host pays per job, side by side in this run. */
function issue14Goals(summaries: BuildSummary[], derived: RoundTripDerived | null): Goal[] {
  const out: Goal[] = [];
  for (
    const s of summaries.filter((s) =>
      s.contender === "termite" || s.contender === "termite-native"
    )
  ) {
    const distcc = summaries.find((d) => d.project === s.project && d.contender === "distcc");
    const project = s.contender === "termite" ? s.project : `${s.project} (native client)`;
    out.push(
      atMost(
        `${project}: the master's own CPU per compile job (warm)`,
        s.masterOwnCpuPerJobMs,
        GOAL_MASTER_CPU_PER_JOB_MS,
        {
          unit: " ms",
          missing: s.error ?? "the farm did not build",
        },
      ),
      atMost(
        `${project}: build-host CPU per compile job (make, wrappers, master), farm vs distcc`,
        s.clientCpuPerJobMs,
        distcc?.clientCpuPerJobMs,
        {
          unit: " ms",
          targetText: distcc?.clientCpuPerJobMs === undefined
            ? "≤ distcc's (not measured)"
            : `≤ ${distcc.clientCpuPerJobMs} ms (distcc)`,
        },
      ),
      atMost(
        `${project}: worker-side CPU per remote job beyond the job (worker, FUSE, launcher)`,
        s.workerOverheadPerJobMs,
        GOAL_WORKER_OVERHEAD_MS,
        { unit: " ms", missing: "the farm or local make did not build" },
      ),
      atMost(
        `${project}: warm build farm / local make (issue 14)`,
        s.vsLocal,
        GOAL_WARM_BUILD_ISSUE14,
        {
          unit: "",
        },
      ),
    );
  }
  if (derived === null) return out;
  out.push(
    atMost(
      "wrapper start (termite-sh -c true) / bare `deno run empty.js`, median wall" +
        (derived.wrapperStartVsDenoCpu === undefined
          ? ""
          : ` (CPU: ${derived.wrapperStartVsDenoCpu}×)`),
      derived.wrapperStartVsDeno,
      GOAL_WRAPPER_START_VS_DENO,
      { unit: "×", missing: "the farm or the bare Deno run failed" },
    ),
    atMost(
      "worker-side CPU of a remote gcc -c tiny.c beyond the compile run directly",
      derived.workerOverheadTinyCompileMs,
      GOAL_WORKER_OVERHEAD_MS,
      { unit: " ms", missing: "the farm or the direct compile failed" },
    ),
    atMost(
      "remote gcc -c tiny.c round trip, termite / distcc",
      derived.remoteCompileVsDistcc,
      1,
      { unit: "×" },
    ),
    atMost(
      "remote gcc -c tiny.c round trip, termite with the native client / distcc",
      derived.nativeRemoteCompileVsDistcc,
      1,
      { unit: "×" },
    ),
  );
  return out;
}

/** The goals of issue 16: a rebuild from the action cache against local make and warm ccache. */
function issue16Goals(summaries: BuildSummary[]): Goal[] {
  const out: Goal[] = [];
  for (
    const s of summaries.filter((s) =>
      s.contender === "termite-cached" || s.contender === "termite-cached-native"
    )
  ) {
    const ccache = summaries.find((d) => d.project === s.project && d.contender === "ccache");
    const project = s.contender === "termite-cached" ? s.project : `${s.project} (native client)`;
    out.push(
      atMost(
        `${project}: rebuild from the action cache / local make (cold)`,
        s.vsLocal,
        GOAL_CACHED_VS_LOCAL,
        { unit: "×", missing: s.error ?? "local make or the cached rebuild did not build" },
      ),
      atMost(
        `${project}: rebuild from the action cache / ccache's warm rebuild`,
        s.medianMs && ccache?.medianMs ? round(s.medianMs / ccache.medianMs) : undefined,
        GOAL_CACHED_VS_CCACHE,
        {
          unit: "×",
          targetText: `< ${GOAL_CACHED_VS_CCACHE}× (faster)`,
          missing: ccache?.error ?? s.error ?? "ccache or the cached rebuild did not build",
        },
      ),
    );
  }
  return out;
}

/** One line of text for a markdown table cell. */
function mib(bytes: number | undefined): string {
  return bytes === undefined ? "—" : (bytes / 2 ** 20).toFixed(1);
}

function cell(text: string | undefined, max = 200): string {
  const line = (text ?? "").split("\n")[0].replace(/\|/g, "/");
  return line.length > max ? `${line.slice(0, max)}…` : line;
}

const s1 = (ms: number | undefined) => ms === undefined ? "—" : (ms / 1000).toFixed(2);
const fx = (v: number | undefined, d = 2) => v === undefined ? "—" : v.toFixed(d);

function markdown(r: Omit<HarnessReport, "table" | "results" | "files">): string {
  const lines: string[] = [];
  lines.push(
    `Farm benchmark (${r.date.slice(0, 10)}, ${r.machine.cpus} cores, make -j${r.settings.jobs}, ` +
      `${r.settings.workers} workers × ${r.settings.slotsPerWorker} slots; medians of ` +
      `${r.settings.runs} interleaved run${r.settings.runs > 1 ? "s" : ""}${
        r.quick ? ", quick mode" : ""
      }; clean tree per run: ${r.settings.treeReset}; load average ${r.machine.loadAtStart} ` +
      `at the start, ${r.machine.loadAtEnd} at the end)`,
    "",
    "| project | contender | compile jobs | median s | min–max s | cold s | vs local | " +
      "master-host CPU ms/job | worker CPU ms/remote job (beyond the job) | remote jobs | " +
      "failed tries |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  );
  for (const s of r.summaries) {
    if (!s.ok) {
      lines.push(
        `| ${s.project} | ${s.contender} | — | failed | — | — | — | — | — | — | ` +
          `${s.failedAttempts ?? 0}: ${cell(s.error)} |`,
      );
      continue;
    }
    lines.push(
      `| ${s.project} | ${s.contender} | ${s.objects ?? "—"} | ${s1(s.medianMs)} | ` +
        `${s1(s.minMs)}–${s1(s.maxMs)} | ${s1(s.coldMs)} | ${fx(s.vsLocal)} | ` +
        `${fx(s.clientCpuPerJobMs, 1)}${
          s.masterCpuPerJobMs !== undefined
            ? ` (master ${fx(s.masterCpuPerJobMs, 1)}, own ${fx(s.masterOwnCpuPerJobMs, 2)})`
            : ""
        } | ${
          s.workerCpuPerJobMs !== undefined
            ? `${fx(s.workerCpuPerJobMs, 1)} (${fx(s.workerOverheadPerJobMs, 1)})`
            : "—"
        } | ${s.allJobs !== undefined ? `${s.remoteJobs}/${s.allJobs}` : "—"} | ` +
        `${s.failedAttempts ?? 0} |`,
    );
  }
  lines.push(...cacheTable(r));
  const colds = r.summaries.filter((s) => s.coldMs !== undefined || s.coldMasterMs !== undefined);
  if (colds.length > 0) {
    lines.push(
      "",
      'Cold builds (fresh worker caches every build; "cold": the master\'s caches from the warm ' +
        'runs, "cold-master": fresh too; against the median of every local make, the cold ' +
        "rounds' included)",
      "",
      "| project | contender | cold s | vs local | vs warm | cold-master s | vs local | master MiB sent: warm / cold / cold-master |",
      "|---|---|---|---|---|---|---|---|",
    );
    for (const s of colds) {
      lines.push(
        `| ${s.project} | ${s.contender} | ${s1(s.coldMs)} | ${fx(s.coldVsLocal)} | ${
          fx(s.coldVsWarm)
        } | ` +
          `${s1(s.coldMasterMs)} | ${fx(s.coldMasterVsLocal)} | ${mib(s.bytesServed)} / ` +
          `${mib(s.coldBytesServed)} / ${mib(s.coldMasterBytesServed)} |`,
      );
    }
  }
  const failures = r.builds.filter((b) => !b.ok);
  if (failures.length > 0) {
    lines.push("", "Failed tries (each was tried again, up to " + `${ATTEMPTS_MAX} tries):`, "");
    for (const b of failures) {
      lines.push(
        `- ${b.project} ${b.contender} ${
          typeof b.round === "number" ? `run ${b.round + 1}` : b.round
        }, ` +
          `try ${b.attempt + 1}: ${cell(b.error)}`,
      );
    }
  }
  if (r.roundTrips.length > 0) {
    lines.push(
      "",
      `Round trips (${r.settings.roundTrips} sequential commands of each kind, interleaved)`,
      "",
      "| command | via | median ms | mean ms | p90 ms | client CPU ms/cmd (median) | " +
        "master CPU ms/cmd | worker CPU ms/cmd | remote |",
      "|---|---|---|---|---|---|---|---|---|",
    );
    for (const k of r.roundTrips) {
      if (!k.ok) {
        lines.push(
          `| ${k.name} | ${k.via} | failed | — | — | — | — | — | ${cell(k.error)} |`,
        );
        continue;
      }
      lines.push(
        `| ${k.name} | ${k.via} | ${fx(k.medianMs, 1)} | ${fx(k.meanMs, 1)} | ${
          fx(k.p90Ms, 1)
        } | ` +
          `${fx(k.clientCpuPerCmdMs, 1)} (${fx(k.clientCpuMedianMs, 1)}) | ` +
          `${fx(k.masterCpuPerCmdMs, 2)} | ${fx(k.workerCpuPerCmdMs, 2)} | ` +
          `${k.remoteJobs ?? "—"}${k.notRemote ? ` (+${k.notRemote} not remote)` : ""} |`,
      );
    }
    const d = r.roundTripDerived;
    lines.push(
      "",
      `Wrapper start ${fx(d.wrapperStartMs, 1)} ms; beyond it, a remote compile costs ` +
        `${fx(d.termiteCompileBeyondWrapperMs, 1)} ms and a remote /bin/true ` +
        `${fx(d.termiteTrueBeyondWrapperMs, 1)} ms; distcc adds ` +
        `${fx(d.distccCompileOverheadMs, 1)} ms to a compile. Wrapper start / bare Deno start: ` +
        `${fx(d.wrapperStartVsDeno)}× wall, ${fx(d.wrapperStartVsDenoCpu)}× CPU; remote tiny ` +
        `compile / distcc's: ${fx(d.remoteCompileVsDistcc)}×. On the workers, a remote tiny ` +
        `compile costs ${fx(d.workerOverheadTinyCompileMs, 1)} ms of CPU beyond the compile.`,
    );
  }
  if (r.scaling.length > 0) {
    lines.push(
      "",
      `Scaling (${r.settings.scalingProject}; every host ${r.settings.coresPerHost} core by a ` +
        `CPU quota; 0 workers = local make on the master host; clean tree per run: ` +
        `${r.settings.scalingTreeReset}; tools linked to the ${r.settings.scalingClient} wrapper)`,
      "",
      "| workers | make -j | median s | runs s | speed-up | per worker | build-host CPU ms/job | master MiB sent, cold | failed tries |",
      "|---|---|---|---|---|---|---|---|---|",
    );
    for (const p of r.scaling) {
      lines.push(
        p.ok
          ? `| ${p.workers} | ${p.jobs} | ${s1(p.medianMs)} | ${
            p.wallMs.map((w) => s1(w)).join(", ")
          } | ${fx(p.speedup)} | ${
            p.workers > 0 && p.speedup !== undefined ? fx(p.speedup / p.workers) : "—"
          } | ${fx(p.hostCpuMsPerJob, 1)} | ${mib(p.coldBytesServed)} | ${p.failedTries.length} |`
          : `| ${p.workers} | ${p.jobs} | failed | — | — | — | — | — | ${p.failedTries.length}: ${
            cell(p.error)
          } |`,
      );
    }
  }
  const scalingFailures = r.scaling.flatMap((p) =>
    p.failedTries.map((f) => `- ${p.workers} workers, ${cell(f)}`)
  );
  if (scalingFailures.length > 0) lines.push("", "Failed scaling tries:", "", ...scalingFailures);
  lines.push("", "| goal | measured | target | verdict |", "|---|---|---|---|");
  for (const g of r.goals) {
    lines.push(
      `| ${g.name} | ${g.measured === null ? "—" : g.measured} | ${g.target} | ${cell(g.detail)} |`,
    );
  }
  if (r.notes.length > 0) lines.push("", ...r.notes.map((n) => `- ${n}`));
  return lines.join("\n") + "\n";
}

/** The caching contenders' table and the issue-16 ratios in words; [] without them. */
function cacheTable(r: Omit<HarnessReport, "table" | "results" | "files">): string[] {
  const cached = r.summaries.filter((s) => CACHING_CONTENDERS.includes(s.contender));
  if (cached.length === 0) return [];
  const loads = (s: BuildSummary, measured: boolean) => {
    const mine = r.builds.filter((b) =>
      b.project === s.project && b.contender === s.contender && b.ok &&
      (measured ? typeof b.round === "number" : b.round === "fill")
    );
    const l = mine.map((b) => b.loadBefore).filter((x) => x !== undefined);
    return l.length === 0 ? "—" : `${Math.min(...l)}–${Math.max(...l)}`;
  };
  const lines = [
    "",
    "Rebuilds from a cache (issue 16): each contender's first build (fill) fills its cache; " +
    "each measured run rebuilds after the tree's reset (objects removed), interleaved with " +
    "local make (a cold build)",
    "",
    "| project | contender | fill s | fill vs local | rebuild s: median (min–max) | vs local | " +
    "hits / misses (measured runs) | load average before: fill; rebuilds |",
    "|---|---|---|---|---|---|---|---|",
  ];
  const words: string[] = [];
  for (const s of cached) {
    lines.push(
      `| ${s.project} | ${s.contender} | ${s1(s.fillMs)} | ${fx(s.fillVsLocal)} | ${
        s.ok ? `${s1(s.medianMs)} (${s1(s.minMs)}–${s1(s.maxMs)})` : `failed: ${cell(s.error, 80)}`
      } | ${fx(s.vsLocal, 3)} | ${s.cacheHits ?? "—"} / ${s.cacheMisses ?? "—"} | ` +
        `${loads(s, false)}; ${loads(s, true)} |`,
    );
    if (s.contender !== "termite-cached" && s.contender !== "termite-cached-native") continue;
    const local = r.summaries.find((x) => x.project === s.project && x.contender === "local");
    const cc = r.summaries.find((x) => x.project === s.project && x.contender === "ccache");
    words.push(
      `- **${s.project}**: rebuild from Termite's action cache${
        s.contender === "termite-cached" ? "" : " (native client)"
      } ${s1(s.medianMs)} s = ` +
        `**${fx(s.vsLocal, 3)}×** local make (${s1(local?.medianMs)} s; goal ≤ ` +
        `${GOAL_CACHED_VS_LOCAL}×) and **${
          s.medianMs && cc?.medianMs ? fx(s.medianMs / cc.medianMs, 3) : "—"
        }×** ccache's warm rebuild (${s1(cc?.medianMs)} s = ${
          fx(cc?.vsLocal, 3)
        }× local; goal < 1×)`,
    );
  }
  if (words.length > 0) lines.push("", ...words);
  return lines;
}

function benchResults(r: Omit<HarnessReport, "table" | "results" | "files">): BenchResult[] {
  const out: BenchResult[] = [];
  for (const s of r.summaries) {
    const label = `${s.project} ${s.contender}`;
    if (!s.ok) {
      out.push({ name: `${label} build`, value: NaN, unit: "s", note: `failed: ${s.error}` });
      continue;
    }
    out.push({
      name: `${label} build (make -j${r.settings.jobs})`,
      value: s.medianMs! / 1000,
      unit: "s",
      note: `median of ${s.runs}, ${s1(s.minMs)}–${s1(s.maxMs)} s${
        s.coldMs ? `, cold ${s1(s.coldMs)} s` : ""
      }${s.vsLocal ? `, ${s.vsLocal}× local` : ""}`,
    });
    out.push({
      name: `${label} master-host CPU per compile job`,
      value: s.clientCpuPerJobMs!,
      unit: "ms",
      note: `${s.objects} objects`,
    });
  }
  for (const k of r.roundTrips.filter((k) => k.ok)) {
    out.push({
      name: `round trip: ${k.name}`,
      value: k.medianMs!,
      unit: "ms",
      note: `${k.via}; mean ${k.meanMs}, client CPU ${k.clientCpuPerCmdMs} ms${
        k.masterCpuPerCmdMs !== undefined ? ` + master ${k.masterCpuPerCmdMs} ms` : ""
      }`,
    });
  }
  for (const p of r.scaling.filter((p) => p.ok)) {
    out.push({
      name: `scaling ${p.workers} workers (${r.settings.coresPerHost} core each)`,
      value: p.medianMs! / 1000,
      unit: "s",
      note: p.speedup !== undefined ? `speed-up ${p.speedup}×` : undefined,
    });
  }
  for (const g of r.goals) {
    out.push({
      name: `goal: ${g.name}`,
      value: g.measured ?? NaN,
      unit: g.unit ?? (g.name.includes("overhead beyond") ? "ms" : "×"),
      note: `${g.target}; ${g.detail}`,
    });
  }
  return out;
}

// ---------------------------------------------------------------- harness

/** Runs the whole benchmark; writes farm.json, farm.md and scaling.svg to outDir. */
export async function runHarness(options: HarnessOptions = {}): Promise<HarnessReport> {
  const quick = options.quick ?? false;
  const t0 = performance.now();
  const log = options.log ??
    ((m: string) =>
      console.error(`farm bench [${((performance.now() - t0) / 1000).toFixed(0)} s]: ${m}`));
  const projects = options.projects ?? (quick ? [LUA] : [LUA, ZSTD]);
  const contenders = options.contenders ?? [...CONTENDERS];
  const workers = options.workers ?? 2;
  const slotsPerWorker = options.slotsPerWorker ?? 2;
  const jobs = options.jobs ?? workers * slotsPerWorker;
  const runs = options.runs ?? (quick ? 1 : 3);
  const roundTrips = options.roundTrips ?? (quick ? 20 : 100);
  const scalingWorkers = options.scalingWorkers ?? (quick ? [0, 1, 2] : [0, 1, 2, 3, 4, 6]);
  const scalingProject = options.scalingProject ?? projects[0];
  const scalingRuns = options.scalingRuns ?? (quick ? 1 : 2);
  const coldRuns = options.coldRuns ?? (quick ? 1 : 2);
  const coresPerHost = options.coresPerHost ?? 0.4;
  const treeReset = options.treeReset ?? "in-place";
  const scalingTreeReset = options.scalingTreeReset ?? "new-path";
  const scalingClient = options.scalingClient ?? "deno";
  const farmHosts = Math.max(workers, ...scalingWorkers);
  // Hosts: the farms' (one at a time), distcc's, then the recording farm's.
  const cached = contenders.includes("termite-cached") ||
    contenders.includes("termite-cached-native");
  const cachedHosts = cached ? workers : 0;
  const hosts = farmHosts + workers + cachedHosts;
  if (hosts > 24) throw new RangeError(`Too many workers: ${hosts}`);
  const hostBase = options.hostBase ?? await freeHostBlock(hosts);
  const distccHostBase = hostBase + farmHosts;
  const cachedHostBase = distccHostBase + workers;
  const outDir = options.outDir ?? new URL("./results", import.meta.url).pathname;
  const workDir = options.workDir ?? `${ROOT}/.cache/bench-farm`;

  const loadAtStart = await loadAverage();
  const notes: string[] = [];
  const builds: BuildRun[] = [];
  let rt: RoundTripKind[] = [];
  let scaling: ScalingPoint[] = [];
  await freshDir(workDir);
  await Deno.mkdir(outDir, { recursive: true });

  let distcc: DistccCluster | null = null;
  let distccError = "";
  const wantDistcc = contenders.includes("distcc");
  try {
    if (wantDistcc) {
      const why = await ensureDistcc();
      if (why) {
        distccError = `skipped: ${why}`;
        notes.push(`distcc ${distccError}`);
      } else {
        try {
          distcc = await DistccCluster.start({
            dir: `${workDir}/distcc`,
            count: workers,
            firstHost: distccHostBase,
            jobsPerHost: slotsPerWorker,
            prefix: `termite-bd${Deno.pid}`,
          });
        } catch (err) {
          distccError = `distccd did not start: ${errorText(err)}`;
          notes.push(distccError);
        }
      }
    }
    for (const [pi, project] of projects.entries()) {
      log(`${project.name}: fetching and unpacking`);
      const pdir = `${workDir}/${project.name}`;
      await freshDir(pdir);
      await freshDir(`${pdir}/logs`);
      let src: string;
      try {
        src = await project.source();
      } catch (err) {
        const error = `no source: ${errorText(err)}`;
        for (const c of contenders) {
          builds.push({
            project: project.name,
            contender: c,
            round: 0,
            attempt: 0,
            ok: false,
            error,
          });
        }
        continue;
      }
      let farm: BenchFarm | null = null;
      let farmError = "";
      if (contenders.includes("termite") || contenders.includes("termite-native")) {
        try {
          log(`${project.name}: starting a farm (${workers} workers × ${slotsPerWorker} slots)`);
          farm = await startFarm({
            dir: `${pdir}/termite/farm`,
            tree: `${pdir}/termite/tree`,
            workers,
            slotsPerWorker,
            prefix: `termite-bf${Deno.pid}`,
            firstHost: hostBase,
          });
        } catch (err) {
          farmError = `farm did not start: ${errorText(err)}`;
          notes.push(`${project.name}: ${farmError.split("\n")[0]}`);
        }
      }
      let cachedFarm: BenchFarm | null = null;
      let cachedFarmError = "";
      if (cached) {
        try {
          // Started once, outside the timed builds: bpftrace takes 10-30 s of CPU to start.
          log(`${project.name}: starting a farm whose workers record reads (bpftrace)`);
          cachedFarm = await startFarm({
            dir: `${pdir}/termite-cached/farm`,
            tree: `${pdir}/termite-cached/tree`,
            workers,
            slotsPerWorker,
            prefix: `termite-bk${Deno.pid}`,
            firstHost: cachedHostBase,
            workerArgs: ["--record-reads"],
          });
        } catch (err) {
          cachedFarmError = `farm did not start: ${errorText(err)}`;
          notes.push(`${project.name}: termite-cached ${cachedFarmError.split("\n")[0]}`);
        }
      }
      let ccache: Ccache | null = null;
      let ccacheError = "";
      if (contenders.includes("ccache")) {
        const why = await ensureCcache();
        if (why) {
          ccacheError = `skipped: ${why}`;
          notes.push(`ccache ${ccacheError}`);
        } else {
          ccache = new Ccache(`${pdir}/ccache/dir`);
          await ccache.reset();
        }
      }
      const ctx: BuildContext = {
        project,
        src,
        jobs,
        pdir,
        treeReset,
        farm,
        farmError,
        distcc,
        distccError,
        cachedFarm,
        cachedFarmError,
        ccache,
        ccacheError,
      };
      try {
        // The farm's first build (every cache fresh) is not one of the warm runs.
        const first = contenders.find((c) => c === "termite" || c === "termite-native");
        if (first !== undefined) {
          log(`${project.name}: ${first}, cold (every cache fresh)`);
          await buildWithRetries(ctx, first, "cold-master", (b) => builds.push(b));
        }
        for (const c of contenders.filter((c) => CACHING_CONTENDERS.includes(c))) {
          log(`${project.name}: ${c}, the build that fills its cache`);
          await buildWithRetries(ctx, c, "fill", (b) => {
            if (!b.ok) log(`${project.name}: ${c} fill failed: ${b.error?.split("\n")[0]}`);
            builds.push(b);
          });
        }
        for (let r = 0; r < runs; r++) {
          for (const c of contenders) {
            log(`${project.name}: ${c}, run ${r + 1}/${runs}`);
            await buildWithRetries(ctx, c, r, (b) => {
              if (!b.ok) log(`${project.name}: ${c} failed: ${b.error?.split("\n")[0]}`);
              else {
                log(
                  `${project.name}: ${c} ${(b.wallMs! / 1000).toFixed(2)} s (load ${b.loadBefore}` +
                    `${b.cacheHits === undefined ? "" : `, ${b.cacheHits} hits`})`,
                );
              }
              builds.push(b);
            });
          }
        }
        if (pi === 0 && roundTrips > 0) {
          log(`round trips (${roundTrips} of each kind)`);
          rt = await measureRoundTrips({
            n: roundTrips,
            dir: `${pdir}/rt`,
            farm,
            farmError: farmError || "not a contender",
            distcc,
            distccError: wantDistcc ? distccError : "not a contender",
            log,
          });
        }
      } finally {
        if (farm) await stopFarm(farm, notes);
        if (cachedFarm) await stopFarm(cachedFarm, notes);
      }
      if (farm && coldRuns > 0) {
        await coldRounds({
          ctx,
          runs: coldRuns,
          workers,
          slotsPerWorker,
          hostBase,
          withLocal: contenders.includes("local"),
          contenders: contenders.filter((c) => c === "termite" || c === "termite-native"),
          notes,
          log,
          record: (b) => builds.push(b),
        });
      }
    }
  } finally {
    await distcc?.stop();
  }
  if (scalingWorkers.length > 0 && scalingProject && contenders.includes("termite")) {
    scaling = await measureScaling({
      project: scalingProject,
      counts: scalingWorkers,
      treeReset: scalingTreeReset,
      runs: scalingRuns,
      cores: coresPerHost,
      slotsPerWorker,
      dir: `${workDir}/scaling`,
      hostBase,
      client: scalingClient,
      notes,
      log,
    });
  }

  const summaries = summarize(builds, projects, contenders);
  const derived = deriveRoundTrips(rt);
  const core = {
    date: new Date().toISOString(),
    quick,
    machine: {
      cpus: navigator.hardwareConcurrency,
      kernel: Deno.osRelease(),
      loadAtStart,
      loadAtEnd: await loadAverage(),
    },
    settings: {
      jobs,
      workers,
      slotsPerWorker,
      runs,
      roundTrips,
      coresPerHost,
      scalingProject: scaling.length > 0 ? scalingProject.name : null,
      treeReset,
      scalingTreeReset,
      scalingClient,
    },
    builds,
    summaries,
    roundTrips: rt,
    roundTripDerived: derived,
    scaling,
    goals: goals(summaries, derived, scaling, roundTrips > 0),
    notes,
  };
  const table = markdown(core);
  const results = benchResults(core);
  await Deno.mkdir(outDir, { recursive: true });
  const files = {
    json: `${outDir}/farm.json`,
    markdown: `${outDir}/farm.md`,
    chart: `${outDir}/scaling.svg`,
  };
  const ratios: { label: string; value: number | null }[] = [];
  for (const s of summaries.filter((s) => s.contender !== "local")) {
    ratios.push({ label: `${s.project} ${s.contender}`, value: s.vsLocal ?? null });
    if (s.coldMs !== undefined) {
      const local = summaries.find((x) => x.project === s.project && x.contender === "local");
      ratios.push({
        label: `${s.project} ${s.contender} cold`,
        value: local?.medianMs ? round(s.coldMs / local.medianMs) : null,
      });
    }
  }
  const direct = rt.find((k) => k.name === "gcc -c tiny.c" && k.ok)?.medianMs;
  for (const name of ["gcc -c tiny.c (termite wrapper)", "distcc gcc -c tiny.c"]) {
    const k = rt.find((k) => k.name === name);
    if (!k) continue;
    ratios.push({
      label: `gcc -c tiny.c ${k.via}`,
      value: k.ok && direct ? round(k.medianMs! / direct) : null,
    });
  }
  const svg = renderChart({
    title: `Termite farm vs local make and distcc (${core.machine.cpus} cores, ${
      core.date.slice(0, 10)
    })`,
    scaling: scaling.map((p) => ({
      workers: p.workers,
      speedup: p.speedup ?? null,
      hostCpuMsPerJob: p.hostCpuMsPerJob ?? null,
    })),
    goalPerWorker: GOAL_SCALING_PER_WORKER,
    ratios,
    ratioGoal: GOAL_BUILD_OVERHEAD,
    note: `all hosts share one ${core.machine.cpus}-core machine (load average ` +
      `${core.machine.loadAtStart} → ${core.machine.loadAtEnd}); scaling: ${coresPerHost} core ` +
      `per host by cgroup CPU quota`,
  });
  const report: HarnessReport = { ...core, table, results, files };
  await Deno.writeTextFile(files.json, JSON.stringify({ ...report, table: undefined }, null, 2));
  await Deno.writeTextFile(files.markdown, table);
  await Deno.writeTextFile(files.chart, svg);
  return report;
}

/** For bench/main.ts: runs the harness, prints the tables, returns the rows. */
export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const report = await runHarness({ quick: options.quick });
  console.error(report.table);
  return report.results;
}

function treeResetArg(value: string | undefined): TreeReset | undefined {
  if (value === undefined) return undefined;
  if (!TREE_RESETS.includes(value as TreeReset)) {
    throw new Error(`Unknown tree reset: ${value} (known: ${TREE_RESETS.join(", ")})`);
  }
  return value as TreeReset;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      "action-cache": { type: "boolean", default: false },
      projects: { type: "string" },
      contenders: { type: "string" },
      runs: { type: "string" },
      "cold-runs": { type: "string" },
      "round-trips": { type: "string" },
      "tree-reset": { type: "string" },
      "scaling-tree-reset": { type: "string" },
      "scaling-client": { type: "string" },
      scaling: { type: "string" },
      "out-dir": { type: "string" },
    },
  });
  const projects = values.projects?.split(",").map((name) => {
    const p = PROJECTS[name];
    if (!p) throw new Error(`Unknown project: ${name} (known: ${Object.keys(PROJECTS)})`);
    return p;
  });
  const contenders = values.contenders?.split(",").map((c) => {
    if (!CONTENDERS.includes(c as ContenderName)) throw new Error(`Unknown contender: ${c}`);
    return c as ContenderName;
  });
  // The action cache's comparison alone: local make, termite-cached and warm
  // ccache on lua and zstd; no round trips, cold farms or scaling.
  const only = values["action-cache"];
  const report = await runHarness({
    quick: values.quick,
    projects: projects ?? (only ? [LUA, ZSTD] : undefined),
    contenders: contenders ?? (only ? [...ACTION_CACHE_CONTENDERS] : undefined),
    runs: values.runs ? Number(values.runs) : undefined,
    coldRuns: values["cold-runs"] ? Number(values["cold-runs"]) : only ? 0 : undefined,
    roundTrips: values["round-trips"] ? Number(values["round-trips"]) : only ? 0 : undefined,
    scalingWorkers: values.scaling === undefined
      ? only ? [] : undefined
      : values.scaling === ""
      ? []
      : values.scaling.split(",").map(Number),
    // Its own files: farm.json is the whole run's.
    outDir: values["out-dir"] ??
      (only ? new URL("./results/action-cache", import.meta.url).pathname : undefined),
    treeReset: treeResetArg(values["tree-reset"]),
    scalingTreeReset: treeResetArg(values["scaling-tree-reset"]),
    scalingClient: scalingClientArg(values["scaling-client"]),
  });
  console.log(report.table);
}
