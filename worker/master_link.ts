/**
 * The master's file service as a mirror needs it: attributes of a path or of
 * a whole directory, and blobs by hash; and its implementation over RPC.
 *
 * @module
 */

import { ADDRESS_CHARS_MAX } from "../common/address.ts";
import { type BlobGetParams, type BlobGetReply, MasterMethods } from "../common/protocol.ts";
import type { FileAttr } from "../common/types.ts";
import { RpcError, type RpcPeer } from "../rpc/mod.ts";

/** The master's file service, as the mirror needs it (implemented over RPC by the worker). */
export interface MasterLink {
  /** The master's `fs.attr`: one path's attributes (`kind: null` when absent). */
  attr(path: string, options: { withHash: boolean; signal?: AbortSignal }): Promise<FileAttr>;
  /**
   * The master's `fs.dir`: attributes of all children of a directory at once
   * (hashes only where the master has them cached).
   */
  dir(path: string, options: { signal?: AbortSignal }): Promise<FileAttr[]>;
  /**
   * The master's `blob.get`: writes the blob's bytes to `sink`, in order; or,
   * when `options.peers` allows it, may answer with the address of a peer
   * worker to fetch the blob from instead (nothing written then).
   */
  fetchBlob(
    hash: string,
    sink: { write(chunk: Uint8Array): Promise<void> },
    signal: AbortSignal,
    options?: BlobFetchOptions,
  ): Promise<{ peer?: string } | void>;
  /**
   * The master's `fs.warm`: the learned warm set of `tool`, as chunks (see
   * {@link WarmChunk}) handed to `onChunk` in order. Absent: no warm sets.
   */
  warm?(
    tool: string,
    onChunk: (chunk: WarmChunk) => void,
    signal: AbortSignal,
  ): Promise<void>;
}

/** How a blob may be fetched. */
export interface BlobFetchOptions {
  /** The master may send us to a peer worker holding it. */
  peers?: boolean;
  /** The peer we were sent to for this blob and could not get it from. */
  failed?: string;
}

/**
 * A chunk of `fs.warm`: a directory's listing (in parts, `more` on all but
 * the last), or attributes of files with their hashes.
 */
export type WarmChunk = { d: string; a: FileAttr[]; more?: true } | { f: FileAttr[] };

/** Checks a chunk of `fs.warm` for shape (the mirror checks names as it absorbs them). */
export function checkWarmChunk(chunk: unknown): WarmChunk {
  const c = chunk as Record<string, unknown>;
  const attrsOk = (a: unknown) =>
    Array.isArray(a) && a.length <= WARM_CHUNK_ATTRS_MAX &&
    a.every((x) => typeof x === "object" && x !== null && typeof x.path === "string");
  if (typeof c === "object" && c !== null) {
    if (typeof c.d === "string" && attrsOk(c.a) && (c.more === undefined || c.more === true)) {
      return c as WarmChunk;
    }
    if (attrsOk(c.f) && c.d === undefined) return c as WarmChunk;
  }
  throw new RpcError("BAD_REQUEST", "Bad warm-set chunk");
}

/** Attributes one warm-set chunk may bring at most. */
const WARM_CHUNK_ATTRS_MAX = 4096;

/** Attributes one directory listing may bring at most. */
const DIR_ATTRS_MAX = 1_000_000;

/**
 * The link over RPC to a master, through `peer()`: the connection serving
 * that master's files now (a master reconnecting gets the same mirror).
 */
export function rpcMasterLink(peer: () => RpcPeer): MasterLink {
  return {
    attr: (path, options) =>
      peer().call<FileAttr>(MasterMethods.fsAttr, { path, withHash: options.withHash }, {
        timeoutMs: 60_000,
        signal: options.signal,
      }),
    dir: async (path, options) => {
      const out: FileAttr[] = [];
      await peer().call(MasterMethods.fsDir, { path }, {
        timeoutMs: 60_000,
        signal: options.signal,
        onChunk: (chunk) => {
          if (!Array.isArray(chunk) || out.length + chunk.length > DIR_ATTRS_MAX) {
            throw new RpcError("BAD_REQUEST", "Bad directory chunk");
          }
          out.push(...(chunk as FileAttr[]));
        },
      });
      return out;
    },
    warm: async (tool, onChunk, signal) => {
      await peer().call(MasterMethods.fsWarm, { tool }, {
        timeoutMs: 600_000,
        signal,
        onChunk: (chunk) => onChunk(checkWarmChunk(chunk)),
      });
    },
    fetchBlob: async (hash, sink, signal, options) => {
      let chunks = 0;
      const params: BlobGetParams = { hash };
      if (options?.peers) params.peers = true;
      if (options?.failed !== undefined) params.failed = options.failed;
      const reply = await peer().call<BlobGetReply>(MasterMethods.blobGet, params, {
        timeoutMs: 300_000,
        signal,
        onChunk: (chunk) => {
          if (!(chunk instanceof Uint8Array)) throw new RpcError("BAD_REQUEST", "Bad blob chunk");
          chunks++;
          return sink.write(chunk);
        },
      });
      const at = (reply as Partial<BlobGetReply> | undefined)?.peer;
      if (at === undefined) return {};
      if (
        !options?.peers || chunks > 0 || typeof at !== "string" || at.length > ADDRESS_CHARS_MAX
      ) {
        throw new RpcError(
          "BAD_REQUEST",
          `Bad blob.get reply for ${hash}: peer ${String(JSON.stringify(at)).slice(0, 100)}`,
        );
      }
      return { peer: at };
    },
  };
}
