/**
 * FUSE mounts seen from outside the session: finding a mount's connection in
 * mountinfo, aborting a connection through fusectl, and cleaning a stale
 * mount left by a dead server.
 *
 * @module
 */

import { cString } from "../common/c_string.ts";
import { ENOTCONN, errnoFromError } from "./errno.ts";
import { openLibc } from "./libc.ts";
import { MNT_DETACH } from "./structs.ts";

/** Find the fuse connection id ("minor" of st_dev) of a mount point in mountinfo. */
export async function connectionIdOf(mountpoint: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile("/proc/self/mountinfo");
  } catch {
    return undefined;
  }
  let found: number | undefined;
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    if (fields.length < 10) continue;
    const mountedAt = fields[4].replace(
      /\\(\d{3})/g,
      (_, o) => String.fromCharCode(parseInt(o, 8)),
    );
    const dash = fields.indexOf("-");
    if (mountedAt !== mountpoint || dash < 0 || !fields[dash + 1]?.startsWith("fuse")) continue;
    const [, minor] = fields[2].split(":");
    found = Number(minor);
  }
  return found;
}

/**
 * Sets the readahead of the FUSE mount at `mountpoint` to `kib` KiB, through
 * its backing device in sysfs (`/sys/class/bdi/0:N/read_ahead_kb`; root
 * only). The kernel caps a FUSE mount's readahead at its default, 128 KiB,
 * when the session starts, whatever the server asks for: a job mapping a 30
 * MB compiler from a cold mirror then takes a read request per 128 KiB.
 * Requests stay within the session's `max_pages` (libfuse offers 1 MiB).
 * Returns false when it could not (no such mount, no sysfs, not root).
 */
export async function setReadahead(mountpoint: string, kib: number): Promise<boolean> {
  const minor = await connectionIdOf(mountpoint);
  if (minor === undefined) return false;
  const path = `/sys/class/bdi/0:${minor}/read_ahead_kb`;
  try {
    await Deno.writeTextFile(path, String(Math.floor(kib)));
    return Number((await Deno.readTextFile(path)).trim()) === Math.floor(kib);
  } catch {
    return false;
  }
}

/** Abort a FUSE connection through fusectl (mounting fusectl if needed). */
export async function abortConnection(connectionId: number): Promise<boolean> {
  const dir = "/sys/fs/fuse/connections";
  const path = `${dir}/${connectionId}/abort`;
  try {
    await Deno.writeTextFile(path, "1");
    return true;
  } catch {
    // fusectl may not be mounted.
  }
  try {
    const { success } = await new Deno.Command("mount", {
      args: ["-t", "fusectl", "none", dir],
      stdout: "null",
      stderr: "null",
    }).output();
    if (!success) return false;
    await Deno.writeTextFile(path, "1");
    return true;
  } catch {
    return false;
  }
}

/** Whether `path` is listed as a FUSE mount point in this mount namespace. */
async function isFuseMountPoint(path: string): Promise<boolean> {
  let absolute: string;
  try {
    absolute = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
    absolute = absolute.replace(/\/+$/, "") || "/";
  } catch {
    return false;
  }
  return await connectionIdOf(absolute) !== undefined;
}

/**
 * If `path` is a dead FUSE mount ("Transport endpoint is not connected":
 * its server died), detach it (`umount2(MNT_DETACH)`) and return true;
 * otherwise return false. A plain `stat` may still succeed from cached
 * attributes for a while, so a listed FUSE mount is also asked for `statfs`
 * (in a subprocess: a hung server must not block this thread).
 */
export async function cleanStaleMount(path: string): Promise<boolean> {
  let dead = false;
  try {
    await Deno.stat(path);
  } catch (error) {
    dead = errnoFromError(error) === ENOTCONN;
    if (!dead) return false;
  }
  if (!dead) {
    if (!(await isFuseMountPoint(path))) return false;
    const probe = await new Deno.Command("stat", {
      args: ["-f", "-c", "%t", path],
      stdout: "null",
      stderr: "piped",
    }).output();
    dead = !probe.success && /not connected/i.test(new TextDecoder().decode(probe.stderr));
    if (!dead) return false;
  }
  const libc = openLibc();
  try {
    return libc.symbols.umount2(cString(path), MNT_DETACH) === 0;
  } finally {
    libc.close();
  }
}
