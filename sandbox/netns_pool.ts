/**
 * Network namespaces reused from job to job: a job without the worker's
 * network gets one that no running job holds, bound under a root-only
 * directory, instead of a new one. Making and tearing down a namespace cost
 * ~0.6 ms of the launcher's CPU per job and as much of a kernel worker's
 * (BENCHMARKS.md, session 16). A reused one holds nothing of the jobs before
 * it: their processes, hence their sockets, died with them, and it keeps no
 * TIME_WAIT sockets (the launcher makes it so; see `enter_netns()` in
 * launcher.c). Two jobs running at once never share one.
 *
 * @module
 */
import { SandboxError } from "./errors.ts";

/** Namespaces one pool keeps at most; past it a job gets a namespace of its own. */
export const NETNS_POOL_MAX = 256;
/** How long dropping a pool's namespaces may take before it is given up. */
const DROP_TIMEOUT_MS = 10_000;

/** Options of {@linkcode NetnsPool.open}. */
export interface NetnsPoolOptions {
  /** Namespaces kept at most; default {@linkcode NETNS_POOL_MAX}. */
  max?: number;
  /** Told what a crashed worker left that could not be dropped. */
  log?: (message: string) => void;
}

/** The bound network namespaces of one worker, each used by one job at a time. */
export class NetnsPool {
  readonly dir: string;
  readonly #launcher: string;
  readonly #max: number;
  /** Namespaces no job holds. */
  readonly #free: string[] = [];
  /** Every path ever handed out (bound or not): dropped at close. */
  readonly #made = new Set<string>();
  /** This pool's names: never one a crashed worker left, if it could not be dropped. */
  readonly #prefix = `ns-${crypto.randomUUID().slice(0, 8)}-`;
  #next = 0;
  #closed = false;

  private constructor(dir: string, launcher: string, max: number) {
    this.dir = dir;
    this.#launcher = launcher;
    this.#max = max;
  }

  /**
   * A pool in `dir` (created root-only), after dropping what a crashed
   * worker left there (what cannot be dropped is logged, and stays unused).
   * `launcher` is the launcher binary (sandbox/launcher.ts).
   */
  static async open(
    dir: string,
    launcher: string,
    options: NetnsPoolOptions = {},
  ): Promise<NetnsPool> {
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      await Deno.chmod(dir, 0o700);
    } catch (err) {
      throw new SandboxError(`Cannot create the network namespace dir: ${dir}`, { cause: err });
    }
    const stale: string[] = [];
    for await (const entry of Deno.readDir(dir)) stale.push(`${dir}/${entry.name}`);
    await drop(launcher, stale).catch((err) =>
      (options.log ?? console.error)(`network namespaces left: ${err.message}`)
    );
    return new NetnsPool(dir, launcher, options.max ?? NETNS_POOL_MAX);
  }

  /** Namespaces no job holds now. */
  get free(): number {
    return this.#free.length;
  }

  /** Paths handed out so far (a namespace each, once its first job ran). */
  get size(): number {
    return this.#made.size;
  }

  /**
   * A namespace path for one job (the launcher's `--netns`), to give back
   * with {@linkcode give}; undefined when the pool is full or closed (the job
   * then gets a namespace of its own).
   */
  take(): string | undefined {
    if (this.#closed) return undefined;
    const path = this.#free.pop();
    if (path !== undefined) return path;
    if (this.#made.size >= this.#max) return undefined;
    const made = `${this.dir}/${this.#prefix}${this.#next++}`;
    this.#made.add(made);
    return made;
  }

  /**
   * Gives back what {@linkcode take} returned. `reusable` false (the sandbox
   * failed: the launcher may not have finished making it) retires the path
   * (it still counts towards the cap, and is dropped at close). After close,
   * the path is dropped now: its job may have bound it again.
   */
  give(path: string, reusable: boolean): Promise<void> {
    if (!this.#made.has(path)) return Promise.resolve();
    if (this.#closed) return drop(this.#launcher, [path]);
    if (reusable) this.#free.push(path);
    return Promise.resolve();
  }

  /**
   * Drops every namespace of the pool; a job still running keeps its own
   * until it ends (a detached binding lives while it is used), and its path
   * is dropped again when it is given back.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#free.length = 0;
    await drop(this.#launcher, [...this.#made]);
  }
}

/** Detaches and removes `paths` (`launcher --drop-netns`). */
async function drop(launcher: string, paths: string[]): Promise<void> {
  if (paths.length === 0) return;
  const out = await new Deno.Command(launcher, {
    args: ["--drop-netns", ...paths],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    signal: AbortSignal.timeout(DROP_TIMEOUT_MS),
  }).output();
  if (!out.success) {
    const said = new TextDecoder().decode(out.stderr).trim();
    throw new SandboxError(
      `Cannot drop the jobs' network namespaces: ${said || "no reason given"}`,
    );
  }
}
