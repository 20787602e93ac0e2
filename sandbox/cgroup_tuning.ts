/**
 * Cheap moves of processes between cgroups, for the per-job pids cgroups.
 *
 * Every job's launcher moves itself into a fresh cgroup. By default the kernel
 * guards such moves with one global lock whose write side waits for an RCU
 * grace period after the lock was idle: measured here (cgroup v1, 2-core VM),
 * 14–28 ms per job, a third of a remote `/bin/true`, against 0.03 ms once
 * the lock stays in its slow-reader mode. Mounting any cgroup hierarchy with
 * the `favordynmods` option switches the kernel to that mode ("reduce the
 * latencies of dynamic cgroup modifications such as task migrations ... at the
 * cost of making hot path operations such as forks and exits more
 * expensive"); from Linux 6.18 on it also moves writes of `cgroup.procs` to a
 * per-process lock, which stays so until reboot.
 *
 * The worker mounts an empty named v1 hierarchy with that option (no
 * controller, no cgroups) for as long as it runs. A kernel without the option
 * refuses the mount and jobs simply pay the old price.
 *
 * @module
 */

/** The named hierarchy the worker mounts; any name would do. */
export const DYNMODS_HIERARCHY = "termite-favordynmods";

/** A mounted `favordynmods` hierarchy; `close()` unmounts it. */
export interface DynmodsMount {
  readonly path: string;
  close(): Promise<void>;
}

async function run(cmd: string, args: string[]): Promise<{ ok: boolean; stderr: string }> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
    return { ok: out.success, stderr: new TextDecoder().decode(out.stderr).trim() };
  } catch (err) {
    return { ok: false, stderr: (err as Error).message };
  }
}

/**
 * Mounts the `favordynmods` hierarchy at `path` (created if missing). Never
 * throws: gives `mount: null` and the reason when the kernel, the privileges
 * or the path do not allow it.
 */
export async function favorCgroupMigrations(
  path: string,
): Promise<{ mount: DynmodsMount } | { mount: null; reason: string }> {
  try {
    await Deno.mkdir(path, { recursive: true, mode: 0o700 });
  } catch (err) {
    return { mount: null, reason: `cannot create ${path}: ${(err as Error).message}` };
  }
  // A mount left by a worker that was killed: reuse it.
  if (!(await isDynmodsMount(path))) {
    const { ok, stderr } = await run("mount", [
      "-t",
      "cgroup",
      "-o",
      `none,name=${DYNMODS_HIERARCHY},favordynmods`,
      "cgroup",
      path,
    ]);
    if (!ok) return { mount: null, reason: stderr || "mount failed" };
  }
  let closed: Promise<void> | undefined;
  return {
    mount: {
      path,
      close() {
        closed ??= (async () => {
          await run("umount", ["-l", path]);
          await Deno.remove(path).catch(() => {});
        })();
        return closed;
      },
    },
  };
}

/** Whether `path` is a mount point of the `favordynmods` hierarchy. */
export async function isDynmodsMount(path: string): Promise<boolean> {
  const mountinfo = await Deno.readTextFile("/proc/self/mountinfo");
  return mountinfo.split("\n").some((line) => {
    const fields = line.split(" ");
    return fields[4] === path && line.includes(`name=${DYNMODS_HIERARCHY}`) &&
      line.includes("favordynmods");
  });
}
