/**
 * Which commands the master runs itself, from `.termite-localrc` in the
 * writable root: a JSON list of `{ "regexp": "...", "local": true }`, first
 * match wins, matched against the command line (argv joined by spaces, or the
 * shell script). Plus the master's own `mkdir -p` and `rm -f`/`rm -rf`.
 */
import { isInside, normalizeAbsolute } from "./paths.ts";

export interface LocalRule {
  regexp: string;
  /** Run on the master itself. */
  local: boolean;
  /** Skip the rescan for changes after the command (it changes nothing mirrors care about). */
  skipRefresh?: boolean;
}

export const LOCALRC_NAME = ".termite-localrc";

/** What users of the original expect to stay local: recursive make, configure. */
export const DEFAULT_RULES: LocalRule[] = [
  { regexp: "^(\\S*/)?(make|gmake)( |$)", local: true },
  { regexp: "^(\\S*/)?configure( |$)", local: true },
  { regexp: "^(\\S*/)?(\\./)?config\\.status( |$)", local: true },
];

export class LocalRules {
  #rules: { re: RegExp; rule: LocalRule }[];

  constructor(rules: LocalRule[]) {
    this.#rules = rules.map((rule) => ({ re: new RegExp(rule.regexp), rule }));
  }

  /** Reads `.termite-localrc` in `root`; the defaults when there is none. */
  static async load(root: string): Promise<LocalRules> {
    const path = `${root}/${LOCALRC_NAME}`;
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return new LocalRules(DEFAULT_RULES);
      throw err;
    }
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch (err) {
      throw new Error(`Cannot parse ${path}: ${(err as Error).message}`, { cause: err });
    }
    if (!Array.isArray(data)) throw new Error(`Cannot use ${path}: expected a JSON list of rules`);
    const rules: LocalRule[] = data.map((r, i) => {
      if (typeof r?.regexp !== "string") {
        throw new Error(`Cannot use ${path}: rule ${i} has no "regexp" string`);
      }
      try {
        new RegExp(r.regexp);
      } catch (err) {
        throw new Error(`Cannot use ${path}: rule ${i}: ${(err as Error).message}`);
      }
      return { regexp: r.regexp, local: r.local !== false, skipRefresh: r.skipRefresh === true };
    });
    return new LocalRules(rules);
  }

  match(commandLine: string): LocalRule | undefined {
    for (const { re, rule } of this.#rules) if (re.test(commandLine)) return rule;
    return undefined;
  }
}

/** A `mkdir -p` or `rm -f`/`rm -rf` the master performs itself. */
export type Builtin =
  | { op: "mkdir"; paths: string[] }
  | { op: "rm"; paths: string[]; recursive: boolean };

function plainWords(script: string): string[] | null {
  if (!/^[A-Za-z0-9_.,:=@%+\/ -]*$/.test(script)) return null;
  return script.trim().split(/ +/).filter((w) => w !== "");
}

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

/** Performs a builtin; returns the exit status and a message like the tool's. */
export async function runBuiltin(b: Builtin): Promise<{ code: number; stderr: string }> {
  let stderr = "";
  let code = 0;
  for (const path of b.paths) {
    try {
      if (b.op === "mkdir") await Deno.mkdir(path, { recursive: true });
      else {
        const info = await Deno.lstat(path).catch(() => null);
        if (info === null) continue;
        if (info.isDirectory && !b.recursive) {
          stderr += `rm: cannot remove '${path}': Is a directory\n`;
          code = 1;
          continue;
        }
        await Deno.remove(path, { recursive: b.recursive });
      }
    } catch (err) {
      stderr += `${b.op}: ${path}: ${(err as Error).message}\n`;
      code = 1;
    }
  }
  return { code, stderr };
}
