/**
 * Projects the farm benchmark builds: real ones from Debian source packages
 * (upstream tarballs, unpacked once by farm/mod.ts fetchSource) and a small
 * generated one for tests. Every run builds a fresh copy of the pristine tree.
 */
import { fetchSource } from "../farm/mod.ts";

export interface Project {
  name: string;
  /** The pristine, unpacked source tree (never built in). */
  source(): Promise<string>;
  /** The build command, run in the top of a fresh copy, at parallelism `jobs`. */
  command(jobs: number): string[];
  /** Throws when a finished build lacks what it should have made. */
  check(tree: string): Promise<void>;
  /** Time limit for one build (generous: the slowest contender, cold). */
  timeoutS: number;
}

export class ProjectError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProjectError";
  }
}

async function mustExist(path: string): Promise<void> {
  try {
    const st = await Deno.stat(path);
    if (!st.isFile || st.size === 0) throw new Error("empty or not a file");
  } catch (err) {
    throw new ProjectError(`Build output missing: ${path}`, { cause: err });
  }
}

/**
 * Lua 5.4 (Debian `lua5.4`): `make -jN linux` in the top directory; CC is
 * `gcc -std=gnu99` in src/Makefile, so wrapping gcc through PATH works.
 * 34 object files.
 */
export const LUA: Project = {
  name: "lua",
  source: () => fetchSource("lua5.4"),
  command: (jobs) => ["make", `-j${jobs}`, "linux"],
  check: async (tree) => {
    await mustExist(`${tree}/src/lua`);
    await mustExist(`${tree}/src/luac`);
  },
  timeoutS: 240,
};

/**
 * Zstandard 1.5.4 (Debian `libzstd`): plain `make -jN` in the top directory
 * builds the library (static and shared objects) and the `zstd` program
 * (with its own objects): 109 compile jobs, no configure step. CC is `cc`.
 */
export const ZSTD: Project = {
  name: "zstd",
  source: () => fetchSource("libzstd"),
  command: (jobs) => ["make", `-j${jobs}`],
  check: async (tree) => {
    await mustExist(`${tree}/lib/libzstd.a`);
    await mustExist(`${tree}/programs/zstd`);
  },
  timeoutS: 900,
};

/**
 * A generated C project of `files` translation units (a static library of
 * half of them, via ar) for tests: written once under `dir`.
 */
export function generatedProject(dir: string, files = 6): Project {
  const count = Math.max(2, Math.min(files, 1000));
  const write = async () => {
    const src = `${dir}/pristine`;
    await Deno.mkdir(src, { recursive: true });
    const names: string[] = [];
    for (let i = 0; i < count - 1; i++) {
      names.push(`unit${i}`);
      await Deno.writeTextFile(
        `${src}/unit${i}.c`,
        `#include "units.h"\nint unit${i}(int x) {\n  int s = 0;\n` +
          `  for (int k = 0; k < x; k++) s += (k * ${i + 3}) % 7;\n  return s;\n}\n`,
      );
    }
    await Deno.writeTextFile(
      `${src}/units.h`,
      names.map((n) => `int ${n}(int x);\n`).join(""),
    );
    await Deno.writeTextFile(
      `${src}/main.c`,
      `#include <stdio.h>\n#include "units.h"\nint main(void) {\n  long t = 0;\n` +
        names.map((n) => `  t += ${n}(10);\n`).join("") +
        `  printf("%ld\\n", t);\n  return 0;\n}\n`,
    );
    const half = Math.ceil(names.length / 2);
    const libObjs = names.slice(0, half).map((n) => `${n}.o`).join(" ");
    const progObjs = ["main", ...names.slice(half)].map((n) => `${n}.o`).join(" ");
    await Deno.writeTextFile(
      `${src}/Makefile`,
      `CC = cc\nCFLAGS = -O2\n\nprog: ${progObjs} libunits.a\n\t$(CC) -o $@ ${progObjs} libunits.a\n\n` +
        `libunits.a: ${libObjs}\n\tar rcs $@ ${libObjs}\n\n` +
        `%.o: %.c units.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n`,
    );
    return src;
  };
  let written: Promise<string> | null = null;
  return {
    name: `generated-${count}`,
    source: () => written ??= write(),
    command: (jobs) => ["make", `-j${jobs}`],
    check: (tree) => mustExist(`${tree}/prog`),
    timeoutS: 120,
  };
}

/** The projects by name, for the command line. */
export const PROJECTS: Record<string, Project> = { lua: LUA, zstd: ZSTD };

export const TREE_RESETS = ["in-place", "recopy", "new-path"] as const;
/**
 * How a run gets a clean tree: "in-place" (like `git clean -fdx`), "recopy"
 * (removed and copied anew at the same path) or "new-path" (a fresh copy in a
 * directory no earlier run used; the caller picks the path).
 */
export type TreeReset = typeof TREE_RESETS[number];

interface TreeEntry {
  kind: "file" | "dir" | "symlink" | "other";
  size: number;
  mtimeMs: number;
}

/** Every path under `root` (relative), at most `entriesMax`. */
async function listTree(root: string, entriesMax = 200_000): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const todo = [""];
  while (todo.length > 0) {
    const rel = todo.pop()!;
    for await (const e of Deno.readDir(rel === "" ? root : `${root}/${rel}`)) {
      const path = rel === "" ? e.name : `${rel}/${e.name}`;
      const st = await Deno.lstat(`${root}/${path}`);
      const kind = st.isSymlink ? "symlink" : st.isDirectory ? "dir" : st.isFile ? "file" : "other";
      out.set(path, { kind, size: st.size, mtimeMs: st.mtime?.getTime() ?? 0 });
      if (out.size > entriesMax) throw new ProjectError(`Too many files under ${root}`);
      if (kind === "dir") todo.push(path);
    }
  }
  return out;
}

async function cp(src: string, dest: string): Promise<void> {
  const out = await new Deno.Command("cp", {
    args: ["-a", "--no-target-directory", src, dest],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new ProjectError(`Cannot copy ${src}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/**
 * Makes `dest` a clean copy of the pristine tree `src`. "in-place" works like
 * `git clean -fdx && git checkout .`: what the build added goes, what it
 * changed is copied back, directories stay (the usual clean build); "recopy"
 * removes `dest` and copies it anew (every directory a new inode).
 */
export async function resetTree(
  src: string,
  dest: string,
  mode: TreeReset = "in-place",
): Promise<void> {
  const exists = await Deno.lstat(dest).then((st) => st.isDirectory, () => false);
  if (mode !== "in-place" || !exists) {
    await Deno.remove(dest, { recursive: true }).catch(() => {});
    await cp(src, dest);
    return;
  }
  const want = await listTree(src);
  const have = await listTree(dest);
  // Deepest first, so that a removed directory's contents go before it.
  const extra = [...have.keys()].filter((p) => want.get(p)?.kind !== have.get(p)!.kind)
    .sort((a, b) => b.length - a.length);
  for (const p of extra) await Deno.remove(`${dest}/${p}`, { recursive: true }).catch(() => {});
  for (const [p, w] of [...want.entries()].sort(([a], [b]) => a.length - b.length)) {
    const h = have.get(p);
    const same = h !== undefined && h.kind === w.kind &&
      (w.kind === "dir" || (h.size === w.size && h.mtimeMs === w.mtimeMs));
    if (same) continue;
    if (w.kind === "dir" && h?.kind === "dir") continue;
    if (h !== undefined && h.kind === w.kind && w.kind !== "dir") {
      await Deno.remove(`${dest}/${p}`).catch(() => {});
    } else if (await Deno.lstat(`${dest}/${p}`).then(() => true, () => false)) {
      continue; // Copied with its parent directory already.
    }
    await cp(`${src}/${p}`, `${dest}/${p}`);
  }
}
