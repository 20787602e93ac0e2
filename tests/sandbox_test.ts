import { concatBytes } from "../common/bytes.ts";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  collectResultSet,
  ensureLauncher,
  favorCgroupMigrations,
  isDynmodsMount,
  type JobOutcome,
  type JobSpec,
  NetnsPool,
  removeStaleCgroups,
  runJob,
  type RunJobOptions,
  SandboxError,
} from "../sandbox/mod.ts";
import { Pump } from "../sandbox/job_io.ts";

const LAUNCHER_CACHE = new URL("../.cache/sandbox-launcher", import.meta.url).pathname;
const PATH = "/usr/local/bin:/usr/bin:/bin";
const decoder = new TextDecoder();

/** A temp area: a writable root owned by nobody, job dirs beside it, a private pids cgroup root. */
class Fixture implements AsyncDisposable {
  readonly base: string;
  readonly writableRoot: string;
  readonly cgroupRoot: string;
  #jobs = 0;

  constructor(parent = "/tmp") {
    const id = crypto.randomUUID().slice(0, 8);
    this.base = `${parent}/termite-sandbox-test-${id}`;
    this.writableRoot = `${this.base}/w`;
    this.cgroupRoot = `/sys/fs/cgroup/pids/termite-test-${id}`;
  }

  async init(): Promise<this> {
    await Deno.mkdir(this.writableRoot, { recursive: true });
    await chownNobody(this.writableRoot);
    return this;
  }

  nextJobDir(): string {
    return `${this.base}/jobs/${this.#jobs++}`;
  }

  options(extra: Partial<RunJobOptions> = {}): RunJobOptions {
    return {
      lowerRoot: "/",
      writableRoot: this.writableRoot,
      jobDir: this.nextJobDir(),
      launcherCacheDir: LAUNCHER_CACHE,
      pidsCgroupRoot: this.cgroupRoot,
      ...extra,
    };
  }

  /** Runs a shell script in the writable root; collects output and the result set. */
  async sh(script: string, opts: Partial<JobSpec> & { run?: Partial<RunJobOptions> } = {}) {
    return await capture(
      {
        argv: ["/bin/sh", "-c", script],
        cwd: this.writableRoot,
        env: { PATH },
        timeoutMs: 30_000,
        ...opts,
      },
      this.options(opts.run),
    );
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Deno.remove(this.base, { recursive: true }).catch(() => {});
    await Deno.remove(this.cgroupRoot).catch(() => {});
  }
}

interface Captured {
  outcome: JobOutcome;
  stdout: Uint8Array;
  stderr: Uint8Array;
  out: string;
  err: string;
}

async function capture(spec: JobSpec, options: RunJobOptions): Promise<Captured> {
  const stdout: Uint8Array[] = [];
  const stderr: Uint8Array[] = [];
  const outcome = await runJob(spec, {
    ...options,
    onStdout: (b) => {
      stdout.push(b.slice());
    },
    onStderr: (b) => {
      stderr.push(b.slice());
    },
  });
  const o = concatBytes(stdout);
  const e = concatBytes(stderr);
  return { outcome, stdout: o, stderr: e, out: decoder.decode(o), err: decoder.decode(e) };
}

async function run(cmd: string, ...args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")}: ${decoder.decode(r.stderr)}`);
  return decoder.decode(r.stdout);
}

async function chownNobody(path: string): Promise<void> {
  await run("chown", "-R", "65534:65534", path);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/**
 * The processes matching `needle` that outlive their job: a killed job's
 * namespace is torn down by the kernel, so some may take a moment to go.
 * Under CI load that once took over 5 s (a `sleep 300` of the fork loop,
 * gone minutes later: maybe another process of that name, as when a
 * `sleep 300` in a shell on the same host failed a CI run of session 16; the
 * tests now tag their sleeps), so the wait is 20 s: a process that escaped the
 * job lives on (these sleep 300 s) and is still found.
 */
async function survivors(needle: string, waitMs = 20_000): Promise<string[]> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const found = await hostProcesses(needle);
    if (found.length === 0 || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Host processes whose command line contains `needle`. */
async function hostProcesses(needle: string): Promise<string[]> {
  const found: string[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmdline = (await Deno.readTextFile(`/proc/${e.name}/cmdline`)).replaceAll("\0", " ");
      if (cmdline.includes(needle) && !cmdline.includes("deno")) {
        found.push(`${e.name}: ${cmdline}`);
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return found;
}

async function assertCleanedUp(fixture: Fixture, jobDir: string): Promise<void> {
  assert.equal(await exists(jobDir), false, "job dir removed");
  const mounts = await Deno.readTextFile("/proc/self/mountinfo");
  assert.equal(mounts.includes(fixture.base), false, "no mount left in the host namespace");
  const cgroups: string[] = [];
  for await (const e of Deno.readDir(fixture.cgroupRoot)) if (e.isDirectory) cgroups.push(e.name);
  assert.deepEqual(cgroups, [], "job cgroups removed");
}

Deno.test("Pump: a pipe's reads cancelled (a drain that timed out) leave the next pipes' output whole", async () => {
  // The read buffers are kept for the next pipes; the one a cancelled read took
  // with it must not be.
  for (let round = 0; round < 3; round++) {
    const held = new Deno.Command("sleep", { args: ["30"], stdout: "piped" }).spawn();
    const cancelled = new Pump(held.stdout, "stdout", 1 << 20, () => {}, () => {});
    await new Promise((resolve) => setTimeout(resolve, 50));
    await cancelled.cancel();
    await cancelled.done;
    held.kill("SIGKILL");
    await held.status;
  }
  const cases = [["printf hi", "hi"], [
    "yes abc | head -c 200000",
    "abc\n".repeat(50_000),
  ]];
  for (const [script, text] of cases) {
    const got: Uint8Array[] = [];
    const child = new Deno.Command("sh", { args: ["-c", script], stdout: "piped" }).spawn();
    const pump = new Pump(child.stdout, "stdout", 1 << 20, (b) => {
      got.push(b);
    }, () => {});
    await child.status;
    await pump.done;
    assert.equal(decoder.decode(concatBytes(got)), text);
  }
});

Deno.test("runJob() runs as nobody with only the writable root writable", async () => {
  await using fx = await new Fixture().init();
  const r = await fx.sh(
    "id -u; id -G; touch /etc/termite-sandbox-test 2>&1; touch /usr/termite 2>&1;" +
      "echo ok > in_root && cat in_root; echo tmp > /tmp/t && cat /tmp/t; hostname >/dev/null",
  );
  assert.equal(r.outcome.exitCode, 0, r.err);
  const lines = r.out.trim().split("\n");
  assert.equal(lines[0], "65534");
  assert.equal(lines[1], "65534");
  assert.match(lines[2], /Read-only file system/);
  assert.match(lines[3], /Read-only file system/);
  assert.deepEqual(lines.slice(4), ["ok", "tmp"]);
  assert.equal(await exists("/etc/termite-sandbox-test"), false);
  assert.equal(await exists(`${fx.writableRoot}/in_root`), false, "host tree untouched");
  assert.ok(r.outcome.launcherMs! > 0);
});

Deno.test("runJob() keeps submounts of the lower root read-only", async () => {
  await using fx = await new Fixture("/var/tmp").init();
  const sub = `${fx.base}/sub`;
  await Deno.mkdir(sub);
  await run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "termite-test", sub);
  try {
    const r = await fx.sh(`touch ${sub}/x 2>&1; ls -d ${sub}`);
    assert.match(r.out, /Read-only file system/);
    assert.match(r.out, new RegExp(`${sub}\n$`));
    assert.equal(await exists(`${sub}/x`), false);
  } finally {
    await run("umount", sub);
  }
});

Deno.test("runJob() hides the host: private /tmp, own /proc, no escape through /proc/1/root or ..", async () => {
  await using fx = await new Fixture().init();
  const marker = `/tmp/termite-marker-${crypto.randomUUID()}`;
  await Deno.writeTextFile(marker, "host only");
  try {
    const hostInit = await Deno.readTextFile("/proc/1/cmdline");
    for (
      const probe of [`cat ${marker}`, `cat /proc/1/root${marker}`, `cd /../../..; cat .${marker}`]
    ) {
      const r = await fx.sh(probe);
      assert.notEqual(r.outcome.exitCode, 0, probe);
      assert.equal(r.out, "", probe);
      assert.match(r.err, /No such file or directory|Permission denied/, probe);
    }
    const root = await fx.sh("readlink -v /proc/1/root");
    assert.match(root.err, /Permission denied/);
    const init = await fx.sh("cat /proc/1/cmdline");
    assert.match(init.out, /termite-launcher/);
    assert.notEqual(init.out, hostInit);
    // The init, the shell and ls: not the host's processes.
    const pids = await fx.sh("ls /proc | grep '^[0-9]'");
    assert.ok(pids.out.trim().split("\n").length <= 4, `pids visible: ${pids.out}`);
  } finally {
    await Deno.remove(marker);
  }
});

/** Compiles tests/testdata/net_probe.c into `dir` (as `net_probe`). */
async function buildNetProbe(dir: string): Promise<string> {
  const source = new URL("./testdata/net_probe.c", import.meta.url).pathname;
  await run("gcc", "-O1", "-o", `${dir}/net_probe`, source);
  return `${dir}/net_probe`;
}

/** A non-loopback IPv4 address of this host, if it has one. */
function hostAddress(): string | undefined {
  return Deno.networkInterfaces().find((i) => i.family === "IPv4" && !i.address.startsWith("127."))
    ?.address;
}

/** A TCP port free on the host now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

Deno.test("runJob() gives a job no network: no host port reachable, its listener unseen, no host socket in /proc/net", async () => {
  await using fx = await new Fixture().init();
  const probe = await buildNetProbe(fx.writableRoot);
  // The host listens on every address: what a worker's RPC port or a coordinator does.
  using host = Deno.listen({ hostname: "0.0.0.0", port: 0 });
  const hostPort = (host.addr as Deno.NetAddr).port;
  const address = hostAddress();
  const jobPort = freePort();
  const steps = ["connect", "127.0.0.1", String(hostPort)];
  if (address) steps.push("connect", address, String(hostPort));
  steps.push("listen", String(jobPort), "1500", "sockets");

  let out = "";
  let listening!: () => void;
  const listened = new Promise<void>((resolve) => listening = resolve);
  const job = runJob({ argv: [probe, ...steps], cwd: "/", env: { PATH }, timeoutMs: 30_000 }, {
    ...fx.options(),
    onStdout: (b) => {
      out += decoder.decode(b);
      if (out.includes(`listen ${jobPort}`)) listening();
    },
  });
  await Promise.race([listened, job]);
  // The job's listener is not reachable from the host.
  await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: jobPort }), /refused/i);
  const outcome = await job;
  assert.equal(outcome.exitCode, 0, out);
  assert.match(out, new RegExp(`^connect 127\\.0\\.0\\.1:${hostPort} Connection refused$`, "m"));
  if (address) {
    assert.match(out, new RegExp(`^connect ${address}:${hostPort} Network is unreachable$`, "m"));
  }
  assert.match(
    out,
    new RegExp(`^listen ${jobPort} ok$`, "m"),
    "it may listen, on its own loopback",
  );
  const sockets = out.match(/^sockets(.*)$/m)![1].trim().split(" ").filter(Boolean).map(Number);
  assert.ok(!sockets.includes(hostPort), `host sockets visible: ${out}`);
  assert.deepEqual(sockets, [jobPort], "only its own listener");

  // With the host's network (SandboxOptions.network "host"), the same probe reaches the port.
  const shared = await capture(
    {
      argv: [probe, "connect", "127.0.0.1", String(hostPort)],
      cwd: "/",
      env: { PATH },
      timeoutMs: 30_000,
    },
    fx.options({ network: "host" }),
  );
  assert.equal(shared.out, `connect 127.0.0.1:${hostPort} ok\n`);
});

/** A job that prints its network namespace, then uses port `port` of its loopback. */
const NETNS_PROBE = `
import os, socket, sys
print("ns", os.readlink("/proc/self/ns/net"), flush=True)
port = int(sys.argv[2])
if sys.argv[1] == "first":
    s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen()
    c = socket.create_connection(("127.0.0.1", port)); a, _ = s.accept()
    # The listening side closes first: a TIME_WAIT socket on the port, where one is kept.
    a.close(); c.recv(1); c.close(); s.close()
    left = socket.socket(); left.bind(("127.0.0.1", port + 1)); left.listen()
    try:  # The same over IPv6, where the loopback has ::1.
        s6 = socket.socket(socket.AF_INET6); s6.bind(("::1", port)); s6.listen()
        c6 = socket.create_connection(("::1", port)); a6, _ = s6.accept()
        a6.close(); c6.recv(1); c6.close(); s6.close()
        print("v6 ok")
    except OSError as e:
        print("v6 none", e)
    print("first ok")  # exits with its listener open
else:
    # Without SO_REUSEADDR: refused while the port has a TIME_WAIT socket.
    for p in (port, port + 1):
        socket.socket().bind(("127.0.0.1", p)); print("bound", p)
    print("tcp", len(open("/proc/net/tcp").read().splitlines()) - 1)
    if sys.argv[3:] == ["v6"]:
        socket.socket(socket.AF_INET6).bind(("::1", port)); print("bound6", port)
        print("tcp6", len(open("/proc/net/tcp6").read().splitlines()) - 1)
`;

/** The nsfs bindings under `dir` in this mount namespace. */
async function bindingsUnder(dir: string): Promise<string[]> {
  const mounts = await Deno.readTextFile("/proc/self/mountinfo");
  return mounts.split("\n").filter((line) => line.split(" ")[4]?.startsWith(`${dir}/`));
}

Deno.test("runJob() with a NetnsPool reuses a network namespace that keeps nothing of the job before; jobs at once get their own", async () => {
  await using fx = await new Fixture().init();
  const launcher = await ensureLauncher(LAUNCHER_CACHE);
  const dir = `${fx.base}/netns`;
  const pool = await NetnsPool.open(dir, launcher);
  try {
    // A plain file where a namespace should be (a half-made one): made there anyway.
    const first0 = pool.take()!;
    await Deno.writeTextFile(first0, "");
    await pool.give(first0, true);
    const probe = `${fx.writableRoot}/netns_probe.py`;
    await Deno.writeTextFile(probe, NETNS_PROBE);
    const hostNs = await Deno.readLink("/proc/self/ns/net");
    const job = (...args: string[]) =>
      capture(
        { argv: ["python3", probe, ...args], cwd: "/", env: { PATH }, timeoutMs: 30_000 },
        fx.options({ netnsPool: pool }),
      );
    const first = await job("first", "8123");
    assert.equal(first.outcome.exitCode, 0, first.err);
    assert.match(first.out, /first ok/);
    const v6 = /^v6 ok$/m.test(first.out);
    const second = await job("second", "8123", ...(v6 ? ["v6"] : []));
    assert.equal(second.outcome.exitCode, 0, second.err);
    if (v6) assert.match(second.out, /^bound6 8123\ntcp6 0$/m, second.out);
    const nsOf = (out: string) => out.match(/^ns (net:\[\d+\])$/m)![1];
    assert.equal(nsOf(second.out), nsOf(first.out), "the namespace is reused");
    assert.notEqual(nsOf(first.out), hostNs, "not the worker's");
    // Its port free (no TIME_WAIT), the listener of the job before gone, no socket left.
    assert.match(second.out, /^bound 8123\nbound 8124\ntcp 0$/m, second.out);
    assert.equal(pool.size, 1);
    assert.equal((await bindingsUnder(dir)).length, 1);

    // Two jobs at once: two namespaces.
    const both = await Promise.all([job("second", "9000"), job("second", "9000")]);
    for (const r of both) assert.equal(r.outcome.exitCode, 0, r.err);
    assert.notEqual(nsOf(both[0].out), nsOf(both[1].out));
    assert.equal(pool.size, 2);
    assert.equal(pool.free, 2);

    // A worker that crashed left them: a new pool on the same dir drops them.
    const again = await NetnsPool.open(dir, launcher);
    assert.deepEqual(await bindingsUnder(dir), []);
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    const third = await capture(
      { argv: ["python3", probe, "second", "8123"], cwd: "/", env: { PATH }, timeoutMs: 30_000 },
      fx.options({ netnsPool: again }),
    );
    assert.equal(third.outcome.exitCode, 0, third.err);
    assert.notEqual(nsOf(third.out), nsOf(first.out), "a new one");
    await again.close();
    assert.deepEqual(await bindingsUnder(dir), [], "close() drops them");
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    assert.equal(again.take(), undefined, "none after close");
  } finally {
    await pool.close();
  }
  assert.deepEqual(await bindingsUnder(dir), []);
});

Deno.test("NetnsPool retires what a failed or killed job gave back, and past its cap a job gets a namespace of its own", async () => {
  await using fx = await new Fixture().init();
  const launcher = await ensureLauncher(LAUNCHER_CACHE);
  const dir = `${fx.base}/netns`;
  // What a crashed worker left and cannot be dropped (a directory): logged, never used.
  await Deno.mkdir(`${dir}/leftover`, { recursive: true });
  const logged: string[] = [];
  const pool = await NetnsPool.open(dir, launcher, { max: 2, log: (m) => logged.push(m) });
  assert.match(logged.join("\n"), /network namespaces left: .*leftover/);
  try {
    const first = pool.take()!;
    await pool.give(first, false); // its job failed: never handed out again
    const second = pool.take()!;
    assert.notEqual(second, first);
    assert.equal(pool.take(), undefined, "the cap counts the retired one");
    await pool.give(second, true);
    assert.equal(pool.take(), second);
    await pool.give(second, true);
    // A job while the pool is at its cap and the one namespace held: its own, made for it.
    const held = pool.take()!;
    const job = await capture(
      { argv: ["readlink", "/proc/self/ns/net"], cwd: "/", env: { PATH }, timeoutMs: 10_000 },
      fx.options({ netnsPool: pool }),
    );
    assert.equal(job.outcome.exitCode, 0, job.err);
    assert.match(job.out, /^net:\[\d+\]\n$/);
    assert.notEqual(job.out.trim(), await Deno.readLink("/proc/self/ns/net"));
    assert.equal(pool.size, 2);
    await pool.give(held, true);
  } finally {
    await pool.close();
  }
  assert.deepEqual(await bindingsUnder(dir), []);
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["leftover"]);
});

/** A SandboxError whose message matches `pattern` (for assert.rejects). */
function refusedWith(pattern: RegExp): (err: unknown) => boolean {
  return (err) => err instanceof SandboxError && pattern.test(err.message);
}

Deno.test("hostile: a pool path holding the worker's own network namespace, a FIFO or a directory is refused, never joined or waited on", async () => {
  await using fx = await new Fixture().init();
  const launcher = await ensureLauncher(LAUNCHER_CACHE);
  const dir = `${fx.base}/netns`;
  const pool = await NetnsPool.open(dir, launcher);
  const hostNs = await Deno.readLink("/proc/self/ns/net");
  const readlinkJob = () =>
    capture(
      { argv: ["readlink", "/proc/self/ns/net"], cwd: "/", env: { PATH }, timeoutMs: 10_000 },
      fx.options({ netnsPool: pool }),
    );
  try {
    // The worker's own namespace bound where a job's should be.
    const planted = pool.take()!;
    await Deno.writeTextFile(planted, "");
    await run("mount", "--bind", "/proc/self/ns/net", planted);
    await pool.give(planted, true);
    await assert.rejects(readlinkJob(), refusedWith(/not one made for jobs/));
    // Retired: the next job gets a namespace of its own making.
    const next = await readlinkJob();
    assert.equal(next.outcome.exitCode, 0, next.err);
    assert.notEqual(next.out.trim(), hostNs);

    // A FIFO (an open would wait for a writer for good) and a directory, at
    // new paths (the good namespace held meanwhile).
    const held = pool.take()!;
    for (const make of [(p: string) => run("mkfifo", p), (p: string) => Deno.mkdir(p)]) {
      const path = pool.take()!;
      await make(path);
      await pool.give(path, true);
      await assert.rejects(readlinkJob(), refusedWith(/Cannot create .*netns/));
    }
    await pool.give(held, true);
  } finally {
    await pool.close().catch(() => {});
  }
  const dirLeft = [...Deno.readDirSync(dir)].filter((e) => e.isDirectory);
  for (const d of dirLeft) await Deno.remove(`${dir}/${d.name}`);
  assert.deepEqual(await bindingsUnder(dir), [], "the planted binding dropped too");
  assert.equal(await Deno.readLink("/proc/self/ns/net"), hostNs);
});

Deno.test("runJob() passes no inherited descriptor (such as /dev/fuse) to the job", async () => {
  await using fx = await new Fixture().init();
  // Run the launcher from a shell holding /dev/fuse and a file open without close-on-exec.
  const launcher = await ensureLauncher(LAUNCHER_CACHE);
  const jobDir = fx.nextJobDir();
  await Deno.mkdir(jobDir, { recursive: true });
  const script = `exec 7<>/dev/fuse 8</etc/passwd; ls -l /proc/self/fd >&2; exec "$@"`;
  const r = await new Deno.Command("/bin/sh", {
    args: [
      "-c",
      script,
      "sh",
      launcher,
      "--job-dir",
      jobDir,
      "--lower-root",
      "/",
      "--writable-root",
      fx.writableRoot,
      "--cwd",
      "/",
      "--",
      "/bin/ls",
      "/proc/self/fd",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const hostFds = decoder.decode(r.stderr);
  assert.match(hostFds, /\/dev\/fuse/, "the fd was open in the launcher's parent");
  assert.equal(decoder.decode(r.stdout), "0\n1\n2\n3\n", "only stdio and ls's own directory fd");
  assert.equal((await Deno.readTextFile(`${jobDir}/status`)).split("\n")[0], "exit 0");
});

Deno.test("runJob() reports exit codes exactly: exit 3, killed by SIGKILL, SIGSEGV, command not found", async () => {
  await using fx = await new Fixture().init();
  assert.deepEqual((await fx.sh("exit 3")).outcome.exitCode, 3);
  assert.deepEqual((await fx.sh("exit 0")).outcome.exitCode, 0);
  const killed = await fx.sh("kill -9 $$");
  assert.equal(killed.outcome.exitCode, 137);
  assert.equal(killed.outcome.killedBy, undefined);
  assert.equal(killed.outcome.reason, "Killed by SIGKILL");
  assert.equal((await fx.sh("kill -SEGV $$")).outcome.exitCode, 139);
  const missing = await capture(
    { argv: ["no-such-command-termite"], cwd: "/", env: { PATH }, timeoutMs: 10_000 },
    fx.options(),
  );
  assert.equal(missing.outcome.exitCode, 127);
  assert.match(missing.outcome.reason!, /no-such-command-termite: No such file or directory/);
  assert.match(missing.err, /no-such-command-termite: command not found/);
  const notExecutable = await capture(
    { argv: ["/etc/passwd"], cwd: "/", env: { PATH }, timeoutMs: 10_000 },
    fx.options(),
  );
  assert.equal(notExecutable.outcome.exitCode, 126);
});

Deno.test("runJob() finds a command on PATH as execvp does: a script with no #! runs with /bin/sh, a match it may not execute is passed over", async () => {
  await using fx = await new Fixture().init();
  const w = fx.writableRoot;
  await Deno.mkdir(`${w}/a`);
  await Deno.mkdir(`${w}/b`);
  // First on PATH but not executable; the second one a script with no "#!".
  await Deno.writeTextFile(`${w}/a/tool`, "echo from a\n", { mode: 0o644 });
  await Deno.writeTextFile(`${w}/b/tool`, 'echo "from b $1 $0"\n', { mode: 0o755 });
  await Deno.writeTextFile(`${w}/a/locked`, "echo locked\n", { mode: 0o644 });
  await Deno.chmod(`${w}/a/tool`, 0o644);
  await Deno.chmod(`${w}/b/tool`, 0o755);
  await Deno.chmod(`${w}/a/locked`, 0o644);
  const env = { PATH: `${w}/a:${w}/b:${PATH}` };
  const tool = await capture(
    { argv: ["tool", "x"], cwd: "/", env, timeoutMs: 10_000 },
    fx.options(),
  );
  assert.equal(tool.outcome.exitCode, 0, tool.err);
  assert.equal(tool.out, `from b x ${w}/b/tool\n`);
  const byPath = await capture(
    { argv: [`${w}/b/tool`, "y"], cwd: "/", env, timeoutMs: 10_000 },
    fx.options(),
  );
  assert.equal(byPath.out, `from b y ${w}/b/tool\n`);
  // Found only where it may not be executed: 126, Permission denied.
  const locked = await capture(
    { argv: ["locked"], cwd: "/", env, timeoutMs: 10_000 },
    fx.options(),
  );
  assert.equal(locked.outcome.exitCode, 126);
  assert.match(locked.err, /locked: Permission denied/);
  // No PATH at all: /bin:/usr/bin.
  const noPath = await capture(
    { argv: ["true"], cwd: "/", env: {}, timeoutMs: 10_000 },
    fx.options(),
  );
  assert.equal(noPath.outcome.exitCode, 0, noPath.err);
});

Deno.test("runJob() reports the CPU of the job's processes, the children it waited for included", async () => {
  await using fx = await new Fixture().init();
  // A child that spins, waited for; then the shell's own account of its CPU and its children's.
  const r = await fx.sh(
    "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done & wait; times",
  );
  assert.equal(r.outcome.exitCode, 0, r.err);
  const seconds = [...r.out.matchAll(/(\d+)m([\d.]+)s/g)]
    .map((m) => Number(m[1]) * 60 + Number(m[2]));
  assert.equal(seconds.length, 4, r.out);
  const ownMs = seconds.reduce((a, b) => a + b, 0) * 1000;
  assert.ok(ownMs >= 20, `the spinning child took CPU: ${r.out}`);
  const jobCpuMs = r.outcome.jobCpuMs!;
  // What the shell counted, and no more than a few ms beyond (its exit).
  assert.ok(jobCpuMs >= ownMs - 1, `job CPU ${jobCpuMs} ms against the shell's ${ownMs} ms`);
  assert.ok(jobCpuMs <= ownMs + 50, `job CPU ${jobCpuMs} ms against the shell's ${ownMs} ms`);
});

Deno.test("runJob() passes argv, env and cwd exactly", async () => {
  await using fx = await new Fixture().init();
  await Deno.mkdir(`${fx.writableRoot}/sub dir`);
  await chownNobody(fx.writableRoot);
  const env = { PATH, A: "1", "WEIRD_VAR": "x=y z\nnext", EMPTY: "" };
  const r = await capture(
    {
      argv: ["/usr/bin/env", "--null"],
      cwd: `${fx.writableRoot}/sub dir`,
      env,
      timeoutMs: 10_000,
    },
    fx.options(),
  );
  const seen = Object.fromEntries(
    r.out.split("\0").filter((s) => s !== "").map((
      s,
    ) => [s.slice(0, s.indexOf("=")), s.slice(s.indexOf("=") + 1)]),
  );
  assert.deepEqual(seen, env);
  const pwd = await capture(
    {
      argv: ["/bin/sh", "-c", 'pwd; printf "%s|" "$@"', "sh", "a b", "", "c"],
      cwd: `${fx.writableRoot}/sub dir`,
      env,
      timeoutMs: 10_000,
      umask: 0o077,
    },
    fx.options(),
  );
  assert.equal(pwd.out, `${fx.writableRoot}/sub dir\na b||c|`);
  const umask = await fx.sh("umask", { umask: 0o027 });
  assert.equal(umask.out.trim(), "0027");
});

Deno.test("runJob() streams stdout and stderr bytes exactly, binary and large; forwards stdin", async () => {
  await using fx = await new Fixture().init();
  const blob = new Uint8Array(6 * 1024 * 1024);
  for (let i = 0; i < blob.length; i += 65536) crypto.getRandomValues(blob.subarray(i, i + 65536));
  await Deno.writeFile(`${fx.writableRoot}/blob`, blob);
  const r = await fx.sh(`printf 'a\\000\\001\\377'; cat blob; printf 'E\\000' >&2; cat blob >&2`);
  assert.equal(r.outcome.exitCode, 0);
  assert.deepEqual(r.stdout, concatBytes([new Uint8Array([0x61, 0, 1, 0xff]), blob]));
  assert.deepEqual(r.stderr, concatBytes([new Uint8Array([0x45, 0]), blob]));

  const echoed = await capture(
    { argv: ["/bin/cat"], cwd: "/", env: {}, stdin: blob, timeoutMs: 30_000 },
    fx.options(),
  );
  assert.equal(echoed.outcome.exitCode, 0);
  assert.deepEqual(echoed.stdout, blob);
  // No stdin given: /dev/null. A job that ignores its stdin still ends.
  assert.equal((await fx.sh("cat")).out, "");
  assert.equal((await fx.sh("exit 4", { stdin: blob })).outcome.exitCode, 4);
});

Deno.test("runJob() truncates output past outputBytesMax with a note", async () => {
  await using fx = await new Fixture().init();
  const r = await fx.sh("head -c 100000 /dev/zero; echo done >&2", {
    run: { outputBytesMax: 1000 },
  });
  assert.equal(r.outcome.exitCode, 0);
  assert.deepEqual(r.stdout.subarray(0, 1000), new Uint8Array(1000));
  assert.equal(r.out.slice(1000), "\n[termite: stdout truncated after 1000 bytes]\n");
  assert.equal(r.err, "done\n");
  assert.match(r.outcome.reason!, /stdout truncated after 1000 bytes/);
});

Deno.test("runJob() kills a job past its timeout with all its children; the next job works", async () => {
  await using fx = await new Fixture().init();
  const tag = `${1000 + Math.floor(Math.random() * 1000)}.${Math.floor(Math.random() * 1000)}`;
  const options = fx.options();
  const r = await capture(
    {
      argv: ["/bin/sh", "-c", `sleep ${tag} & sleep ${tag}1 & echo started; wait`],
      cwd: "/",
      env: { PATH },
      timeoutMs: 700,
    },
    options,
  );
  assert.equal(r.out, "started\n");
  assert.equal(r.outcome.killedBy, "timeout");
  assert.equal(r.outcome.exitCode, 137);
  assert.deepEqual(await hostProcesses(`sleep ${tag}`), []);
  await assertCleanedUp(fx, options.jobDir);
  const next = await fx.sh("echo next");
  assert.equal(next.out, "next\n");
  assert.equal(next.outcome.killedBy, undefined);
});

Deno.test("runJob() kills the job tree when its AbortSignal fires", async () => {
  await using fx = await new Fixture().init();
  const controller = new AbortController();
  const tag = `${2000 + Math.floor(Math.random() * 1000)}.5`;
  const options = fx.options();
  const outcome = await runJob(
    {
      argv: ["/bin/sh", "-c", `sleep ${tag} & echo started; wait`],
      cwd: "/",
      env: { PATH },
      timeoutMs: 60_000,
    },
    {
      ...options,
      onStdout: () => controller.abort(),
      signal: controller.signal,
      onUpper: () => Promise.reject(new Error("onUpper must not run for a cancelled job")),
    },
  );
  assert.equal(outcome.killedBy, "signal");
  assert.deepEqual(await hostProcesses(`sleep ${tag}`), []);
  await assertCleanedUp(fx, options.jobDir);
  const aborted = await runJob(
    { argv: ["/bin/true"], cwd: "/", env: {}, timeoutMs: 1000 },
    { ...fx.options(), signal: AbortSignal.abort() },
  );
  assert.equal(aborted.killedBy, "signal");
});

Deno.test("runJob() stops a fork loop at the process cap", async () => {
  await using fx = await new Fixture().init();
  const options = fx.options();
  // A tag of this run's own: no other process on the host (another test, a
  // shell's `sleep 300`) is taken for a survivor.
  const tag = `300.${Math.floor(Math.random() * 1e6)}`;
  const r = await capture(
    {
      argv: ["/bin/bash", "-c", `while :; do sleep ${tag} & done`],
      cwd: "/",
      env: { PATH },
      timeoutMs: 60_000,
      processesMax: 20,
    },
    options,
  );
  assert.equal(r.outcome.killedBy, "processes");
  assert.deepEqual(await survivors(`sleep ${tag}`), []);
  await assertCleanedUp(fx, options.jobDir);
  // Without cgroups: RLIMIT_NPROC makes fork fail; dash gives up.
  const fallback = await fx.sh(
    `i=0; while [ $i -lt 200 ]; do sleep ${tag}1 & i=$((i+1)); done; wait`,
    {
      processesMax: 20,
      timeoutMs: 60_000,
      run: { pidsCgroupRoot: null },
    },
  );
  assert.notEqual(fallback.outcome.exitCode, 0);
  assert.equal(fallback.outcome.killedBy, undefined);
  assert.match(fallback.err, /fork|Resource temporarily unavailable/i);
  assert.deepEqual(await survivors(`sleep ${tag}1`), []);
});

Deno.test("runJob() caps memory: allocating beyond memoryBytesMax fails", async () => {
  await using fx = await new Fixture().init();
  const alloc = (mib: number) => `python3 -c 'b = bytearray(${mib} * 1024 * 1024); print(len(b))'`;
  const over = await fx.sh(alloc(400), { memoryBytesMax: 200 * 1024 * 1024 });
  assert.notEqual(over.outcome.exitCode, 0);
  assert.match(over.err, /MemoryError/);
  const under = await fx.sh(alloc(50), { memoryBytesMax: 200 * 1024 * 1024 });
  assert.equal(under.outcome.exitCode, 0, under.err);
  assert.equal(under.out, `${50 * 1024 * 1024}\n`);
});

/** Runs `script` in the writable root with `limits`, collecting its result set if it ends well. */
async function limited(fx: Fixture, script: string, limits: Partial<JobSpec>) {
  let resultSet: Awaited<ReturnType<typeof collectResultSet>> | undefined;
  const r = await fx.sh(script, {
    ...limits,
    run: {
      onUpper: async (upper, lowerDir) => {
        resultSet = await collectResultSet(upper, fx.writableRoot, fakePut, { lowerDir });
      },
    },
  });
  return { ...r, resultSet };
}

/** The sandbox still runs a job normally, and left nothing behind. */
async function assertHealthy(fx: Fixture): Promise<void> {
  const ok = await fx.sh("echo ok > ok.txt; cat ok.txt");
  assert.equal(ok.out, "ok\n", ok.err);
  assert.equal(ok.outcome.exitCode, 0);
  const mounts = await Deno.readTextFile("/proc/self/mountinfo");
  assert.equal(mounts.includes(fx.base), false, "no mount left in the host namespace");
  const left = [...Deno.readDirSync(`${fx.base}/jobs`)].map((e) => e.name);
  assert.deepEqual(left, [], "every job dir removed");
}

Deno.test("runJob() bounds /tmp: 250,000 files stop at the files limit, bytes at tmp-bytes; the job is told which", async () => {
  await using fx = await new Fixture().init();
  // The attack as reported, at the default limits (200,000 files).
  const files = await fx.sh(
    "cd /tmp && seq 250000 | xargs touch; s=$?; echo $(ls -f | wc -l) entries; exit $s",
    { timeoutMs: 120_000 },
  );
  assert.notEqual(files.outcome.exitCode, 0);
  assert.match(files.err, /No space left on device/);
  assert.match(files.err, /termite: the job's \/tmp is full: 200000 files at most \(limit files\)/);
  // (ls -f counts . and .., and the writable root's mount point lies in /tmp here.)
  const entries = Number(files.out.match(/(\d+) entries/)![1]);
  assert.ok(entries > 190_000 && entries <= 200_008, files.out);

  const bytes = await fx.sh("head -c 100000000 /dev/zero > /tmp/fill", {
    tmpBytesMax: 8 * 2 ** 20,
  });
  assert.notEqual(bytes.outcome.exitCode, 0);
  assert.match(bytes.err, /No space left on device/);
  assert.match(bytes.err, /\/tmp is full: 8388608 bytes at most \(limit tmp-bytes\)/);
  // By default /tmp gets the disk limit when it is below 1 GiB.
  const small = await fx.sh("head -c 3000000 /dev/zero > /tmp/fill", { diskBytesMax: 2 ** 20 });
  assert.match(small.err, /\/tmp is full: 1048576 bytes at most \(limit tmp-bytes\)/);

  // A job that copes with a full /tmp is not told anything.
  const coped = await fx.sh("head -c 100000 /dev/zero > /tmp/fill 2>/dev/null; rm /tmp/fill", {
    tmpBytesMax: 65536,
  });
  assert.equal(coped.outcome.exitCode, 0);
  assert.equal(coped.err, "");

  // /dev/shm, the other place a job can write, has an inode cap too.
  const shm = await fx.sh("cd /dev/shm && seq 10000 | xargs touch; echo $(ls | wc -l)");
  assert.match(shm.err, /No space left on device/);
  assert.ok(Number(shm.out) <= 4096, shm.out);
  await assertHealthy(fx);
});

Deno.test("runJob() refuses a writable layer past the files limit: many empty files, many directories, hard links", async () => {
  await using fx = await new Fixture().init();
  const limits = { filesMax: 2000 };
  const cases = {
    "empty files": "seq 5000 | xargs touch",
    "directories": "seq 5000 | sed s/^/d/ | xargs mkdir",
    "hard links": "touch f && for i in $(seq 3000); do ln f l$i || exit; done",
    "nested directories": "seq 3000 | sed 's|^|n/|' | xargs mkdir -p",
  };
  for (const [name, script] of Object.entries(cases)) {
    const r = await limited(fx, script, limits);
    assert.equal(r.outcome.killedBy, "disk", `${name}: ${JSON.stringify(r.outcome)}`);
    assert.notEqual(r.outcome.exitCode, 0, name);
    assert.match(
      r.outcome.reason!,
      /^Disk limit reached: more than 2000 files, directories and links written \(limit files\)$/,
      name,
    );
    assert.equal(r.resultSet, undefined, `${name}: nothing collected`);
  }
  // Under the limit, the same job is collected whole.
  const under = await limited(fx, "seq 1500 | xargs touch", limits);
  assert.equal(under.outcome.exitCode, 0, under.err);
  assert.equal(under.resultSet!.files.length, 1500);
  await assertHealthy(fx);
});

Deno.test("runJob() judges sparse files by apparent size, hard links each in full, allocation by disk-bytes", async () => {
  await using fx = await new Fixture().init();
  const mib = 2 ** 20;
  // A 4 GiB sparse file (1 MiB written) past a 64 MiB result limit: stopped at once.
  const sparse = await limited(
    fx,
    "dd if=/dev/zero of=sparse.bin bs=1M count=1 seek=4095 2>&1",
    { resultBytesMax: 64 * mib, diskBytesMax: 2 ** 30 },
  );
  assert.equal(sparse.outcome.exitCode, 128 + 25, JSON.stringify(sparse.outcome));
  assert.match(
    sparse.err,
    /termite: a file reached the job's size limit: 67108864 bytes \(limit result-bytes; sparse files count by apparent size\)/,
  );
  // Sparse files each under that limit, together past it: refused after the job.
  const many = await limited(fx, "for i in 1 2 3 4 5 6 7 8; do truncate -s 60M s$i; done", {
    resultBytesMax: 64 * mib,
    diskBytesMax: 2 ** 30,
  });
  assert.equal(many.outcome.killedBy, "disk");
  assert.match(many.outcome.reason!, /more than 67108864 bytes in all \(limit result-bytes/);
  assert.equal(many.resultSet, undefined);
  // Hard links: one copy on the disk, but each name is a file of the result set.
  const links = await limited(
    fx,
    "head -c 1048576 /dev/urandom > f && for i in $(seq 40); do ln f l$i; done",
    { resultBytesMax: 16 * mib, diskBytesMax: 4 * mib },
  );
  assert.equal(links.outcome.killedBy, "disk");
  assert.match(links.outcome.reason!, /\(limit result-bytes/);
  // Allocated bytes: dense files past disk-bytes.
  const dense = await limited(
    fx,
    "for i in 1 2 3; do head -c 4000000 /dev/urandom > d$i; done",
    { diskBytesMax: 8 * mib, resultBytesMax: 2 ** 30 },
  );
  assert.equal(dense.outcome.killedBy, "disk");
  assert.match(dense.outcome.reason!, /more than 8388608 bytes of disk .*\(limit disk-bytes\)/);
  // A sparse file under the limits stays as it is: its apparent size, no disk taken.
  const ok = await limited(fx, "truncate -s 32M ok.bin", {
    resultBytesMax: 64 * mib,
    diskBytesMax: 4 * mib,
  });
  assert.equal(ok.outcome.exitCode, 0, ok.err);
  assert.deepEqual(ok.resultSet!.files.map((f) => [f.path, f.size]), [
    [`${fx.writableRoot}/ok.bin`, 32 * mib],
  ]);
  await assertHealthy(fx);
});

Deno.test("runJob() counts extended attributes as disk; a tree deeper than any path is refused and removed", async () => {
  await using fx = await new Fixture().init();
  // Extended attributes take a block each on ext4: disk-bytes, not result bytes.
  const xattrs = await limited(
    fx,
    `python3 -c '
import os
for i in range(1000):
    open(f"x{i}", "w").close()
    os.setxattr(f"x{i}", "user.pad", b"x" * 3000)
'`,
    { diskBytesMax: 2 * 2 ** 20 },
  );
  assert.equal(xattrs.outcome.killedBy, "disk", xattrs.err);
  assert.match(xattrs.outcome.reason!, /\(limit disk-bytes\)/);

  // 20,000 levels: a recursive removal in the worker's process overflowed its
  // stack on it and aborted the worker.
  const deep = await limited(
    fx,
    `perl -e 'for (1..20000) { mkdir "a" or die "mkdir: $!"; chdir "a" or die "chdir: $!" }'`,
    {},
  );
  assert.equal(deep.outcome.killedBy, "disk", deep.err);
  assert.match(deep.outcome.reason!, /a path longer than 4095 bytes \(limit path-bytes\)/);
  await assertHealthy(fx);
});

Deno.test("runJob() refuses fallocate that allocates (10 GB in one call, past every limit) and io_uring; writes still work", async () => {
  await using fx = await new Fixture().init();
  const r = await limited(
    fx,
    `: > f; fallocate --keep-size -l 10G f; echo keep-size $?
fallocate -l 1M g; echo allocate $?
head -c 8192 /dev/zero > h; fallocate --punch-hole -o 0 -l 4096 h; echo punch-hole $?
python3 -c '
import ctypes, os
fd = os.open("p", os.O_RDWR | os.O_CREAT)
os.posix_fallocate(fd, 0, 1 << 20)
print("posix_fallocate", os.fstat(fd).st_size)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall(425, 8, None)
print("io_uring_setup:", os.strerror(ctypes.get_errno()))
'`,
    { diskBytesMax: 64 * 2 ** 20 },
  );
  assert.equal(r.outcome.killedBy, undefined, JSON.stringify(r.outcome));
  assert.equal(
    r.out,
    "keep-size 1\nallocate 1\npunch-hole 0\nposix_fallocate 1048576\n" +
      "io_uring_setup: Function not implemented\n",
    r.err,
  );
  assert.match(r.err, /fallocate failed: Operation not supported/);
  // posix_fallocate fell back to writing: the file is whole.
  assert.equal(r.resultSet!.files.find((f) => f.path.endsWith("/p"))?.size, 2 ** 20);
  await assertHealthy(fx);
});

Deno.test("runJob() isolates concurrent jobs from each other", async () => {
  await using fx = await new Fixture("/var/tmp").init();
  const go = `${fx.base}/go`;
  const w = fx.writableRoot;
  let ready!: () => void;
  const aReady = new Promise<void>((resolve) => ready = resolve);
  const results = new Map<string, unknown>();
  const collect = (name: string) => async (upper: string, lowerDir: string) => {
    results.set(name, await collectResultSet(upper, w, fakePut, { lowerDir }));
  };
  const a = runJob(
    {
      argv: [
        "/bin/sh",
        "-c",
        `echo a > ${w}/a; echo ready; i=0; while [ ! -e ${go} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; ls ${w}`,
      ],
      cwd: w,
      env: { PATH },
      timeoutMs: 60_000,
    },
    {
      ...fx.options(),
      onStdout: (b) => {
        if (decoder.decode(b).includes("ready")) ready();
        else results.set("a-ls", decoder.decode(b));
      },
      onUpper: collect("a"),
    },
  );
  await aReady;
  const b = await capture(
    {
      argv: ["/bin/sh", "-c", `ls ${w}; echo b > ${w}/b`],
      cwd: w,
      env: { PATH },
      timeoutMs: 60_000,
    },
    { ...fx.options(), onUpper: collect("b") },
  );
  assert.equal(b.out, "", "b does not see a's file");
  await Deno.writeTextFile(go, "");
  assert.equal((await a).exitCode, 0);
  assert.equal(results.get("a-ls"), "a\n", "a does not see b's file");
  const put = (path: string, text: string) => ({
    path,
    hash: sha256(new TextEncoder().encode(text)),
    size: text.length,
    mode: 0o644,
  });
  const strip = (set: unknown) => {
    const s = set as { files: { mtimeMs?: number }[] };
    for (const f of s.files) delete f.mtimeMs;
    return s;
  };
  assert.deepEqual(strip(results.get("a")), {
    deletions: [],
    dirs: [],
    files: [put(`${w}/a`, "a\n")],
    symlinks: [],
  });
  assert.deepEqual(strip(results.get("b")), {
    deletions: [],
    dirs: [],
    files: [put(`${w}/b`, "b\n")],
    symlinks: [],
  });
  assert.deepEqual([...Deno.readDirSync(w)], [], "host writable root untouched");
});

Deno.test("runJob() compiles with gcc from the lower view, byte-identical to a local compile", async () => {
  await using fx = await new Fixture("/var/tmp").init();
  const w = fx.writableRoot;
  await Deno.writeTextFile(
    `${w}/hello.c`,
    '#include <stdio.h>\n#include <stdlib.h>\nint main(void) { printf("hi %d\\n", EXIT_SUCCESS); return 0; }\n',
  );
  await chownNobody(w);
  let remote: Uint8Array | undefined;
  const r = await capture(
    {
      argv: ["gcc", "-g", "-O2", "-c", "hello.c", "-o", "hello.o"],
      cwd: w,
      env: { PATH },
      timeoutMs: 60_000,
    },
    {
      ...fx.options(),
      onUpper: async (upper) => {
        remote = await Deno.readFile(`${upper}/hello.o`);
      },
    },
  );
  assert.equal(r.outcome.exitCode, 0, r.err);
  assert.equal(await exists(`${w}/hello.o`), false);
  await run("sh", "-c", `cd ${w} && PATH=${PATH} gcc -g -O2 -c hello.c -o hello.o`);
  const local = await Deno.readFile(`${w}/hello.o`);
  assert.ok(remote !== undefined && remote.length > 1000);
  assert.deepEqual(remote, local);
});

Deno.test("runJob() works on a constructed lower root and keeps its bind-mounted /usr read-only", async () => {
  await using fx = await new Fixture("/var/tmp").init();
  const lower = `${fx.base}/lower`;
  for (const d of ["usr", "proc", "dev", "tmp", "etc", "work"]) {
    await Deno.mkdir(`${lower}/${d}`, { recursive: true });
  }
  for (const l of ["bin", "lib", "lib64", "sbin"]) await Deno.symlink(`usr/${l}`, `${lower}/${l}`);
  await Deno.writeTextFile(`${lower}/etc/marker`, "constructed\n");
  await chownNobody(`${lower}/work`);
  await run("mount", "--bind", "/usr", `${lower}/usr`);
  try {
    const r = await capture(
      {
        argv: ["/bin/sh", "-c", "cat /etc/marker; touch /usr/x 2>&1; echo w > out; ls /"],
        cwd: "/work",
        env: { PATH },
        timeoutMs: 30_000,
      },
      {
        ...fx.options({ lowerRoot: lower, writableRoot: "/work" }),
        onUpper: async (upper, lowerDir) => {
          assert.equal(lowerDir, `${lower}/work`);
          assert.equal(await Deno.readTextFile(`${upper}/out`), "w\n");
        },
      },
    );
    assert.equal(r.outcome.exitCode, 0, r.err);
    const lines = r.out.split("\n");
    assert.equal(lines[0], "constructed");
    assert.match(lines[1], /Read-only file system/);
    assert.deepEqual(lines.slice(2).filter(Boolean).sort(), [
      "bin",
      "dev",
      "etc",
      "lib",
      "lib64",
      "proc",
      "sbin",
      "tmp",
      "usr",
      "work",
    ]);

    // A lower root without /proc cannot host a job.
    await run("umount", `${lower}/usr`);
    await Deno.remove(`${lower}/proc`);
    const options = fx.options({ lowerRoot: lower, writableRoot: "/work" });
    await assert.rejects(
      runJob({ argv: ["/bin/true"], cwd: "/", env: {}, timeoutMs: 10_000 }, options),
      (err: unknown) => err instanceof SandboxError && /no directory there/.test(err.message),
    );
    await assertCleanedUp(fx, options.jobDir);
  } finally {
    await run("umount", `${lower}/usr`).catch(() => {});
  }
});

Deno.test("runJob() reports sandbox failures as SandboxError, distinct from job status", async () => {
  await using fx = await new Fixture().init();
  const options = fx.options();
  await assert.rejects(
    runJob({ argv: ["/bin/true"], cwd: "/no/such/dir", env: {}, timeoutMs: 10_000 }, options),
    (err: unknown) =>
      err instanceof SandboxError && /Cannot change directory to \/no\/such\/dir/.test(err.message),
  );
  await assertCleanedUp(fx, options.jobDir);
  await assert.rejects(
    runJob(
      { argv: ["/bin/true"], cwd: "/", env: {}, timeoutMs: 10_000 },
      fx.options({ writableRoot: "/" }),
    ),
    SandboxError,
  );
  await assert.rejects(
    runJob(
      { argv: ["/bin/true"], cwd: "/", env: {}, timeoutMs: 10_000 },
      fx.options({ writableRoot: `${fx.writableRoot}/missing` }),
    ),
    (err: unknown) =>
      err instanceof SandboxError && /not a directory in the lower root/.test(err.message),
  );
  await assert.rejects(
    runJob(
      { argv: ["/bin/true"], cwd: "/", env: {}, timeoutMs: 10_000 },
      fx.options({ jobDir: `${fx.writableRoot}/job` }),
    ),
    /lies inside the writable root/,
  );
});

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function fakePut(path: string): Promise<{ hash: string; size: number }> {
  const bytes = await Deno.readFile(path);
  return { hash: sha256(bytes), size: bytes.length };
}

Deno.test("ensureLauncher() compiles once per source version into its cache dir", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-launcher-cache-" });
  try {
    // No launcher built ahead there: gcc builds it.
    const path = await ensureLauncher(`${dir}/cache`, { prebuiltDir: `${dir}/none` });
    assert.match(path, /\/cache\/termite-launcher-[0-9a-f]{16}$/);
    assert.equal((await Deno.stat(`${dir}/cache`)).mode! & 0o777, 0o700);
    assert.equal(await ensureLauncher(`${dir}/cache`), path);
    assert.deepEqual([...Deno.readDirSync(`${dir}/cache`)].map((e) => e.name), [
      path.split("/").pop(),
    ]);
    const usage = await new Deno.Command(path, { stdout: "piped", stderr: "piped" }).output();
    assert.equal(usage.code, 2);
    assert.match(decoder.decode(usage.stderr), /Missing command/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("removeStaleCgroups() removes empty job cgroups only", async () => {
  const root = `/sys/fs/cgroup/pids/termite-test-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(`${root}/job-stale`, { recursive: true });
  await Deno.mkdir(`${root}/job-busy`);
  await Deno.mkdir(`${root}/other`);
  // A read recorder's directory left by a crashed worker, with a stale job cgroup in it.
  await Deno.mkdir(`${root}/rec-0123456789abcdef/job-stale`, { recursive: true });
  const busy = new Deno.Command("sleep", { args: ["30"] }).spawn();
  try {
    await Deno.writeTextFile(`${root}/job-busy/cgroup.procs`, String(busy.pid));
    // Just made: maybe a running neighbour's, about to be joined; left alone.
    assert.equal(await removeStaleCgroups(root), 0);
    assert.equal(await removeStaleCgroups(root, { now: Date.now() + 11 * 60_000 }), 2);
    const left = [...Deno.readDirSync(root)].filter((e) => e.isDirectory).map((e) => e.name).sort();
    assert.deepEqual(left, ["job-busy", "other"]);
    assert.equal(await removeStaleCgroups(`${root}/missing`), 0);
  } finally {
    busy.kill("SIGKILL");
    await busy.status;
    for (
      const name of [
        "job-busy",
        "other",
        "job-stale",
        "rec-0123456789abcdef/job-stale",
        "rec-0123456789abcdef",
      ]
    ) {
      await Deno.remove(`${root}/${name}`).catch(() => {});
    }
    await Deno.remove(root);
  }
});

Deno.test("favorCgroupMigrations() mounts a favordynmods hierarchy once and close() removes it", async () => {
  const base = await Deno.makeTempDir({ prefix: "termite-dynmods-" });
  const path = `${base}/h`;
  try {
    const first = await favorCgroupMigrations(path);
    assert.ok(first.mount, "this kernel supports favordynmods on cgroup v1");
    assert.ok(await isDynmodsMount(path));
    // A second call (a restarted worker) reuses the mount instead of stacking one.
    const again = await favorCgroupMigrations(path);
    assert.ok(again.mount);
    const count = (await Deno.readTextFile("/proc/self/mountinfo")).split("\n")
      .filter((line) => line.split(" ")[4] === path).length;
    assert.equal(count, 1);
    // Jobs still get their pids cgroups and caps (the fork-loop test checks the cap).
    await first.mount.close();
    assert.equal(await isDynmodsMount(path), false);
    assert.equal(await Deno.stat(path).then(() => true, () => false), false);
  } finally {
    await new Deno.Command("umount", { args: ["-l", path], stderr: "null" }).output();
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("favorCgroupMigrations() reports why it could not mount, without throwing", async () => {
  const base = await Deno.makeTempDir({ prefix: "termite-dynmods-" });
  try {
    await Deno.writeTextFile(`${base}/file`, "");
    const result = await favorCgroupMigrations(`${base}/file/h`);
    assert.equal(result.mount, null);
    assert.match((result as { reason: string }).reason, /file\/h/);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("runJob() names what a job left in its private /tmp (an output there would be lost)", async () => {
  await using fx = await new Fixture().init();
  const clean = await fx.sh("t=$(mktemp) && echo x > $t && rm $t && echo done > out.txt");
  assert.equal(clean.outcome.exitCode, 0, clean.err);
  assert.equal(clean.outcome.leftInTmp, undefined, "a temporary file removed is not counted");
  const left = await fx.sh("d=$(echo L3RtcA== | base64 -d); echo x > $d/result.o");
  assert.equal(left.outcome.exitCode, 0, left.err);
  assert.equal(left.outcome.leftInTmp, "/tmp/result.o");
  const dir = await fx.sh("mkdir -p /tmp/a/b");
  assert.equal(dir.outcome.leftInTmp, "/tmp/a");
});

Deno.test("runJob() does not send a job that filled its /tmp to look for outputs elsewhere", async () => {
  await using fx = await new Fixture().init();
  const full = await fx.sh("d=/tmp; head -c 2000000 /dev/zero > $d/fill; echo after $?", {
    tmpBytesMax: 1_000_000,
  });
  assert.match(full.out, /after 1/);
  assert.equal(full.outcome.leftInTmp, undefined);
});
