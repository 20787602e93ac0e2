/**
 * GNU make's fast path, for commands that come through `make SHELL=termite-sh`:
 * make runs a recipe line of plain words itself, with no shell, when its
 * shell is a Bourne shell; given a shell it does not know (`termite-sh`), it
 * hands every line to it. So a plain `gcc -c x.c` arrives as
 * `/bin/sh -c 'gcc -c x.c'`, and without this a worker would start a shell
 * per job only to start the compiler (a process more per job: on the
 * reference VM ~3.7 ms of CPU), and the action cache would not take it (a
 * shell script is not a compiler's command).
 *
 * A script becomes the command's own argv only when no shell could make a
 * difference: plain words only (letters, digits and `_.,:=@%+/-`, separated
 * by spaces: no quoting, expansion, globbing, redirection or list), the first
 * word not a shell builtin or keyword, not an assignment and not an option,
 * no arguments after the script (`$0`, `$1`), and the command found, as `sh`
 * would find it (PATH, or a path with a slash), as a regular file anyone may
 * execute. Anything else keeps the shell, so its messages (`sh: 1: x: not
 * found`, exit 127) stay the shell's. The shell's one visible effect on the
 * command, `PWD` set to the working directory (dash sets it), is kept.
 *
 * @module
 */
import { normalizeAbsolute } from "./paths.ts";

/** dash's builtins and keywords, and bash's that dash lacks: a shell runs these itself. */
export const SHELL_WORDS: ReadonlySet<string> = new Set([
  ".",
  ":",
  "alias",
  "bg",
  "break",
  "builtin",
  "caller",
  "case",
  "cd",
  "chdir",
  "command",
  "compgen",
  "complete",
  "continue",
  "coproc",
  "declare",
  "dirs",
  "disown",
  "do",
  "done",
  "echo",
  "elif",
  "else",
  "enable",
  "esac",
  "eval",
  "exec",
  "exit",
  "export",
  "false",
  "fc",
  "fg",
  "fi",
  "for",
  "function",
  "getopts",
  "hash",
  "help",
  "history",
  "if",
  "in",
  "jobs",
  "kill",
  "let",
  "local",
  "login",
  "logout",
  "mapfile",
  "popd",
  "printf",
  "pushd",
  "pwd",
  "read",
  "readarray",
  "readonly",
  "return",
  "select",
  "set",
  "shift",
  "shopt",
  "source",
  "suspend",
  "test",
  "then",
  "time",
  "times",
  "trap",
  "true",
  "type",
  "typeset",
  "ulimit",
  "umask",
  "unalias",
  "unset",
  "until",
  "wait",
  "while",
]);

/** Scripts longer than this keep the shell (nothing to gain in parsing them). */
const SCRIPT_BYTES_MAX = 64 * 1024;

/**
 * The words of a script of plain words only (letters, digits, `_.,:=@%+/-`
 * and spaces: nothing a shell would quote, expand, glob, redirect or chain),
 * or null. The master's builtins (`mkdir -p`, `rm -f`) read scripts with it too.
 */
export function plainWords(script: string): string[] | null {
  if (script.length > SCRIPT_BYTES_MAX || !/^[A-Za-z0-9_.,:=@%+\/ -]*$/.test(script)) return null;
  return script.split(" ").filter((w) => w !== "");
}

/** What {@linkcode directCommand} needs to know of the file system the job will see. */
export interface CommandFinder {
  /** Whether `path` (absolute) is a regular file, symlinks followed, that anyone may execute. */
  executable(path: string): Promise<boolean>;
}

/**
 * The finder on this host's file system (what a worker's mirror shows), where
 * paths `excluded` (absolute, normalised: the master's exclusions, which the
 * workers do not see) count as absent. It only looks (`stat`): nothing is
 * opened, so a FIFO or a device on PATH is not waited on. Asynchronous: a
 * directory of PATH on a stalled file system (a network mount) must not stall
 * the master's event loop, only this command.
 */
export function commandFinder(excluded: (path: string) => boolean = () => false): CommandFinder {
  return {
    async executable(path: string): Promise<boolean> {
      const abs = normalizeAbsolute(path);
      if (abs === null || excluded(abs)) return false;
      try {
        const info = await Deno.stat(path);
        return info.isFile && info.mode !== null && (info.mode & 0o001) !== 0;
      } catch {
        return false;
      }
    },
  };
}

/**
 * The argv and environment that run `argv` (`[sh, "-c", script]`) without the
 * shell, or null when the shell is to run it (see the module doc). `env` is
 * the command's environment; its PATH is searched as `sh` searches it (an
 * empty entry, or a relative one, from `cwd`).
 */
export async function directCommand(
  argv: readonly string[],
  cwd: string,
  env: Readonly<Record<string, string>>,
  finder: CommandFinder = commandFinder(),
): Promise<{ argv: string[]; env: Record<string, string> } | null> {
  if (argv.length !== 3 || argv[1] !== "-c") return null;
  const words = plainWords(argv[2]);
  const first = words?.[0];
  if (words === null || first === undefined) return null;
  if (first.startsWith("-") || first.includes("=")) return null;
  if (SHELL_WORDS.has(first)) return null;
  const from = (dir: string) => dir.startsWith("/") ? dir : `${cwd === "/" ? "" : cwd}/${dir}`;
  let found = false;
  if (first.includes("/")) {
    found = await finder.executable(from(first));
  } else {
    for (const dir of (env.PATH ?? "").split(":")) {
      const base = from(dir === "" ? "." : dir);
      if (await finder.executable(`${base.replace(/\/+$/, "")}/${first}`)) {
        found = true;
        break;
      }
    }
  }
  if (!found) return null;
  return { argv: words, env: { ...env, PWD: cwd } };
}
