/**
 * Helpers of the tests that run a farm (end to end, action cache, fault, load
 * and hostile input): a farm in a scratch directory, generated C projects,
 * local reference compiles; what the kernel says about a process (peak
 * memory, descriptors, mounts) is in farm/probe.ts.
 */
import assert from "node:assert/strict";
import { Farm, type FarmOptions, ROOT, runIn } from "../farm/mod.ts";

export { Farm, ROOT, runIn };
export {
  type FarmSample,
  fdCount,
  mounts,
  pidsMentioning,
  procStatus,
  sampleFarm,
  treeBytes,
} from "../farm/probe.ts";

/** A scratch dir under the checkout (not /tmp: the master does not serve /tmp). */
export async function scratchDir(prefix: string): Promise<string> {
  await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix });
  await Deno.chmod(dir, 0o755);
  return dir;
}

/** Options of {@linkcode withFarm}: the farm's, and how its build tree starts. */
export interface WithFarmOptions extends Omit<FarmOptions, "dir" | "tree"> {
  /** A directory copied (`cp -a`) as the build tree; default an empty one. */
  source?: string;
  /** Run before the farm starts (writes the project, say); `dir` is the scratch dir. */
  prepare?(tree: string, dir: string): Promise<void>;
}

/**
 * Runs `fn` with a farm on a build tree in a scratch dir (`dir`, beside the
 * tree: for reference builds and files outside the tree); stops the farm and
 * removes everything after.
 */
export async function withFarm(
  name: string,
  options: WithFarmOptions,
  fn: (farm: Farm, tree: string, dir: string) => Promise<void>,
): Promise<void> {
  const { source, prepare, ...farmOptions } = options;
  const dir = await scratchDir(`${name}-`);
  const tree = `${dir}/tree`;
  let farm: Farm | undefined;
  try {
    if (source) assert.equal((await runIn(ROOT, ["cp", "-a", source, tree])).code, 0);
    else await Deno.mkdir(tree);
    await prepare?.(tree, dir);
    farm = await Farm.start({ dir: `${dir}/farm`, tree, ...farmOptions });
    await fn(farm, tree, dir);
  } finally {
    await farm?.stop();
    // TERMITE_TEST_KEEP=1 keeps the logs and trees for a look after a failure.
    if (Deno.env.get("TERMITE_TEST_KEEP") === "1") console.log(`kept ${dir}`);
    else await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A farm as the action cache tests want it: one worker, recording its jobs' reads. */
export const ACTION_CACHE_FARM: WithFarmOptions = {
  workers: 1,
  slotsPerWorker: 3,
  workerArgs: ["--record-reads"],
};

/** Whether two files hold the same bytes. */
export async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** A compile run here to check one the farm ran: {@linkcode assertSameAsLocal}. */
export interface LocalCompile {
  /** Where it runs (the tree, as the farm's job did). */
  cwd: string;
  /** The compile, without its `-o`. */
  argv: string[];
  /** The object the farm built. */
  built: string;
  /** Where this compile writes (`-o`). */
  ref: string;
  /** Said when the bytes differ. */
  message: string;
}

/** Runs the compile here and asserts that the farm's object holds the same bytes. */
export async function assertSameAsLocal(compile: LocalCompile): Promise<void> {
  const local = await runIn(compile.cwd, [...compile.argv, "-o", compile.ref]);
  assert.equal(local.code, 0, local.stderr);
  assert.ok(await sameBytes(compile.built, compile.ref), compile.message);
}

/** Writes `n` tiny C files and a Makefile compiling each to an object. */
export async function writeProject(tree: string, options: {
  n: number;
  /** Shell commands run before each compile (through termite-sh when `shell` is set). */
  before?: string;
  /** SHELL for make (the farm's termite-sh to send whole recipes). */
  shell?: string;
  cflags?: string;
  prefix?: string;
}): Promise<string[]> {
  const prefix = options.prefix ?? "f";
  const objects: string[] = [];
  for (let i = 0; i < options.n; i++) {
    await Deno.writeTextFile(
      `${tree}/${prefix}${i}.c`,
      `int ${prefix}${i}(int x) { return x * ${i} + ${i % 7}; }\n`,
    );
    objects.push(`${prefix}${i}.o`);
  }
  const recipe = options.before ? `${options.before}; ` : "";
  await Deno.writeTextFile(
    `${tree}/Makefile`,
    (options.shell ? `SHELL := ${options.shell}\n` : "") +
      `all: ${objects.join(" ")}\n%.o: %.c\n\t${recipe}gcc ${
        options.cflags ?? "-O1"
      } -c $< -o $@\n`,
  );
  return objects;
}

/**
 * Compiles each object's source locally into `<tree>/.ref` (the same command
 * line from the same directory) and checks every farm-built object present is
 * byte-identical. Returns how many objects were present.
 */
export async function checkObjects(
  tree: string,
  objects: string[],
  options: { cflags?: string; requireAll?: boolean } = {},
): Promise<number> {
  const ref = `${tree}/.ref`;
  await Deno.mkdir(ref, { recursive: true });
  let present = 0;
  const missing: string[] = [];
  const sources = objects.map((o) => o.replace(/\.o$/, ".c")).join("\n");
  const r = await runIn(tree, [
    "sh",
    "-c",
    `printf '%s\\n' "$1" | xargs -P ${navigator.hardwareConcurrency} -I{} ` +
    `sh -c 'gcc ${options.cflags ?? "-O1"} -c "$1" -o ".ref/\${1%.c}.o"' - {}`,
    "-",
    sources,
  ]);
  assert.equal(r.code, 0, r.stderr);
  for (const o of objects) {
    let built: Uint8Array;
    try {
      built = await Deno.readFile(`${tree}/${o}`);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        missing.push(o);
        continue;
      }
      throw err;
    }
    const want = await Deno.readFile(`${ref}/${o}`);
    assert.ok(
      built.length === want.length && built.every((v, k) => v === want[k]),
      `${o} differs from a local compile (${built.length} vs ${want.length} bytes)`,
    );
    present++;
  }
  if (options.requireAll !== false) assert.deepEqual(missing, [], "objects missing");
  await Deno.remove(ref, { recursive: true });
  return present;
}

/** Names under `dir` starting with `prefix` (staging dirs left behind, say). */
export async function namesStartingWith(dir: string, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.startsWith(prefix)) out.push(e.name);
  return out;
}

/**
 * What is staged in the tree `dir`: every entry below its `.termite-staging*`
 * directories (a running master's private directory is there, empty between
 * jobs), with sizes.
 */
export async function stagedEntries(dir: string): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const path = `${d}/${e.name}`;
      const info = await Deno.lstat(path).catch(() => null); // gone meanwhile
      if (info === null) continue;
      out.push({ path: path.slice(dir.length + 1), size: info.size });
      if (info.isDirectory) await walk(path).catch(() => {});
    }
  };
  for (const name of await namesStartingWith(dir, ".termite-staging")) {
    await walk(`${dir}/${name}`).catch(() => {});
  }
  return out;
}

/** Polls `check` until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  intervalMs = 100,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
