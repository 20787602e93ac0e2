/**
 * A worker with no compiler: the sandbox launcher built ahead
 * (scripts/build_launcher.ts, what `deno task compile` ships inside the
 * worker's binary) is copied into the worker's root-only cache after its
 * SHA-256 is checked against its manifest; a changed binary is refused; with
 * neither gcc nor a launcher of this source the error says how to make one.
 * Then a worker run from a copy of only what its binary would carry (its
 * module graph, the launcher's source and the prebuilt launcher), with no gcc
 * on PATH, runs a job of a real build. (`deno compile` itself needs to
 * download its runtime: not here.)
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Farm, ROOT, runIn } from "../farm/mod.ts";
import { scratchDir } from "./_reliability.ts";
import {
  buildPrebuiltLauncher,
  ensureLauncher,
  launcherSourceHash,
  PREBUILT_NAME,
} from "../sandbox/mod.ts";

const COMPILERS = /^(gcc|g\+\+|cc|c\+\+|c89|c99|cpp|x86_64-linux-gnu-.*|tcc|clang.*)(-\d+)?$/;

/** A directory of links to every program on PATH but the C compilers. */
async function pathWithoutCompilers(dir: string): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  for (const from of (Deno.env.get("PATH") ?? "").split(":")) {
    if (from === "" || from === dir) continue;
    try {
      for await (const entry of Deno.readDir(from)) {
        if (COMPILERS.test(entry.name)) continue;
        await Deno.symlink(`${from}/${entry.name}`, `${dir}/${entry.name}`).catch(() => {});
      }
    } catch {
      // Not a directory.
    }
  }
  return dir;
}

/** Runs `fn` with PATH set to `path` (the launcher's gcc is found through it). */
async function withPath<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const saved = Deno.env.get("PATH");
  Deno.env.set("PATH", path);
  try {
    return await fn();
  } finally {
    if (saved === undefined) Deno.env.delete("PATH");
    else Deno.env.set("PATH", saved);
  }
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

Deno.test("ensureLauncher() installs a prebuilt launcher with no gcc, checks it, refuses a changed one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-prebuilt-" });
  try {
    const manifest = await buildPrebuiltLauncher(`${dir}/prebuilt`);
    assert.equal(manifest.source, await launcherSourceHash());
    const binary = await Deno.readFile(`${dir}/prebuilt/${PREBUILT_NAME}`);
    assert.equal(sha256(binary), manifest.sha256);
    const noGcc = await pathWithoutCompilers(`${dir}/bin`);

    const installed = await withPath(
      noGcc,
      () => ensureLauncher(`${dir}/cache`, { prebuiltDir: `${dir}/prebuilt` }),
    );
    assert.deepEqual(await Deno.readFile(installed), binary);
    assert.equal((await Deno.stat(`${dir}/cache`)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(installed)).mode! & 0o777, 0o755);
    const run = await new Deno.Command(installed, { stdout: "piped", stderr: "piped" }).output();
    assert.notEqual(run.code, 0, "the launcher runs (and wants its arguments)");

    // One byte changed after the build: refused, never run.
    const changed = binary.slice();
    changed[changed.length - 1] ^= 1;
    await Deno.writeFile(`${dir}/prebuilt/${PREBUILT_NAME}`, changed);
    await assert.rejects(
      withPath(noGcc, () => ensureLauncher(`${dir}/cache2`, { prebuiltDir: `${dir}/prebuilt` })),
      /Refusing the prebuilt launcher .*: SHA-256 [0-9a-f]{64} .*its manifest says/,
    );
    await assert.rejects(
      Deno.stat(`${dir}/cache2/termite-launcher-${manifest.source.slice(0, 16)}`),
    );

    // Built from another source (stale) and no gcc: the error says how to make one.
    await Deno.writeTextFile(
      `${dir}/prebuilt/${PREBUILT_NAME}.json`,
      JSON.stringify({ ...manifest, source: "0".repeat(64) }),
    );
    await assert.rejects(
      withPath(noGcc, () => ensureLauncher(`${dir}/cache3`, { prebuiltDir: `${dir}/prebuilt` })),
      /no gcc on PATH, and no launcher built ahead for this source in .*scripts\/build_launcher\.ts/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Whether the ELF executable `bytes` names an interpreter (PT_INTERP): dynamically linked. */
function hasInterpreter(bytes: Uint8Array): boolean {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  assert.equal(view.getUint32(0), 0x7f454c46, "an ELF file");
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true), phnum = view.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    if (view.getUint32(phoff + i * phentsize, true) === 3) return true; // PT_INTERP
  }
  return false;
}

/** Whether `bytes` (a static executable) carries glibc (its messages name it); musl's does not. */
function hasGlibc(bytes: Uint8Array): boolean {
  return new TextDecoder("latin1").decode(bytes).includes("glibc");
}

Deno.test("the launcher is linked statically, against musl where musl-gcc is; where gcc cannot (no libc.a), dynamically", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-static-" });
  try {
    const built = await ensureLauncher(`${dir}/cache`, { prebuiltDir: `${dir}/none` });
    const bytes = await Deno.readFile(built);
    assert.equal(hasInterpreter(bytes), false, "static");
    const musl = await new Deno.Command("musl-gcc", { args: ["--version"], stdout: "null" })
      .output().then((o) => o.success, () => false);
    // Bootstrap installs musl-tools: where it did, the launcher is musl's.
    assert.equal(hasGlibc(bytes), !musl, musl ? "linked against musl" : "linked against glibc");

    // A gcc that refuses -static, as one without a static libc does.
    const real = new TextDecoder().decode(
      (await new Deno.Command("sh", { args: ["-c", "command -v gcc"], stdout: "piped" }).output())
        .stdout,
    ).trim();
    await Deno.mkdir(`${dir}/bin`);
    await Deno.writeTextFile(
      `${dir}/bin/gcc`,
      `#!/bin/sh\nfor a in "$@"; do [ "$a" = -static ] && { echo "cannot find -lc" >&2; exit 1; }; done\n` +
        `exec ${real} "$@"\n`,
    );
    await Deno.chmod(`${dir}/bin/gcc`, 0o755);
    // And no musl (whose musl-gcc runs the real compiler).
    await Deno.writeTextFile(`${dir}/bin/musl-gcc`, "#!/bin/sh\nexit 1\n");
    await Deno.chmod(`${dir}/bin/musl-gcc`, 0o755);
    const fallback = await withPath(
      `${dir}/bin:${Deno.env.get("PATH")}`,
      () => ensureLauncher(`${dir}/cache2`, { prebuiltDir: `${dir}/none` }),
    );
    assert.equal(hasInterpreter(await Deno.readFile(fallback)), true, "dynamic");
    const run = await new Deno.Command(fallback, { stdout: "piped", stderr: "piped" }).output();
    assert.match(new TextDecoder().decode(run.stderr), /termite-launcher: /, "it runs");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Copies what `deno compile --include sandbox/launcher.c --include
 * sandbox/prebuilt worker.ts` puts in the worker's binary: the local modules
 * of worker.ts's graph, the two included paths, deno.json and the npm
 * package (node_modules, linked).
 */
async function copyBinarySet(to: string): Promise<void> {
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `${ROOT}/worker.ts`],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(info.code, 0, new TextDecoder().decode(info.stderr));
  const graph = JSON.parse(new TextDecoder().decode(info.stdout));
  const files: string[] = ["deno.json", "deno.lock", "sandbox/launcher.c"];
  for (const m of graph.modules as { specifier: string }[]) {
    const prefix = `file://${ROOT}/`;
    const file = m.specifier.slice(prefix.length);
    // The npm package comes whole, linked below.
    if (m.specifier.startsWith(prefix) && !file.startsWith("node_modules/")) files.push(file);
  }
  for await (const entry of Deno.readDir(`${ROOT}/sandbox/prebuilt`)) {
    files.push(`sandbox/prebuilt/${entry.name}`);
  }
  for (const file of new Set(files)) {
    await Deno.mkdir(`${to}/${file}`.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.copyFile(`${ROOT}/${file}`, `${to}/${file}`);
  }
  await Deno.symlink(await Deno.realPath(`${ROOT}/node_modules`), `${to}/node_modules`);
}

Deno.test("a worker from only what its binary carries, with no gcc on PATH, runs a build's jobs", async () => {
  const dir = await scratchDir("bare-worker-");
  const built = await runIn(ROOT, [Deno.execPath(), "run", "-A", "scripts/build_launcher.ts"]);
  assert.equal(built.code, 0, built.stderr);
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree);
  const set = `${dir}/binary-set`;
  await copyBinarySet(set);
  const noGcc = await pathWithoutCompilers(`${dir}/bin`);
  const which = await runIn(dir, ["sh", "-c", "command -v gcc cc || true"], { PATH: noGcc });
  assert.equal(which.stdout.trim(), "", "no compiler on the worker's PATH");
  const farm = await Farm.start({
    dir: `${dir}/farm`,
    tree,
    workers: 1,
    slotsPerWorker: 2,
    netns: false,
    workerScript: `${set}/worker.ts`,
    workerEnv: { PATH: noGcc },
  });
  try {
    await Deno.writeTextFile(`${tree}/a.c`, "int a(void) { return 1; }\n");
    await Deno.writeTextFile(`${tree}/b.c`, "int b(void) { return 2; }\n");
    await Deno.writeTextFile(`${tree}/Makefile`, "all: a.o b.o\n%.o: %.c\n\tgcc -c $< -o $@\n");
    const build = await runIn(tree, ["make", "-j2", `SHELL=${farm.binDir}/termite-sh`], farm.env);
    assert.equal(build.code, 0, build.stdout + build.stderr);
    const metrics = await (await fetch(`http://127.0.0.1:${farm.statusPort}/metrics`)).text();
    const logs = async () =>
      (await Deno.readTextFile(farm.master.log)) + (await Deno.readTextFile(farm.workers[0].log));
    const ran = /^termite_master_jobs_run_total\{where="(worker|local)"\} (\d+)$/gm;
    const counts = Object.fromEntries([...metrics.matchAll(ran)].map((m) => [m[1], Number(m[2])]));
    assert.deepEqual(counts, { worker: 2, local: 0 }, await logs());
    // The launcher the worker installed is the one built ahead, byte for byte.
    const cache = `${farm.workerCacheDir(0)}/launcher`;
    const names = [];
    for await (const e of Deno.readDir(cache)) names.push(e.name);
    assert.equal(names.length, 1, names.join(" "));
    assert.deepEqual(
      await Deno.readFile(`${cache}/${names[0]}`),
      await Deno.readFile(`${set}/sandbox/prebuilt/${PREBUILT_NAME}`),
    );
    const log = await Deno.readTextFile(farm.workers[0].log);
    assert.doesNotMatch(log, /gcc|compile the launcher/i, log);
  } finally {
    await farm.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
