/**
 * The action cache on disk: entries under `<dir>/entries/<key>.<id>`, each
 * with the SHA-256 of its body in front (a corrupt one is removed, never
 * used), result contents under `<dir>/blobs/<hash>`, shared between entries
 * and counted by reference. The whole is capped in bytes, least recently
 * used first out, and each key keeps its few newest entries. What an entry
 * means (its key, its inputs' states) is `action_cache.ts`'s.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { isHash } from "../common/hash.ts";
import type { ReadKind } from "../common/protocol.ts";
import type { ResultSet } from "../common/types.ts";
import type { ActionCacheStats } from "./action_cache.ts";

/** Default cap on the cache's bytes on disk (entries and contents). */
export const ACTION_CACHE_BYTES_MAX = 2 * 2 ** 30;
/** Entries kept per key (same command, different inputs); the oldest goes first. */
export const ENTRIES_PER_KEY_MAX = 4;
/** Bytes of entries kept parsed in memory (the most recently read), besides the files. */
export const PARSED_BYTES_MAX = 32 * 2 ** 20;
/** An entry's file's mtime (its use, for the next start's LRU) is set at most this often. */
const TOUCH_INTERVAL_MS = 60_000;
/** Written into every entry and every key: a change of format misses everything. */
export const ENTRY_FORMAT = "termite-action-v1";

/** One cached run, as stored. */
export interface ActionEntry {
  format: string;
  key: string;
  /** [path, kind, state] */
  reads: [string, ReadKind, string][];
  resultSet: ResultSet;
  /** Base64. */
  stdout: string;
  /** Base64. */
  stderr: string;
  exitCode: number;
  ranMs: number;
  readStdin: boolean;
}

/** An entry in the index: where it is, what it holds on to, when it was last used. */
export interface IndexedEntry {
  key: string;
  file: string;
  bytes: number;
  blobs: string[];
  usedMs: number;
}

export interface ActionStoreOptions {
  /** The cache's directory (created 0700). */
  dir: string;
  bytesMax: number;
  /** Updated here: corrupt, evicted, entries, bytes. */
  stats: ActionCacheStats;
  log?(message: string): void;
}

/** Entries and contents on disk, indexed in memory. */
export class ActionStore {
  readonly #o: ActionStoreOptions;
  readonly #byKey = new Map<string, IndexedEntry[]>();
  readonly #blobRefs = new Map<string, number>();
  readonly #blobBytes = new Map<string, number>();
  #bytes = 0;
  /**
   * Entries as read and checked, by file, least recently read first: a
   * lookup does not read, check and parse the same file again. Only this
   * store writes its files (a private directory); a put or drop updates it.
   */
  readonly #parsed = new Map<string, { entry: ActionEntry; bytes: number }>();
  #parsedBytes = 0;
  /** When each entry's file was last touched, by file. */
  readonly #touchedMs = new Map<string, number>();

  private constructor(options: ActionStoreOptions) {
    this.#o = options;
  }

  /** Opens (or creates) the store, checking every entry; corrupt ones are removed. */
  static async open(options: ActionStoreOptions): Promise<ActionStore> {
    const store = new ActionStore(options);
    await Deno.mkdir(`${options.dir}/entries`, { recursive: true, mode: 0o700 });
    await Deno.mkdir(`${options.dir}/blobs`, { recursive: true, mode: 0o700 });
    await Deno.chmod(options.dir, 0o700);
    for await (const e of Deno.readDir(`${options.dir}/entries`)) {
      const file = `${options.dir}/entries/${e.name}`;
      if (!e.isFile || !/^[0-9a-f]{64}\.[0-9a-f]{16}$/.test(e.name)) {
        await Deno.remove(file, { recursive: true }).catch(() => {});
        continue;
      }
      const entry = await store.read(file);
      if (entry === null) continue;
      const info = await Deno.stat(file);
      store.#index({
        key: entry.key,
        file,
        bytes: info.size,
        blobs: entry.resultSet.files.map((f) => f.hash),
        usedMs: info.mtime?.getTime() ?? 0,
      });
    }
    for await (const e of Deno.readDir(`${options.dir}/blobs`)) {
      const file = `${options.dir}/blobs/${e.name}`;
      if (!store.#blobRefs.has(e.name)) await Deno.remove(file).catch(() => {});
      else store.#countBlob(e.name, (await Deno.stat(file)).size);
    }
    await store.#evict();
    return store;
  }

  /** The entries of `key`, least recently used first. */
  entriesOf(key: string): readonly IndexedEntry[] {
    return this.#byKey.get(key) ?? [];
  }

  /** An entry's body, checked; null if gone or corrupt (then removed). */
  async read(file: string): Promise<ActionEntry | null> {
    const parsed = this.#parsed.get(file);
    if (parsed !== undefined) {
      this.#parsed.delete(file);
      this.#parsed.set(file, parsed);
      return parsed.entry;
    }
    try {
      const text = await Deno.readTextFile(file);
      const nl = text.indexOf("\n");
      const body = text.slice(nl + 1);
      if (nl !== 64 || text.slice(0, 64) !== sha256Hex(new TextEncoder().encode(body))) {
        throw new Error("checksum mismatch");
      }
      const entry = JSON.parse(body) as ActionEntry;
      if (entry.format !== ENTRY_FORMAT || !file.includes(`/${entry.key}.`)) {
        throw new Error("not an entry of this cache");
      }
      this.#keepParsed(file, entry, text.length);
      return entry;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return null;
      this.#o.stats.corrupt++;
      this.#o.log?.(`discarding a corrupt action cache entry ${file}: ${errorCode(err)}`);
      const indexed = [...this.#byKey.values()].flat().find((i) => i.file === file);
      if (indexed) this.#unindex(indexed);
      await Deno.remove(file).catch(() => {});
      return null;
    }
  }

  /** Whether every result content of `entry` is here, at its size. */
  blobsPresent(entry: ActionEntry): boolean {
    for (const f of entry.resultSet.files) {
      if (!this.#blobBytes.has(f.hash)) return false;
      // Synchronous: a file of the cache's own directory, a few µs.
      let size = -1;
      try {
        size = Deno.statSync(this.blobPath(f.hash)).size;
      } catch {
        return false;
      }
      if (size !== f.size) return false;
    }
    return true;
  }

  /**
   * Marks an entry used now; its file's mtime too (for the next start's
   * LRU), at most every {@linkcode TOUCH_INTERVAL_MS}.
   */
  async touch(indexed: IndexedEntry): Promise<void> {
    indexed.usedMs = Date.now();
    const last = this.#touchedMs.get(indexed.file);
    if (last !== undefined && indexed.usedMs - last < TOUCH_INTERVAL_MS) return;
    this.#touchedMs.set(indexed.file, indexed.usedMs);
    const now = new Date(indexed.usedMs);
    await Deno.utime(indexed.file, now, now).catch(() => {});
  }

  /** Where a result content is kept. */
  blobPath(hash: string): string {
    if (!isHash(hash)) throw new Error(`Bad hash: ${hash}`);
    return `${this.#o.dir}/blobs/${hash}`;
  }

  hasBlob(hash: string): boolean {
    return this.#blobBytes.has(hash);
  }

  /** Keeps a result content (already checked to have `hash`). */
  async putBlob(hash: string, content: Uint8Array): Promise<void> {
    const target = this.blobPath(hash);
    const tmp = `${target}.${crypto.randomUUID()}.tmp`;
    await Deno.writeFile(tmp, content, { mode: 0o600 });
    await Deno.rename(tmp, target);
    this.#countBlob(hash, content.length);
  }

  /**
   * Writes an entry (its contents put first), replacing one of the same key
   * and reads; then drops the key's oldest beyond {@linkcode ENTRIES_PER_KEY_MAX}
   * and evicts down to the cap.
   */
  async put(entry: ActionEntry): Promise<void> {
    const { key, reads } = entry;
    const body = JSON.stringify(entry);
    const text = `${sha256Hex(new TextEncoder().encode(body))}\n${body}`;
    const id = sha256Hex(new TextEncoder().encode(JSON.stringify(reads))).slice(0, 16);
    const file = `${this.#o.dir}/entries/${key}.${id}`;
    const tmp = `${file}.${crypto.randomUUID()}.tmp`;
    await Deno.writeTextFile(tmp, text, { mode: 0o600 });
    await Deno.rename(tmp, file);
    this.#keepParsed(file, entry, text.length);
    const list = this.#byKey.get(key) ?? [];
    const old = list.find((i) => i.file === file);
    if (old) this.#unindex(old);
    this.#index({
      key,
      file,
      bytes: text.length,
      blobs: entry.resultSet.files.map((f) => f.hash),
      usedMs: Date.now(),
    });
    const now = this.#byKey.get(key) ?? [];
    while (now.length > ENTRIES_PER_KEY_MAX) await this.#drop(now[0]);
    await this.#evict();
  }

  #index(i: IndexedEntry): void {
    const list = this.#byKey.get(i.key) ?? [];
    list.push(i);
    list.sort((a, b) => a.usedMs - b.usedMs);
    this.#byKey.set(i.key, list);
    this.#bytes += i.bytes;
    for (const h of i.blobs) this.#blobRefs.set(h, (this.#blobRefs.get(h) ?? 0) + 1);
    this.#o.stats.entries++;
    this.#o.stats.bytes = this.#bytes;
  }

  #keepParsed(file: string, entry: ActionEntry, bytes: number): void {
    this.#forgetParsed(file);
    if (bytes > PARSED_BYTES_MAX / 8) return;
    this.#parsed.set(file, { entry, bytes });
    this.#parsedBytes += bytes;
    for (const [old, kept] of this.#parsed) {
      if (this.#parsedBytes <= PARSED_BYTES_MAX) break;
      this.#parsed.delete(old);
      this.#parsedBytes -= kept.bytes;
    }
  }

  #forgetParsed(file: string): void {
    const kept = this.#parsed.get(file);
    if (kept === undefined) return;
    this.#parsed.delete(file);
    this.#parsedBytes -= kept.bytes;
  }

  #unindex(i: IndexedEntry): string[] {
    this.#forgetParsed(i.file);
    this.#touchedMs.delete(i.file);
    const list = this.#byKey.get(i.key) ?? [];
    const at = list.indexOf(i);
    if (at < 0) return [];
    list.splice(at, 1);
    if (list.length === 0) this.#byKey.delete(i.key);
    this.#bytes -= i.bytes;
    this.#o.stats.entries--;
    const unused: string[] = [];
    for (const h of i.blobs) {
      const n = (this.#blobRefs.get(h) ?? 1) - 1;
      if (n > 0) this.#blobRefs.set(h, n);
      else {
        this.#blobRefs.delete(h);
        unused.push(h);
      }
    }
    this.#o.stats.bytes = this.#bytes;
    return unused;
  }

  #countBlob(hash: string, bytes: number): void {
    if (this.#blobBytes.has(hash)) return;
    this.#blobBytes.set(hash, bytes);
    this.#bytes += bytes;
    this.#o.stats.bytes = this.#bytes;
  }

  async #drop(i: IndexedEntry): Promise<void> {
    for (const h of this.#unindex(i)) {
      const bytes = this.#blobBytes.get(h);
      if (bytes !== undefined) {
        this.#blobBytes.delete(h);
        this.#bytes -= bytes;
      }
      await Deno.remove(this.blobPath(h)).catch(() => {});
    }
    this.#o.stats.bytes = this.#bytes;
    await Deno.remove(i.file).catch(() => {});
  }

  async #evict(): Promise<void> {
    if (this.#bytes <= this.#o.bytesMax) return;
    const all = [...this.#byKey.values()].flat().sort((a, b) => a.usedMs - b.usedMs);
    for (const i of all) {
      if (this.#bytes <= this.#o.bytesMax) break;
      await this.#drop(i);
      this.#o.stats.evicted++;
    }
  }
}

/** Hex SHA-256 of `bytes`. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** An error's code (`ENOENT`), else its name: for logs and states. */
export function errorCode(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "string") return code;
  return err instanceof Error ? err.name : "error";
}
