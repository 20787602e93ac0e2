/**
 * Two versions of the job launcher side by side: `/bin/true` jobs through
 * runJob() in blocks of 25 that alternate between the two (A B, B A, ...),
 * each built from its `sandbox/launcher.c` the way `sandbox/launcher.ts`
 * builds it (static, against musl where musl-gcc is, else glibc). Reports the
 * CPU of the launcher's processes and the job per job (this process's reaped
 * children, getrusage to the µs) and of this process (the worker's side of
 * runJob), by block and their medians.
 *
 * `deno run -A bench/launcher_ab.ts --a REV|FILE --b REV|FILE [--blocks N]`
 * (as root): REV is a git revision of this repository, FILE a launcher.c.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import {
  ensureLauncher,
  LAUNCHER_CFLAGS,
  linkKernelHeaders,
  NetnsPool,
  runJob,
} from "../sandbox/mod.ts";
import { childrenCpuMs } from "./_proc.ts";

const ROOT = decodeURIComponent(new URL("..", import.meta.url).pathname);
const PATH = "/usr/local/bin:/usr/bin:/bin";
const PER_BLOCK = 25;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    a: { type: "string", default: "HEAD" },
    b: { type: "string", default: "." },
    blocks: { type: "string", default: "8" },
  },
});

/** The launcher source of `spec`: a file, `.` (this checkout) or a git revision. */
async function source(spec: string): Promise<Uint8Array> {
  if (spec === ".") return await Deno.readFile(`${ROOT}/sandbox/launcher.c`);
  if (await Deno.stat(spec).then((s) => s.isFile, () => false)) return await Deno.readFile(spec);
  const out = await new Deno.Command("git", {
    args: ["show", `${spec}:sandbox/launcher.c`],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`No sandbox/launcher.c at ${spec}`);
  return out.stdout;
}

/** Compiles `src` to `out`: musl-gcc with the kernel's headers, else gcc (both static). */
async function build(src: string, out: string, scratch: string): Promise<string> {
  const headers = `${scratch}/kernel-headers`;
  if (await linkKernelHeaders(headers)) {
    const musl = await new Deno.Command("musl-gcc", {
      args: [...LAUNCHER_CFLAGS, "-isystem", headers, "-o", out, src],
      stderr: "piped",
    }).output().catch(() => undefined);
    if (musl?.success) return "musl";
  }
  const gcc = await new Deno.Command("gcc", {
    args: [...LAUNCHER_CFLAGS, "-o", out, src],
    stderr: "piped",
  }).output();
  if (!gcc.success) throw new Error(`Cannot build ${src}: ${new TextDecoder().decode(gcc.stderr)}`);
  return "glibc";
}

const median = (v: number[]) => [...v].sort((x, y) => x - y)[v.length >> 1];
const ms = (v: number) => v.toFixed(2);
const selfCpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

const base = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "termite-launcher-ab-" });
try {
  await Deno.chmod(base, 0o755);
  const writable = `${base}/w`;
  await Deno.mkdir(writable);
  // The name ensureLauncher() gives this checkout's launcher: each arm's binary
  // goes under it in a cache dir of its own.
  const built = await ensureLauncher(`${base}/launcher`);
  const name = built.slice(built.lastIndexOf("/") + 1);
  const arms = [["A", values.a], ["B", values.b]] as const;
  const dirs: Record<string, string> = {};
  for (const [arm, spec] of arms) {
    const dir = `${base}/launcher-${arm}`;
    await Deno.mkdir(dir, { mode: 0o700 });
    await Deno.writeFile(`${dir}/launcher.c`, await source(spec));
    const libc = await build(`${dir}/launcher.c`, `${dir}/${name}`, dir);
    console.log(`${arm}: ${spec} (${libc})`);
    dirs[arm] = dir;
  }
  const pool = await NetnsPool.open(`${base}/netns`, built);
  let job = 0;
  const one = async (arm: string) => {
    const outcome = await runJob(
      { argv: ["/bin/true"], cwd: "/", env: { PATH }, timeoutMs: 10_000 },
      {
        lowerRoot: "/",
        writableRoot: writable,
        jobDir: `${base}/jobs/${job++}`,
        launcherCacheDir: dirs[arm],
        netnsPool: pool,
      },
    );
    if (outcome.exitCode !== 0) throw new Error(`/bin/true failed with launcher ${arm}`);
  };
  try {
    for (let i = 0; i < 10; i++) for (const [arm] of arms) await one(arm);
    const children: Record<string, number[]> = { A: [], B: [] };
    const self: Record<string, number[]> = { A: [], B: [] };
    for (let block = 0; block < Number(values.blocks); block++) {
      for (const [arm] of block % 2 ? [...arms].reverse() : arms) {
        const [c, s] = [childrenCpuMs(), selfCpuMs()];
        for (let i = 0; i < PER_BLOCK; i++) await one(arm);
        children[arm].push((childrenCpuMs() - c) / PER_BLOCK);
        self[arm].push((selfCpuMs() - s) / PER_BLOCK);
      }
    }
    for (const [arm, spec] of arms) {
      console.log(
        `${arm} (${spec}): launcher and job ${ms(median(children[arm]))} ms per job ` +
          `(blocks ${children[arm].map(ms).join(" ")}); this process ${
            ms(median(self[arm]))
          } ms (blocks ${self[arm].map(ms).join(" ")})`,
      );
    }
  } finally {
    await pool.close();
  }
} finally {
  await Deno.remove(base, { recursive: true }).catch(() => {});
}
