/**
 * End to end: real processes (coordinator, workers each in a network namespace
 * of its own, master), real FUSE mirrors, real sandboxes, real compilers.
 */
import assert from "node:assert/strict";
import { fetchSource } from "../farm/mod.ts";
import { Farm, ROOT, runIn, sameBytes, scratchDir, withFarm } from "./_reliability.ts";

Deno.test("e2e: lua 5.4 builds across two workers, objects identical to a local build", async () => {
  const src = await fetchSource("lua5.4");
  await withFarm("lua", { source: src }, async (farm, tree) => {
    const local = `${tree}-local`;
    assert.equal((await runIn(ROOT, ["cp", "-a", src, local])).code, 0);
    const ref = await runIn(local, ["make", "-j4", "linux"]);
    assert.equal(ref.code, 0, ref.stderr);
    const build = await runIn(tree, ["make", "-j4", "linux"], farm.env);
    assert.equal(build.code, 0, build.stdout + build.stderr);
    const lua = await runIn(tree, [`${tree}/src/lua`, "-e", "print(6*7)"]);
    assert.equal(lua.stdout, "42\n");
    const objects = [...Deno.readDirSync(`${local}/src`)].filter((e) => e.name.endsWith(".o"));
    assert.ok(objects.length >= 30);
    for (const o of objects) {
      assert.ok(await sameBytes(`${local}/src/${o.name}`, `${tree}/src/${o.name}`), o.name);
    }
    const status = await farm.status();
    // Every job but lua's `ar rcu` and `ranlib` (local by the default rules) on a worker.
    assert.equal(status.jobs.jobsLocal, 2, JSON.stringify(status.jobs));
    assert.equal(status.build.local.byRule, 2, JSON.stringify(status.build.local));
    const perWorker = Object.values(status.jobs.perWorker) as { done: number; jobCpuMs: number }[];
    assert.equal(perWorker.length, 2, "both workers ran jobs");
    assert.ok(perWorker.every((w) => w.done > 0));
    // Each worker says what its jobs' processes took: an optimised compile, tens of ms at least.
    assert.ok(perWorker.every((w) => w.jobCpuMs >= 20 * w.done), JSON.stringify(perWorker));
    await Deno.remove(local, { recursive: true });
  });
});

for (const nativeClient of [false, true]) {
  const by = nativeClient ? " (native client)" : "";
  Deno.test(`e2e${by}: a compile error prints gcc's message, exits 1 and stops make`, async () => {
    await withFarm("err", { nativeClient }, async (farm, tree) => {
      await Deno.writeTextFile(`${tree}/bad.c`, "int main(void) { return undefined_thing; }\n");
      await Deno.writeTextFile(`${tree}/good.c`, "int good(void) { return 1; }\n");
      await Deno.writeTextFile(
        `${tree}/Makefile`,
        "all: bad.o after.stamp\nafter.stamp: bad.o\n\ttouch after.stamp\n%.o: %.c\n\tgcc -c $< -o $@\n",
      );
      const direct = await runIn(tree, ["gcc", "-c", "bad.c", "-o", "/dev/null"]);
      const gcc = await runIn(tree, ["gcc", "-c", "bad.c", "-o", "bad.o"], farm.env);
      assert.equal(gcc.code, 1);
      assert.equal(gcc.stderr, direct.stderr, "the same message as a local gcc");
      assert.match(gcc.stderr, /undefined_thing/);
      const make = await runIn(tree, ["make"], farm.env);
      assert.notEqual(make.code, 0);
      await assert.rejects(Deno.stat(`${tree}/after.stamp`), Deno.errors.NotFound);
      const ok = await runIn(tree, ["gcc", "-c", "good.c", "-o", "good.o"], farm.env);
      assert.equal(ok.code, 0, ok.stderr);
      assert.ok((await Deno.stat(`${tree}/good.o`)).size > 0);
    });
  });
}

Deno.test("e2e: make's fast path: a plain command through termite-sh runs with no shell; a script keeps it", async () => {
  await withFarm("fastpath", { workers: 1 }, async (farm, tree) => {
    const sh = `${farm.binDir}/termite-sh`;
    // Says what started it: the sandbox's init, or a shell.
    await Deno.writeTextFile(`${tree}/parent`, "#!/bin/sh\ncat /proc/$PPID/comm\n");
    await Deno.chmod(`${tree}/parent`, 0o755);
    const plain = await runIn(tree, [sh, "-c", "./parent"], farm.env);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, "termite-launche\n", "run by the sandbox itself");
    const list = await runIn(tree, [sh, "-c", "./parent; true"], farm.env);
    assert.equal(list.code, 0, list.stderr);
    assert.equal(list.stdout, "sh\n", "a list goes to the shell");
    // The one thing the shell would have changed: PWD, set to the directory.
    await Deno.mkdir(`${tree}/sub`);
    const pwd = await runIn(`${tree}/sub`, [sh, "-c", "printenv PWD"], {
      ...farm.env,
      PWD: "/elsewhere",
    });
    assert.equal(pwd.code, 0, pwd.stderr);
    assert.equal(pwd.stdout, `${tree}/sub\n`);
    // Not found: the shell's own message and status, as on the master, also
    // with a directory of PATH under a home closed to others (the job's user).
    const home = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "e2e-home-" });
    try {
      await Deno.mkdir(`${home}/bin`);
      await Deno.chmod(home, 0o700);
      const path = `${home}/bin:${farm.env.PATH}`;
      const missing = await runIn(tree, [sh, "-c", "no-such-tool x"], { ...farm.env, PATH: path });
      assert.equal(missing.code, 127);
      assert.equal(missing.stderr, "/bin/sh: 1: no-such-tool: not found\n");
    } finally {
      await Deno.remove(home, { recursive: true });
    }
  });
});

Deno.test("e2e: a header generated on one worker is seen by jobs on every worker", async () => {
  await withFarm("gen", { slotsPerWorker: 1 }, async (farm, tree) => {
    await Deno.writeTextFile(`${tree}/use.c`, '#include "gen.h"\nint v(void) { return V; }\n');
    const sh = `${farm.binDir}/termite-sh`;
    // Both workers look for gen.h before it exists (negative entries cached).
    const miss = await Promise.all(
      [1, 2].map((i) => runIn(tree, [sh, "-c", `sleep 1; gcc -c use.c -o use${i}.o`], farm.env)),
    );
    assert.ok(miss.every((r) => r.code === 1 && /gen\.h/.test(r.stderr)));
    // One worker writes the header while the other is busy.
    const [gen, busy] = await Promise.all([
      runIn(tree, [sh, "-c", "sleep 1; echo '#define V 42' > gen.h"], farm.env),
      runIn(tree, [sh, "-c", "sleep 1"], farm.env),
    ]);
    assert.equal(gen.code, 0, gen.stderr);
    assert.equal(busy.code, 0);
    assert.equal(await Deno.readTextFile(`${tree}/gen.h`), "#define V 42\n");
    // Two compiles at once occupy both workers: both must see the header.
    const before = await farm.status();
    const uses = await Promise.all(
      [1, 2].map((i) => runIn(tree, [sh, "-c", `sleep 1; gcc -c use.c -o use${i}.o`], farm.env)),
    );
    for (const r of uses) assert.equal(r.code, 0, r.stderr);
    const after = await farm.status();
    for (
      const [address, w] of Object.entries(after.jobs.perWorker as Record<string, { done: number }>)
    ) {
      assert.ok(w.done > (before.jobs.perWorker[address]?.done ?? 0), `${address} compiled one`);
    }
    const ref = await runIn(tree, ["gcc", "-c", "use.c", "-o", "ref.o"]);
    assert.equal(ref.code, 0);
    assert.ok(await sameBytes(`${tree}/use1.o`, `${tree}/ref.o`));
    assert.ok(await sameBytes(`${tree}/use2.o`, `${tree}/ref.o`));
  });
});

Deno.test("e2e: 200 small jobs through make -j16 against 2 workers × 2 slots", async () => {
  await withFarm("many", { slotsPerWorker: 2 }, async (farm, tree) => {
    const n = 200;
    const objs: string[] = [];
    for (let i = 0; i < n; i++) {
      await Deno.writeTextFile(
        `${tree}/f${i}.c`,
        `int f${i}(int x) { return x * ${i} + ${i % 7}; }\n`,
      );
      objs.push(`f${i}.o`);
    }
    await Deno.writeTextFile(
      `${tree}/Makefile`,
      `all: ${objs.join(" ")}\n%.o: %.c\n\tgcc -O1 -c $< -o $@\n`,
    );
    const build = await runIn(tree, ["make", "-j16"], farm.env);
    assert.equal(build.code, 0, build.stderr);
    const ref = `${tree}/ref`;
    await Deno.mkdir(ref);
    for (let i = 0; i < n; i += 50) {
      const batch = objs.slice(i, i + 50).map((o) => o.replace(".o", ".c"));
      const r = await runIn(tree, [
        "sh",
        "-c",
        `for f in ${batch.join(" ")}; do gcc -O1 -c $f -o ref/\${f%.c}.o; done`,
      ]);
      assert.equal(r.code, 0, r.stderr);
    }
    for (const o of objs) assert.ok(await sameBytes(`${tree}/${o}`, `${ref}/${o}`), o);
    const status = await farm.status();
    assert.equal(status.jobs.jobsRemote, n);
  });
});

Deno.test("e2e: two masters building at once on one worker both run every job there", async () => {
  // One worker with 2 slots, two builds of -j4 each: slots are taken per job
  // and shared in turn, so neither build is shut out (before, the first master
  // reserved both slots and the second ran all its jobs locally).
  await withFarm("share", { workers: 1, slotsPerWorker: 2 }, async (farm, tree) => {
    const other = `${farm.dir}/../other`;
    await Deno.mkdir(other);
    await Deno.chmod(other, 0o755);
    const n = 12;
    const body = Array.from(
      { length: 60 },
      (_, k) =>
        `int g${k}(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * ${k}; return s; }`,
    ).join("\n");
    for (const dir of [tree, other]) {
      for (let i = 0; i < n; i++) {
        await Deno.writeTextFile(`${dir}/f${i}.c`, `${body}\nint f${i};\n`);
      }
      await Deno.writeTextFile(
        `${dir}/Makefile`,
        `all: ${Array.from({ length: n }, (_, i) => `f${i}.o`).join(" ")}\n` +
          `%.o: %.c\n\tgcc -O2 -c $< -o $@\n`,
      );
    }
    const second = await farm.startOtherMaster("master-2", other);
    const statusOf = async (port: number) =>
      await (await fetch(`http://127.0.0.1:${port}/status.json`)).json();
    const deadline = Date.now() + 30_000;
    while ((await statusOf(second.statusPort)).workers.length < 1) {
      if (Date.now() > deadline) throw new Error("The second master never reached the worker");
      await new Promise((r) => setTimeout(r, 100));
    }
    const [a, b] = await Promise.all([
      runIn(tree, ["make", "-j4"], farm.env),
      runIn(other, ["make", "-j4"], farm.env),
    ]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    for (
      const [name, port] of [["first", farm.statusPort], ["second", second.statusPort]] as const
    ) {
      const { jobs } = await statusOf(port);
      assert.equal(jobs.jobsRemote, n, `${name} master: ${JSON.stringify(jobs)}`);
      assert.equal(jobs.jobsLocal, 0, `${name} master ran jobs locally: ${JSON.stringify(jobs)}`);
    }
    for (let i = 0; i < n; i++) assert.ok(await sameBytes(`${tree}/f${i}.o`, `${other}/f${i}.o`));
  });
});

Deno.test("e2e: a worker killed during a job: the job is retried and the build completes", async () => {
  await withFarm("kill", { slotsPerWorker: 2 }, async (farm, tree) => {
    const n = 12;
    const objs: string[] = [];
    for (let i = 0; i < n; i++) {
      await Deno.writeTextFile(`${tree}/k${i}.c`, `int k${i}(void) { return ${i}; }\n`);
      objs.push(`k${i}.o`);
    }
    await Deno.writeTextFile(
      `${tree}/Makefile`,
      `SHELL := ${farm.binDir}/termite-sh\nall: ${
        objs.join(" ")
      }\n%.o: %.c\n\tsleep 1; gcc -c $< -o $@\n`,
    );
    const building = runIn(tree, ["make", "-j4"], farm.env);
    await new Promise((r) => setTimeout(r, 1500));
    await farm.killWorker(0);
    const build = await building;
    assert.equal(build.code, 0, build.stdout + build.stderr);
    for (const o of objs) assert.ok((await Deno.stat(`${tree}/${o}`)).size > 0, o);
    const status = await farm.status();
    assert.ok(status.jobs.retries + status.jobs.jobsLocal > 0, JSON.stringify(status.jobs));
  });
});

Deno.test("e2e: a worker with the wrong secret is refused and logged", async () => {
  await withFarm("secret", { workers: 1 }, async (farm) => {
    const wrong = `${farm.dir}/wrong-secret.txt`;
    await Deno.writeFile(wrong, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${ROOT}/worker.ts`,
        "--secret",
        wrong,
        "--coordinator",
        `127.0.0.1:${farm.coordinatorPort}`,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "none",
        "--cache-dir",
        `${farm.dir}/wrong-worker`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // It exits by itself once the coordinator proved it holds another secret
    // (about 2 s; much longer on a loaded machine): killed only if it never does.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = await Promise.race([
      child.status.then(() => true),
      new Promise<boolean>((r) => timer = setTimeout(() => r(false), 60_000)),
    ]);
    clearTimeout(timer);
    if (!gaveUp) child.kill("SIGTERM");
    const out = await child.output();
    const workerLog = new TextDecoder().decode(out.stderr);
    assert.match(workerLog, /HMAC|auth|secret/i);
    assert.equal(out.code, 1, "the worker gives up on a coordinator with another secret");
    const coordinatorLog = await Deno.readTextFile(farm.coordinator.log);
    assert.match(coordinatorLog, /Rejected peer/);
    const status = await farm.status();
    assert.equal(status.workers.length, 1, "only the good worker is used");
  });
});

Deno.test("e2e: updates pushed to a mirror never unmount a running job's overlay", async () => {
  await withFarm("overlay", { workers: 1, slotsPerWorker: 3 }, async (farm, tree) => {
    const sh = `${farm.binDir}/termite-sh`;
    // A long job on the worker, while other jobs change the build tree's root
    // directory (new files) and the master pushes that change to the mirror.
    const long = runIn(tree, [sh, "-c", "sleep 2; echo late > late.txt; cat late.txt"], farm.env);
    for (let i = 0; i < 4; i++) {
      const r = await runIn(tree, [sh, "-c", `echo ${i} > quick${i}.txt`], farm.env);
      assert.equal(r.code, 0, r.stderr);
    }
    const r = await long;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "late\n");
    assert.equal(await Deno.readTextFile(`${tree}/late.txt`), "late\n");
    for (let i = 0; i < 4; i++) {
      assert.equal(await Deno.readTextFile(`${tree}/quick${i}.txt`), `${i}\n`);
    }
  });
});

Deno.test("e2e: jobs run as nobody and see only what the master may serve", async () => {
  await withFarm("isolation", { workers: 1 }, async (farm, tree) => {
    const sh = `${farm.binDir}/termite-sh`;
    await Deno.writeTextFile(`${tree}/private.txt`, "secret\n", { mode: 0o600 });
    await Deno.chmod(`${tree}/private.txt`, 0o600);
    await Deno.mkdir(`${tree}/closed`, { mode: 0o700 });
    await Deno.chmod(`${tree}/closed`, 0o700);
    await Deno.writeTextFile(`${tree}/closed/inner.txt`, "hidden\n", { mode: 0o644 });
    await Deno.writeTextFile(`${tree}/public.txt`, "public\n");
    const id = await runIn(tree, [sh, "-c", "id -u; id -G"], farm.env);
    assert.equal(id.stdout, "65534\n65534\n");
    const pub = await runIn(tree, [sh, "-c", "cat public.txt"], farm.env);
    assert.equal(pub.stdout, "public\n");
    const priv = await runIn(tree, [sh, "-c", "cat private.txt"], farm.env);
    assert.notEqual(priv.code, 0);
    assert.doesNotMatch(priv.stdout, /secret/);
    const inner = await runIn(tree, [sh, "-c", "cat closed/inner.txt"], farm.env);
    assert.notEqual(inner.code, 0, "a 0644 file inside a 0700 directory is not served");
    // Excluded prefixes (/proc of the master, /sys, ...) are not the master's.
    const proc = await runIn(tree, [sh, "-c", "cat /proc/1/cmdline | tr '\\0' ' '"], farm.env);
    assert.doesNotMatch(proc.stdout, /systemd|init|sh -c sleep/);
    // Writing outside the writable root fails; inside works.
    // (Through a variable: a command naming a path outside the tree runs on the master.)
    const outside = await runIn(tree, [sh, "-c", "d=/usr; echo x > $d/termite-x"], farm.env);
    assert.notEqual(outside.code, 0);
    assert.match(outside.stderr, /Read-only file system/);
    await assert.rejects(Deno.stat("/usr/termite-x"), Deno.errors.NotFound);
  });
});

Deno.test("e2e: local rules run commands on the master and their output reaches the workers", async () => {
  await withFarm("localrc", { workers: 1 }, async (farm, tree) => {
    await Deno.writeTextFile(
      `${tree}/.termite-localrc`,
      JSON.stringify([{ regexp: "# gen-local$", local: true }]),
    );
    await Deno.writeTextFile(`${tree}/use.c`, '#include "local.h"\nint v(void) { return LV; }\n');
    const sh = `${farm.binDir}/termite-sh`;
    // Make the worker look at local.h before it exists.
    const miss = await runIn(tree, ["gcc", "-c", "use.c"], farm.env);
    assert.notEqual(miss.code, 0);
    const before = (await farm.status()).jobs.jobsLocal;
    const gen = await runIn(
      tree,
      [sh, "-c", "echo '#define LV 9' > local.h # gen-local"],
      farm.env,
    );
    assert.equal(gen.code, 0, gen.stderr);
    assert.equal((await farm.status()).jobs.jobsLocal, before + 1, "the rule ran it locally");
    const use = await runIn(tree, ["gcc", "-c", "use.c"], farm.env);
    assert.equal(use.code, 0, use.stderr);
    assert.ok((await Deno.stat(`${tree}/use.o`)).size > 0);

    // The archiver's default rule runs the real `ar` here, once: not its wrapper again.
    const local = (await farm.status()).jobs.jobsLocal;
    const ar = await runIn(tree, ["ar", "rcs", "libuse.a", "use.o"], farm.env);
    assert.equal(ar.code, 0, ar.stderr);
    assert.equal((await farm.status()).jobs.jobsLocal, local + 1);
    const listed = await runIn(tree, ["/usr/bin/ar", "t", "libuse.a"]);
    assert.equal(listed.stdout, "use.o\n");

    // A rule of the user's keeping a wrapped tool here with the wrappers on its
    // PATH would run its wrapper again and again: stopped, with the reason.
    await Deno.writeTextFile(
      `${tree}/.termite-localrc`,
      JSON.stringify([{ regexp: "^ranlib ", local: true }]),
    );
    const loop = await runIn(tree, ["ranlib", "libuse.a"], farm.env);
    assert.notEqual(loop.code, 0);
    assert.match(loop.stderr, /16 local runs nested.*"recurse": false/);
    await Deno.writeTextFile(
      `${tree}/.termite-localrc`,
      JSON.stringify([{ regexp: "^ranlib ", local: true, recurse: false }]),
    );
    const ranlib = await runIn(tree, ["ranlib", "libuse.a"], farm.env);
    assert.equal(ranlib.code, 0, ranlib.stderr);
  });
});

for (const nativeClient of [false, true]) {
  const by = nativeClient ? " (native client)" : "";
  Deno.test(`e2e${by}: ^C on the wrapper cancels the remote job`, async () => {
    await withFarm("cancel", { workers: 1, nativeClient }, async (farm, tree) => {
      const child = new Deno.Command(`${farm.binDir}/termite-sh`, {
        args: ["-c", "sleep 60; echo never > never.txt"],
        cwd: tree,
        env: farm.env,
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      // Wait until the job runs on the worker.
      for (let i = 0; i < 100; i++) {
        const s = await farm.status();
        if (s.workers.some((w) => w.running > 0)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const started = performance.now();
      child.kill("SIGINT");
      const out = await child.output();
      assert.equal(out.code, 130);
      assert.ok(performance.now() - started < 30_000);
      for (let i = 0; i < 100; i++) {
        const s = await farm.status();
        if (s.workers.every((w) => w.running === 0)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok((await farm.status()).workers.every((w) => w.running === 0));
      await assert.rejects(Deno.stat(`${tree}/never.txt`), Deno.errors.NotFound);
    });
  });
}

Deno.test("e2e: a mirror unused for a while is unmounted, and mounted again when needed", async () => {
  const dir = await scratchDir("idle-");
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree);
  await using farm = await Farm.start({
    dir: `${dir}/farm`,
    tree,
    workers: 1,
    workerArgs: ["--mirror-idle", "1s"],
  });
  try {
    const sh = `${farm.binDir}/termite-sh`;
    const first = await runIn(tree, [sh, "-c", "echo one > one.txt"], farm.env);
    assert.equal(first.code, 0, first.stderr);
    const pid = farm.workers[0].child.pid;
    const fuseMounts = async () =>
      (await Deno.readTextFile(`/proc/${pid}/mountinfo`)).split("\n")
        .filter((l) => l.includes("fuse.termite")).length;
    assert.equal(await fuseMounts(), 1);
    let dropped = false;
    for (let i = 0; i < 50 && !dropped; i++) {
      await new Promise((r) => setTimeout(r, 200));
      dropped = (await fuseMounts()) === 0;
    }
    assert.ok(dropped, "the idle mirror was unmounted");
    assert.match(await Deno.readTextFile(farm.workers[0].log), /dropping idle mirror/);
    const again = await runIn(tree, [sh, "-c", "cat one.txt; echo two > two.txt"], farm.env);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout, "one\n");
    assert.equal(await Deno.readTextFile(`${tree}/two.txt`), "two\n");
    assert.equal(await fuseMounts(), 1);
  } finally {
    await farm.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

for (const nativeClient of [false, true]) {
  const by = nativeClient ? " (native client)" : "";
  Deno.test(`e2e${by}: stdin reaches a remote job, and a job need not wait for stdin to end`, async () => {
    await withFarm("stdin", { workers: 1, nativeClient }, async (farm, tree) => {
      const sh = `${farm.binDir}/termite-sh`;
      const data = new TextEncoder().encode("line one\nline two\n".repeat(5000));
      const child = new Deno.Command(sh, {
        args: ["-c", "tee copy.txt | wc -l"],
        cwd: tree,
        env: farm.env,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const w = child.stdin.getWriter();
      await w.write(data);
      await w.close();
      const out = await child.output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.equal(new TextDecoder().decode(out.stdout).trim(), "10000");
      assert.deepEqual(await Deno.readFile(`${tree}/copy.txt`), data);

      // stdin left open (a pipe nobody closes): a job that does not read it still ends.
      const open = new Deno.Command(sh, {
        args: ["-c", "echo done > done.txt; echo ok"],
        cwd: tree,
        env: farm.env,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const keep = open.stdin.getWriter();
      await keep.write(new TextEncoder().encode("unread"));
      const status = await open.status;
      assert.equal(status.code, 0);
      await keep.close().catch(() => {});
      const rest = await open.output().catch(() => null);
      if (rest) assert.equal(new TextDecoder().decode(rest.stdout), "ok\n");
      assert.equal(await Deno.readTextFile(`${tree}/done.txt`), "done\n");
    });
  });
}

Deno.test("e2e: the tree recreated between builds (rm -rf, copy) builds again and again", async () => {
  await withFarm("rebuild", { workers: 1, slotsPerWorker: 2 }, async (farm, tree) => {
    const n = 16;
    const objs = Array.from({ length: n }, (_, i) => `a${i}.o`).join(" ");
    await Deno.writeTextFile(`${tree}/rules.mk`, `all: ${objs}\n%.o: %.c\n\tgcc -c $< -o $@\n`);
    for (let run = 0; run < 5; run++) {
      // Outside the master's knowledge, as a fresh checkout would be.
      await Deno.remove(`${tree}/build`, { recursive: true }).catch(() => {});
      await Deno.mkdir(`${tree}/build/src`, { recursive: true });
      for (let i = 0; i < n; i++) {
        await Deno.writeTextFile(`${tree}/build/src/a${i}.c`, `int a${i} = ${run};\n`);
      }
      const r = await runIn(
        `${tree}/build/src`,
        ["make", "-j4", "-f", `${tree}/rules.mk`],
        farm.env,
      );
      assert.equal(r.code, 0, `run ${run}: ${r.stderr}`);
    }
    assert.equal((await farm.status()).jobs.jobsLocal, 0);
  });
});

Deno.test("e2e: directories made by make's own shell just before a compile are seen by the worker", async () => {
  await withFarm("mkdir", { workers: 1, slotsPerWorker: 2 }, async (farm, tree) => {
    const n = 30;
    const objs: string[] = [];
    for (let i = 0; i < n; i++) {
      await Deno.writeTextFile(`${tree}/m${i}.c`, `int m${i};\n`);
      objs.push(`obj/d${i}/sub/m${i}.o`);
    }
    // The mkdir runs in make's /bin/sh on the master, outside Termite;
    // gcc (the wrapper) comes right after and writes into the new directory.
    const rules = objs.map((o, i) =>
      `${o}: m${i}.c\n\tmkdir -p $(@D)\n\tgcc -MMD -MF $(@:.o=.d) -c $< -o $@\n`
    );
    await Deno.writeTextFile(`${tree}/Makefile`, `all: ${objs.join(" ")}\n${rules.join("")}`);
    // Built again after `rm -rf obj` (outside Termite): the mirrors hold the
    // old directories, and the new ones appear while jobs land results in
    // them (this failed in 4 of 8 rounds before the change log kept order).
    for (let round = 0; round < 4; round++) {
      assert.equal((await runIn(tree, ["rm", "-rf", "obj"])).code, 0);
      const r = await runIn(tree, ["make", "-j4"], farm.env);
      assert.equal(r.code, 0, `round ${round}: ${r.stderr}`);
      for (const o of objs) assert.ok((await Deno.stat(`${tree}/${o}`)).size > 0, o);
    }
    assert.equal((await farm.status()).jobs.jobsLocal, 0);
  });
});

Deno.test("e2e: a job writing 12,000 files runs remotely; its results come back in parts", async () => {
  await withFarm("many-files", { workers: 1, slotsPerWorker: 1 }, async (farm, tree) => {
    const sh = `${farm.binDir}/termite-sh`;
    const before = (await farm.status()).jobs;
    // 12,000 small files (each its own content, so each its own inline blob),
    // deep enough paths, and a few larger ones fetched from the worker's store.
    const script = "import os\n" +
      "for d in range(40):\n" +
      "  p = f'out/some/deeper/directory/level-{d:02d}'\n" +
      "  os.makedirs(p)\n" +
      "  for i in range(300): open(f'{p}/generated-file-{i:04d}.txt', 'w').write(f'{d}.{i}\\n')\n" +
      "for i in range(3): open(f'out/big{i}.bin', 'wb').write(os.urandom(300000))\n";
    const r = await runIn(tree, [sh, "-c", `python3 -c "${script}"`], farm.env);
    assert.equal(r.code, 0, r.stderr);
    const after = (await farm.status()).jobs;
    assert.equal(after.jobsRemote - before.jobsRemote, 1, "ran remotely, once");
    assert.equal(after.retries - before.retries, 0);
    assert.equal(after.jobsLocal - before.jobsLocal, 0);
    const check = await runIn(tree, [
      "sh",
      "-c",
      "find out -type f | wc -l; cat out/some/deeper/directory/level-39/generated-file-0299.txt; " +
      "wc -c < out/big2.bin",
    ]);
    assert.equal(check.stdout, "12003\n39.299\n300000\n");
  });
});

Deno.test("e2e: an output or include outside the tree is never lost: such a compile runs on the master", async () => {
  await withFarm("outside", { workers: 1 }, async (farm, tree) => {
    const outside = await Deno.makeTempDir({ prefix: "termite-outside-" }); // under /tmp
    const varTmp = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "termite-outside-" });
    try {
      await Deno.mkdir(`${outside}/inc`);
      await Deno.writeTextFile(`${outside}/inc/far.h`, "#define FAR 7\n");
      await Deno.writeTextFile(`${tree}/x.c`, '#include "far.h"\nint x(void) { return FAR; }\n');
      const before = (await farm.status()).jobs;
      const compiles = [
        ["gcc", `-I${outside}/inc`, "-c", "x.c", "-o", `${outside}/x.o`],
        ["gcc", "-I", `${outside}/inc`, "-c", "x.c", "-o", `${varTmp}/x.o`],
      ];
      for (const argv of compiles) {
        const r = await runIn(tree, argv, farm.env);
        assert.equal(r.code, 0, r.stderr);
      }
      assert.ok((await Deno.stat(`${outside}/x.o`)).size > 0, "-o under /tmp");
      assert.ok((await Deno.stat(`${varTmp}/x.o`)).size > 0, "-o under /var/tmp");
      const after = (await farm.status()).jobs;
      assert.equal(after.jobsOutside - before.jobsOutside, 2);
      // Through a variable no argv check sees (base64 of "/tmp"): the worker
      // finds the object left in the job's private /tmp, and the master runs
      // the job itself.
      await Deno.writeTextFile(`${tree}/y.c`, "int y(void) { return 3; }\n");
      const name = `termite-via-variable-${crypto.randomUUID()}.o`;
      try {
        const viaVariable = await runIn(
          tree,
          [
            `${farm.binDir}/termite-sh`,
            "-c",
            `d=$(echo L3RtcA== | base64 -d); gcc -c y.c -o $d/${name}`,
          ],
          farm.env,
        );
        assert.equal(viaVariable.code, 0, viaVariable.stderr);
        assert.equal(viaVariable.stderr, "");
        assert.ok((await Deno.stat(`/tmp/${name}`)).size > 0, "-o /tmp/... through a variable");
        const jobs = (await farm.status()).jobs;
        const logs = await Deno.readTextFile(`${farm.dir}/logs/master.log`);
        assert.equal(jobs.jobsOutside - before.jobsOutside, 3, `${JSON.stringify(jobs)}\n${logs}`);
      } finally {
        await Deno.remove(`/tmp/${name}`).catch(() => {});
      }
      // An ordinary compile still runs remotely.
      const inside = await runIn(tree, ["gcc", `-I${tree}`, "-c", "x.c", "-DFAR=1"], farm.env);
      assert.notEqual(inside.code, 0, "far.h is not in the tree: the remote compile fails");
      assert.equal((await farm.status()).jobs.jobsRemote, after.jobsRemote + 1);
    } finally {
      await Deno.remove(outside, { recursive: true });
      await Deno.remove(varTmp, { recursive: true });
    }
  });
});

for (const nativeClient of [false, true]) {
  const by = nativeClient ? " (native client)" : "";
  Deno.test(`e2e${by}: lua builds with make SHELL=termite-sh: the recursive make stays here, its compiles go to the workers`, async () => {
    const src = await fetchSource("lua5.4");
    await withFarm("shell", { source: src, nativeClient }, async (farm, tree) => {
      const local = `${tree}-local`;
      assert.equal((await runIn(ROOT, ["cp", "-a", src, local])).code, 0);
      assert.equal((await runIn(local, ["make", "-j4", "linux"])).code, 0);
      // A bare termite-sh, found on PATH, as a user would write it.
      const build = await runIn(tree, ["make", "-j4", "SHELL=termite-sh", "linux"], farm.env);
      assert.equal(build.code, 0, build.stdout + build.stderr);
      assert.equal((await runIn(tree, [`${tree}/src/lua`, "-e", "print(6*7)"])).stdout, "42\n");
      const objects = [...Deno.readDirSync(`${local}/src`)].filter((e) => e.name.endsWith(".o"));
      for (const o of objects) {
        assert.ok(await sameBytes(`${local}/src/${o.name}`, `${tree}/src/${o.name}`), o.name);
      }
      const { jobs } = await farm.status();
      // `cd src && make linux` (and the sub-make's own `make` lines), `ar rcu` and
      // `ranlib` ran here by the default rules; every compile ran on a worker.
      assert.ok(jobs.jobsRemote >= objects.length, JSON.stringify(jobs));
      assert.ok(jobs.jobsLocal >= 3 && jobs.jobsLocal <= 5, JSON.stringify(jobs));
      assert.deepEqual(jobs.localByCause, {});
      await Deno.remove(local, { recursive: true });
    });
  });
}

Deno.test("e2e: CMake with the wrapper as its compiler launcher builds on the workers", async () => {
  await withFarm("cmake", { workers: 1 }, async (farm, tree) => {
    await Deno.writeTextFile(
      `${tree}/CMakeLists.txt`,
      "cmake_minimum_required(VERSION 3.13)\nproject(hello C)\nadd_executable(hello a.c b.c)\n",
    );
    await Deno.writeTextFile(`${tree}/a.c`, "int b(void);\nint main(void) { return b() - 42; }\n");
    await Deno.writeTextFile(`${tree}/b.c`, "int b(void) { return 42; }\n");
    const configure = await runIn(tree, [
      "cmake",
      "-S",
      ".",
      "-B",
      "build",
      `-DCMAKE_C_COMPILER_LAUNCHER=${farm.binDir}/termite`,
    ], { PATH: "/usr/bin:/bin" });
    assert.equal(configure.code, 0, configure.stdout + configure.stderr);
    const before = (await farm.status()).jobs.jobsRemote;
    const build = await runIn(tree, ["cmake", "--build", "build"], { PATH: "/usr/bin:/bin" });
    assert.equal(build.code, 0, build.stdout + build.stderr);
    assert.doesNotMatch(build.stderr, /termite:/);
    assert.equal((await runIn(tree, [`${tree}/build/hello`])).code, 0);
    assert.ok((await farm.status()).jobs.jobsRemote - before >= 2, "both compiles ran remotely");
  });
});
