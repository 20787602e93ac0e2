/**
 * Emulated hosts of a given CPU size: cgroup v1 `cpu` controller groups with a
 * CFS quota (40 ms per 100 ms period = 0.4 core). Membership is inherited by
 * forks, so moving a process tree once covers what it starts later.
 */
import { processTree } from "./_proc.ts";

export const CPU_CGROUP_ROOT = "/sys/fs/cgroup/cpu";
const PERIOD_US = 100_000;

export class CgroupError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CgroupError";
  }
}

/** Whether a writable cgroup v1 cpu hierarchy with CFS quotas is there. */
export async function cpuCgroupsAvailable(root = CPU_CGROUP_ROOT): Promise<boolean> {
  try {
    await Deno.stat(`${root}/cpu.cfs_quota_us`);
    const probe = `${root}/termite-bench-probe-${Deno.pid}`;
    await Deno.mkdir(probe);
    await Deno.remove(probe);
    return true;
  } catch {
    return false;
  }
}

export class CpuGroup implements AsyncDisposable {
  readonly path: string;
  readonly root: string;

  private constructor(root: string, path: string) {
    this.root = root;
    this.path = path;
  }

  /** Creates (or reuses) `<root>/<name>` with no quota. */
  static async create(name: string, root = CPU_CGROUP_ROOT): Promise<CpuGroup> {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw new CgroupError(`Bad cgroup name: ${name}`);
    const group = new CpuGroup(root, `${root}/${name}`);
    try {
      await Deno.mkdir(group.path);
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) {
        throw new CgroupError(`Cannot create cgroup: ${group.path}`, { cause: err });
      }
    }
    await Deno.writeTextFile(`${group.path}/cpu.cfs_period_us`, String(PERIOD_US));
    await group.setCores(null);
    return group;
  }

  /** The file to write a pid to for joining (moves the whole thread group). */
  get procsFile(): string {
    return `${this.path}/cgroup.procs`;
  }

  /** Limits the group to `cores` (e.g. 0.4) CPUs; `null` lifts the limit. */
  async setCores(cores: number | null): Promise<void> {
    const quota = cores === null ? -1 : Math.max(1000, Math.round(cores * PERIOD_US));
    await Deno.writeTextFile(`${this.path}/cpu.cfs_quota_us`, String(quota));
  }

  /** Moves `pid` and all its descendants into the group; returns how many moved. */
  async moveTree(pid: number): Promise<number> {
    let moved = 0;
    for (const p of await processTree(pid)) {
      try {
        await Deno.writeTextFile(this.procsFile, `${p}\n`);
        moved++;
      } catch {
        // Exited meanwhile.
      }
    }
    if (moved === 0) throw new CgroupError(`No process moved into ${this.path}: pid ${pid}`);
    return moved;
  }

  /** Time the group was held back by its quota so far, seconds (cpu.stat). */
  async throttledS(): Promise<number> {
    const stat = await Deno.readTextFile(`${this.path}/cpu.stat`).catch(() => "");
    const m = stat.match(/^throttled_time (\d+)$/m);
    return m ? Number(m[1]) / 1e9 : 0;
  }

  /** Moves what is left back to the root group and removes the group. */
  async remove(): Promise<void> {
    for (let attempt = 0; attempt < 20; attempt++) {
      let pids: string[] = [];
      try {
        pids = (await Deno.readTextFile(this.procsFile)).split("\n").filter((s) => s !== "");
      } catch {
        return; // Gone already.
      }
      for (const p of pids) {
        await Deno.writeTextFile(`${this.root}/cgroup.procs`, `${p}\n`).catch(() => {});
      }
      try {
        await Deno.remove(this.path);
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new CgroupError(`Cannot remove cgroup: ${this.path}`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.remove();
  }
}
