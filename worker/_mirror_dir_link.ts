/**
 * A {@link MasterLink} served from a local directory tree, in process: what the
 * tests and benchmarks of the mirror use instead of a master across the network.
 *
 * @module
 */

import { hashFile } from "../cas/mod.ts";
import { isInside, joinPath } from "../common/paths.ts";
import type { FileAttr, FileKind } from "../common/types.ts";
import type { BlobFetchOptions, MasterLink } from "./master_link.ts";

/** Options of {@linkcode DirLink}. */
export interface DirLinkOptions {
  /** The host directory shown as the master's "/" ("/" for the real root). */
  root: string;
  /** Master paths not served, with everything under them (shown as absent). */
  excludes?: readonly string[];
  /** Delay added to every call, to stand for a network round trip. */
  latencyMs?: number;
  /** Give directory attrs their `children` (as a master does). Default true. */
  dirChildren?: boolean;
}

/** Calls received, by kind. */
export interface DirLinkCalls {
  attr: number;
  attrWithHash: number;
  dir: number;
  blob: number;
}

const CHUNK_BYTES = 256 * 1024;

/** Failure injected into a {@linkcode DirLink}. */
export class DirLinkError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DirLinkError";
  }
}

export class DirLink implements MasterLink {
  readonly root: string;
  readonly calls: DirLinkCalls = { attr: 0, attrWithHash: 0, dir: 0, blob: 0 };
  /** Send blobs with their first byte flipped (fails the store's verification). */
  corrupt = false;
  /** Fail every call. */
  broken = false;
  /**
   * Answer blob requests that allow peers with this worker address, sending
   * nothing (as a master does when another worker holds the blob).
   */
  peer: string | undefined = undefined;
  /** The `failed` peer of each blob request received, in order. */
  readonly failedPeers: (string | undefined)[] = [];
  readonly #excludes: readonly string[];
  readonly #latencyMs: number;
  readonly #dirChildren: boolean;
  /** Hashes computed so far: host path → key and hash (a master's hash cache). */
  readonly #hashByPath = new Map<string, { key: string; hash: string }>();
  /** Where each known hash can be read. */
  readonly #pathByHash = new Map<string, string>();

  constructor(options: DirLinkOptions) {
    this.root = options.root.replace(/\/+$/, "");
    this.#excludes = options.excludes ?? [];
    this.#latencyMs = options.latencyMs ?? 0;
    this.#dirChildren = options.dirChildren ?? true;
  }

  async attr(
    path: string,
    options: { withHash: boolean; signal?: AbortSignal },
  ): Promise<FileAttr> {
    this.calls.attr++;
    if (options.withHash) this.calls.attrWithHash++;
    await this.#enter(options.signal);
    if (this.#excluded(path)) return absent(path);
    let info: Deno.FileInfo;
    try {
      info = await Deno.lstat(this.#host(path));
    } catch (error) {
      if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
        return absent(path);
      }
      throw error;
    }
    return await this.#attrOf(path, info, options.withHash);
  }

  async dir(path: string, options: { signal?: AbortSignal }): Promise<FileAttr[]> {
    this.calls.dir++;
    await this.#enter(options.signal);
    if (this.#excluded(path)) return [];
    const names: string[] = [];
    for await (const entry of Deno.readDir(this.#host(path))) {
      if (!this.#excluded(joinPath(path, entry.name))) names.push(entry.name);
    }
    const attrs = await Promise.all(names.map(async (name) => {
      const child = joinPath(path, name);
      try {
        return await this.#attrOf(child, await Deno.lstat(this.#host(child)), false);
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) return absent(child);
        throw error;
      }
    }));
    return attrs.filter((attr) => attr.kind !== null);
  }

  async fetchBlob(
    hash: string,
    sink: { write(chunk: Uint8Array): Promise<void> },
    signal: AbortSignal,
    options?: BlobFetchOptions,
  ): Promise<{ peer?: string }> {
    this.calls.blob++;
    this.failedPeers.push(options?.failed);
    await this.#enter(signal);
    if (options?.peers && this.peer !== undefined && options.failed !== this.peer) {
      return { peer: this.peer };
    }
    const path = this.#pathByHash.get(hash);
    if (path === undefined) throw new DirLinkError(`Cannot send blob ${hash}: unknown hash`);
    using file = await Deno.open(path, { read: true });
    const buffer = new Uint8Array(CHUNK_BYTES);
    let first = true;
    while (true) {
      signal.throwIfAborted();
      const n = await file.read(buffer);
      if (n === null) break;
      const chunk = buffer.slice(0, n);
      if (first && this.corrupt && chunk.length > 0) chunk[0] ^= 0xff;
      first = false;
      await sink.write(chunk);
    }
    if (first && this.corrupt) await sink.write(new Uint8Array([0]));
    return {};
  }

  async #enter(signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted();
    if (this.#latencyMs > 0) await delay(this.#latencyMs, signal);
    if (this.broken) throw new DirLinkError("Cannot reach master: link broken (injected)");
  }

  #host(path: string): string {
    return this.root === "" ? path : path === "/" ? this.root : this.root + path;
  }

  #excluded(path: string): boolean {
    return this.#excludes.some((prefix) => isInside(path, prefix));
  }

  async #attrOf(path: string, info: Deno.FileInfo, withHash: boolean): Promise<FileAttr> {
    const kind: FileKind | null = info.isSymlink
      ? "symlink"
      : info.isDirectory
      ? "dir"
      : info.isFile
      ? "file"
      : null;
    if (kind === null) return absent(path);
    const attr: FileAttr = {
      path,
      kind,
      mode: (info.mode ?? 0) & 0o7777,
      size: info.size,
      mtimeMs: info.mtime?.getTime() ?? 0,
    };
    const host = this.#host(path);
    if (kind === "symlink") attr.target = await Deno.readLink(host);
    if (kind === "dir" && this.#dirChildren) {
      const children: Record<string, FileKind> = {};
      for await (const entry of Deno.readDir(host)) {
        const childKind = kindOfEntry(entry);
        if (childKind !== null && !this.#excluded(joinPath(path, entry.name))) {
          children[entry.name] = childKind;
        }
      }
      attr.children = children;
    }
    if (kind === "file") {
      const key = `${info.ino}:${info.size}:${attr.mtimeMs}`;
      const cached = this.#hashByPath.get(host);
      if (cached?.key === key) {
        attr.hash = cached.hash;
      } else if (withHash) {
        const { hash } = await hashFile(host);
        this.#hashByPath.set(host, { key, hash });
        this.#pathByHash.set(hash, host);
        attr.hash = hash;
      }
    }
    return attr;
  }
}

function absent(path: string): FileAttr {
  return { path, kind: null, mode: 0, size: 0, mtimeMs: 0 };
}

function kindOfEntry(entry: Deno.DirEntry): FileKind | null {
  return entry.isSymlink ? "symlink" : entry.isDirectory ? "dir" : entry.isFile ? "file" : null;
}

function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
