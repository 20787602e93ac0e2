/**
 * Commands a worker cannot run faithfully: ones that name paths the mirror
 * does not show (an excluded prefix such as /tmp) or that write outside the
 * writable root, where a worker's writes are thrown away. They run on the
 * master instead, so that an output never goes missing behind exit status 0
 * (`gcc -c x.c -o /tmp/x.o`). The check reads the arguments the way
 * compilers, linkers and shells spell paths; a path the arguments do not
 * spell out (`$d/x`) is not seen.
 */
import { isInside } from "../common/paths.ts";
import { normalizeAbsolute } from "./paths.ts";

/** Options whose value (joined or the next argument) is a file the command writes. */
const OUTPUT_FLAGS = ["-o", "-MF", "--output"];
/** Options whose value (joined or the next argument) is a path. */
const PATH_FLAGS = [
  "-I",
  "-L",
  "-B",
  "-isystem",
  "-iquote",
  "-idirafter",
  "-include",
  "-imacros",
  "--sysroot",
  "-isysroot",
  "-T",
];
/** What the sandbox provides itself (its own /proc, /sys and devices). */
const SANDBOX_OWN = /^\/(proc|sys|dev)(\/|$)/;

export interface OutsideCheck {
  root: string;
  /** Whether the mirror hides a path (an excluded prefix). */
  excluded: (path: string) => boolean;
}

/**
 * Why a command must run on the master, or null when a worker can run it.
 * `argv` is the command; with `shell`, `argv[2]` is a shell script.
 */
export function outsideReason(
  argv: readonly string[],
  cwd: string,
  check: OutsideCheck,
  shell = false,
): string | null {
  if (!isInside(cwd, check.root)) return `it runs in ${cwd}, outside the build tree`;
  const words = shell ? shellWords(argv[2] ?? "") : argv.slice(1).map((w) => ({ w, out: false }));
  for (let i = 0; i < words.length; i++) {
    const { w, out } = words[i];
    const next = words[i + 1]?.w;
    let path: string | undefined;
    let writes = out;
    const flag = [...OUTPUT_FLAGS, ...PATH_FLAGS].find((f) => w === f || w.startsWith(f));
    if (flag !== undefined) {
      writes = OUTPUT_FLAGS.includes(flag);
      if (w === flag) {
        path = next;
        i++;
      } else path = w.slice(flag.length).replace(/^=/, "");
    } else if (w.startsWith("-")) {
      const eq = w.indexOf("=");
      if (eq > 0) path = w.slice(eq + 1);
    } else path = w;
    if (path === undefined || path === "") continue;
    // Only what is spelled like a path: absolute, or relative with a slash.
    if (!path.startsWith("/") && !path.startsWith("./") && !path.startsWith("../")) continue;
    const abs = normalizeAbsolute(path.startsWith("/") ? path : `${cwd}/${path}`);
    if (abs === null || isInside(abs, check.root) || SANDBOX_OWN.test(abs)) continue;
    if (check.excluded(abs)) return `it names ${abs}, which the workers do not see`;
    if (writes) return `it writes ${abs}, outside the build tree`;
  }
  return null;
}

/** A shell script's words, and whether each is a redirection's target (written). */
function shellWords(script: string): { w: string; out: boolean }[] {
  const words: { w: string; out: boolean }[] = [];
  let redirect = false;
  for (const raw of script.split(/[\s;&|()`]+/)) {
    if (raw === "") continue;
    const m = /^(\d*>>?|&>|>\|)(.*)$/.exec(raw);
    if (m) {
      if (m[2] === "") redirect = true;
      else words.push({ w: unquote(m[2]), out: true });
      continue;
    }
    const inRedirect = /^\d*<(.*)$/.exec(raw);
    if (inRedirect) {
      if (inRedirect[1] !== "") words.push({ w: unquote(inRedirect[1]), out: false });
      continue;
    }
    words.push({ w: unquote(raw), out: redirect });
    redirect = false;
  }
  return words;
}

function unquote(word: string): string {
  return word.replace(/^['"]|['"]$/g, "");
}
