/**
 * Jobs run on the master itself: by rule, because they reach outside what
 * the workers see, or as the last resort (bounded by the local slots).
 *
 * @module
 */
import type { FileServer } from "./file_server.ts";
import type { JobIo, JobRequest, MasterStats } from "./master_types.ts";
import type { TreeSync } from "./tree_sync.ts";

export class Semaphore {
  #free: number;
  #queue: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve) => this.#queue.push(resolve));
  }
  release(): void {
    const next = this.#queue.shift();
    if (next) next();
    else this.#free++;
  }
}

/** What a local run needs of its master. */
export interface LocalRunnerOptions {
  root: string;
  stats: MasterStats;
  files: FileServer;
  sync: TreeSync;
  localSlots: Semaphore;
  log: (message: string) => void;
}

/** Runs jobs here, for one master. */
export class LocalRunner {
  readonly root: string;
  readonly stats: MasterStats;
  #files: FileServer;
  #sync: TreeSync;
  #localSlots: Semaphore;
  #log: (message: string) => void;

  constructor(o: LocalRunnerOptions) {
    this.root = o.root;
    this.stats = o.stats;
    this.#files = o.files;
    this.#sync = o.sync;
    this.#localSlots = o.localSlots;
    this.#log = o.log;
  }

  /** Runs `request` here; `refresh`: read the tree again after; `fallback`: say so. */
  run(
    request: JobRequest,
    io: JobIo,
    refresh: boolean,
    fallback: boolean,
  ): Promise<{ code: number; error?: string }> {
    return this.#runLocal(request, io, refresh, fallback);
  }

  /** Runs `request` here as the last resort, in a local slot. */
  runInSlot(request: JobRequest, io: JobIo): Promise<{ code: number; error?: string }> {
    return this.#runLocalSlot(request, io);
  }

  #flushChanges(extra?: Iterable<string>, known?: Map<string, string>): Promise<void> {
    return this.#sync.flush(extra, known);
  }

  /** A local run as the last resort, bounded by the local slots. */
  async #runLocalSlot(request: JobRequest, io: JobIo): Promise<{ code: number; error?: string }> {
    await this.#localSlots.acquire();
    try {
      return await this.#runLocal(request, io, true, true);
    } finally {
      this.#localSlots.release();
    }
  }

  async #runLocal(
    request: JobRequest,
    io: JobIo,
    refresh: boolean,
    fallback: boolean,
  ): Promise<{ code: number; error?: string }> {
    this.stats.jobsLocalRunning++;
    try {
      return await this.#runLocalJob(request, io, refresh, fallback);
    } finally {
      this.stats.jobsLocalRunning--;
    }
  }

  async #runLocalJob(
    request: JobRequest,
    io: JobIo,
    refresh: boolean,
    fallback: boolean,
  ): Promise<{ code: number; error?: string }> {
    this.stats.jobsLocal++;
    if (fallback) this.#log(`running locally: ${request.argv.join(" ").slice(0, 200)}`);
    const [cmd, ...args] = request.argv;
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(cmd, {
        args,
        cwd: request.cwd,
        env: request.env,
        clearEnv: true,
        stdin: io.stdin ? "piped" : "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (err) {
      const message = err instanceof Deno.errors.NotFound
        ? `${cmd}: command not found\n`
        : `${cmd}: ${(err as Error).message}\n`;
      await io.stderr(new TextEncoder().encode(message));
      return { code: err instanceof Deno.errors.NotFound ? 127 : 126 };
    }
    const kill = () => {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
    };
    io.signal.addEventListener("abort", kill);
    let unfollow: (() => void) | undefined;
    if (io.stdin) {
      const writer = child.stdin.getWriter();
      let chain = Promise.resolve();
      unfollow = io.stdin.follow((chunk) => {
        chain = chain.then(() => chunk.length === 0 ? writer.close() : writer.write(chunk))
          .catch(() => {});
      });
    }
    const pump = async (
      stream: ReadableStream<Uint8Array>,
      out: (b: Uint8Array) => Promise<void>,
    ) => {
      for await (const chunk of stream) await out(chunk);
    };
    try {
      const [status] = await Promise.all([
        child.status,
        pump(child.stdout, io.stdout),
        pump(child.stderr, io.stderr),
      ]);
      // Cancelled by ^C on the wrapper: report it as the interrupt it was.
      return { code: io.signal.aborted ? 130 : status.code };
    } finally {
      unfollow?.();
      io.signal.removeEventListener("abort", kill);
      if (refresh) {
        // What it changed is not known: everything served is read again, whole.
        this.#sync.rereadAll();
        await this.#flushChanges();
      }
    }
  }
}
