/**
 * Special files in the build tree, from the attacker's side: a FIFO, a socket
 * and device nodes made in the tree while the master (its real entry point,
 * as a process) serves it. Its tree watcher, its hash cache and its file
 * server must never open them: a FIFO opened for reading blocks until a
 * writer comes, a device may do anything when opened or read.
 */
import assert from "node:assert/strict";
import { closeSync, constants, openSync } from "node:fs";
import { registerWorker, startCoordinator } from "../coordinator/mod.ts";
import { MasterMethods, VERSION, WorkerMethods } from "../common/protocol.ts";
import type { FileAttr } from "../common/types.ts";
import { NotRegularFileError } from "../common/regular_file.ts";
import { HashCache } from "../master/hash_cache.ts";
import { TreeWatcher } from "../master/tree_watcher.ts";
import { type CallContext, listen, secretFromBytes } from "../rpc/mod.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  assert.ok(out.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

/** Makes a FIFO, a socket file and two device nodes (like /dev/null and /dev/zero) in `dir`. */
async function makeSpecialFiles(dir: string): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const paths = [`${dir}/fifo`, `${dir}/sock`, `${dir}/null`, `${dir}/zero`];
  await run("mkfifo", [paths[0]]);
  // A socket file nobody listens on (Deno removes its own when they close).
  await run("python3", ["-c", `import socket; socket.socket(socket.AF_UNIX).bind("${paths[1]}")`]);
  await run("mknod", [paths[2], "c", "1", "3"]);
  await run("mknod", [paths[3], "c", "1", "5"]);
  for (const p of paths) await Deno.chmod(p, 0o666); // an event on each, and readable by all
  return paths;
}

/** Lets any reader stuck on the FIFO go (the code before the fix). */
function releaseFifo(path: string): void {
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
  } catch {
    // Nobody was waiting.
  }
}

async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("HashCache: a FIFO, a device or a symlink put where a regular file was is never read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-hc-special-" });
  try {
    const path = `${dir}/a.c`;
    await Deno.writeTextFile(`${dir}/secret`, "not for the mirrors\n");
    for (const swap of ["fifo", "device", "symlink"]) {
      await Deno.writeTextFile(path, "int a;\n");
      const seen = await Deno.lstat(path); // what the file server saw
      await Deno.remove(path);
      if (swap === "fifo") await run("mkfifo", [path]);
      else if (swap === "device") await run("mknod", [path, "c", "1", "3"]);
      else await Deno.symlink(`${dir}/secret`, path);
      const cache = await HashCache.open();
      try {
        await within(
          5_000,
          `hashing a ${swap}`,
          assert.rejects(cache.hash(path, seen), NotRegularFileError),
        );
        assert.equal(cache.stats.bytesHashed, 0);
      } finally {
        if (swap === "fifo") releaseFifo(path);
        await cache.close();
        await Deno.remove(path);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("TreeWatcher: special files made in the tree are reported, never opened; it keeps watching and stops at once", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-tw-" }));
  const watcher = TreeWatcher.start({ root });
  const seen = new Set<string>();
  const reading = (async () => {
    for await (const event of watcher) for (const p of event.paths) seen.add(p);
  })();
  const waitFor = async (path: string) => {
    for (let i = 0; i < 200 && !seen.has(path); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(seen.has(path), `no event for ${path}: ${[...seen].join(", ")}`);
  };
  try {
    const specials = await makeSpecialFiles(`${root}/dev`);
    for (const p of specials) await waitFor(p);
    // Still watching: a file in a directory made after the FIFO.
    await Deno.mkdir(`${root}/obj/sub`, { recursive: true });
    await Deno.writeTextFile(`${root}/obj/sub/a.o`, "");
    await waitFor(`${root}/obj/sub/a.o`);
    assert.equal(watcher.watches, 4, "root, dev, obj, obj/sub");
    const started = performance.now();
    await within(2_000, "closing the watcher", watcher.close());
    await reading;
    assert.ok(performance.now() - started < 1_000);
  } finally {
    await watcher.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("master (a process): a FIFO, socket and devices in the tree neither slow jobs nor stop SIGTERM", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-special-" }));
  await Deno.chmod(dir, 0o755);
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree, { mode: 0o755 });
  await Deno.chmod(tree, 0o755);
  await Deno.writeTextFile(`${tree}/x.c`, "int x;\n");
  const specials: string[] = [];
  /** Special files the master showed a mirror (none may be). */
  const asked: string[] = [];
  let listings = 0;
  const secretBytes = crypto.getRandomValues(new Uint8Array(32));
  await Deno.writeFile(`${dir}/secret`, secretBytes, { mode: 0o600 });
  const secret = await secretFromBytes(secretBytes);
  // A worker double: every job succeeds at once, changing nothing.
  const worker = listen({
    transport: "tcp",
    secret,
    role: "worker",
    log: () => {},
    handlers: {
      [WorkerMethods.mirrorOpen]: () => ({ slots: 4, workerId: "double" }),
      [WorkerMethods.jobRun]: async (_p: unknown, ctx: CallContext) => {
        // What a mirror asks: the tree's listing, each special file's attributes.
        const listed: string[] = [];
        await ctx.peer.call(MasterMethods.fsDir, { path: tree }, {
          onChunk: (attrs) => void listed.push(...(attrs as FileAttr[]).map((a) => a.path)),
        });
        if (listed.includes(`${tree}/x.c`)) listings++;
        asked.push(...listed.filter((p) => specials.includes(p)).map((p) => `listed ${p}`));
        for (const path of specials) {
          const attr = await ctx.peer.call<FileAttr>(MasterMethods.fsAttr, {
            path,
            withHash: true,
          });
          if (attr.kind !== null) asked.push(`${path}: ${attr.kind}`);
        }
        return { exitCode: 0, resultSet: { deletions: [], dirs: [], files: [], symlinks: [] } };
      },
      [WorkerMethods.attrsPush]: () => ({}),
    },
  });
  const coordinator = await startCoordinator({
    hostname: "127.0.0.1",
    port: 0,
    secret,
    log: () => {},
  });
  const registration = registerWorker({
    coordinator: `127.0.0.1:${coordinator.port}`,
    secret,
    info: () => ({
      id: "double",
      address: `127.0.0.1:${worker.port}`,
      hostname: "double",
      slots: 4,
      jobsRunning: 0,
      load: 0,
      version: VERSION,
    }),
    log: () => {},
  });
  const masterArgv = [
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}/master.ts`,
    "--secret",
    `${dir}/secret`,
    "--coordinator",
    `127.0.0.1:${coordinator.port}`,
    "--cache-dir",
    `${dir}/cache`,
    "--socket",
    `${tree}/.termite-socket`,
    "--status-port",
    "0",
  ];
  // Under strace when there is one: the master's every open is logged.
  const opens = `${dir}/opens.log`;
  const strace = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=open,openat,openat2"];
  const traced = await new Deno.Command("strace", { args: ["-V"], stdout: "null" }).output()
    .then((o) => o.success, () => false);
  const argv = traced ? [...strace, "-o", opens, ...masterArgv] : masterArgv;
  const master = new Deno.Command(argv[0], {
    args: argv.slice(1),
    cwd: tree,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  /** The master's own pid (strace's child when traced). */
  const masterPid = async () => {
    if (!traced) return master.pid;
    const children = await Deno.readTextFile(`/proc/${master.pid}/task/${master.pid}/children`);
    return Number(children.trim().split(" ")[0]);
  };
  const stderr = master.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  const logged = (async () => {
    for (;;) {
      const { value, done } = await stderr.read();
      if (done) return;
      log += value;
    }
  })();
  let exited = false;
  const status = master.status.then((s) => {
    exited = true;
    return s;
  });
  try {
    let port = 0;
    for (let i = 0; i < 300 && port === 0; i++) {
      port = Number(log.match(/status on http:\/\/127\.0\.0\.1:(\d+)\//)?.[1] ?? 0);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(port > 0, log);
    for (let i = 0; i < 300; i++) {
      const res = await fetch(`http://127.0.0.1:${port}/status.json`);
      if ((await res.json()).workers.length === 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    specials.push(...await makeSpecialFiles(`${tree}/dev`));
    specials.push(...await makeSpecialFiles(tree));
    const wrapperMs: number[] = [];
    for (let i = 0; i < 3; i++) {
      const started = performance.now();
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--no-config",
          "--no-lock",
          `${ROOT}/wrapper.ts`,
          "--as",
          "gcc",
          "-c",
          "x.c",
        ],
        cwd: tree,
        env: { PATH: "/usr/bin:/bin" },
        stdout: "null",
        stderr: "piped",
        signal: AbortSignal.timeout(20_000),
      }).output();
      wrapperMs.push(performance.now() - started);
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    }
    Deno.kill(await masterPid(), "SIGTERM");
    const stopped = performance.now();
    for (let i = 0; i < 100 && !exited; i++) await new Promise((r) => setTimeout(r, 50));
    const stopMs = performance.now() - stopped;
    const jobs = wrapperMs.map((ms) => ms.toFixed(0)).join(", ");
    console.log(
      `jobs with special files in the tree: ${jobs} ms; SIGTERM to exit ${stopMs.toFixed(0)} ms`,
    );
    // Before: the watcher's thread was stuck opening the FIFO, so each job
    // waited TREE_SYNC_MS (2 s) for its marker file's event, and the master
    // waited for that thread when asked to stop.
    assert.ok(exited, `the master still runs ${stopMs.toFixed(0)} ms after SIGTERM`);
    assert.equal((await status).code, 0, log);
    assert.ok(Math.min(...wrapperMs) < 1_500, `jobs took ${jobs} ms`);
    assert.doesNotMatch(log, /running locally/);
    assert.equal(listings, 3, "each job listed the tree");
    assert.deepEqual(asked, [], "special files shown to a mirror");
    if (traced) {
      const opened = (await Deno.readTextFile(opens)).split("\n")
        .filter((line) => specials.some((p) => line.includes(`"${p}"`)));
      assert.deepEqual(opened, [], "the master opened special files");
      assert.match(await Deno.readTextFile(opens), /x\.c|status|\.termite/, "strace saw opens");
    } else console.log("strace not installed: opens of the special files not checked");
  } finally {
    for (const p of specials) if (p.endsWith("fifo")) releaseFifo(p);
    if (!exited) Deno.kill(await masterPid().catch(() => master.pid), "SIGKILL");
    await status;
    await logged;
    await registration.close();
    await coordinator.close();
    await worker.close();
    await Deno.remove(dir, { recursive: true });
  }
});
