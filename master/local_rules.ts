/**
 * Which commands the master runs itself, from `.termite-localrc` in the
 * writable root: a JSON list of `{ "regexp": "...", "local": true }`, first
 * match wins, matched against the command line (argv joined by spaces, or the
 * shell script), then the defaults ({@linkcode DEFAULT_RULES}). Plus the
 * master's own `mkdir -p` and `rm -f`/`rm -rf`.
 *
 * The file is policy: a rule runs commands unsandboxed as the master's user.
 * It is used only when it is a regular file owned by that user (or root) and
 * writable by nobody else, and its regexps are RE2 (linear-time matching: a
 * rule like `^(a+)+$` cannot stall the master).
 */
import { RE2JS } from "re2js";
import { plainWords } from "./shell_fast_path.ts";
import { kindName, NotRegularFileError, openRegular } from "../common/regular_file.ts";
import { ENOENT } from "../fuse/errno.ts";
import { type Beneath, BeneathError, DirHandles, type StagingDir } from "./beneath.ts";
import { RENAME_NOREPLACE } from "./fs_structs.ts";
import { isInside } from "../common/paths.ts";
import { normalizeAbsolute } from "./paths.ts";

export interface LocalRule {
  regexp: string;
  /** Run on the master itself. */
  local: boolean;
  /** Skip the rescan for changes after the command (it changes nothing mirrors care about). */
  skipRefresh?: boolean;
  /**
   * Whether the command runs with the wrappers on its PATH, so that what it
   * starts (a recursive make's compiles) comes back to the master. Default
   * true; false for a tool that is itself wrapped (`ar`), which would
   * otherwise find its wrapper and come back to the master forever.
   */
  recurse?: boolean;
  /**
   * Whether the action cache may replay the command (master/action_cache.ts).
   * A rule with `cache` and no `local` decides caching only.
   */
  cache?: boolean;
}

/** Commands the action cache takes by default (by argv[0]'s base name, not through a shell). */
export const CACHED_TOOLS_DEFAULT: readonly string[] = [
  "gcc",
  "g++",
  "cc",
  "c++",
  "clang",
  "clang++",
  "as",
  "ld",
  "ar",
  "ranlib",
];

export const LOCALRC_NAME = ".termite-localrc";

/**
 * Set by the master in the environment of a command a local rule runs with
 * the wrappers on its PATH: how many such runs are nested (not part of an
 * action's key). At {@linkcode LOCAL_DEPTH_MAX} the next one is refused.
 */
export const LOCAL_DEPTH_VAR = "TERMITE_LOCAL_DEPTH";
/** Local runs nested at most (recursive makes are a few levels deep). */
export const LOCAL_DEPTH_MAX = 16;
/** A larger `.termite-localrc` is refused. */
export const LOCALRC_BYTES_MAX = 1 << 20;

/**
 * Where a command starts in a command line or shell script: its start, after
 * `;`, `&&`, `||`, `|`, `(` or a keyword, past variable assignments.
 */
const COMMAND_START = String
  .raw`(?:^|[;&|(]|\b(?:then|do|else|exec|time|nice|env)\b)\s*(?:\w+=\S*\s+)*`;

/**
 * What users of the original expect to stay local: recursive make in any
 * spelling (`make`, `/usr/bin/make -C sub`, `cd src && make linux`,
 * `(cd x; gmake)`), configure and config.status. And the archivers (`ar`,
 * `ranlib`, also prefixed or versioned: `x86_64-linux-gnu-ar`, `gcc-ar-12`,
 * `llvm-ar-14`), as distcc and icecream keep them: an archive is a copy of
 * objects the build host already holds, and binutils' `ar` loads every bfd
 * plugin it finds (with LLVM's linker tools installed, 172 MB of libraries a
 * fresh worker would first copy: 1.3 s on a cold lua build's critical path,
 * against ~10 ms here). They apply after the rules of `.termite-localrc`,
 * which may override them with `"local": false`.
 */
export const DEFAULT_RULES: LocalRule[] = [
  { regexp: String.raw`${COMMAND_START}(?:\S*/)?g?make(?:[\s;&|)]|$)`, local: true },
  { regexp: String.raw`${COMMAND_START}(?:\S*/)?configure(?:[\s;&|)]|$)`, local: true },
  { regexp: String.raw`${COMMAND_START}(?:\S*/)?config\.status(?:[\s;&|)]|$)`, local: true },
  {
    regexp: String
      .raw`${COMMAND_START}(?:\S*/)?(?:[\w.+-]+-)?(?:ar|ranlib)(?:-[\d.]+)?(?:[\s;&|)]|$)`,
    local: true,
    recurse: false,
  },
];

/** `.termite-localrc` cannot be used: unsafe, unreadable or malformed. */
export class LocalRulesError extends Error {
  override name = "LocalRulesError";
}

/**
 * Why the file described by `info` (its descriptor's attributes) may not set
 * policy for a master running as `uid`, or null when it may.
 */
export function distrust(info: Deno.FileInfo, uid: number): string | null {
  if (!info.isFile) return `it is ${kindName(info)}`;
  if (info.uid !== uid && info.uid !== 0) {
    return `it belongs to uid ${info.uid}, not to the master's user (uid ${uid}) or root`;
  }
  const mode = (info.mode ?? 0) & 0o777;
  if ((mode & 0o022) !== 0) {
    const who = [(mode & 0o020) !== 0 ? "its group" : "", (mode & 0o002) !== 0 ? "others" : ""]
      .filter((w) => w !== "").join(" and ");
    return `it is writable by ${who} (mode 0${mode.toString(8)})`;
  }
  return null;
}

export class LocalRules {
  #rules: { re: RE2JS; rule: LocalRule }[];
  #cacheRules: { re: RE2JS; rule: LocalRule }[];

  /** @throws {LocalRulesError} a regexp RE2 cannot compile. */
  constructor(rules: LocalRule[], source = "local rules", cacheOnly: LocalRule[] = []) {
    this.#rules = rules.map((rule, i) => ({ re: compileRule(rule.regexp, source, i), rule }));
    this.#cacheRules = [
      ...cacheOnly.map((rule, i) => ({ re: compileRule(rule.regexp, source, i), rule })),
      ...this.#rules,
    ].filter((r) => r.rule.cache !== undefined);
  }

  /**
   * Reads `.termite-localrc` in `root`; the defaults when there is none.
   * @throws {LocalRulesError} a file that is untrusted, unreadable or malformed.
   */
  static async load(root: string, uid: number = Deno.uid() ?? 0): Promise<LocalRules> {
    const path = `${root}/${LOCALRC_NAME}`;
    let bytes: Uint8Array;
    try {
      using file = await openRegular(path);
      const why = distrust(file.info, uid);
      if (why !== null) throw new LocalRulesError(`Refusing ${path}: ${why}`);
      if (file.info.size > LOCALRC_BYTES_MAX) {
        throw new LocalRulesError(`Refusing ${path}: ${file.info.size} bytes, over 1 MiB`);
      }
      bytes = await file.read();
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return new LocalRules(DEFAULT_RULES);
      if (err instanceof LocalRulesError) throw err;
      if (err instanceof NotRegularFileError) {
        throw new LocalRulesError(`Refusing ${path}: it ${err.message.slice(path.length + 1)}`);
      }
      throw new LocalRulesError(`Cannot read ${path}: ${(err as Error).message}`, { cause: err });
    }
    let data: unknown;
    try {
      data = JSON.parse(new TextDecoder().decode(bytes));
    } catch (err) {
      throw new LocalRulesError(`Cannot parse ${path}: ${(err as Error).message}`, { cause: err });
    }
    if (!Array.isArray(data)) {
      throw new LocalRulesError(`Cannot use ${path}: expected a JSON list of rules`);
    }
    const rules: LocalRule[] = [];
    const cacheOnly: LocalRule[] = [];
    data.forEach((r, i) => {
      if (typeof r?.regexp !== "string") {
        throw new LocalRulesError(`Cannot use ${path}: rule ${i} has no "regexp" string`);
      }
      for (const field of ["cache", "recurse"]) {
        if (r[field] !== undefined && typeof r[field] !== "boolean") {
          throw new LocalRulesError(
            `Cannot use ${path}: rule ${i} has a "${field}" that is no boolean`,
          );
        }
      }
      const rule: LocalRule = {
        regexp: r.regexp,
        local: r.local !== false,
        skipRefresh: r.skipRefresh === true,
        recurse: r.recurse !== false,
        cache: r.cache,
      };
      if (r.cache !== undefined && r.local === undefined) cacheOnly.push(rule);
      else rules.push(rule);
    });
    // The defaults still apply, after the file's own rules.
    return new LocalRules([...rules, ...DEFAULT_RULES], path, cacheOnly);
  }

  match(commandLine: string): LocalRule | undefined {
    for (const { re, rule } of this.#rules) if (re.test(commandLine)) return rule;
    return undefined;
  }

  /**
   * Whether the action cache takes a command: the first rule with `cache`
   * that matches, else the default tools ({@linkcode CACHED_TOOLS_DEFAULT}).
   */
  cacheable(argv: string[], shell: boolean): boolean {
    const commandLine = shell ? argv[2] ?? "" : argv.join(" ");
    for (const { re, rule } of this.#cacheRules) if (re.test(commandLine)) return rule.cache!;
    if (shell) return false;
    const tool = argv[0].slice(argv[0].lastIndexOf("/") + 1);
    return CACHED_TOOLS_DEFAULT.includes(tool);
  }
}

function compileRule(regexp: string, source: string, index: number): RE2JS {
  try {
    return RE2JS.compile(regexp);
  } catch (err) {
    throw new LocalRulesError(
      `Cannot use ${source}: rule ${index} (${JSON.stringify(regexp.slice(0, 200))}): ` +
        `not an RE2 regexp: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** A `mkdir -p` or `rm -f`/`rm -rf` the master performs itself. */
export type Builtin =
  | { op: "mkdir"; paths: string[] }
  | { op: "rm"; paths: string[]; recursive: boolean };

/**
 * Recognises a plain `mkdir -p DIR...` or `rm -f|-rf FILE...` whose every path
 * lies inside `root` (and is not the root itself).
 */
export function parseBuiltin(argv: string[], cwd: string, root: string): Builtin | null {
  let words = argv;
  if (argv.length >= 3 && argv[0].endsWith("sh") && argv[1] === "-c") {
    if (argv.length > 3) return null;
    const parsed = plainWords(argv[2]);
    if (parsed === null) return null;
    words = parsed;
  }
  const [cmd, flag, ...rest] = words;
  if (rest.length === 0 || rest.some((w) => w.startsWith("-"))) return null;
  const resolve = (p: string) => normalizeAbsolute(p.startsWith("/") ? p : `${cwd}/${p}`);
  const paths = rest.map(resolve);
  if (paths.some((p) => p === null || p === root || !isInside(p, root))) return null;
  const ok = paths as string[];
  if (cmd === "mkdir" && flag === "-p") return { op: "mkdir", paths: ok };
  if (cmd === "rm" && flag === "-f") return { op: "rm", paths: ok, recursive: false };
  if (cmd === "rm" && (flag === "-rf" || flag === "-fr")) {
    return { op: "rm", paths: ok, recursive: true };
  }
  return null;
}

/**
 * Performs a builtin by descriptor (`beneath.ts`), synchronously, so that it
 * never interleaves with an apply; returns the exit status and a message like
 * the tool's, or null when the real tool must run instead (a path crosses a
 * symlink, or something unusual: the tool says it as it would).
 */
export async function runBuiltin(
  b: Builtin,
  tree: Beneath,
): Promise<{ code: number; stderr: string } | null> {
  const moved: StagingDir[] = [];
  let result: { code: number; stderr: string } | null = { code: 0, stderr: "" };
  using dirs = new DirHandles(tree);
  try {
    for (const path of b.paths) {
      const rel = tree.relative(path);
      const slash = rel.lastIndexOf("/");
      const parentRel = slash < 0 ? "" : rel.slice(0, slash);
      const name = rel.slice(slash + 1);
      if (b.op === "mkdir") {
        dirs.ensure(rel, 0o777, () => {});
        continue;
      }
      let parent: number;
      try {
        parent = dirs.get(parentRel);
      } catch (err) {
        if (err instanceof BeneathError && err.errno === ENOENT) continue; // rm -f: nothing there
        throw err;
      }
      const found = tree.stat(parent, name);
      if (found === null) continue;
      if (found.kind !== "dir") tree.unlink(parent, name);
      else if (!b.recursive) {
        result.stderr += `rm: cannot remove '${path}': Is a directory\n`;
        result.code = 1;
      } else {
        // Out of the tree at once; removed below, in the private directory.
        const staging = tree.makeStaging();
        moved.push(staging);
        tree.rename(parent, name, staging.fd, `${staging.prefix}d`, RENAME_NOREPLACE);
        dirs.forget(rel);
      }
    }
  } catch (err) {
    if (!(err instanceof BeneathError)) throw err;
    result = null;
  }
  for (const staging of moved) await tree.discardStaging(staging);
  return result;
}
