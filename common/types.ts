/**
 * Data shared by the roles: file attributes served by the master and the
 * result set a worker returns after a job.
 *
 * Paths are absolute, normalised POSIX paths ("/", "/usr/include/stdio.h"),
 * never with a trailing slash except the root itself.
 */

/** The kind of a directory entry. */
export type FileKind = "file" | "dir" | "symlink";

/** Attributes of one path on the master, as served to a worker's mirror. */
export interface FileAttr {
  path: string;
  /** `null` when the path does not exist (or is not served). */
  kind: FileKind | null;
  /** Permission bits (0o7777), without the file type. */
  mode: number;
  size: number;
  mtimeMs: number;
  /** Hex SHA-256 of the contents, for regular files. */
  hash?: string;
  /** Target of a symlink. */
  target?: string;
  /** For directories: every child's name and kind. */
  children?: Record<string, FileKind>;
  /**
   * Pushed to a mirror in place of `children` (see master/change_log.ts):
   * the listing is the one the mirror holds, changed by the updates of its
   * children in the same batch, and this is its fingerprint
   * (common/listing_print.ts); one that differs is forgotten.
   */
  listingPrint?: string;
}

/** A regular file the job created or changed. */
export interface ResultFile {
  path: string;
  hash: string;
  size: number;
  mode: number;
  mtimeMs: number;
}

/** The lists of a {@linkcode ResultSet}, in the order they are applied. */
export const RESULT_SET_KEYS = ["deletions", "dirs", "files", "symlinks"] as const;

/**
 * Entries of one result set at most: upper-layer entries a worker walks (and
 * its disk watchdog counts), entries the master accepts (all four lists).
 */
export const RESULT_ENTRIES_MAX = 200_000;

/** What a job changed under the writable root, in the order it is applied. */
export interface ResultSet {
  /** Paths removed (recursively), deepest first. */
  deletions: string[];
  /** Directories created (or whose mode changed), parents first. */
  dirs: { path: string; mode: number }[];
  files: ResultFile[];
  symlinks: { path: string; target: string }[];
}
