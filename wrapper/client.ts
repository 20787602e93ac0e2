/**
 * The wrapper: hands one command to the master over its unix socket and behaves
 * like the command would have (same output, same exit status).
 *
 * Started once per compile: keep imports to this file, `protocol.ts` and
 * leaves of common/ with no imports of their own.
 */
import { errorMessage } from "../common/errors.ts";
import {
  decodeJson,
  encodeWrapperFrame,
  FrameType,
  WRAPPER_PROTOCOL_VERSION,
  type WrapperExit,
  WrapperFrameReader,
  type WrapperRequest,
  writeAll,
} from "./protocol.ts";

export const SOCKET_NAME = ".termite-socket";

export interface WrapperOptions {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  /** Directory holding the wrapper's symlinks: removed from PATH for the job. */
  wrapperDir?: string;
  shell?: boolean;
}

/**
 * Finds the master's socket: `TERMITE_SOCKET`, else the nearest
 * `.termite-socket` walking up from `cwd` (a socket, or a symlink that
 * {@linkcode distrustSocket} then refuses).
 */
export function findSocket(cwd: string, env: Record<string, string>): string | null {
  const named = env.TERMITE_SOCKET;
  if (named) return named.startsWith("/") ? named : `${cwd === "/" ? "" : cwd}/${named}`;
  let dir = cwd;
  for (;;) {
    const candidate = `${dir === "/" ? "" : dir}/${SOCKET_NAME}`;
    try {
      const info = Deno.lstatSync(candidate);
      if (info.isSocket || info.isSymlink) return candidate;
    } catch {
      // Not here: keep walking up.
    }
    if (dir === "/") return null;
    dir = dir.slice(0, dir.lastIndexOf("/")) || "/";
  }
}

function writableBy(mode: number): string | null {
  if ((mode & 0o022) === 0) return null;
  const who = [(mode & 0o020) !== 0 ? "its group" : "", (mode & 0o002) !== 0 ? "others" : ""];
  return `writable by ${who.filter((w) => w !== "").join(" and ")} (mode 0${mode.toString(8)})`;
}

/**
 * Why the wrapper of user `uid` may not hand a command (argv, cwd, the whole
 * environment) to the socket at `path`, or null when it may: the socket and
 * the directory holding it must belong to `uid` or root and be writable by
 * nobody else (else anyone could have put it there, or swap it). The socket
 * itself is not followed: a symlink is refused.
 */
export function distrustSocket(path: string, uid: number): string | null {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch (err) {
    return err instanceof Deno.errors.NotFound ? "there is no such socket" : String(err);
  }
  if (info.isSymlink) return "it is a symlink";
  if (!info.isSocket) return "it is not a socket";
  const owner = (what: string, id: number | null) =>
    id === uid || id === 0 ? null : `${what} belongs to uid ${id}, not to you (uid ${uid}) or root`;
  const notMine = owner("it", info.uid);
  if (notMine) return notMine;
  const open = writableBy((info.mode ?? 0) & 0o7777);
  if (open) return `it is ${open}`;
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  let dirInfo: Deno.FileInfo;
  try {
    dirInfo = Deno.statSync(dir);
  } catch (err) {
    return `its directory ${dir}: ${err}`;
  }
  const dirNotMine = owner(`its directory ${dir}`, dirInfo.uid);
  if (dirNotMine) return dirNotMine;
  const dirOpen = writableBy((dirInfo.mode ?? 0) & 0o7777);
  if (dirOpen) return `its directory ${dir} is ${dirOpen}`;
  return null;
}

/**
 * PATH without the wrapper's own directory, so the job finds the real tool
 * (else a local run would start the wrapper again, and again). An entry is
 * the wrapper's directory when it names the same directory in any spelling
 * (a trailing slash, a relative path, a symlink to it).
 */
export function cleanPath(path: string, wrapperDir: string | undefined, cwd = "/"): string {
  if (!wrapperDir) return path;
  const real = (dir: string) => {
    try {
      return Deno.realPathSync(dir.startsWith("/") ? dir : `${cwd}/${dir}`);
    } catch {
      return undefined;
    }
  };
  const self = real(wrapperDir) ?? wrapperDir;
  return path.split(":").filter((dir) => dir !== "" && dir !== wrapperDir && real(dir) !== self)
    .join(":");
}

function stdinIsData(): boolean {
  try {
    const info = Deno.statSync("/proc/self/fd/0");
    return info.isFile || (info.isFifo ?? false);
  } catch {
    return false;
  }
}

async function pumpStdin(conn: Deno.UnixConn): Promise<void> {
  const buf = new Uint8Array(256 * 1024);
  try {
    for (;;) {
      const n = await Deno.stdin.read(buf);
      if (n === null) break;
      await writeAll(conn, encodeWrapperFrame(FrameType.stdin, buf.subarray(0, n)));
    }
    await writeAll(conn, encodeWrapperFrame(FrameType.stdin, new Uint8Array()));
  } catch {
    // The master went away or the job ended: stdin no longer matters.
  }
}

/**
 * Local runs nested this deep mean the wrapper keeps starting itself (a PATH
 * that still leads back to it): stop instead of filling the machine. Make's
 * SHELL and the compiler each count once per level of recursive make.
 */
export const LOCAL_DEPTH_MAX = 40;

function runLocally(options: WrapperOptions): number {
  const depth = Number(options.env.TERMITE_LOCAL_DEPTH) || 0;
  if (depth >= LOCAL_DEPTH_MAX) {
    console.error(
      `termite: ${options.argv[0]}: ${depth} nested local runs: the wrapper keeps starting ` +
        `itself; take its directory out of PATH (${options.wrapperDir ?? "unknown"})`,
    );
    return 127;
  }
  const env = {
    ...options.env,
    PATH: cleanPath(options.env.PATH ?? "", options.wrapperDir, options.cwd),
    TERMITE_LOCAL_DEPTH: String(depth + 1),
  };
  const [cmd, ...args] = options.argv;
  try {
    const { code } = new Deno.Command(cmd, {
      args,
      cwd: options.cwd,
      env,
      clearEnv: true,
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).outputSync();
    return code;
  } catch (err) {
    console.error(`termite: ${cmd}: ${errorMessage(err)}`);
    return 127;
  }
}

/**
 * The master's entry point beside this checkout's wrapper, for messages
 * (built only for one: the first URL a Deno process builds costs ~0.7 ms).
 * This module is `wrapper/client.ts`, or bundled into `bin/termite-wrap` and
 * run through a link named after the tool: the checkout is two levels above
 * the file the link resolves to, either way.
 */
function masterTs(): string {
  try {
    const file = Deno.realPathSync(new URL(import.meta.url));
    return `${file.slice(0, file.lastIndexOf("/", file.lastIndexOf("/") - 1))}/master.ts`;
  } catch {
    return "master.ts";
  }
}

/**
 * No master can take the command: like distcc without hosts, run it here with
 * one warning line, unless `TERMITE_LOCAL_FALLBACK=0` asks for an error.
 */
function withoutMaster(options: WrapperOptions, why: string): number {
  if (options.env.TERMITE_LOCAL_FALLBACK === "0") {
    console.error(`termite: ${why} (TERMITE_LOCAL_FALLBACK=0: not running it here)`);
    return 255;
  }
  console.error(`termite: ${why}; running ${options.argv[0]} here`);
  return runLocally(options);
}

/** Runs the command through the master; returns the exit status to use. */
export async function runWrapper(options: WrapperOptions): Promise<number> {
  const socket = findSocket(options.cwd, options.env);
  if (socket === null) {
    return withoutMaster(
      options,
      `no master for ${options.cwd} (no ${SOCKET_NAME} there or above; start ` +
        `\`deno run -A ${masterTs()}\` in the build tree)`,
    );
  }
  const why = distrustSocket(socket, Deno.uid() ?? 0);
  if (why !== null) {
    return withoutMaster(
      options,
      `refusing the master socket ${socket}: ${why}; ` +
        `anyone who could put it there would get this command and its environment`,
    );
  }
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path: socket });
  } catch (err) {
    const why = err instanceof Deno.errors.ConnectionRefused
      ? "no master is listening (stale socket)"
      : errorMessage(err);
    return withoutMaster(options, `cannot reach the master at ${socket}: ${why}`);
  }
  const env = { ...options.env };
  const localPath = env.PATH;
  if (env.PATH !== undefined) env.PATH = cleanPath(env.PATH, options.wrapperDir, options.cwd);
  const withStdin = stdinIsData();
  const request: WrapperRequest = {
    version: WRAPPER_PROTOCOL_VERSION,
    argv: options.argv,
    cwd: options.cwd,
    env,
    stdin: withStdin,
    shell: options.shell,
    localPath: localPath !== env.PATH ? localPath : undefined,
  };
  const cancel = () => {
    writeAll(conn, encodeWrapperFrame(FrameType.cancel, new Uint8Array())).catch(() => {});
  };
  Deno.addSignalListener("SIGINT", cancel);
  Deno.addSignalListener("SIGTERM", cancel);
  try {
    await writeAll(conn, encodeWrapperFrame(FrameType.request, JSON.stringify(request)));
    if (withStdin) pumpStdin(conn);
    const reader = new WrapperFrameReader(conn);
    for (;;) {
      const frame = await reader.read();
      if (frame === null) {
        console.error("termite: the master closed the connection before the job ended");
        return 255;
      }
      switch (frame.type) {
        case FrameType.stdout:
          await writeAll(Deno.stdout, frame.payload);
          break;
        case FrameType.stderr:
          await writeAll(Deno.stderr, frame.payload);
          break;
        case FrameType.exit: {
          const exit = decodeJson<WrapperExit>(frame.payload);
          if (exit.error) console.error(`termite: ${exit.error}`);
          return exit.code;
        }
        default:
          console.error(`termite: unexpected frame type ${frame.type} from the master`);
          return 255;
      }
    }
  } catch (err) {
    console.error(`termite: lost the master: ${errorMessage(err)}`);
    return 255;
  } finally {
    Deno.removeSignalListener("SIGINT", cancel);
    Deno.removeSignalListener("SIGTERM", cancel);
    conn.close();
  }
}

const SHELL_BUILTINS = new Set(["true", "false", ":", "echo"]);

/**
 * Shell-wrapper mode (`make SHELL=termite-sh`): `true`, `false`, `:` and plain
 * `echo` run here; everything else goes to the master as `sh -c script`.
 * Returns null when the script must go to the master.
 */
export function runShellBuiltin(script: string): { code: number; stdout: string } | null {
  const trimmed = script.trim();
  // Only plain words: no quoting, expansion, redirection or command lists.
  if (!/^[A-Za-z0-9_.,:=@%+\/ -]*$/.test(trimmed)) return null;
  const words = trimmed.split(/ +/).filter((w) => w !== "");
  const [cmd, ...args] = words;
  if (cmd === undefined || !SHELL_BUILTINS.has(cmd)) return null;
  if (cmd === "true" || cmd === ":") return { code: 0, stdout: "" };
  if (cmd === "false") return { code: 1, stdout: "" };
  if (args[0] === "-n") return { code: 0, stdout: args.slice(1).join(" ") };
  if (args[0]?.startsWith("-")) return null;
  return { code: 0, stdout: args.join(" ") + "\n" };
}
