/**
 * ccache as a contender: the Debian package (installed with apt-get when
 * missing), used through its masquerade directory (gcc, cc → ccache) first on
 * PATH, with a cache directory of its own per project, warm after a first build.
 */
import { ensurePackage } from "./_distcc.ts";

/** Where Debian keeps the masquerade links (gcc, cc, g++ → ccache). */
export const CCACHE_MASQUERADE_DIR = "/usr/lib/ccache";
/** The cache's cap: far above what lua or zstd need, so that nothing is evicted. */
const CCACHE_MAX_SIZE = "2G";

/** Installs ccache if missing; `null` when ready, else why not. */
export async function ensureCcache(): Promise<string | null> {
  const why = await ensurePackage("ccache", ["ccache"]);
  if (why !== null) return why;
  for (const tool of ["gcc", "cc"]) {
    try {
      await Deno.lstat(`${CCACHE_MASQUERADE_DIR}/${tool}`);
    } catch {
      return `no ${CCACHE_MASQUERADE_DIR}/${tool} (ccache's masquerade link)`;
    }
  }
  return null;
}

export interface CcacheStats {
  /** Compiles answered from the cache (direct or preprocessed mode). */
  hits: number;
  /** Compiles run and stored. */
  misses: number;
}

/** One ccache directory and the environment that uses it. */
export class Ccache {
  readonly dir: string;
  readonly env: Record<string, string>;

  constructor(dir: string) {
    this.dir = dir;
    this.env = {
      ...Deno.env.toObject(),
      PATH: `${CCACHE_MASQUERADE_DIR}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`,
      CCACHE_DIR: dir,
      CCACHE_MAXSIZE: CCACHE_MAX_SIZE,
    };
  }

  /** Empties the directory (a cold cache). */
  async reset(): Promise<void> {
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    await Deno.mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  /** The counters so far (`ccache --print-stats`). */
  async stats(): Promise<CcacheStats> {
    const out = await new Deno.Command("ccache", {
      args: ["--print-stats"],
      env: this.env,
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`ccache --print-stats failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    const counters = new Map<string, number>();
    for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
      const [name, value] = line.split("\t");
      if (name && value !== undefined) counters.set(name, Number(value) || 0);
    }
    const get = (name: string) => counters.get(name) ?? 0;
    return {
      hits: get("direct_cache_hit") + get("preprocessed_cache_hit"),
      misses: get("cache_miss"),
    };
  }
}
