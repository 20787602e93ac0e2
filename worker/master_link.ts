/**
 * The master's file service as a mirror needs it: attributes of a path or of
 * a whole directory, and blobs by hash.
 *
 * @module
 */

import type { FileAttr } from "../common/types.ts";

/** The master's file service, as the mirror needs it (implemented over RPC by the worker). */
export interface MasterLink {
  /** The master's `fs.attr`: one path's attributes (`kind: null` when absent). */
  attr(path: string, options: { withHash: boolean; signal?: AbortSignal }): Promise<FileAttr>;
  /**
   * The master's `fs.dir`: attributes of all children of a directory at once
   * (hashes only where the master has them cached).
   */
  dir(path: string, options: { signal?: AbortSignal }): Promise<FileAttr[]>;
  /** The master's `blob.get`: writes the blob's bytes to `sink`, in order. */
  fetchBlob(
    hash: string,
    sink: { write(chunk: Uint8Array): Promise<void> },
    signal: AbortSignal,
  ): Promise<void>;
}
