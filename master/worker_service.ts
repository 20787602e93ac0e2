/**
 * What the workers may call on a connection to the master: attributes,
 * listings and contents of its files as their mirrors read them, and warm
 * sets streamed ahead (`warm_stream.ts`). Every path and hash is checked
 * here; what a worker may see is the file server's to decide.
 *
 * @module
 */
import { isHash } from "../cas/mod.ts";
import { type BlobGetParams, MasterMethods } from "../common/protocol.ts";
import { type CallContext, type Handlers, RpcError, type RpcPeer } from "../rpc/mod.ts";
import type { FileServer } from "./file_server.ts";
import type { MasterStats } from "./master_types.ts";
import { normalizeAbsolute } from "./paths.ts";
import { DEBUG_TIMINGS, describe } from "./remote_run.ts";
import type { WarmSets } from "./warm_set.ts";
import type { WarmStreams } from "./warm_stream.ts";

/** Attributes per chunk of a listing. */
const CHUNK_ATTRS = 512;

export interface WorkerServiceOptions {
  files: FileServer;
  /** Learns what the mirrors read, per tool. */
  warm: WarmSets;
  streams: WarmStreams;
  stats: MasterStats;
  /**
   * Where a worker should fetch blob `hash` (`size` bytes) from instead of
   * the master: another worker holding it (`blob_holders.ts`), or undefined
   * (the master sends it, and notes that worker as holding it).
   */
  holderFor(hash: string, size: number, params: BlobGetParams, peer: RpcPeer): string | undefined;
}

/** The master's methods a worker may call. */
export function workerHandlers(options: WorkerServiceOptions): Handlers {
  const { files, warm, streams, stats, holderFor } = options;
  const path = (p: unknown): string => {
    const normal = typeof p === "string" ? normalizeAbsolute(p) : null;
    if (normal === null) throw new RpcError("BAD_REQUEST", `Bad path: ${describe(p)}`);
    return normal;
  };
  return {
    [MasterMethods.fsAttr]: async (params: { path: unknown; withHash?: unknown }, ctx) => {
      const withHash = params?.withHash === true;
      const attr = await files.attr(path(params?.path), { withHash });
      // A worker asks for a file's hash to read it: that is what its tool
      // needed, whether the content then comes from here, a peer, or the
      // worker host's own copy (which never passes through blob.get).
      if (withHash && attr.kind === "file" && attr.hash !== undefined) {
        warm.noteFile(ctx.peer, attr.path);
      }
      return attr;
    },
    [MasterMethods.fsDir]: async (params: { path: unknown }, ctx: CallContext) => {
      const dir = path(params?.path);
      const started = DEBUG_TIMINGS ? performance.now() : 0;
      const attrs = await files.dir(dir);
      if (DEBUG_TIMINGS) {
        const ms = (performance.now() - started).toFixed(1);
        console.error(`termite master: listing of ${dir}: ${attrs.length} entries, ${ms} ms`);
      }
      if (attrs.length > 0) warm.noteDir(ctx.peer, dir);
      for (let i = 0; i < attrs.length; i += CHUNK_ATTRS) {
        await ctx.sendChunk(attrs.slice(i, i + CHUNK_ATTRS));
      }
      return { count: attrs.length };
    },
    [MasterMethods.blobGet]: async (params: BlobGetParams, ctx: CallContext) => {
      const hash = params?.hash;
      if (typeof hash !== "string" || !isHash(hash)) {
        throw new RpcError("BAD_REQUEST", `Bad hash: ${describe(hash)}`);
      }
      using file = await files.openBlob(hash);
      if (file === null) throw new RpcError("ENOENT", `No content ${hash} on the master`);
      const served = files.hashCache.pathOf(hash);
      if (served !== undefined) warm.noteFile(ctx.peer, served);
      // Only a content this worker may have from the master is found at a peer.
      const holder = holderFor(hash, file.info.size, params, ctx.peer);
      if (holder !== undefined) return { size: 0, peer: holder };
      const size = await ctx.sendFile(file.path); // the inode checked, whatever the name holds now
      stats.bytesServed += size;
      files.stats.blobs++;
      files.stats.blobBytes += size;
      return { size };
    },
    [MasterMethods.fsWarm]: (params: { tool: unknown }, ctx: CallContext) =>
      streams.stream(params?.tool, ctx),
  };
}
