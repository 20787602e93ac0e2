/**
 * The per-job pids cgroup (cgroup v1): made with the job's process cap,
 * removed after it, and the ones a crashed worker left removed at start.
 *
 * @module
 */
import { SandboxError } from "./errors.ts";

/** Where per-job pids cgroups are created. */
export const PIDS_CGROUP_ROOT = "/sys/fs/cgroup/pids/termite";
/** How long a job's cgroup may stay busy after the job before removal is given up. */
const CGROUP_REMOVE_MS = 2_000;

/** Creates the job's pids cgroup; `null` when cgroups are unavailable. */
export function createPidsCgroup(
  root: string | null | undefined,
  processesMax: number,
): string | null {
  if (root === null) return null;
  root ??= PIDS_CGROUP_ROOT;
  const dir = `${root}/job-${crypto.randomUUID()}`;
  // Synchronous: a cgroup file system's mkdir and write take a few µs, an
  // asynchronous call ~50 µs of the worker's CPU (a thread hop each way).
  try {
    Deno.mkdirSync(dir, { recursive: true });
  } catch {
    return null;
  }
  try {
    Deno.writeTextFileSync(`${dir}/pids.max`, String(processesMax));
    return dir;
  } catch {
    try {
      Deno.removeSync(dir);
    } catch {
      // Left for removeStaleCgroups.
    }
    return null;
  }
}

/** Removes a job's cgroup once its processes are gone (waiting a little for the kernel). */
export async function removeCgroup(dir: string): Promise<void> {
  const deadline = Date.now() + CGROUP_REMOVE_MS;
  for (;;) {
    try {
      // Synchronous (see createPidsCgroup): the kernel takes the css offline
      // after rmdir returns; a cgroup still busy fails at once (EBUSY).
      Deno.removeSync(dir);
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
      if (entry.isDirectory && entry.name.startsWith("rec-")) {
        // A read recorder's directory (worker/read_trace.ts) of a crashed
        // worker: its stale job cgroups, then itself once empty and old.
        const dir = `${root}/${entry.name}`;
        removed += await removeStaleCgroups(dir, { minAgeMs, now });
        try {
          const info = await Deno.stat(dir);
          const madeMs = (info.birthtime ?? info.mtime ?? info.ctime)?.getTime() ?? 0;
          if (now - madeMs >= minAgeMs) await Deno.remove(dir);
        } catch {
          // Busy (jobs left, or a live recorder's): not ours to touch.
        }
        continue;
      }
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
