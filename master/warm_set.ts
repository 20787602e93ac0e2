/**
 * Learned warm sets: per tool (`toolKey`), the directories a worker listed
 * and the files whose contents it fetched while that tool's jobs ran on it,
 * in the order first needed. Kept in the master's cache directory (data from
 * an earlier run of this master: validated, discarded whole if damaged) and
 * streamed to a mirror when its first job of the tool starts (`fs.warm`), so
 * that a cold worker gets them in bulk instead of one round trip each.
 *
 * Only names are learned, never attributes or contents: what is streamed is
 * read again at that moment through the file server's own `dir` and `attr`,
 * the same checks and the same memory of what was served as a lazy fetch.
 *
 * @module
 */

import type { FileAttr } from "../common/types.ts";
import { WARM_TOOL_KEY_MAX } from "../common/protocol.ts";
import type { RpcPeer } from "../rpc/mod.ts";

export { WARM_TOOL_KEY_MAX };
import { normalizeAbsolute } from "./paths.ts";

/** Tools remembered at most (least recently used dropped beyond). */
export const WARM_TOOLS_MAX = 64;
/** Directories and files each remembered per tool at most. */
export const WARM_ENTRIES_MAX = 20_000;
/** The learned-set file is refused beyond this size. */
export const WARM_FILE_BYTES_MAX = 16 * 2 ** 20;
/** Bytes of file contents one stream announces at most. */
export const WARM_STREAM_BYTES_MAX = 1024 * 2 ** 20;
const PATH_BYTES_MAX = 4096;
const FORMAT = "termite-warm-1";

/** What one tool's jobs needed. */
export interface WarmSet {
  dirs: string[];
  files: string[];
}

interface Learned {
  dirs: Set<string>;
  files: Set<string>;
  /** Jobs of the tool started (to warm the busiest first). */
  jobs: number;
}

/**
 * The key a job's warm set is kept under: the tool's name and the shape of
 * its arguments (compile only, assemble, preprocess, or other), not the files
 * it names (another compile of the same tool needs the same toolchain).
 */
export function toolKey(argv: readonly string[]): string {
  const tool = (argv[0] ?? "").split("/").pop() ?? "";
  const shape = argv.includes("-c")
    ? "-c"
    : argv.includes("-S")
    ? "-S"
    : argv.includes("-E")
    ? "-E"
    : argv.length > 1 && argv[1].startsWith("-")
    ? argv[1].slice(0, 16)
    : "";
  return `${tool} ${shape}`.slice(0, WARM_TOOL_KEY_MAX);
}

/** Why a learned-set file was refused. */
export class WarmSetFileError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "WarmSetFileError";
  }
}

/** Options of {@linkcode WarmSets}. */
export interface WarmSetsOptions {
  /** Where the sets persist; none: kept in memory only. */
  file?: string;
  entriesMax?: number;
  toolsMax?: number;
  saveIntervalMs?: number;
  log?: (message: string) => void;
}

export class WarmSets {
  readonly #file: string | undefined;
  readonly #entriesMax: number;
  readonly #toolsMax: number;
  readonly #saveIntervalMs: number;
  readonly #log: (message: string) => void;
  readonly #tools = new Map<string, Learned>();
  /** Tools of the jobs running now on each worker connection (key → jobs). */
  readonly #running = new Map<RpcPeer, Map<string, number>>();
  /** The tool of the last job started on each connection (for requests between jobs). */
  readonly #last = new WeakMap<RpcPeer, string>();
  #dirty = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #saving: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(options: WarmSetsOptions) {
    this.#file = options.file;
    this.#entriesMax = options.entriesMax ?? WARM_ENTRIES_MAX;
    this.#toolsMax = options.toolsMax ?? WARM_TOOLS_MAX;
    this.#saveIntervalMs = options.saveIntervalMs ?? 2_000;
    this.#log = options.log ?? (() => {});
  }

  /** Opens the sets kept in `options.file`; a damaged file is reported and ignored. */
  static async open(options: WarmSetsOptions): Promise<WarmSets> {
    const sets = new WarmSets(options);
    if (options.file === undefined) return sets;
    try {
      sets.#load(await readBounded(options.file));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        sets.#tools.clear();
        sets.#log(
          `discarding the learned warm sets in ${options.file}: ${(error as Error).message}`,
        );
        await Deno.remove(options.file).catch(() => {});
      }
    }
    return sets;
  }

  /** Tools known. */
  get size(): number {
    return this.#tools.size;
  }

  /** Up to `n` tools with a learned set, those that ran the most jobs first. */
  busiestTools(n: number): string[] {
    return [...this.#tools].filter(([, l]) => l.dirs.size + l.files.size > 0)
      .sort(([, a], [, b]) => b.jobs - a.jobs).slice(0, n).map(([key]) => key);
  }

  /** The set learned for `tool` (empty if none), in the order first needed. */
  setFor(tool: string): WarmSet {
    const learned = this.#tools.get(tool);
    return { dirs: [...learned?.dirs ?? []], files: [...learned?.files ?? []] };
  }

  /** A job of `tool` starts on the worker behind `peer`: what it serves counts for the tool. */
  jobStarted(peer: RpcPeer, tool: string): void {
    let tools = this.#running.get(peer);
    if (tools === undefined) {
      tools = new Map();
      this.#running.set(peer, tools);
      peer.closed.then(() => this.#running.delete(peer), () => this.#running.delete(peer));
    }
    tools.set(tool, (tools.get(tool) ?? 0) + 1);
    this.#last.set(peer, tool);
    const learned = this.#learned(tool);
    if (learned.jobs < Number.MAX_SAFE_INTEGER) learned.jobs++;
    this.#changed();
  }

  jobEnded(peer: RpcPeer, tool: string): void {
    const tools = this.#running.get(peer);
    const n = tools?.get(tool) ?? 0;
    if (n <= 1) tools?.delete(tool);
    else tools!.set(tool, n - 1);
  }

  /** The worker behind `peer` listed directory `path`. */
  noteDir(peer: RpcPeer, path: string): void {
    this.#note(peer, path, "dirs");
  }

  /** The worker behind `peer` fetched the contents of file `path`. */
  noteFile(peer: RpcPeer, path: string): void {
    this.#note(peer, path, "files");
  }

  /** Writes the sets out now if they changed; stops saving later. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#saving;
    await this.save();
  }

  /** Writes the sets to the file (atomically, mode 0600) if they changed. */
  save(): Promise<void> {
    const file = this.#file;
    if (file === undefined || !this.#dirty) return this.#saving;
    this.#dirty = false;
    const tools: Record<string, WarmSet & { jobs: number }> = {};
    for (const [key, learned] of this.#tools) {
      tools[key] = { dirs: [...learned.dirs], files: [...learned.files], jobs: learned.jobs };
    }
    const text = JSON.stringify({ format: FORMAT, tools });
    const write = async () => {
      if (text.length > WARM_FILE_BYTES_MAX) {
        this.#log(`not saving the learned warm sets: ${text.length} bytes`);
        return;
      }
      const tmp = `${file}.tmp-${crypto.randomUUID()}`;
      try {
        await Deno.writeTextFile(tmp, text, { mode: 0o600 });
        await Deno.rename(tmp, file);
      } catch (error) {
        await Deno.remove(tmp).catch(() => {});
        this.#log(`cannot save the learned warm sets in ${file}: ${(error as Error).message}`);
      }
    };
    this.#saving = this.#saving.then(write);
    return this.#saving;
  }

  #note(peer: RpcPeer, path: string, kind: "dirs" | "files"): void {
    const running = this.#running.get(peer);
    // With jobs of two tools running on the worker, which one needed it is
    // unknown: it goes to neither (an `ar` loading libLLVM beside compiles
    // would put 164 MiB into the compiler's set, sent to every worker).
    if (running !== undefined && running.size > 1) return;
    const tool = running?.size === 1 ? running.keys().next().value : this.#last.get(peer);
    if (tool === undefined) return;
    const set = this.#learned(tool)[kind];
    if (set.has(path) || set.size >= this.#entriesMax) return;
    set.add(path);
    this.#changed();
  }

  #learned(tool: string): Learned {
    let learned = this.#tools.get(tool);
    if (learned === undefined) {
      learned = { dirs: new Set(), files: new Set(), jobs: 0 };
      while (this.#tools.size >= this.#toolsMax) {
        this.#tools.delete(this.#tools.keys().next().value!);
      }
    } else {
      this.#tools.delete(tool); // most recently used last
    }
    this.#tools.set(tool, learned);
    return learned;
  }

  #changed(): void {
    this.#dirty = true;
    if (this.#file === undefined || this.#closed || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.save();
    }, this.#saveIntervalMs);
  }

  #load(text: string): void {
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch (error) {
      throw new WarmSetFileError("not JSON", { cause: error });
    }
    const record = data as { format?: unknown; tools?: unknown };
    if (typeof record !== "object" || record === null || record.format !== FORMAT) {
      throw new WarmSetFileError(`not of format ${FORMAT}`);
    }
    const tools = record.tools;
    if (typeof tools !== "object" || tools === null || Array.isArray(tools)) {
      throw new WarmSetFileError("no tools");
    }
    const entries = Object.entries(tools);
    if (entries.length > this.#toolsMax) {
      throw new WarmSetFileError(`${entries.length} tools, more than ${this.#toolsMax}`);
    }
    for (const [key, set] of entries) {
      if (key.length > WARM_TOOL_KEY_MAX) throw new WarmSetFileError("a tool key too long");
      const { dirs, files, jobs } = (set ?? {}) as {
        dirs?: unknown;
        files?: unknown;
        jobs?: unknown;
      };
      if (jobs !== undefined && !Number.isSafeInteger(jobs)) {
        throw new WarmSetFileError(`bad job count for ${JSON.stringify(key)}`);
      }
      this.#tools.set(key, {
        dirs: new Set(this.#paths(dirs, key)),
        files: new Set(this.#paths(files, key)),
        jobs: Math.max(0, (jobs as number | undefined) ?? 0),
      });
    }
  }

  #paths(list: unknown, key: string): string[] {
    if (!Array.isArray(list) || list.length > this.#entriesMax) {
      throw new WarmSetFileError(`bad list of paths for ${JSON.stringify(key)}`);
    }
    for (const path of list) {
      if (
        typeof path !== "string" || path.length > PATH_BYTES_MAX ||
        normalizeAbsolute(path) !== path
      ) {
        throw new WarmSetFileError(`bad path for ${JSON.stringify(key)}: ${JSON.stringify(path)}`);
      }
    }
    return list as string[];
  }
}

/** A regular file's text, refused beyond {@link WARM_FILE_BYTES_MAX}. */
async function readBounded(file: string): Promise<string> {
  const info = await Deno.lstat(file);
  if (!info.isFile) throw new WarmSetFileError("not a regular file");
  if (info.size > WARM_FILE_BYTES_MAX) {
    throw new WarmSetFileError(`${info.size} bytes, more than ${WARM_FILE_BYTES_MAX}`);
  }
  return await Deno.readTextFile(file);
}

/** Options of {@linkcode streamWarmSet}. */
export interface WarmStreamOptions {
  set: WarmSet;
  /** The file server's own reads (the same checks and memory as a lazy fetch). */
  dir(path: string): Promise<FileAttr[]>;
  attr(path: string): Promise<FileAttr>;
  /** Sends one chunk to the mirror (waits while the connection is busy). */
  send(chunk: WarmChunk): Promise<void>;
  signal: AbortSignal;
  /** Bytes of contents announced at most (default {@link WARM_STREAM_BYTES_MAX}). */
  bytesMax?: number;
}

/**
 * A chunk of `fs.warm`: a directory's listing as `fs.dir` gives it (in parts
 * of at most {@link WARM_CHUNK_ATTRS}, `more` on all but the last), or files'
 * attributes with their hashes, as `fs.attr` with `withHash` gives them.
 */
export type WarmChunk = { d: string; a: FileAttr[]; more?: true } | { f: FileAttr[] };

/** Attributes per chunk at most. */
export const WARM_CHUNK_ATTRS = 512;
/** Files in the first chunk of a stream at most. */
const WARM_FIRST_FILES = 16;
/** Reads (listings, hashes) ahead of the one being sent. */
const READS_AHEAD = 4;

/**
 * Streams a warm set: its files with their hashes, then its directories,
 * parents first, each read now. Returns what was sent.
 */
export async function streamWarmSet(
  options: WarmStreamOptions,
): Promise<{ dirs: number; files: number; bytes: number }> {
  const { set, signal } = options;
  const bytesMax = options.bytesMax ?? WARM_STREAM_BYTES_MAX;
  // Files first: their contents are copied or fetched in the background, the
  // longest wait of a cold job (a compiler), and need no listing to start.
  let bytes = 0;
  let sentFiles = 0;
  let batch: FileAttr[] = [];
  await inOrder(set.files, (path) => options.attr(path), signal, async (_path, attr) => {
    if (attr.kind === "file" && attr.hash !== undefined) {
      if (bytes + attr.size > bytesMax) return;
      bytes += attr.size;
    }
    batch.push(attr);
    sentFiles++;
    // The first chunk small: the mirror starts on the first contents sooner.
    if (batch.length >= (sentFiles === batch.length ? WARM_FIRST_FILES : WARM_CHUNK_ATTRS)) {
      await options.send({ f: batch });
      batch = [];
    }
  });
  if (batch.length > 0) await options.send({ f: batch });
  const dirs = [...set.dirs].sort((a, b) => depth(a) - depth(b));
  let sentDirs = 0;
  await inOrder(dirs, (path) => options.dir(path), signal, async (path, attrs) => {
    for (let i = 0; i === 0 || i < attrs.length; i += WARM_CHUNK_ATTRS) {
      const part = attrs.slice(i, i + WARM_CHUNK_ATTRS);
      await options.send(
        i + WARM_CHUNK_ATTRS < attrs.length
          ? { d: path, a: part, more: true }
          : { d: path, a: part },
      );
    }
    sentDirs++;
  });
  return { dirs: sentDirs, files: sentFiles, bytes };
}

/** Reads each item (a few ahead), then hands them to `use` in order. */
async function inOrder<T>(
  items: readonly string[],
  read: (item: string) => Promise<T>,
  signal: AbortSignal,
  use: (item: string, value: T) => Promise<void>,
): Promise<void> {
  const reads: (Promise<T> | undefined)[] = [];
  for (let i = 0; i < items.length; i++) {
    signal.throwIfAborted();
    for (let j = reads.length; j < Math.min(items.length, i + 1 + READS_AHEAD); j++) {
      const reading = read(items[j]);
      reading.catch(() => {}); // awaited in turn below
      reads.push(reading);
    }
    let value: T;
    try {
      value = await reads[i]!;
    } catch {
      continue; // unreadable now: left out, as a lazy fetch would fail
    } finally {
      reads[i] = undefined;
    }
    await use(items[i], value);
  }
}

function depth(path: string): number {
  let n = 0;
  for (let i = 0; i < path.length; i++) if (path.charCodeAt(i) === 47) n++;
  return path === "/" ? 0 : n;
}
