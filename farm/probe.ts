/**
 * What the kernel says about a farm's processes: peak and current memory,
 * open descriptors, mounts in each worker's namespace, bytes in each store.
 * Used by the load and fault tests and by `scripts/soak.ts`.
 */
import type { Farm } from "./mod.ts";

/** Fields of /proc/<pid>/status in kB (VmHWM, VmRSS, ...) and Threads; empty when gone. */
export async function procStatus(pid: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  try {
    const text = await Deno.readTextFile(`/proc/${pid}/status`);
    for (const m of text.matchAll(/^(Vm\w+|Threads):\s+(\d+)/gm)) out[m[1]] = Number(m[2]);
  } catch {
    // Gone.
  }
  return out;
}

/** Open descriptors of a process; -1 when it is gone. */
export async function fdCount(pid: number): Promise<number> {
  let n = 0;
  try {
    for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) n++;
  } catch {
    return -1;
  }
  return n;
}

/** Mount lines seen by a process (its mount namespace): of a file system type, below a path. */
export async function mounts(
  pid: number,
  filter: { type?: RegExp; under?: string } = {},
): Promise<string[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(`/proc/${pid}/mountinfo`);
  } catch {
    return [];
  }
  return text.split("\n").filter((line) => {
    if (line === "") return false;
    const fields = line.split(" ");
    const type = line.split(" - ")[1]?.split(" ")[0] ?? "";
    if (filter.type && !filter.type.test(type)) return false;
    if (filter.under && !`${fields[4]}/`.startsWith(`${filter.under}/`)) return false;
    return true;
  });
}

/** Pids whose command line mentions `needle` (processes that must not be left behind). */
export async function pidsMentioning(needle: string): Promise<number[]> {
  const out: number[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    try {
      const cmd = await Deno.readTextFile(`/proc/${e.name}/cmdline`);
      if (cmd.includes(needle)) out.push(Number(e.name));
    } catch {
      // Gone.
    }
  }
  return out;
}

/** Bytes of the regular files below `dir` (0 when missing); stops after `entriesMax`. */
export async function treeBytes(dir: string, entriesMax = 1_000_000): Promise<number> {
  let bytes = 0;
  let entries = 0;
  const walk = async (d: string): Promise<void> => {
    let list: Deno.DirEntry[];
    try {
      list = await Array.fromAsync(Deno.readDir(d));
    } catch {
      return;
    }
    for (const e of list) {
      if (++entries > entriesMax) return;
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (e.isFile) bytes += await Deno.lstat(p).then((i) => i.size, () => 0);
    }
  };
  await walk(dir);
  return bytes;
}

/** One sample of a process. */
export interface ProcessSample {
  name: string;
  pid: number;
  /** Resident now and at its peak, kB. */
  rssKb: number;
  hwmKb: number;
  fds: number;
  threads: number;
}

/** One sample of a whole farm. */
export interface FarmSample {
  atMs: number;
  processes: ProcessSample[];
  /**
   * Per worker: the mounts under its cache dir (mirrors, its cgroup
   * hierarchy, anything a job left behind), and of them the FUSE ones. Not
   * every mount of its namespace: that began as a copy of the host's, with
   * whatever else the host had mounted at that moment (other farms'
   * network namespaces, say), which may go away on their own.
   */
  workerMounts: number[];
  workerFuseMounts: number[];
  /** Per worker: bytes in its content store. */
  storeBytes: number[];
  /** Per worker: job dirs present (none between builds). */
  jobDirs: number[];
  /** Processes started by the workers' sandboxes still alive. */
  sandboxProcesses: number;
}

/** Samples every process of a farm, its workers' mounts and stores. */
export async function sampleFarm(farm: Farm): Promise<FarmSample> {
  const pids = farm.pids();
  const named = [
    { name: "coordinator", pid: pids.coordinator },
    { name: "master", pid: pids.master },
    ...pids.workers.map((pid, i) => ({ name: `worker-${i}`, pid })),
  ];
  const processes = await Promise.all(named.map(async ({ name, pid }) => {
    const status = await procStatus(pid);
    return {
      name,
      pid,
      rssKb: status.VmRSS ?? 0,
      hwmKb: status.VmHWM ?? 0,
      fds: await fdCount(pid),
      threads: status.Threads ?? 0,
    };
  }));
  const workerMounts: number[] = [];
  const workerFuseMounts: number[] = [];
  const storeBytes: number[] = [];
  const jobDirs: number[] = [];
  let sandboxProcesses = 0;
  for (const [i, pid] of pids.workers.entries()) {
    const cache = farm.workerCacheDir(i);
    workerMounts.push((await mounts(pid, { under: cache })).length);
    workerFuseMounts.push((await mounts(pid, { type: /fuse/, under: cache })).length);
    // The cache dir may be a tmpfs in the worker's namespace: look through its root.
    storeBytes.push(await treeBytes(`/proc/${pid}/root${cache}/cas`));
    jobDirs.push(
      (await Array.fromAsync(Deno.readDir(`/proc/${pid}/root${cache}/jobs`)).catch(() => []))
        .length,
    );
    sandboxProcesses += (await pidsMentioning(`${cache}/jobs/`)).length;
  }
  return {
    atMs: Date.now(),
    processes,
    workerMounts,
    workerFuseMounts,
    storeBytes,
    jobDirs,
    sandboxProcesses,
  };
}
