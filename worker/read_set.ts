/**
 * Turns one job's traced system calls (worker/read_trace_script.ts) into its
 * read set: absolute paths, each with what the job looked at. Relative paths
 * are resolved against the process's working directory (followed through
 * chdir, fchdir and fork) or the directory descriptor (followed through the
 * opens that returned it); whatever cannot be resolved makes the recording
 * incomplete, and an incomplete recording is never cached.
 *
 * @module
 */

import type { ReadKind, ReadSet } from "../common/protocol.ts";

/** One traced call of a job (a parsed `E` line). */
export interface TraceEvent {
  tgid: number;
  kind: string;
  ret: number;
  a1: number;
  a2: number;
  path: string;
}

/** Distinct paths recorded per job; past it the recording is incomplete. */
export const READ_SET_PATHS_MAX = 50_000;
/** Processes followed per job. */
const PROCESSES_MAX = 20_000;
/** Paths this long may have been cut by bpftrace (its string limit, 200 with the NUL). */
export const TRACE_PATH_CHARS_MAX = 198;

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_EMPTY_PATH = 0x1000;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_TRUNC = 0o1000;
const O_NOFOLLOW = 0o400000;
const O_PATH = 0o10000000;

interface Proc {
  cwd: string | undefined;
  fds: Map<number, string>;
}

/** Folds a job's events, in order, into its read set. */
export class ReadSetBuilder {
  #procs = new Map<number, Proc>();
  #paths = new Map<string, Set<ReadKind>>();
  #incomplete: string | undefined;
  #stdin = false;

  /** `cwd`: the job's; its first process's chdir there is traced (and taken from the trace). */
  constructor(readonly cwd: string) {}

  /** Marks the recording incomplete (the first reason is kept). */
  fail(why: string): void {
    this.#incomplete ??= why;
  }

  get incomplete(): string | undefined {
    return this.#incomplete;
  }

  add(e: TraceEvent): void {
    if (this.#incomplete !== undefined) return;
    if (e.path.length > TRACE_PATH_CHARS_MAX) return this.fail(`path too long: ${e.path}`);
    const proc = this.#proc(e.tgid);
    const dfd = toInt32(e.a1);
    switch (e.kind) {
      case "F": {
        if (this.#procs.size >= PROCESSES_MAX) return this.fail("too many processes");
        this.#procs.set(e.a1, { cwd: proc.cwd, fds: new Map(proc.fds) });
        return;
      }
      case "f":
        // A copy of stdin may be read under another number: count it as read.
        if (toInt32(e.a1) === 0) this.#stdin = true;
        if (e.ret >= 0) proc.fds.delete(e.ret);
        return;
      case "i":
        this.#stdin = true;
        return;
      case "X":
        return this.fail("a call that cannot be followed (openat2, file handles, pidfd_getfd)");
      case "C": {
        if (e.ret !== 0) return;
        const dir = proc.fds.get(dfd);
        if (dir === undefined) return this.fail(`fchdir to an unknown descriptor ${dfd}`);
        proc.cwd = dir;
        return;
      }
      case "g": {
        const dir = proc.fds.get(dfd);
        if (dir === undefined) return this.fail(`directory listing of an unknown descriptor`);
        return this.#note(dir, "d");
      }
    }
    if (e.path === "") {
      // fstat and friends on a descriptor: its open was recorded.
      if (e.kind === "s" && (e.a2 & AT_EMPTY_PATH) !== 0) return;
      return; // ENOENT, whatever the tree holds
    }
    const path = this.#resolve(proc, dfd, e.path);
    if (path === undefined) return;
    switch (e.kind) {
      case "o": {
        const flags = e.a2;
        if (e.ret < 0) return this.#note(path, (flags & O_NOFOLLOW) !== 0 ? "l" : "s");
        proc.fds.set(e.ret, path);
        if ((flags & O_PATH) !== 0) return this.#note(path, "s");
        // Made or emptied whatever was there: nothing of the old content is read
        // (`as` opens its output O_RDWR|O_CREAT|O_TRUNC).
        const fresh = (flags & (O_CREAT | O_TRUNC)) === (O_CREAT | O_TRUNC) ||
          (flags & (O_CREAT | O_EXCL)) === (O_CREAT | O_EXCL);
        if (fresh) return this.#note(parentOfPath(path), "s");
        if ((flags & O_TRUNC) !== 0) return this.#note(path, "s");
        // Anything else keeps the old content (an append, a write in place:
        // the result holds the whole file), read or not.
        return this.#note(path, "r");
      }
      case "x":
      case "r":
        return this.#note(path, "r");
      case "s":
        return this.#note(path, (e.a2 & AT_SYMLINK_NOFOLLOW) !== 0 ? "l" : "s");
      case "l":
        return this.#note(path, "l");
      case "w":
        return this.#note(e.ret >= 0 ? parentOfPath(path) : path, e.ret >= 0 ? "s" : "l");
      case "c":
        if (e.ret === 0) proc.cwd = path;
        return this.#note(path, "s");
      default:
        return this.fail(`unknown event kind ${e.kind}`);
    }
  }

  /** The read set (paths sorted), or the reason it is incomplete. */
  result(): ReadSet {
    if (this.#incomplete !== undefined) return { complete: false, why: this.#incomplete };
    const entries: [string, ReadKind[]][] = [...this.#paths]
      .map(([p, kinds]) => [p, [...kinds].sort()] as [string, ReadKind[]])
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return { complete: true, entries, stdin: this.#stdin };
  }

  #proc(tgid: number): Proc {
    let proc = this.#procs.get(tgid);
    if (proc === undefined) {
      // A process not seen forking: the job's first (the launcher's child,
      // whose chdir to the job's cwd is traced) or one whose fork was lost.
      proc = { cwd: undefined, fds: new Map() };
      if (this.#procs.size >= PROCESSES_MAX) this.fail("too many processes");
      else this.#procs.set(tgid, proc);
    }
    return proc;
  }

  #resolve(proc: Proc, dfd: number, path: string): string | undefined {
    if (path.startsWith("/")) return tidy(path);
    const base = dfd === AT_FDCWD ? proc.cwd : proc.fds.get(dfd);
    if (base === undefined) {
      this.fail(`relative path ${path} from an unknown directory`);
      return undefined;
    }
    return tidy(`${base}/${path}`);
  }

  #note(path: string, kind: ReadKind): void {
    let kinds = this.#paths.get(path);
    if (kinds === undefined) {
      if (this.#paths.size >= READ_SET_PATHS_MAX) return this.fail("too many paths");
      kinds = new Set();
      this.#paths.set(path, kinds);
    }
    kinds.add(kind);
  }
}

/** bpftrace prints an int dirfd widened from unsigned: back to int32. */
function toInt32(n: number): number {
  return n | 0;
}

/**
 * Drops empty and `.` components (always the same file); keeps `..`, which
 * the kernel resolves physically (through symlinks), as the master will.
 */
export function tidy(path: string): string {
  if (
    path.startsWith("/") && !path.includes("//") && !path.includes("/./") &&
    !path.endsWith("/.") && (path.length === 1 || !path.endsWith("/"))
  ) {
    return path;
  }
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  return "/" + parts.join("/");
}

function parentOfPath(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}
