/**
 * Applies a worker's result set to the master's tree, all or nothing.
 *
 * 1. The set is validated whole: its shape, its limits, every path (inside
 *    the writable root, normalised, names in bytes), nothing below a file or
 *    symlink of the same set, none of the master's own files.
 * 2. Every content is fetched and verified, every symlink made, in a staging
 *    area of the master's private directory; the tree is not touched.
 * 3. The tree is changed in one synchronous run (no other apply, builtin or
 *    marker of this master interleaves), by descriptor (`beneath.ts`): no
 *    symlink is followed, old or planted meanwhile. What is replaced or
 *    deleted is moved into the staging area, and each step is journaled;
 *    on any failure the journal is undone and the tree is as it was. What
 *    was moved aside is removed once the whole set is in.
 */
import { isInside } from "../common/paths.ts";
import { RESULT_ENTRIES_MAX } from "../common/types.ts";
import { Beneath, PRIVATE_DIR_PREFIX } from "./beneath.ts";
import { commit } from "./apply_commit.ts";
import { type BlobFetcher, stage } from "./apply_stage.ts";
import {
  checkControlPaths,
  type ControlPaths,
  RESULT_BYTES_MAX,
  validateResultSet,
} from "./result_check.ts";
import type { HashCache } from "./hash_cache.ts";

export type { BlobFetcher } from "./apply_stage.ts";
export {
  checkControlPaths,
  type ControlPaths,
  PART_BLOB_BYTES_MAX,
  RESULT_BYTES_MAX,
  ResultParts,
  ResultSetError,
  validateResultSet,
} from "./result_check.ts";

/** Names in the root starting with this are the master's (its private directory). */
export const STAGING_DIR = PRIVATE_DIR_PREFIX;

export interface ApplyOptions {
  writableRoot: string;
  /** The tree by descriptor (the master's own); without it, one is opened for this call. */
  tree?: Beneath;
  /** Besides `<root>/.termite-staging*`, which is always refused. */
  control?: ControlPaths;
  fetchBlob: BlobFetcher;
  /**
   * Contents that came with the reply (small files), by hash: written and
   * verified without a fetch. Unverified bytes: a wrong one fails the set.
   */
  inline?: (hash: string) => Uint8Array | undefined;
  hashCache: HashCache;
  /** Default {@linkcode RESULT_ENTRIES_MAX}. */
  entriesMax?: number;
  /** Default {@linkcode RESULT_BYTES_MAX}. */
  bytesMax?: number;
}

export interface ApplyOutcome {
  /** Every path created, changed or removed, and their parents. */
  touched: string[];
  /** Hashes of the files written. */
  hashes: Map<string, string>;
  bytesFetched: number;
  bytesCopied: number;
}

/** Validates, stages and applies a result set; the tree is as it was on error. */
export async function applyResultSet(raw: unknown, options: ApplyOptions): Promise<ApplyOutcome> {
  const root = options.writableRoot;
  const set = validateResultSet(raw, root, {
    entriesMax: options.entriesMax ?? RESULT_ENTRIES_MAX,
    bytesMax: options.bytesMax ?? RESULT_BYTES_MAX,
  });
  checkControlPaths(set, root, options.control);
  if (options.tree && options.tree.root !== root) {
    throw new Error(`The tree handle is of ${options.tree.root}, not of ${root}`);
  }
  const own = options.tree ? null : Beneath.open(root);
  const tree = options.tree ?? own!;
  const outcome: ApplyOutcome = { touched: [], hashes: new Map(), bytesFetched: 0, bytesCopied: 0 };
  try {
    const staging = tree.makeStaging();
    // What the staging area holds once the set is in (unknown until then).
    let left: string[] | undefined;
    try {
      await stage(set, tree, staging, options, outcome);
      const committed = commit(set, tree, staging);
      const { touched, written } = committed;
      left = committed.left ?? undefined;
      for (const [path, info, hash] of written) {
        options.hashCache.record(path, info, hash);
        outcome.hashes.set(path, hash);
      }
      outcome.touched = [...touched].filter((p) => isInside(p, root) || isInside(root, p));
      return outcome;
    } finally {
      await tree.discardStaging(staging, left);
    }
  } finally {
    own?.close();
  }
}
