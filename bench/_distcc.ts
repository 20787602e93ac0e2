/**
 * distcc as a contender: the Debian package (installed with apt-get when
 * missing) and `distccd` daemons, each in a network namespace of its own made
 * with farm/netns.ts, so that compiles cross a veth link as they would a wire.
 */
import { createHost, type Host, removeHost } from "../farm/netns.ts";
import { killTree, withDeadline } from "./_proc.ts";

const textDecoder = new TextDecoder();
const DISTCC_PORT = 3632;
/** Where Debian keeps the masquerade links (gcc, cc, g++ → distcc). */
export const MASQUERADE_DIR = "/usr/lib/distcc";

export class DistccError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DistccError";
  }
}

async function which(name: string): Promise<string | null> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `command -v ${name}`],
    stdout: "piped",
    stderr: "null",
  }).output();
  const path = textDecoder.decode(out.stdout).trim();
  return out.success && path !== "" ? path : null;
}

async function aptGet(args: string[]): Promise<{ ok: boolean; stderr: string }> {
  const out = await new Deno.Command("timeout", {
    args: ["600", "apt-get", ...args],
    env: { DEBIAN_FRONTEND: "noninteractive" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output().catch((err) => ({ success: false, stderr: new TextEncoder().encode(String(err)) }));
  return { ok: out.success, stderr: textDecoder.decode(out.stderr).trim() };
}

/**
 * Makes sure `commands` are on PATH, installing Debian package `pkg` with
 * apt-get if not. Returns `null` when ready, else why not (the contender is
 * skipped).
 */
export async function ensurePackage(pkg: string, commands: string[]): Promise<string | null> {
  if (!/^[a-z0-9][a-z0-9+.-]*$/.test(pkg)) throw new Error(`Bad package name: ${pkg}`);
  const present = async () => (await Promise.all(commands.map(which))).every((p) => p !== null);
  if (await present()) return null;
  if (!await which("apt-get")) return `${pkg} is not installed and there is no apt-get`;
  let install = await aptGet(["install", "-y", "-qq", "--no-install-recommends", pkg]);
  if (!install.ok) {
    await aptGet(["update", "-qq"]);
    install = await aptGet(["install", "-y", "-qq", "--no-install-recommends", pkg]);
  }
  if (!install.ok || !await present()) {
    return `apt-get install ${pkg} failed: ${install.stderr.split("\n").slice(-3).join(" ")}`;
  }
  return null;
}

/**
 * Makes sure `distcc` and `distccd` are there, installing the Debian package
 * if not. Returns `null` when ready, else why not (the contender is skipped).
 */
export function ensureDistcc(): Promise<string | null> {
  return ensurePackage("distcc", ["distcc", "distccd"]);
}

interface Daemon {
  host: Host;
  child: Deno.ChildProcess;
  status: Promise<Deno.CommandStatus>;
}

async function canConnect(address: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: address, port: DISTCC_PORT });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

async function userExists(name: string): Promise<boolean> {
  const passwd = await Deno.readTextFile("/etc/passwd").catch(() => "");
  return passwd.split("\n").some((line) => line.startsWith(`${name}:`));
}

/** `count` distccd daemons, each alone in a network namespace. */
export class DistccCluster implements AsyncDisposable {
  readonly dir: string;
  #daemons: Daemon[] = [];
  #hosts: { name: string; n: number }[] = [];
  #jobsPerHost: number;

  private constructor(dir: string, jobsPerHost: number) {
    this.dir = dir;
    this.#jobsPerHost = jobsPerHost;
  }

  static async start(options: {
    /** Scratch directory (logs, distcc's client state). */
    dir: string;
    count: number;
    /** First veth number (farm/netns.ts): hosts get firstHost, firstHost + 1, ... */
    firstHost: number;
    jobsPerHost: number;
    prefix: string;
  }): Promise<DistccCluster> {
    const cluster = new DistccCluster(options.dir, options.jobsPerHost);
    await Deno.mkdir(`${options.dir}/client`, { recursive: true });
    try {
      const user = await userExists("distccd") ? "distccd" : "nobody";
      for (let i = 0; i < options.count; i++) {
        const n = options.firstHost + i;
        const name = `${options.prefix}-d${i}`;
        cluster.#hosts.push({ name, n });
        const host = await createHost(name, n);
        // A scratch directory of its own: /tmp may be closed to the daemon's user
        // (a test left it 0755 once, and every compile failed).
        const tmp = `${options.dir}/tmp-${i}`;
        await Deno.mkdir(tmp, { recursive: true });
        await Deno.chmod(tmp, 0o1777);
        const log = await Deno.open(`${options.dir}/distccd-${i}.log`, {
          write: true,
          create: true,
          truncate: true,
        });
        const child = new Deno.Command(host.exec[0], {
          args: [
            ...host.exec.slice(1),
            "distccd",
            "--daemon",
            "--no-detach",
            "--user",
            user,
            "--allow",
            "10.213.0.0/16",
            "--listen",
            host.address,
            "--port",
            String(DISTCC_PORT),
            "--jobs",
            String(options.jobsPerHost),
            "--log-stderr",
            "--log-level=error",
          ],
          env: { TMPDIR: tmp },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const pump = async (s: ReadableStream<Uint8Array>) => {
          for await (const chunk of s) await log.write(chunk);
        };
        const status = (async () => {
          const [st] = await Promise.all([child.status, pump(child.stdout), pump(child.stderr)]);
          log.close();
          return st;
        })();
        cluster.#daemons.push({ host, child, status });
      }
      for (const d of cluster.#daemons) {
        const deadline = Date.now() + 15_000;
        while (!await canConnect(d.host.address)) {
          if (Date.now() > deadline) {
            throw new DistccError(`distccd did not start: ${d.host.address}`);
          }
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  /** DISTCC_HOSTS: every daemon, none local. */
  get hosts(): string {
    return this.#daemons.map((d) => `${d.host.address}/${this.#jobsPerHost}`).join(" ");
  }

  /**
   * Environment for a build through distcc: masquerade links first in PATH
   * (`gcc` and `cc` run distcc), no silent local fallback, no backoff.
   */
  env(masquerade: boolean): Record<string, string> {
    const base = Deno.env.toObject();
    return {
      ...base,
      ...(masquerade ? { PATH: `${MASQUERADE_DIR}:${base.PATH ?? "/usr/bin:/bin"}` } : {}),
      DISTCC_HOSTS: this.hosts,
      DISTCC_FALLBACK: "0",
      DISTCC_BACKOFF_PERIOD: "0",
      DISTCC_DIR: `${this.dir}/client`,
    };
  }

  async stop(): Promise<void> {
    for (const d of this.#daemons) {
      await killTree(d.child.pid, "SIGTERM");
      const ended = await withDeadline(d.status.then(() => true), 5_000, false);
      if (!ended) {
        await killTree(d.child.pid, "SIGKILL");
        await d.status;
      }
    }
    this.#daemons = [];
    for (const h of this.#hosts) await removeHost(h.name, h.n);
    this.#hosts = [];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
