/**
 * `termite-make`: make whose parallelism follows the farm. It owns a GNU make
 * jobserver (a FIFO in a private directory, handed to make as descriptors 3
 * and 4 with `--jobserver-auth=3,4`, which make 4.3 and later take as a
 * jobserver of a parent make) and keeps as many tokens in it as the master
 * can run jobs at once: its workers' slots, or its local slots while it has
 * none. It asks the master every {@linkcode ElasticMakeOptions.pollMs}; a
 * worker joining adds tokens at once, one leaving takes tokens back as the
 * jobs holding them end. Recursive makes share the same tokens, as with
 * `make -j`. The user never guesses `-j`.
 *
 * @module
 */
import { distrustSocket, findSocket } from "./client.ts";
import { encodeWrapperFrame, type FarmSlots, FrameType, WrapperFrameReader } from "./protocol.ts";

/** Jobs at once, at most, whatever the farm says (a bound on the FIFO's tokens). */
export const ELASTIC_JOBS_MAX = 1024;
/** How often the master is asked for its slots, by default. */
export const ELASTIC_POLL_MS_DEFAULT = 500;

export interface ElasticMakeOptions {
  /** make's arguments (a `-j` among them is dropped: the farm sets it). */
  args: string[];
  cwd: string;
  env: Record<string, string>;
  /** The make to run (default `make`, from PATH). */
  make?: string;
  pollMs?: number;
  log?: (message: string) => void;
}

/** make's arguments without `-j`, `-jN`, `-j N`, `--jobs`, `--jobs=N` (the farm sets it). */
export function withoutJobs(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      out.push(...args.slice(i));
      break;
    }
    if (a === "-j" || a === "--jobs") {
      if (/^\d+$/.test(args[i + 1] ?? "")) i++;
      continue;
    }
    if (/^-j\d+$/.test(a) || /^--jobs=\d*$/.test(a)) continue;
    out.push(a);
  }
  return out;
}

/** Asks the master at `socket` for its slots; null when it cannot be asked. */
export async function querySlots(socket: string): Promise<FarmSlots | null> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path: socket });
  } catch {
    return null;
  }
  try {
    await conn.write(encodeWrapperFrame(FrameType.slots, new Uint8Array()));
    const frame = await new WrapperFrameReader(conn).read();
    if (frame === null || frame.type !== FrameType.slots) return null;
    const slots = JSON.parse(new TextDecoder().decode(frame.payload)) as FarmSlots;
    const ok = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0;
    return ok(slots?.remote) && ok(slots?.local) ? slots : null;
  } catch {
    return null;
  } finally {
    conn.close();
  }
}

/** Jobs at once for `slots`: the workers' slots, or the local ones while there are none. */
export function jobsFor(slots: FarmSlots): number {
  const n = slots.remote > 0 ? slots.remote : slots.local;
  return Math.min(ELASTIC_JOBS_MAX, Math.max(1, n));
}

/**
 * The tokens of a jobserver FIFO: `set(n)` puts tokens in or takes them back
 * (as make returns them) so that n are in circulation.
 */
class Tokens {
  readonly #fifo: Deno.FsFile;
  /** Tokens in circulation (written, not taken back). */
  #issued = 0;
  /** Tokens to take back as they come. */
  #debt = 0;
  #reading = false;
  #closed = false;

  constructor(fifo: Deno.FsFile) {
    this.#fifo = fifo;
  }

  get target(): number {
    return this.#issued - this.#debt;
  }

  set(n: number): void {
    const want = Math.max(0, n);
    // Cancel what is still to be taken back before adding new tokens.
    const cancel = Math.min(this.#debt, Math.max(0, want - this.target));
    this.#debt -= cancel;
    const add = want - this.target;
    if (add > 0) {
      this.#fifo.writeSync(new Uint8Array(add).fill(0x2b)); // "+"
      this.#issued += add;
    } else if (add < 0) {
      this.#debt += -add;
      this.#takeBack();
    }
  }

  /** Reads tokens off the FIFO (one at a time, as make gives them back) while in debt. */
  async #takeBack(): Promise<void> {
    if (this.#reading) return;
    this.#reading = true;
    const one = new Uint8Array(1);
    try {
      while (this.#debt > 0 && !this.#closed) {
        const n = await this.#fifo.read(one);
        if (n === null || this.#closed) break;
        if (this.#debt > 0) {
          this.#debt--;
          this.#issued--;
        } else {
          // Wanted again meanwhile: back in.
          this.#fifo.writeSync(one);
        }
      }
    } catch {
      // Closed under the read: the build is over.
    } finally {
      this.#reading = false;
    }
  }

  /** Stops taking tokens back (a read still waiting is woken by a token of its own). */
  close(): void {
    this.#closed = true;
    if (this.#reading) this.#fifo.writeSync(new Uint8Array([0x2b]));
  }
}

/** Runs make with the farm's jobserver; resolves with make's exit status. */
export async function runElasticMake(options: ElasticMakeOptions): Promise<number> {
  const log = options.log ?? ((m: string) => console.error(`termite-make: ${m}`));
  const socket = findSocket(options.cwd, options.env);
  const why = socket === null ? "no master here" : distrustSocket(socket, Deno.uid() ?? 0);
  const first = why === null ? await querySlots(socket!) : null;
  if (first === null) {
    const n = navigator.hardwareConcurrency;
    log(`no usable master (${why ?? "it does not answer"}): make -j${n} here`);
    return await runMake(options, [`-j${n}`, ...withoutJobs(options.args)], options.env);
  }
  // A private directory (0700) for the FIFO: no one else can take or add tokens.
  const dir = Deno.makeTempDirSync({ prefix: "termite-make-" });
  const fifoPath = `${dir}/jobserver`;
  try {
    const mk = await new Deno.Command("mkfifo", { args: ["-m", "600", fifoPath] }).output();
    if (!mk.success) throw new Error(`mkfifo ${fifoPath}: ${new TextDecoder().decode(mk.stderr)}`);
    // Read and write: opening a FIFO so never blocks, and it never sees EOF.
    const fifo = Deno.openSync(fifoPath, { read: true, write: true });
    const tokens = new Tokens(fifo);
    let jobs = jobsFor(first);
    // make runs one job without a token.
    tokens.set(jobs - 1);
    log(`${jobs} jobs at once (${describe(first)}), following the farm`);
    let stopped = false;
    const pollMs = options.pollMs ?? ELASTIC_POLL_MS_DEFAULT;
    const follow = (async () => {
      while (!stopped) {
        await new Promise((r) => setTimeout(r, pollMs));
        if (stopped) break;
        const slots = await querySlots(socket!);
        if (slots === null) continue; // the master is gone for now: keep the tokens
        const n = jobsFor(slots);
        if (n !== jobs) {
          log(`${n} jobs at once (${describe(slots)})`);
          jobs = n;
          tokens.set(n - 1);
        }
      }
    })();
    const makeflags = [
      "-j",
      "--jobserver-auth=3,4",
      ...(options.env.MAKEFLAGS ? [options.env.MAKEFLAGS] : []),
    ].join(" ");
    try {
      return await runMake(options, withoutJobs(options.args), {
        ...options.env,
        MAKEFLAGS: makeflags,
        TERMITE_JOBSERVER_FIFO: fifoPath,
      });
    } finally {
      stopped = true;
      tokens.close();
      await follow;
      fifo.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

function describe(slots: FarmSlots): string {
  return slots.remote > 0 ? `${slots.remote} worker slots` : `no workers: ${slots.local} here`;
}

/**
 * Runs make; with `TERMITE_JOBSERVER_FIFO` set, through a shell that opens the
 * FIFO as descriptors 3 and 4 first (Deno passes no other descriptors on).
 */
async function runMake(
  options: ElasticMakeOptions,
  args: string[],
  env: Record<string, string>,
): Promise<number> {
  const make = options.make ?? "make";
  const script = env.TERMITE_JOBSERVER_FIFO
    ? 'exec 3<>"$TERMITE_JOBSERVER_FIFO" 4<>"$TERMITE_JOBSERVER_FIFO"; ' +
      'unset TERMITE_JOBSERVER_FIFO; exec "$@"'
    : 'exec "$@"';
  const child = new Deno.Command("/bin/sh", {
    args: ["-c", script, "sh", make, ...args],
    cwd: options.cwd,
    env,
    clearEnv: true,
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  // ^C reaches make through the terminal's process group: make stops its jobs
  // and exits, and this waits for it to clean up. A SIGTERM is passed on.
  const ignore = () => {};
  const forward = () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // Already gone.
    }
  };
  Deno.addSignalListener("SIGINT", ignore);
  Deno.addSignalListener("SIGTERM", forward);
  try {
    const status = await child.status;
    return status.signal ? 128 + signalNumber(status.signal) : status.code;
  } finally {
    Deno.removeSignalListener("SIGINT", ignore);
    Deno.removeSignalListener("SIGTERM", forward);
  }
}

const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGKILL: 9,
  SIGTERM: 15,
};

function signalNumber(signal: Deno.Signal): number {
  return SIGNALS[signal] ?? 1;
}
