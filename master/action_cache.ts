/**
 * The action cache: a command run before with the same argv, cwd and
 * environment, whose every input is unchanged, is not run again; its result
 * set, output and exit status are replayed here, without a worker.
 *
 * The inputs are what the worker recorded the job looking at (its read set:
 * worker/read_set.ts), each path's state taken here, by the master, from its
 * own file system and hash cache: a file's content hash, an absence (with its
 * errno), a directory's listing, a symlink's target, the attributes a stat
 * or access saw. A lookup takes the same states again and hits only when
 * every one is equal. Entries are files under the master's private cache dir,
 * each with its SHA-256 in front (a corrupt one is removed, never applied);
 * result contents are kept beside them by hash (and verified again when
 * applied). The whole is capped in bytes, least recently used first out
 * (the store on disk: `action_store.ts`).
 *
 * @module
 */

import { createHash } from "node:crypto";
import type { ReadKind, ReadSet } from "../common/protocol.ts";
import type { ResultSet } from "../common/types.ts";
import { openRegular } from "../common/regular_file.ts";
import {
  ACTION_CACHE_BYTES_MAX,
  type ActionEntry,
  ActionStore,
  ENTRY_FORMAT,
  errorCode,
  sha256Hex,
} from "./action_store.ts";
import type { HashCache } from "./hash_cache.ts";
import { type StatPrint, StatProbe } from "./path_probe.ts";

export { ACTION_CACHE_BYTES_MAX, ENTRIES_PER_KEY_MAX } from "./action_store.ts";
/** Output bytes (stdout + stderr) of a job that can be cached. */
export const OUTPUT_BYTES_MAX = 1 * 2 ** 20;
/** Paths in one entry's read set. */
export const READS_MAX = 50_000;
/** Result files of one entry. */
const RESULT_FILES_MAX = 1_000;
/** Bytes of one entry's result contents. */
const RESULT_BYTES_MAX = 256 * 2 ** 20;
/** Environment variables left out of the key by default: they change from run to run. */
export const IGNORED_ENV_DEFAULT: readonly string[] = ["MAKEFLAGS", "MFLAGS", "MAKELEVEL"];
/** Prefixes of variables left out of the key (the wrapper's own). */
export const IGNORED_ENV_PREFIXES: readonly string[] = ["TERMITE_"];
/** Private to each job on a worker (its own /proc, /dev, /sys, /tmp): not inputs. */
const JOB_PRIVATE = ["/proc", "/dev", "/sys", "/tmp"];
/** States remembered between lookups, by (kind, path); the least recently taken go first beyond it. */
export const STATE_MEMO_MAX = 100_000;
/**
 * A file changed this recently may change again within the same timestamp
 * (and so without a new print): its state is taken again at every lookup.
 */
export const STATE_RACY_MS = 2000;
/** Executables whose interpreter is remembered; the least recently read go first beyond it. */
const INTERPRETERS_MAX = 10_000;
/** `S_IFMT`, `S_IFREG` of st_mode. */
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
/** Absent names, the errno a probe returns: the state Deno's error code gives. */
const ERRNO_STATES = new Map([[2, "-ENOENT"], [20, "-ENOTDIR"]]);
/** Logs why each entry missed. */
const DEBUG = Deno.env.get("TERMITE_DEBUG_ACTIONS") !== undefined;

/** What a job produced, as replayed. */
export interface ActionOutput {
  resultSet: ResultSet;
  stdout: Uint8Array;
  stderr: Uint8Array;
  exitCode: number;
  /** What the run took (worker and apply), for the time-saved figure. */
  ranMs: number;
  /** It read its stdin (then /dev/null: such an entry serves only jobs without one). */
  readStdin?: boolean;
}

export interface ActionCacheStats {
  hits: number;
  misses: number;
  stored: number;
  /** Jobs whose result could not be cached (incomplete recording, a race, too big). */
  notStored: number;
  /** Time the hits would have taken, by their recorded runs. */
  savedMs: number;
  corrupt: number;
  evicted: number;
  entries: number;
  bytes: number;
  /** The last reason a result was not stored. */
  lastNotStored: string;
  /** Lookups' states answered from what earlier lookups took (a file's print the same, a name still absent). */
  statesReused: number;
}

export interface ActionCacheOptions {
  /** The cache's directory (created 0700). */
  dir: string;
  /** The tree's root: its /tmp paths are inputs even though /tmp is private to jobs. */
  root: string;
  hashCache: HashCache;
  bytesMax?: number;
  /** Variables left out of the key; default {@linkcode IGNORED_ENV_DEFAULT}. */
  ignoredEnv?: readonly string[];
  /** What else changes what a job sees (the master's exclusions): part of every key. */
  salt?: string;
  /** The time, ms (tests move it on, to see states memoised at once); default `Date.now`. */
  clock?: () => number;
  log?(message: string): void;
}

/** A state kept between lookups: see `ActionCache.#memoState`. */
interface StateMemo {
  /** The file's print when the state was taken; none for an absent name. */
  print?: StatPrint;
  state: string;
  /** The lookup that last found it the same; -1 once dropped. */
  checked: number;
  /** An absent name's directory's memo: it holds while that one is checked. */
  via?: StateMemo;
}

/** Why a result was not stored. */
export class NotCacheable extends Error {
  override name = "NotCacheable";
}

/**
 * Why a read set that is not complete is not cached: its recorder's reason,
 * cut to 200 characters. It comes from a worker: anything but a string is
 * named by its type, never converted (its `toString` may be anything).
 */
export function incompleteWhy(reads: { why?: unknown } | null | undefined): string {
  const why = reads?.why;
  return `recording incomplete: ${typeof why === "string" ? why.slice(0, 200) : typeof why}`;
}

/** The worker read an older version of a file than the master holds: its mirror is stale there. */
export class StaleRead extends NotCacheable {
  override name = "StaleRead";
  constructor(readonly path: string) {
    super(`the worker read another version of ${path}`);
  }
}

export class ActionCache {
  readonly #o: ActionCacheOptions;
  #store!: ActionStore;
  /** null: libc cannot be loaded; every state is taken in full. */
  #probe: StatProbe | null = null;
  /**
   * States taken by earlier lookups, by `kind\0path`, each with the print
   * (device, inode, mode, owner, size, mtime, ctime) of the file it was taken
   * from: a lookup that finds the same print gets the same state without
   * taking it again. See `#memoState`.
   */
  readonly #memo = new Map<string, StateMemo>();
  /** Executables' interpreters, by path, with the print of the file each was read from. */
  readonly #interpreters = new Map<string, { print: StatPrint; interpreter: string | null }>();
  /** Lookups so far: a memo's `checked` says in which it was last found the same. */
  #serial = 0;
  /** Each entry's reads' ids (`kind\0path`) and their directories' (`s\0dir`), made once. */
  readonly #ids = new WeakMap<ActionEntry, { ids: string[]; parents: (string | undefined)[] }>();
  readonly stats: ActionCacheStats = {
    hits: 0,
    misses: 0,
    stored: 0,
    notStored: 0,
    savedMs: 0,
    corrupt: 0,
    evicted: 0,
    entries: 0,
    bytes: 0,
    lastNotStored: "",
    statesReused: 0,
  };

  /** Variables left out of the key. */
  readonly #ignored: ReadonlySet<string>;

  private constructor(options: ActionCacheOptions) {
    this.#o = options;
    this.#ignored = new Set(options.ignoredEnv ?? IGNORED_ENV_DEFAULT);
  }

  /** Opens (or creates) the cache, checking every entry; corrupt ones are removed. */
  static async open(options: ActionCacheOptions): Promise<ActionCache> {
    const cache = new ActionCache(options);
    cache.#store = await ActionStore.open({
      dir: options.dir,
      bytesMax: options.bytesMax ?? ACTION_CACHE_BYTES_MAX,
      stats: cache.stats,
      log: options.log?.bind(options),
    });
    try {
      cache.#probe = new StatProbe();
    } catch (err) {
      options.log?.(`action cache: states taken without the stat probe: ${errorCode(err)}`);
    }
    return cache;
  }

  /** The key of a command: argv, cwd, environment (minus the ignored variables), the salt. */
  key(argv: string[], cwd: string, env: Record<string, string>): string {
    const ignored = this.#ignored;
    const vars = Object.entries(env)
      .filter(([k]) => !ignored.has(k) && !IGNORED_ENV_PREFIXES.some((p) => k.startsWith(p)))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return createHash("sha256")
      .update(JSON.stringify([ENTRY_FORMAT, this.#o.salt ?? "", argv, cwd, vars]))
      .digest("hex");
  }

  /**
   * The output to replay for `key`, when one entry's every input is as it
   * was; null otherwise (a miss). Blobs: `blobPath(hash)`.
   */
  async lookup(key: string, hasStdin = false): Promise<ActionOutput | null> {
    const list = this.#store.entriesOf(key);
    // States taken for one entry, for the key's others (an entry's ids are distinct).
    const states = list.length > 1 ? new Map<string, string>() : null;
    this.#serial++;
    for (const indexed of [...list].reverse()) {
      const entry = await this.#store.read(indexed.file);
      if (entry === null || entry.key !== key) continue;
      // It read /dev/null: a job with a stdin might read something else.
      if (entry.readStdin && hasStdin) continue;
      let prepared = this.#ids.get(entry);
      if (prepared === undefined) {
        prepared = {
          ids: entry.reads.map(([path, kind]) => `${kind}\0${path}`),
          parents: entry.reads.map(([path]) => parentId(path)),
        };
        this.#ids.set(entry, prepared);
      }
      const { ids, parents } = prepared;
      let same = true;
      for (let i = 0; i < entry.reads.length; i++) {
        const [path, kind, state] = entry.reads[i];
        const id = ids[i];
        let now = states?.get(id);
        if (now === undefined) {
          now = this.#memoState(path, kind, id, parents[i]) ??
            await this.#takeState(path, kind, id);
          states?.set(id, now);
        }
        if (now !== state) {
          if (DEBUG) this.#o.log?.(`action cache miss on ${path} (${kind}): ${state} → ${now}`);
          same = false;
          break;
        }
      }
      if (!same) continue;
      if (!this.#store.blobsPresent(entry)) continue;
      this.stats.hits++;
      this.stats.savedMs += entry.ranMs;
      await this.#store.touch(indexed);
      return {
        resultSet: entry.resultSet,
        stdout: fromBase64(entry.stdout),
        stderr: fromBase64(entry.stderr),
        exitCode: entry.exitCode,
        ranMs: entry.ranMs,
      };
    }
    this.stats.misses++;
    return null;
  }

  /** Where a result content is kept. */
  blobPath(hash: string): string {
    return this.#store.blobPath(hash);
  }

  /**
   * The states of a job's read set, taken now: call it after the job ended
   * and before its results are applied. Throws {@linkcode NotCacheable} when
   * the recording is incomplete or an input changed since `startedMs` (the
   * job may have seen it either way).
   */
  async states(
    reads: ReadSet,
    startedMs: number,
    outputs: ReadonlySet<string> = new Set(),
  ): Promise<[string, ReadKind, string][]> {
    if (reads?.complete !== true) throw new NotCacheable(incompleteWhy(reads));
    if (!Array.isArray(reads.entries) || reads.entries.length > READS_MAX) {
      throw new NotCacheable("a bad or too large read set");
    }
    const wanted = new Map<string, Set<ReadKind>>();
    const want = (path: string, kind: ReadKind) => {
      let kinds = wanted.get(path);
      if (!kinds) wanted.set(path, kinds = new Set());
      kinds.add(kind);
    };
    for (const item of reads.entries) {
      if (!Array.isArray(item) || typeof item[0] !== "string" || !Array.isArray(item[1])) {
        throw new NotCacheable("a bad read set entry");
      }
      const [path, kinds] = item;
      if (!path.startsWith("/") || path.includes("\0") || path.length > 4096) {
        throw new NotCacheable(`a bad path in the read set`);
      }
      if (this.#private(path)) continue;
      for (const kind of kinds) {
        if (!["r", "s", "l", "d"].includes(kind)) throw new NotCacheable("a bad read kind");
        // Whether the job's own output was already there (gcc stats its -o
        // file, to compare it with its inputs) is not an input: a hole, named
        // in the docs, so that a rebuild over old objects can hit.
        if (kind !== "r" && kind !== "d" && outputs.has(path)) continue;
        want(path, kind);
      }
      // The mirror hides what others may not read: every ancestor's attributes count.
      if (!path.split("/").includes("..")) {
        for (let i = path.lastIndexOf("/"); i > 0; i = path.lastIndexOf("/", i - 1)) {
          want(path.slice(0, i), "s");
        }
      }
    }
    // What the kernel runs besides the file: a script's interpreter, an ELF's loader.
    for (const [path, kinds] of [...wanted]) {
      if (!kinds.has("r")) continue;
      const interpreter = await this.#interpreterOf(path);
      if (interpreter !== null && !this.#private(interpreter)) want(interpreter, "r");
    }
    const seen = typeof reads.hashes === "object" && reads.hashes !== null ? reads.hashes : {};
    const out: [string, ReadKind, string][] = [];
    for (const [path, kinds] of [...wanted].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      for (const kind of [...kinds].sort()) {
        // Kept for the lookups to come, as a lookup keeps what it takes.
        const state = await this.#takeState(path, kind, `${kind}\0${path}`, startedMs);
        // The worker's mirror may hold an older version (outside the tree, a
        // change the master does not watch): the job's output is from that one.
        const hash = Object.hasOwn(seen, path) ? seen[path] : undefined;
        if (kind === "r" && hash !== undefined && !state.endsWith(` ${hash}`)) {
          throw new StaleRead(path);
        }
        out.push([path, kind, state]);
      }
    }
    return out;
  }

  /**
   * Stores an entry: `reads` from {@linkcode states}, the result set as
   * applied; each result file's content is copied from the tree (and must
   * still have its hash).
   */
  async store(
    key: string,
    reads: [string, ReadKind, string][],
    output: ActionOutput,
  ): Promise<void> {
    const { resultSet } = output;
    if (output.stdout.length + output.stderr.length > OUTPUT_BYTES_MAX) {
      throw new NotCacheable("too much output");
    }
    if (resultSet.files.length > RESULT_FILES_MAX) throw new NotCacheable("too many result files");
    let bytes = 0;
    for (const f of resultSet.files) {
      bytes += f.size;
      if (bytes > RESULT_BYTES_MAX) throw new NotCacheable("result files too large");
      this.blobPath(f.hash); // refuses a bad hash before anything is read
      if (this.#store.hasBlob(f.hash)) continue;
      const content = await Deno.readFile(f.path);
      if (sha256Hex(content) !== f.hash) throw new NotCacheable(`${f.path} changed after apply`);
      await this.#store.putBlob(f.hash, content);
    }
    await this.#store.put({
      format: ENTRY_FORMAT,
      key,
      reads,
      resultSet,
      stdout: toBase64(output.stdout),
      stderr: toBase64(output.stderr),
      exitCode: output.exitCode,
      ranMs: output.ranMs,
      readStdin: output.readStdin === true,
    });
    this.stats.stored++;
  }

  /** Counts a job whose result was not stored, and why. */
  notStored(why: string): void {
    this.stats.notStored++;
    this.stats.lastNotStored = why.slice(0, 300);
  }

  /** Lets go of the stat probe's libc handle. */
  close(): void {
    this.#probe?.close();
    this.#probe = null;
    this.#memo.clear();
    this.#interpreters.clear();
  }

  // --- states ---

  /**
   * A path's state as `kind` sees it, now: what {@linkcode #state} returns,
   * from the memo when the file is the version it was taken from; undefined
   * when it must be taken the full way ({@linkcode #takeState}).
   *
   * The state of a path is a function of one file: of the path's own (its
   * lstat) for kind `l` and for anything not a symlink, of the file the
   * symlink leads to (its stat) otherwise; and of that file's inode alone:
   * its content (for `r`; a change moves mtime and ctime), its listing (for
   * `d`; an entry added, removed or renamed moves the directory's mtime),
   * its target (a symlink's never changes), its mode and owner (they move
   * ctime). A path that resolves to another file (a rename, a symlink
   * retargeted, a directory above replaced or mounted over) finds another
   * device and inode; one whose file changed, another ctime. So a state is
   * kept with the print of the file it was taken from, checked by one stat
   * at every lookup, and used only while the print is the same. It is kept
   * only when the print was the same after the state was taken (the file did
   * not change meanwhile) and its ctime and mtime were older than
   * {@linkcode STATE_RACY_MS} (a change within the same timestamp tick would
   * leave the print as it was; a later one cannot).
   *
   * A name that does not exist (ENOENT, ENOTDIR from lstat) has that errno
   * as its state, as the full way gives it, with no memo needed; and when
   * the directory above was checked unchanged in this lookup (its own `s`
   * state, which every read set holds for every ancestor, from the memo)
   * and the name was absent after that directory's memo was taken, it is
   * absent still, without a stat: a name added to a directory moves its
   * mtime, and another directory at that path has another print, either way
   * a new memo for the directory, which ends the absent name's.
   *
   * Anything else (a dangling symlink, another errno, a path the probe
   * cannot take) is taken the full way every time.
   */
  #memoState(
    path: string,
    kind: ReadKind,
    id: string,
    parentId: string | undefined,
  ): string | undefined {
    const probe = this.#probe;
    if (probe === null) return undefined;
    const serial = this.#serial;
    const memo = this.#memo.get(id);
    if (
      memo !== undefined && memo.print === undefined &&
      (memo.checked === serial || memo.via?.checked === serial)
    ) {
      memo.checked = serial;
      this.stats.statesReused++;
      return memo.state;
    }
    const parent = parentId === undefined ? undefined : this.#memo.get(parentId);
    const via = parent?.checked === serial ? parent : undefined;
    if (via !== undefined && via.print === undefined) {
      // Below a name that is absent, every name is absent, with its errno.
      this.#rememberAbsent(id, via.state, via);
      this.stats.statesReused++;
      return via.state;
    }
    const errno = probe.probe(path, false);
    if (errno !== 0) {
      const state = ERRNO_STATES.get(errno);
      if (state !== undefined) this.#rememberAbsent(id, state, via);
      return state;
    }
    if (kind !== "l" && probe.isSymlink() && probe.probe(path, true) !== 0) return undefined;
    if (memo?.print === undefined || !probe.same(memo.print)) return undefined;
    memo.checked = serial;
    this.stats.statesReused++;
    return memo.state;
  }

  /**
   * Takes a state the full way (with `startedMs`: as {@linkcode #state} does),
   * and keeps it when its file is settled and stayed the same.
   */
  async #takeState(
    path: string,
    kind: ReadKind,
    id: string,
    startedMs?: number,
  ): Promise<string> {
    const probe = this.#probe;
    this.#forget(id);
    if (probe === null) return await this.#state(path, kind, startedMs);
    const follow = kind !== "l";
    // What #memoState found: the file the state is of.
    let errno = probe.probe(path, false);
    if (errno !== 0) {
      // Absent: the errno, as #state gives it (with no check of the start).
      const absent = ERRNO_STATES.get(errno);
      if (absent === undefined) return await this.#state(path, kind, startedMs);
      const parent = this.#memo.get(parentId(path) ?? "");
      this.#rememberAbsent(id, absent, parent?.checked === this.#serial ? parent : undefined);
      return absent;
    }
    if (follow && probe.isSymlink()) errno = probe.probe(path, true);
    if (errno !== 0) return await this.#state(path, kind, startedMs);
    const print = probe.print();
    const settled = probe.changedMs() < (this.#o.clock ?? Date.now)() - STATE_RACY_MS;
    const state = await this.#state(path, kind, startedMs);
    if (!settled || probe.probe(path, follow) !== 0 || !probe.same(print)) return state;
    this.#remember(id, { print, state, checked: this.#serial });
    return state;
  }

  /**
   * {@linkcode interpreterOf}, with one stat first: a file that is no
   * executable regular file has none (a header, most of a compile's reads);
   * and kept, as a state is, with the print of the file it was read from.
   */
  async #interpreterOf(path: string): Promise<string | null> {
    const probe = this.#probe;
    if (probe === null || probe.probe(path, true) !== 0) return await interpreterOf(path);
    if ((probe.mode() & S_IFMT) !== S_IFREG || (probe.mode() & 0o111) === 0) return null;
    const memo = this.#interpreters.get(path);
    if (memo !== undefined && probe.same(memo.print)) return memo.interpreter;
    this.#interpreters.delete(path);
    const print = probe.print();
    const settled = probe.changedMs() < (this.#o.clock ?? Date.now)() - STATE_RACY_MS;
    const interpreter = await interpreterOf(path);
    if (settled && probe.probe(path, true) === 0 && probe.same(print)) {
      this.#interpreters.set(path, { print, interpreter });
      if (this.#interpreters.size > INTERPRETERS_MAX) {
        this.#interpreters.delete(this.#interpreters.keys().next().value!);
      }
    }
    return interpreter;
  }

  #private(path: string): boolean {
    if (path.split("/").includes("..")) return false;
    const root = this.#o.root;
    if (path === root || path.startsWith(`${root}/`)) return false;
    return JOB_PRIVATE.some((p) => path === p || path.startsWith(`${p}/`));
  }

  /**
   * `id` is absent now (checked in this lookup); `via`: its directory's memo,
   * checked in this lookup before it: while that one holds, so does this.
   */
  #rememberAbsent(id: string, state: string, via: StateMemo | undefined): void {
    this.#forget(id);
    this.#remember(id, { state, checked: this.#serial, via });
  }

  #remember(id: string, memo: StateMemo): void {
    this.#memo.set(id, memo);
    if (this.#memo.size > STATE_MEMO_MAX) this.#forget(this.#memo.keys().next().value!);
  }

  /** Drops a memo; the absent names kept by it end with it. */
  #forget(id: string): void {
    const memo = this.#memo.get(id);
    if (memo === undefined) return;
    memo.checked = -1;
    this.#memo.delete(id);
  }

  /**
   * When the file `info` (the lstat of `real`) describes last changed: its
   * ctime to the nanosecond. Deno's `FileInfo.ctime` has whole seconds only,
   * which would date a change made in the second a job started before its
   * start; without the probe, or when `real` is another file by now, the end
   * of that second, or never (Infinity).
   */
  #changedMs(real: string, info: Deno.FileInfo): number {
    const probe = this.#probe;
    if (probe !== null && probe.probe(real, false) === 0) {
      return probe.ino() === info.ino ? probe.ctimeMs() : Infinity;
    }
    const seconds = info.ctime?.getTime();
    return seconds === undefined ? Infinity : seconds + 1000;
  }

  /**
   * A path's state as `kind` sees it. With `startedMs`: throws NotCacheable
   * when what was read changed at or after it.
   */
  async #state(path: string, kind: ReadKind, startedMs?: number): Promise<string> {
    let info: Deno.FileInfo;
    let real = path;
    try {
      // Synchronous: hundreds per job, each a few µs; async ones queue behind
      // the thread pool (0.3 ms each under load, measured).
      info = Deno.lstatSync(path);
      if (kind !== "l" && info.isSymlink) {
        real = Deno.realPathSync(path);
        info = Deno.lstatSync(real);
      }
    } catch (err) {
      return `-${errorCode(err)}`;
    }
    const changed = startedMs === undefined ? Infinity : this.#changedMs(real, info);
    const mode = info.mode ?? 0;
    const owner = `${info.uid} ${info.gid}`;
    if (info.isSymlink) {
      let target: string;
      try {
        target = Deno.readLinkSync(path);
      } catch (e) {
        target = `?${errorCode(e)}`;
      }
      if (startedMs !== undefined && changed >= startedMs) {
        throw new NotCacheable(`${path} changed while the job ran`);
      }
      return `l ${target}`;
    }
    if (kind === "d") {
      if (startedMs !== undefined && changed >= startedMs) {
        throw new NotCacheable(`${path} changed while the job ran`);
      }
      const names: string[] = [];
      try {
        for (const e of Deno.readDirSync(real)) {
          names.push(`${e.isDirectory ? "d" : e.isSymlink ? "l" : e.isFile ? "f" : "o"}${e.name}`);
          if (names.length > READS_MAX) throw new NotCacheable(`${path}: too many entries`);
        }
      } catch (err) {
        if (err instanceof NotCacheable) throw err;
        return `-${errorCode(err)}`;
      }
      names.sort();
      return `D ${mode} ${owner} ${sha256Hex(new TextEncoder().encode(names.join("\0")))}`;
    }
    if (info.isDirectory) return `d ${mode} ${owner}`;
    if (!info.isFile) return `o ${mode} ${owner}`;
    if (kind === "r") {
      if (startedMs !== undefined && changed >= startedMs) {
        throw new NotCacheable(`${path} changed while the job ran`);
      }
      try {
        return `f ${mode} ${owner} ${await this.#o.hashCache.hash(real, info)}`;
      } catch (err) {
        if (startedMs !== undefined) throw new NotCacheable(`${path}: ${errorCode(err)}`);
        return `-${errorCode(err)}`;
      }
    }
    return `f ${mode} ${owner} ${info.size}`;
  }
}

/**
 * The id of the `s` state of the directory a path names a name in; undefined
 * where that is not what a lookup of the path goes through (`/x`, a path
 * ending in `/`, `/.` or `/..`).
 */
function parentId(path: string): string | undefined {
  const slash = path.lastIndexOf("/");
  if (slash <= 0 || slash === path.length - 1) return undefined;
  if (path.endsWith("/.") || path.endsWith("/..")) return undefined;
  return `s\0${path.slice(0, slash)}`;
}

/** `#!` scripts' interpreter or an ELF executable's loader (PT_INTERP); null for anything else. */
export async function interpreterOf(path: string): Promise<string | null> {
  let head: Uint8Array;
  try {
    const real = await Deno.realPath(path);
    const info = await Deno.lstat(real);
    if (!info.isFile || ((info.mode ?? 0) & 0o111) === 0) return null;
    // Only the regular file it was (never a FIFO put there since: no open blocks).
    using regular = await openRegular(real, info);
    using file = await regular.open();
    head = new Uint8Array(4096);
    const n = await file.read(head);
    head = head.subarray(0, n ?? 0);
  } catch {
    return null;
  }
  if (head[0] === 0x23 && head[1] === 0x21) {
    const line = new TextDecoder().decode(head.subarray(2, 258)).split("\n")[0].trim();
    const interp = line.split(/[ \t]/)[0];
    return interp.startsWith("/") ? interp : null;
  }
  // 64-bit little-endian ELF: the program headers.
  if (head.length < 64 || head[0] !== 0x7f || head[1] !== 0x45 || head[4] !== 2 || head[5] !== 1) {
    return null;
  }
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const phoff = Number(view.getBigUint64(32, true));
  const phentsize = view.getUint16(54, true);
  const phnum = view.getUint16(56, true);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > head.length) return null;
    if (view.getUint32(at, true) !== 3) continue; // PT_INTERP
    const offset = Number(view.getBigUint64(at + 8, true));
    const size = Number(view.getBigUint64(at + 32, true));
    if (offset + size > head.length || size < 2) return null;
    return new TextDecoder().decode(head.subarray(offset, offset + size - 1));
  }
  return null;
}

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(text: string): Uint8Array {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
