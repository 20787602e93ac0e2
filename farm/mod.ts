/**
 * A local farm: a coordinator, N workers (each in a network namespace of its
 * own, acting as a separate host) and a master, as real processes started from
 * the role entry points. Used by `deno task dev`, the end-to-end tests and the
 * benchmarks.
 */
import type { MasterStatus } from "../master/mod.ts";
import { buildClient } from "../wrapper/native/build.ts";
import { createHost, freeHostNumbers, type Host, removeHost } from "./netns.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

export interface FarmOptions {
  /** Scratch directory: secret, caches, logs. */
  dir: string;
  /** The build tree: the master's writable root. */
  tree: string;
  workers?: number;
  slotsPerWorker?: number;
  /** Put each worker in a network namespace (default true). */
  netns?: boolean;
  /** Tools the wrapper stands in for. */
  tools?: string[];
  /**
   * Link the tools to the native client (bin/termite-client, built with gcc
   * when missing or out of date) instead of the Deno wrapper.
   */
  nativeClient?: boolean;
  masterArgs?: string[];
  workerArgs?: string[];
  /** Flags for `deno run` of the master (`--cpu-prof`, `--v8-flags=...`), before the script. */
  masterDenoFlags?: string[];
  /** Flags for `deno run` of each worker, before the script. */
  workerDenoFlags?: string[];
  /** The worker's entry point; default this checkout's worker.ts. */
  workerScript?: string;
  /** Environment variables set for the workers (PATH, say). */
  workerEnv?: Record<string, string>;
  coordinatorArgs?: string[];
  /**
   * Put each worker's cache dir on a tmpfs of this many bytes, mounted in the
   * worker's own mount namespace (disk-full tests). Default: plain disk.
   */
  workerCacheBytes?: number;
  /** Namespace name prefix (unique per concurrent farm). */
  prefix?: string;
  /** First veth number (1..250). */
  firstHost?: number;
}

export interface FarmProcess {
  name: string;
  child: Deno.ChildProcess;
  log: string;
  done: Promise<Deno.CommandStatus>;
}

export interface FarmWorker extends FarmProcess {
  host: Host | null;
  address: string;
  /** Its Prometheus /metrics URL (in its host's network namespace when it has one). */
  metricsUrl: string;
}

const textDecoder = new TextDecoder();

/** Spawns a process, tees stderr to a log, resolves once `ready` matches a line. */
async function spawn(options: {
  name: string;
  cmd: string[];
  cwd?: string;
  env?: Record<string, string>;
  logDir: string;
  ready: RegExp;
  timeoutMs?: number;
  /** Append to the log (a restart) instead of truncating it. */
  append?: boolean;
}): Promise<FarmProcess & { match: RegExpMatchArray }> {
  const log = `${options.logDir}/${options.name}.log`;
  const file = await Deno.open(
    log,
    options.append
      ? { write: true, create: true, append: true }
      : { write: true, create: true, truncate: true },
  );
  const child = new Deno.Command(options.cmd[0], {
    args: options.cmd.slice(1),
    cwd: options.cwd,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let resolveMatch!: (m: RegExpMatchArray | null) => void;
  const matched = new Promise<RegExpMatchArray | null>((r) => resolveMatch = r);
  let buffered = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      await file.write(chunk);
      if (buffered !== null) {
        buffered += textDecoder.decode(chunk);
        const m = buffered.match(options.ready);
        if (m) resolveMatch(m);
        if (buffered.length > 1 << 20) buffered = buffered.slice(-4096);
      }
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const done = (async () => {
    const [status] = await Promise.all([child.status, pumps]);
    file.close();
    resolveMatch(null);
    return status;
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const match = await Promise.race([
    matched,
    new Promise<null>((r) => timer = setTimeout(() => r(null), options.timeoutMs ?? 60_000)),
  ]);
  clearTimeout(timer);
  if (!match) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await done;
    const tail = (await Deno.readTextFile(log)).split("\n").slice(-15).join("\n");
    throw new Error(`${options.name} did not start (log ${log}):\n${tail}`);
  }
  return { name: options.name, child, log, done, match };
}

async function killProcess(p: FarmProcess | undefined, signal: Deno.Signal): Promise<void> {
  if (!p) return;
  try {
    p.child.kill(signal);
  } catch {
    // Already gone.
  }
  await p.done;
}

export class Farm implements AsyncDisposable {
  readonly dir: string;
  readonly tree: string;
  readonly binDir: string;
  readonly secretPath: string;
  coordinator!: FarmProcess;
  coordinatorPort = 0;
  master!: FarmProcess;
  statusPort = 0;
  workers: FarmWorker[] = [];
  #options: FarmOptions;
  #hosts: { name: string; n: number }[] = [];
  #otherMasters: FarmProcess[] = [];

  private constructor(options: FarmOptions) {
    this.#options = options;
    this.dir = options.dir;
    this.tree = options.tree;
    this.binDir = `${options.dir}/bin`;
    this.secretPath = `${options.dir}/secret.txt`;
  }

  /** Environment for a build through the farm: the wrappers first in PATH. */
  get env(): Record<string, string> {
    return {
      ...Deno.env.toObject(),
      PATH: `${this.binDir}:${Deno.env.get("PATH")}`,
    };
  }

  static async start(options: FarmOptions): Promise<Farm> {
    const farm = new Farm(options);
    try {
      await farm.#start();
    } catch (err) {
      await farm.stop();
      throw err;
    }
    return farm;
  }

  async #start(): Promise<void> {
    const o = this.#options;
    const logDir = `${this.dir}/logs`;
    await Deno.mkdir(logDir, { recursive: true });
    await Deno.mkdir(this.binDir, { recursive: true });
    const secret = crypto.getRandomValues(new Uint8Array(32));
    await Deno.writeFile(this.secretPath, secret, { mode: 0o600 });
    await Deno.chmod(this.secretPath, 0o600);
    const wrapper = o.nativeClient ? await buildClient() : `${ROOT}/bin/termite-wrap`;
    for (
      const tool of o.tools ??
        ["gcc", "cc", "g++", "c++", "ar", "ranlib", "termite-sh", "termite", "termite-make"]
    ) {
      await Deno.remove(`${this.binDir}/${tool}`).catch(() => {});
      await Deno.symlink(wrapper, `${this.binDir}/${tool}`);
    }
    await this.startCoordinator();
    const n = o.workers ?? 2;
    const prefix = o.prefix ?? `termite-farm-${Deno.pid}`;
    const first = o.firstHost ?? await freeHostNumbers(n);
    const useNetns = o.netns !== false;
    this.workers = [];
    await Promise.all(Array.from({ length: n }, async (_, i) => {
      let host: Host | null = null;
      if (useNetns) {
        const name = `${prefix}-w${i}`;
        this.#hosts.push({ name, n: first + i });
        host = await createHost(name, first + i);
      }
      // Each as it starts, so that stop() finds it if another one fails.
      this.workers[i] = await this.#spawnWorker(i, host, false);
    }));
    await this.startMaster();
    await this.waitForWorkers(n);
  }

  get #logDir(): string {
    return `${this.dir}/logs`;
  }

  /** Starts the coordinator (again, on the same port once it has one). */
  async startCoordinator(): Promise<void> {
    const restart = this.coordinatorPort !== 0;
    const coordinator = await spawn({
      name: "coordinator",
      cmd: [
        Deno.execPath(),
        "run",
        "-A",
        `${ROOT}/coordinator.ts`,
        "--secret",
        this.secretPath,
        "--port",
        String(this.coordinatorPort),
        "--http-port",
        "none",
        "--worker-timeout",
        "10s",
        ...(this.#options.coordinatorArgs ?? []),
      ],
      logDir: this.#logDir,
      ready: /listening on port (\d+)/,
      append: restart,
    });
    this.coordinator = coordinator;
    this.coordinatorPort = Number(coordinator.match[1]);
  }

  async #spawnWorker(i: number, host: Host | null, restart: boolean): Promise<FarmWorker> {
    const o = this.#options;
    const deno = Deno.execPath();
    const useNetns = host !== null;
    const coordinatorAddress = `${host?.hostAddress ?? "127.0.0.1"}:${this.coordinatorPort}`;
    const address = host?.address ?? "127.0.0.1";
    const port = useNetns ? 1232 : 0;
    const cacheDir = this.workerCacheDir(i);
    await Deno.mkdir(cacheDir, { recursive: true, mode: 0o700 });
    const workerCmd = [
      deno,
      "run",
      "-A",
      ...(o.workerDenoFlags ?? []),
      o.workerScript ?? `${ROOT}/worker.ts`,
      "--secret",
      this.secretPath,
      "--coordinator",
      coordinatorAddress,
      "--jobs",
      String(o.slotsPerWorker ?? 2),
      "--host",
      useNetns ? "0.0.0.0" : "127.0.0.1",
      "--port",
      String(port),
      ...(useNetns ? ["--advertise", `${address}:${port}`] : []),
      "--cache-dir",
      cacheDir,
      "--metrics-port",
      "0",
      ...(o.workerArgs ?? []),
    ];
    // The worker keeps its mounts in a mount namespace of its own; starting it
    // under `unshare` here (which execs, as do `sh -c exec` and `env`) keeps
    // the pid ours to signal.
    const env = Object.entries(o.workerEnv ?? {}).map(([k, v]) => `${k}=${v}`);
    const inner = o.workerCacheBytes === undefined
      ? ["env", "TERMITE_WORKER_NS=1", ...env, ...workerCmd]
      : [
        "sh",
        "-c",
        `mount -t tmpfs -o size=${o.workerCacheBytes},mode=0700 termite-cache "$0" && ` +
        'exec env TERMITE_WORKER_NS=1 "$@"',
        cacheDir,
        ...env,
        ...workerCmd,
      ];
    const proc = await spawn({
      name: `worker-${i}`,
      // Into the host's network namespace with nsenter, not `ip netns exec`:
      // that remounts /sys, which hides /sys/fs/cgroup (the jobs' pids cgroups).
      cmd: [
        ...(host ? ["nsenter", `--net=/run/netns/${host.name}`, "--"] : []),
        "unshare",
        "--mount",
        "--propagation",
        "private",
        ...inner,
      ],
      logDir: this.#logDir,
      ready: /metrics on (\S+), listening as (\S+)/,
      append: restart,
    });
    return { ...proc, host, address: proc.match[2], metricsUrl: proc.match[1] };
  }

  /** Worker `i`'s cache dir (store, mirrors, jobs). */
  workerCacheDir(i: number): string {
    return `${this.dir}/worker-${i}`;
  }

  /** Starts worker `i` again (after `killWorker`), same host and cache dir. */
  async startWorker(i: number): Promise<void> {
    const old = this.workers[i];
    if (!old) throw new Error(`No worker ${i}`);
    this.workers[i] = await this.#spawnWorker(i, old.host, true);
  }

  /** Starts the master (again, with the same cache dir; a new status port). */
  async startMaster(): Promise<void> {
    const restart = this.statusPort !== 0;
    const { process, statusPort } = await this.#spawnMaster("master", this.tree, restart);
    this.master = process;
    this.statusPort = statusPort;
  }

  /**
   * Starts another master on the same farm, in another build tree (its cache
   * dir and log named `name`); stopped with the farm.
   */
  async startOtherMaster(
    name: string,
    tree: string,
  ): Promise<{ process: FarmProcess; statusPort: number }> {
    const started = await this.#spawnMaster(name, tree, false);
    this.#otherMasters.push(started.process);
    return started;
  }

  async #spawnMaster(
    name: string,
    tree: string,
    append: boolean,
  ): Promise<{ process: FarmProcess; statusPort: number }> {
    const o = this.#options;
    const master = await spawn({
      name,
      cmd: [
        Deno.execPath(),
        "run",
        "-A",
        ...(o.masterDenoFlags ?? []),
        `${ROOT}/master.ts`,
        "--secret",
        this.secretPath,
        "--coordinator",
        `127.0.0.1:${this.coordinatorPort}`,
        "--jobs",
        String(o.slotsPerWorker ?? 2),
        "--cache-dir",
        `${this.dir}/${name}-cache`,
        "--status-port",
        "0",
        ...(o.masterArgs ?? []),
      ],
      cwd: tree,
      logDir: this.#logDir,
      ready: /status on http:\/\/127\.0\.0\.1:(\d+)\//,
      append,
    });
    return { process: master, statusPort: Number(master.match[1]) };
  }

  /** The master's status (its status page as JSON). */
  async status(): Promise<MasterStatus> {
    const res = await fetch(`http://127.0.0.1:${this.statusPort}/status.json`);
    return await res.json();
  }

  async waitForWorkers(n: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await this.status();
      if (status.workers.length >= n) return;
      if (Date.now() > deadline) {
        throw new Error(`Only ${status.workers.length} of ${n} workers reached the master`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Kills worker `i` (default SIGKILL) and waits until it is gone. */
  async killWorker(i: number, signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await killProcess(this.workers[i], signal);
  }

  /** Kills worker `i` and starts it again with the same cache dir. */
  async restartWorker(i: number, signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.killWorker(i, signal);
    await this.startWorker(i);
  }

  /** Kills the coordinator (default SIGKILL) and waits until it is gone. */
  async killCoordinator(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await killProcess(this.coordinator, signal);
  }

  /** Kills the coordinator and starts a fresh one on the same port. */
  async restartCoordinator(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.killCoordinator(signal);
    await this.startCoordinator();
  }

  /** Kills the master (default SIGKILL) and waits until it is gone. */
  async killMaster(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await killProcess(this.master, signal);
  }

  /** Kills the master and starts it again in the same tree with the same cache dir. */
  async restartMaster(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.killMaster(signal);
    await this.startMaster();
  }

  /**
   * Process ids (for /proc/<pid>/status, fd and mountinfo): each is the role's
   * deno process itself (the worker's `ip netns exec`, `unshare`, `env` exec).
   */
  pids(): { coordinator: number; master: number; workers: number[] } {
    return {
      coordinator: this.coordinator.child.pid,
      master: this.master.child.pid,
      workers: this.workers.map((w) => w.child.pid),
    };
  }

  async stop(): Promise<void> {
    const stopOne = async (p: FarmProcess | undefined) => {
      if (!p) return;
      try {
        p.child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ended = await Promise.race([
        p.done.then(() => true),
        new Promise<boolean>((r) => timer = setTimeout(() => r(false), 10_000)),
      ]);
      clearTimeout(timer);
      if (!ended) {
        try {
          p.child.kill("SIGKILL");
        } catch {
          // Already gone.
        }
        await p.done;
      }
    };
    await Promise.all([this.master, ...this.#otherMasters].map((m) => stopOne(m)));
    this.#otherMasters = [];
    await Promise.all(this.workers.map((w) => stopOne(w)));
    await stopOne(this.coordinator);
    for (const h of this.#hosts) await removeHost(h.name, h.n);
    this.#hosts = [];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** Runs a command with the farm's environment; output captured. */
export async function runIn(
  cwd: string,
  cmd: string[],
  env?: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd,
    env,
    clearEnv: env !== undefined,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: textDecoder.decode(out.stdout),
    stderr: textDecoder.decode(out.stderr),
  };
}

/** Fetches a Debian source package (upstream tarball) once; returns its directory. */
export async function fetchSource(pkg: string): Promise<string> {
  const out = await runIn(ROOT, ["bash", `${ROOT}/scripts/fetch_source.sh`, pkg]);
  if (out.code !== 0) throw new Error(`Cannot fetch source of ${pkg}: ${out.stderr.trim()}`);
  return out.stdout.trim();
}

export { ROOT };
