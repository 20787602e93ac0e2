/**
 * The second phase of applying a result set: every content fetched (or
 * taken inline, or copied from the tree when the hash cache knows it) and
 * verified, every symlink made, in the staging area; the tree untouched.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { isInside } from "../common/paths.ts";
import type { ResultSet } from "../common/types.ts";
import type { Beneath, StagingDir } from "./beneath.ts";
import type { HashCache } from "./hash_cache.ts";
import { ResultSetError } from "./result_check.ts";

/** Streams the content `hash` from the worker into `sink`. */
export type BlobFetcher = (
  hash: string,
  sink: { write(chunk: Uint8Array): Promise<void> },
) => Promise<void>;

/** Where staged contents come from. */
export interface StageOptions {
  fetchBlob: BlobFetcher;
  /** Contents that came with the reply, by hash (unverified). */
  inline?: (hash: string) => Uint8Array | undefined;
  hashCache: HashCache;
}

/** Bytes staged, by where they came from. */
export interface StageCounts {
  bytesFetched: number;
  bytesCopied: number;
}

/** Bytes copied in one synchronous call before yielding to the event loop. */
const COPY_CHUNK_BYTES = 8 * 2 ** 20;

function checkBlob(hash: string, size: number, actual: string, bytes: number): void {
  if (actual !== hash || bytes !== size) {
    throw new ResultSetError(
      `Blob verification failed: expected ${hash} (${size} bytes), got ${actual} (${bytes} bytes)`,
    );
  }
}

/** Copies `size` bytes between descriptors; false if the source ran short. */
async function copyAll(tree: Beneath, from: number, to: number, size: number): Promise<boolean> {
  let done = 0;
  while (done < size) {
    const n = tree.copy(from, to, Math.min(COPY_CHUNK_BYTES, size - done));
    if (n === 0) return false;
    done += n;
    if (done < size) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  return true;
}

/**
 * Copies the file at `path` (a file of the master known to hold `hash`) into
 * `to`, if it still matches the hash cache's record; false otherwise. Never
 * through a symlink inside the tree; never blocks on a FIFO.
 */
async function copyIfSame(
  tree: Beneath,
  path: string,
  hash: string,
  size: number,
  to: number,
  hashCache: HashCache,
): Promise<boolean> {
  let from: number;
  try {
    from = isInside(path, tree.root) && path !== tree.root
      ? tree.openRead(tree.rootFd, tree.relative(path))
      : tree.openReadPath(path);
  } catch {
    return false;
  }
  try {
    const before = tree.fstat(from);
    if (
      before.kind !== "file" || before.info.size !== size ||
      hashCache.lookup(path, before.info) !== hash
    ) return false;
    if (!await copyAll(tree, from, to, size)) return false;
    const after = tree.fstat(from);
    return after.info.mtime?.getTime() === before.info.mtime?.getTime() &&
      after.info.size === size;
  } catch {
    return false;
  } finally {
    tree.closeFd(from);
  }
}

/**
 * Stages every file of the set (fetched, inline, or copied, and verified) and
 * every symlink in `staging`: files as `f<i>`, symlinks as `l<i>`.
 */
export async function stage(
  set: ResultSet,
  tree: Beneath,
  staging: StagingDir,
  options: StageOptions,
  outcome: StageCounts,
): Promise<void> {
  const first = new Map<string, string>(); // hash → name of its first staged copy
  for (let i = 0; i < set.files.length; i++) {
    const f = set.files[i];
    const name = `${staging.prefix}f${i}`;
    const create = () => tree.createFile(staging.fd, name, 0o600);
    let fd = create();
    try {
      const copyOf = first.get(f.hash);
      const inline = copyOf ? undefined : options.inline?.(f.hash);
      const local = copyOf || inline ? undefined : options.hashCache.pathOf(f.hash);
      if (copyOf) {
        const from = tree.openRead(staging.fd, copyOf);
        try {
          if (!await copyAll(tree, from, fd, f.size)) throw new Error(`${copyOf} ran short`);
        } finally {
          tree.closeFd(from);
        }
        outcome.bytesCopied += f.size;
      } else if (inline) {
        checkBlob(f.hash, f.size, createHash("sha256").update(inline).digest("hex"), inline.length);
        tree.writeAll(fd, inline as Uint8Array<ArrayBuffer>, name);
        outcome.bytesFetched += f.size;
      } else if (
        local !== undefined &&
        await copyIfSame(tree, local, f.hash, f.size, fd, options.hashCache)
      ) {
        outcome.bytesCopied += f.size;
      } else {
        if (local !== undefined) {
          // A partial copy: start again.
          tree.closeFd(fd);
          fd = -1;
          tree.unlink(staging.fd, name);
          fd = create();
        }
        const hasher = createHash("sha256");
        let bytes = 0;
        const to = fd;
        await options.fetchBlob(f.hash, {
          write(chunk: Uint8Array) {
            bytes += chunk.length;
            if (bytes > f.size) {
              throw new ResultSetError(`Blob ${f.hash} is longer than ${f.size} bytes`);
            }
            hasher.update(chunk);
            tree.writeAll(to, chunk as Uint8Array<ArrayBuffer>, name);
            return Promise.resolve();
          },
        });
        checkBlob(f.hash, f.size, hasher.digest("hex"), bytes);
        outcome.bytesFetched += f.size;
      }
      tree.fchmod(fd, f.mode, name);
    } finally {
      if (fd >= 0) tree.closeFd(fd);
    }
    if (!first.has(f.hash)) first.set(f.hash, name);
  }
  for (let i = 0; i < set.symlinks.length; i++) {
    tree.symlink(set.symlinks[i].target, staging.fd, `${staging.prefix}l${i}`);
  }
}
