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
/**
 * The upper layer is on the worker's own disk, just written: it is read
 * with synchronous calls (a few µs each, where an asynchronous one costs a
 * thread hop, ~50 µs of CPU), and the walk lets the event loop run (the
 * mirror's requests) every so many entries. The lower layer is the mirror,
 * served by this process: only ever looked at asynchronously.
 */
const ENTRIES_PER_TURN = 256;

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
  /**
   * Reads the overlay's opaque markers; the caller's, kept open for its next
   * walks (a `dlopen` per walk cost a worker about 1 ms a job). Default: one
   * made and closed by this walk, when it meets a directory.
   */
  xattrs?: XattrReader;
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
  using walk = new UpperWalk(upperDir, writableRoot, options);
  try {
    await walk.dir("", false);
  } catch (err) {
    if (err instanceof SandboxError) throw err;
    throw new SandboxError(`Cannot collect results from ${upperDir}`, { cause: err });
  }
  const { deletions, dirs, files, symlinks } = walk;

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

/** One walk of an upper directory: what it found, unsorted. */
class UpperWalk {
  readonly deletions: string[] = [];
  readonly dirs: { path: string; mode: number }[] = [];
  readonly files: { upper: string; path: string; mode: number; mtimeMs: number }[] = [];
  readonly symlinks: { path: string; target: string }[] = [];
  #upperDir: string;
  #base: string;
  #lowerDir: string | undefined;
  #entriesMax: number;
  #entries = 0;
  #xattrs: XattrReader | undefined;
  readonly #ownXattrs: boolean;

  constructor(upperDir: string, writableRoot: string, options: CollectOptions) {
    this.#upperDir = upperDir;
    this.#base = writableRoot === "/" ? "" : writableRoot.replace(/\/+$/, "");
    this.#lowerDir = options.lowerDir;
    this.#entriesMax = options.entriesMax ?? RESULT_ENTRIES_MAX;
    this.#xattrs = options.xattrs;
    this.#ownXattrs = options.xattrs === undefined;
  }

  [Symbol.dispose](): void {
    if (this.#ownXattrs) this.#xattrs?.close();
  }

  /** Lower entry at `rel`, or null; only looked at outside new directories. */
  async #lowerInfo(rel: string): Promise<Deno.FileInfo | null> {
    if (this.#lowerDir === undefined) return null;
    try {
      return await Deno.lstat(`${this.#lowerDir}/${rel}`);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
        return null;
      }
      throw new SandboxError(`Cannot read the lower layer: ${this.#lowerDir}/${rel}`, {
        cause: err,
      });
    }
  }

  /**
   * Walks the directory `rel` of the upper layer. `fresh`: inside a directory
   * with no lower counterpart (opaque or new), so nothing below it can shadow
   * a lower entry.
   */
  async dir(rel: string, fresh: boolean): Promise<void> {
    const dir = rel === "" ? this.#upperDir : `${this.#upperDir}/${rel}`;
    const names: string[] = [];
    for (const entry of Deno.readDirSync(dir)) {
      if (++this.#entries % ENTRIES_PER_TURN === 0) {
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
      if (this.#entries > this.#entriesMax) {
        throw new SandboxError(
          `Cannot collect results: more than ${this.#entriesMax} entries in ${this.#upperDir}`,
        );
      }
      names.push(entry.name);
    }
    names.sort();
    for (const name of names) await this.#entry(rel === "" ? name : `${rel}/${name}`, fresh);
  }

  async #entry(rel: string, fresh: boolean): Promise<void> {
    const upper = `${this.#upperDir}/${rel}`;
    const path = `${this.#base}/${rel}`;
    const info = Deno.lstatSync(upper);
    const mode = (info.mode ?? 0) & 0o7777;
    if (info.isCharDevice && info.rdev === 0) {
      this.deletions.push(path);
    } else if (info.isDirectory) {
      const opaque = new TextDecoder().decode(
        (this.#xattrs ??= new XattrReader()).get(upper, OPAQUE_XATTR) ?? undefined,
      );
      if (opaque === "y") {
        this.deletions.push(path);
        this.dirs.push({ path, mode });
        await this.dir(rel, true);
      } else {
        const lower = fresh ? null : await this.#lowerInfo(rel);
        const unchanged = lower !== null && lower.isDirectory &&
          ((lower.mode ?? 0) & 0o7777) === mode;
        if (!unchanged) this.dirs.push({ path, mode });
        await this.dir(rel, fresh || (this.#lowerDir !== undefined && lower === null));
      }
    } else if (info.isFile || info.isSymlink) {
      const lower = fresh ? null : await this.#lowerInfo(rel);
      if (lower?.isDirectory) this.deletions.push(path);
      if (info.isFile) {
        this.files.push({ upper, path, mode, mtimeMs: info.mtime?.getTime() ?? 0 });
      } else {
        this.symlinks.push({ path, target: Deno.readLinkSync(upper) });
      }
    }
  }
}
