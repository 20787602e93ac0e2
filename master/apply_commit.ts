/**
 * The third phase of applying a result set: the tree changed to hold the
 * staged set in one synchronous run, by descriptor, each step journaled and
 * the journal undone on any failure.
 *
 * @module
 */
import { joinPath, parentOf } from "../common/paths.ts";
import type { ResultSet } from "../common/types.ts";
import { ENOENT, ENOTDIR } from "../fuse/errno.ts";
import { type Beneath, BeneathError, DirHandles, type StagingDir } from "./beneath.ts";
import { RENAME_EXCHANGE, RENAME_NOREPLACE } from "./fs_structs.ts";
import { ResultSetError } from "./result_check.ts";

/** One step of the tree phase, as it can be undone. */
type Step =
  /** A deleted entry, moved to `staged` in the staging area. */
  | { op: "aside"; rel: string; staged: string }
  /** A directory made. */
  | { op: "made"; rel: string }
  /** `staged` renamed to `rel`, where there was nothing. */
  | { op: "placed"; rel: string; staged: string }
  /** `staged` exchanged with what was at `rel` (now at `staged`). */
  | { op: "swapped"; rel: string; staged: string }
  /** A directory's mode changed from `mode`. */
  | { op: "mode"; rel: string; mode: number };

function splitRel(rel: string): [string, string] {
  const slash = rel.lastIndexOf("/");
  return slash < 0 ? ["", rel] : [rel.slice(0, slash), rel.slice(slash + 1)];
}

const depth = (p: string) => p.split("/").length;

/**
 * Changes the tree to hold the staged set, synchronously, by descriptor;
 * undoes every step on failure. Returns what was touched, the files
 * written with their attributes for the hash cache, and every name the
 * staging area still holds (what was replaced or deleted), or null when one
 * of them is a directory.
 */
export function commit(
  set: ResultSet,
  tree: Beneath,
  staging: StagingDir,
): {
  touched: Set<string>;
  written: [string, Deno.FileInfo, string][];
  left: string[] | null;
} {
  const run = new CommitRun(tree, staging);
  try {
    run.deletions(set.deletions);
    const modes = run.directories(set.dirs);
    for (let i = 0; i < set.files.length; i++) {
      const f = set.files[i];
      const [parent, name] = run.place(f.path, `${staging.prefix}f${i}`);
      const found = tree.stat(parent, name);
      if (found?.kind === "file") run.written.push([f.path, found.info, f.hash]);
    }
    for (let i = 0; i < set.symlinks.length; i++) {
      run.place(set.symlinks[i].path, `${staging.prefix}l${i}`);
    }
    run.modes(modes);
  } catch (err) {
    run.dirs[Symbol.dispose]();
    const undone = rollback(run.journal, tree, staging);
    const why = err instanceof ResultSetError || err instanceof BeneathError
      ? err.message
      : String(err);
    throw new ResultSetError(
      `Refusing result set: ${run.current}: ${why}` +
        (undone.length > 0 ? `; undoing it failed: ${undone.join("; ")}` : ""),
      { cause: err },
    );
  }
  run.dirs[Symbol.dispose]();
  // Every staged file and symlink was moved into the tree: the area holds
  // what the journal moved aside or swapped out, nothing else.
  const left: string[] | null = run.asideDir ? null : [];
  for (const step of run.journal) {
    if (step.op === "aside" || step.op === "swapped") left?.push(step.staged);
  }
  return { touched: run.touched, written: run.written, left };
}

/** A directory whose mode is set at the end (`old`: null when it was made). */
interface ModeChange {
  rel: string;
  mode: number;
  old: number | null;
}

/** The state of one commit: its journal, what it touched, the entry at hand. */
class CommitRun {
  readonly journal: Step[] = [];
  readonly touched = new Set<string>();
  readonly written: [string, Deno.FileInfo, string][] = [];
  readonly dirs: DirHandles;
  /** The path being changed, for the error message. */
  current = "";
  /** Whether a directory was moved aside (the staging area holds a tree). */
  asideDir = false;
  readonly #tree: Beneath;
  readonly #staging: StagingDir;

  constructor(tree: Beneath, staging: StagingDir) {
    this.#tree = tree;
    this.#staging = staging;
    this.dirs = new DirHandles(tree);
  }

  #touch(p: string): void {
    this.touched.add(p);
    this.touched.add(parentOf(p));
  }

  #rel(p: string): string {
    return this.#tree.relative(p);
  }

  #made = (r: string): void => {
    this.journal.push({ op: "made", rel: r });
    this.#touch(joinPath(this.#tree.root, r));
  };

  /** 1. Deletions, deepest first: moved aside. */
  deletions(paths: string[]): void {
    const tree = this.#tree;
    const deletions = [...paths].sort((a, b) => b.length - a.length);
    for (let i = 0; i < deletions.length; i++) {
      this.current = deletions[i];
      const [parentRel, name] = splitRel(this.#rel(this.current));
      let parent: number;
      try {
        parent = this.dirs.get(parentRel);
      } catch (err) {
        // Nothing there to delete.
        if (err instanceof BeneathError && (err.errno === ENOENT || err.errno === ENOTDIR)) {
          continue;
        }
        throw err;
      }
      const found = tree.stat(parent, name);
      if (found === null) continue;
      const staged = `${this.#staging.prefix}d${i}`;
      tree.rename(parent, name, this.#staging.fd, staged, RENAME_NOREPLACE);
      this.journal.push({ op: "aside", rel: this.#rel(this.current), staged });
      if (found.kind === "dir") {
        this.dirs.forget(this.#rel(this.current));
        this.asideDir = true;
      }
      this.#touch(this.current);
    }
  }

  /** 2. Directories, parents first; their modes are set last: returned. */
  directories(list: ResultSet["dirs"]): ModeChange[] {
    const tree = this.#tree;
    const modes: ModeChange[] = [];
    const newDirs = [...list].sort((a, b) => depth(a.path) - depth(b.path));
    for (const d of newDirs) {
      this.current = d.path;
      const r = this.#rel(this.current);
      const [parentRel, name] = splitRel(r);
      const parent = this.dirs.ensure(parentRel, 0o777, this.#made);
      const found = tree.stat(parent, name);
      if (found === null) {
        tree.mkdir(parent, name, 0o700);
        this.#made(r);
        modes.push({ rel: r, mode: d.mode, old: null });
      } else if (found.kind !== "dir") {
        throw new ResultSetError(`a directory would replace a ${found.kind}`);
      } else if (found.mode !== d.mode) {
        modes.push({ rel: r, mode: d.mode, old: found.mode });
      }
    }
    return modes;
  }

  /** 3. A file or symlink renamed into place, what it replaces kept aside. */
  place(path: string, staged: string): [number, string] {
    const tree = this.#tree;
    this.current = path;
    const r = this.#rel(path);
    const [parentRel, name] = splitRel(r);
    const parent = this.dirs.ensure(parentRel, 0o777, this.#made);
    const found = tree.stat(parent, name);
    if (found?.kind === "dir") throw new ResultSetError("it would replace a directory");
    if (found === null) {
      tree.rename(this.#staging.fd, staged, parent, name, RENAME_NOREPLACE);
      this.journal.push({ op: "placed", rel: r, staged });
    } else {
      tree.rename(this.#staging.fd, staged, parent, name, RENAME_EXCHANGE);
      this.journal.push({ op: "swapped", rel: r, staged });
    }
    this.#touch(path);
    return [parent, name];
  }

  /** 4. Directory modes, deepest first (a parent made unsearchable last). */
  modes(modes: ModeChange[]): void {
    modes.sort((a, b) => depth(b.rel) - depth(a.rel));
    for (const m of modes) {
      this.current = joinPath(this.#tree.root, m.rel);
      const [parentRel, name] = splitRel(m.rel);
      this.#tree.chmodDir(this.dirs.get(parentRel), name, m.mode);
      if (m.old !== null) this.journal.push({ op: "mode", rel: m.rel, mode: m.old });
      this.#touch(this.current);
    }
  }
}

/** Undoes `journal`, last step first; the failures (none, normally). */
function rollback(journal: Step[], tree: Beneath, staging: StagingDir): string[] {
  const failures: string[] = [];
  using dirs = new DirHandles(tree);
  for (let i = journal.length - 1; i >= 0; i--) {
    const step = journal[i];
    const [parentRel, name] = splitRel(step.rel);
    try {
      const parent = dirs.get(parentRel);
      switch (step.op) {
        case "aside":
          tree.rename(staging.fd, step.staged, parent, name, RENAME_NOREPLACE);
          break;
        case "made":
          tree.unlink(parent, name, true);
          break;
        case "placed":
          tree.rename(parent, name, staging.fd, step.staged, RENAME_NOREPLACE);
          break;
        case "swapped":
          tree.rename(parent, name, staging.fd, step.staged, RENAME_EXCHANGE);
          break;
        case "mode":
          tree.chmodDir(parent, name, step.mode);
          break;
      }
      dirs.forget(step.rel);
    } catch (err) {
      failures.push((err as Error).message);
    }
  }
  return failures;
}
