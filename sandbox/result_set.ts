/**
 * Turns an overlayfs upper directory into the {@linkcode ResultSet} of a job.
 *
 * The overlay is mounted with `redirect_dir=off,metacopy=off,index=off`, so
 * the upper directory is self-contained:
 *
 * - a whiteout (character device 0:0) is a deletion;
 * - an opaque directory (`trusted.overlay.opaque` = "y") replaced whatever was
 *   there: a deletion, then a directory;
 * - a renamed lower directory is a whiteout plus a full copy;
 * - a changed file (data or mode) is copied whole.
 *
 * @module
 */
import { RESULT_ENTRIES_MAX, type ResultFile, type ResultSet } from "../common/types.ts";
import { SandboxError } from "./errors.ts";
import { XattrReader } from "./_xattr.ts";

/** Default bound on the number of upper-directory entries walked (the master's too). */
export { RESULT_ENTRIES_MAX };

const OPAQUE_XATTR = "trusted.overlay.opaque";

/** Options of {@linkcode collectResultSet}. */
export interface CollectOptions {
  /**
   * The overlay's lower directory (the writable root as the job saw it
   * before it ran: `<lowerRoot>/<writableRoot>`). With it, a file or symlink
   * that replaced a lower directory also yields a deletion of that directory
   * (the upper layer records no marker for that case), and directories that
   * overlay only copied up as parents, with an unchanged mode, are left out.
   */
  lowerDir?: string;
  /** Upper entries walked before giving up; default {@linkcode RESULT_ENTRIES_MAX}. */
  entriesMax?: number;
}

/**
 * Walks `upperDir` and returns what the job changed under `writableRoot`,
 * storing every created or changed regular file through `putFile` (called
 * one file at a time, in path order). Paths are absolute master paths.
 * Entries that are neither files, directories, symlinks nor whiteouts
 * (FIFOs, sockets, devices) are skipped.
 */
export async function collectResultSet(
  upperDir: string,
  writableRoot: string,
  putFile: (path: string) => Promise<{ hash: string; size: number }>,
  options: CollectOptions = {},
): Promise<ResultSet> {
  if (!writableRoot.startsWith("/")) {
    throw new SandboxError(
      `Cannot collect results: writable root is not absolute: ${writableRoot}`,
    );
  }
  const entriesMax = options.entriesMax ?? RESULT_ENTRIES_MAX;
  const base = writableRoot === "/" ? "" : writableRoot.replace(/\/+$/, "");
  const lowerDir = options.lowerDir;
  const deletions: string[] = [];
  const dirs: { path: string; mode: number }[] = [];
  const files: { upper: string; path: string; mode: number; mtimeMs: number }[] = [];
  const symlinks: { path: string; target: string }[] = [];
  let entries = 0;

  using xattrs = new XattrReader();

  /** Lower entry at `rel`, or null; only looked at outside new directories. */
  async function lowerInfo(rel: string): Promise<Deno.FileInfo | null> {
    if (lowerDir === undefined) return null;
    try {
      return await Deno.lstat(`${lowerDir}/${rel}`);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
        return null;
      }
      throw new SandboxError(`Cannot read the lower layer: ${lowerDir}/${rel}`, { cause: err });
    }
  }

  // `fresh`: inside a directory with no lower counterpart (opaque or new), so
  // nothing below it can shadow a lower entry.
  async function walk(rel: string, fresh: boolean): Promise<void> {
    const dir = rel === "" ? upperDir : `${upperDir}/${rel}`;
    const names: string[] = [];
    for await (const entry of Deno.readDir(dir)) {
      if (++entries > entriesMax) {
        throw new SandboxError(
          `Cannot collect results: more than ${entriesMax} entries in ${upperDir}`,
        );
      }
      names.push(entry.name);
    }
    names.sort();
    for (const name of names) {
      const childRel = rel === "" ? name : `${rel}/${name}`;
      const upper = `${upperDir}/${childRel}`;
      const path = `${base}/${childRel}`;
      const info = await Deno.lstat(upper);
      const mode = (info.mode ?? 0) & 0o7777;
      if (info.isCharDevice && info.rdev === 0) {
        deletions.push(path);
      } else if (info.isDirectory) {
        const opaque = new TextDecoder().decode(xattrs.get(upper, OPAQUE_XATTR) ?? undefined);
        if (opaque === "y") {
          deletions.push(path);
          dirs.push({ path, mode });
          await walk(childRel, true);
        } else {
          const lower = fresh ? null : await lowerInfo(childRel);
          const unchanged = lower !== null && lower.isDirectory &&
            ((lower.mode ?? 0) & 0o7777) === mode;
          if (!unchanged) dirs.push({ path, mode });
          await walk(childRel, fresh || (lowerDir !== undefined && lower === null));
        }
      } else if (info.isFile || info.isSymlink) {
        const lower = fresh ? null : await lowerInfo(childRel);
        if (lower?.isDirectory) deletions.push(path);
        if (info.isFile) {
          files.push({ upper, path, mode, mtimeMs: info.mtime?.getTime() ?? 0 });
        } else {
          symlinks.push({ path, target: await Deno.readLink(upper) });
        }
      }
    }
  }

  try {
    await walk("", false);
  } catch (err) {
    if (err instanceof SandboxError) throw err;
    throw new SandboxError(`Cannot collect results from ${upperDir}`, { cause: err });
  }

  const depth = (p: string) => p.split("/").length;
  const byPath = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  deletions.sort((a, b) => depth(b) - depth(a) || byPath(a, b));
  dirs.sort((a, b) => byPath(a.path, b.path));
  files.sort((a, b) => byPath(a.path, b.path));
  symlinks.sort((a, b) => byPath(a.path, b.path));

  const stored: ResultFile[] = [];
  for (const f of files) {
    const { hash, size } = await putFile(f.upper);
    stored.push({ path: f.path, hash, size, mode: f.mode, mtimeMs: f.mtimeMs });
  }
  return { deletions, dirs, files: stored, symlinks };
}
