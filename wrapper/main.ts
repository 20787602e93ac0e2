/**
 * The wrapper's command line: which tool, in which mode (a tool, make's
 * shell, a compiler launcher, elastic make), run through the master.
 *
 * @module
 */
import { runShellBuiltin, runWrapper } from "./client.ts";
import type { runElasticMake } from "./elastic_make.ts";

/**
 * Loads `elastic_make.ts` for `termite-make`. Each entry passes its own: the
 * bundled shim loads it from the checkout at run time, so that the module is
 * not in the file every compile's start parses (it was a third of it).
 */
export type LoadElasticMake = () => Promise<{ runElasticMake: typeof runElasticMake }>;

/** What the entry that runs {@linkcode main} knows of where it runs from. */
export interface WrapperEntry {
  /** The directory of the tool links, dropped from the PATH of the command. */
  wrapperDir?: string;
  /** How `termite-make` finds its module. */
  loadElasticMake: LoadElasticMake;
}

const HELP = `usage: wrapper.ts --as TOOL [ARGS...]     run TOOL through the master
       wrapper.ts --as sh -c SCRIPT       run a shell command line through the master

Normally not run by hand: symlink bin/termite-wrap under each tool's name
(gcc, g++, cc, c++, ar, ranlib, and termite-sh for make's SHELL) in a folder
put first in PATH; each link then behaves exactly like the tool, its command
running on a worker (or here, when .termite-localrc says so). Linked as
\`termite\`, it is a compiler launcher: \`termite gcc -c x.c\`, as CMake's
-DCMAKE_C_COMPILER_LAUNCHER=/path/to/links/termite uses it. Linked as
\`termite-make\`, it runs make with as many jobs at once as the farm has
slots, following workers as they join and leave (a GNU make jobserver).

flags:
  --as TOOL  the tool to run (default: the name the wrapper was started as)
  --help     print this and exit

environment:
  TERMITE_SOCKET          the master's socket (default: .termite-socket in the
                          current folder or the nearest one above it)
  TERMITE_LOCAL_FALLBACK  0: fail (exit 255) when no master can take the command;
                          default: run it here, with one warning line
  TERMITE_WRAPPER_DIR     the folder of the links, left out of the job's PATH
                          (default: the folder of the link that was run)`;

/** Names under which the wrapper is a launcher: the command is its first argument. */
const LAUNCHER_NAMES = new Set(["termite", "termite-wrap"]);

/**
 * Runs the wrapper; resolves with the exit status. `entry.wrapperDir` (the
 * directory of the tool links) is dropped from the PATH of the command, so
 * that a local run finds the real tool.
 */
export async function main(args: string[], entry: WrapperEntry): Promise<number> {
  let tool: string | undefined;
  if (args[0] === "--as") {
    tool = args[1];
    args = args.slice(2);
  }
  if (!tool) {
    // A `deno compile`d wrapper symlinked as the tool: the name it was started as.
    const argv0 = Deno.readTextFileSync("/proc/self/cmdline").split("\0")[0];
    const name = argv0.slice(argv0.lastIndexOf("/") + 1);
    if (name && !/^(deno|termite-wrapper|wrapper\.ts)$/.test(name)) tool = name;
  }
  if (!tool) {
    if (args[0] === "--help" || args[0] === "-h") {
      console.log(HELP);
      return 0;
    }
    console.error("termite wrapper: usage: wrapper.ts --as TOOL [ARGS...] (see --help)");
    return 2;
  }
  if (tool === "termite-make") {
    // make with a jobserver that follows the farm's slots (loaded only here).
    const { runElasticMake } = await entry.loadElasticMake();
    return await runElasticMake({ args, cwd: Deno.cwd(), env: Deno.env.toObject() });
  }
  if (LAUNCHER_NAMES.has(tool)) {
    // A compiler launcher (CMake's CMAKE_<LANG>_COMPILER_LAUNCHER, like ccache):
    // the command follows.
    tool = args[0];
    args = args.slice(1);
    if (!tool) {
      console.error("termite: usage: termite COMMAND [ARGS...] (a compiler launcher)");
      return 2;
    }
  }
  const shellMode = tool === "sh" || tool === "termite-sh" || tool === "bash";
  const script = shellMode && args[0] === "-c" ? args[1] : undefined;
  if (shellMode) {
    if (script === undefined) {
      console.error("termite shell wrapper: usage: termite-sh -c SCRIPT");
      return 2;
    }
    // Before the environment and cwd are read: a builtin needs neither (the
    // first read of either costs a Deno process ~0.5 ms).
    const builtin = runShellBuiltin(script);
    if (builtin) {
      if (builtin.stdout) await Deno.stdout.write(new TextEncoder().encode(builtin.stdout));
      return builtin.code;
    }
  }
  const env = Deno.env.toObject();
  // Set only by the native client for the shim (which removed it, if run as bin/termite-wrap).
  delete env.TERMITE_WRAP_LINK;
  const wrapperDir = entry.wrapperDir ?? env.TERMITE_WRAPPER_DIR;
  const cwd = Deno.cwd();
  if (script !== undefined) {
    return await runWrapper({
      argv: ["/bin/sh", "-c", script, ...args.slice(2)],
      cwd,
      env,
      wrapperDir,
      shell: true,
    });
  }
  return await runWrapper({ argv: [tool, ...args], cwd, env, wrapperDir });
}
