/**
 * Sandbox cost: `/bin/true` through runJob() against a plain spawn, the
 * launcher's own set-up time, and a small gcc compile through the sandbox
 * (with result-set collection) against the same compile run directly.
 *
 * Run alone: `deno run -A bench/sandbox_bench.ts [--quick]` (as root).
 */
import { createHash } from "node:crypto";
import {
  collectResultSet,
  ensureLauncher,
  type JobSpec,
  LAUNCHER_CFLAGS,
  LAUNCHER_CFLAGS_DYNAMIC,
  NetnsPool,
  runJob,
} from "../sandbox/mod.ts";
import { childrenCpuMs } from "./_proc.ts";
import type { BenchResult } from "./types.ts";

const PATH = "/usr/local/bin:/usr/bin:/bin";
const SOURCE = `#include <stdio.h>
#include <string.h>
struct point { int x, y; };
static int dot(struct point a, struct point b) { return a.x * b.x + a.y * b.y; }
int main(int argc, char **argv) {
  struct point p = { argc, (int)strlen(argv[0]) }, q = { 3, 4 };
  printf("%d\\n", dot(p, q));
  return 0;
}
`;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const CPUACCT = "/sys/fs/cgroup/cpuacct";

/**
 * CPU the whole machine has spent so far (every process and kernel thread),
 * ms: cgroup v1's root cpuacct to the ns, else /proc/stat's ticks.
 */
async function machineBusyMs(): Promise<number> {
  try {
    return Number(await Deno.readTextFile(`${CPUACCT}/cpuacct.usage`)) / 1e6;
  } catch {
    const line = (await Deno.readTextFile("/proc/stat")).split("\n")[0];
    const [user, nice, system, _idle, _iowait, irq, softirq] = line.split(/\s+/).slice(1)
      .map(Number);
    return (user + nice + system + irq + softirq) * 10;
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

async function timeDirect(argv: string[], cwd: string): Promise<number> {
  const t = performance.now();
  const out = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    cwd,
    env: { PATH },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t;
  if (!out.success) {
    throw new Error(`${argv.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return ms;
}

async function putFile(path: string): Promise<{ hash: string; size: number }> {
  const bytes = await Deno.readFile(path);
  return { hash: createHash("sha256").update(bytes).digest("hex"), size: bytes.length };
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const runs = options.quick ? 10 : 30;
  const base = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "termite-sandbox-bench-" });
  const w = `${base}/w`;
  const cacheDir = `${base}/launcher-cache`;
  const results: BenchResult[] = [];
  try {
    await Deno.chmod(base, 0o755);
    await Deno.mkdir(w);
    await Deno.writeTextFile(`${w}/hello.c`, SOURCE);
    await new Deno.Command("chown", { args: ["-R", "65534:65534", w] }).output();

    let t = performance.now();
    await ensureLauncher(cacheDir);
    results.push({
      name: "sandbox launcher build (gcc, once per source version)",
      value: round(performance.now() - t),
      unit: "ms",
    });

    let job = 0;
    const sandboxed = async (
      spec: JobSpec,
      collect: boolean,
      pidsCgroupRoot?: null,
      network: "none" | "host" = "none",
      launcherCacheDir = cacheDir,
      netnsPool?: NetnsPool,
    ) => {
      let launcherMs = 0;
      const t = performance.now();
      const outcome = await runJob(spec, {
        lowerRoot: "/",
        writableRoot: w,
        jobDir: `${base}/jobs/${job++}`,
        launcherCacheDir,
        pidsCgroupRoot,
        network,
        netnsPool,
        onUpper: collect
          ? (upper, lowerDir) => collectResultSet(upper, w, putFile, { lowerDir }).then(() => {})
          : undefined,
      });
      const ms = performance.now() - t;
      if (outcome.exitCode !== 0) throw new Error(`${spec.argv.join(" ")} failed in the sandbox`);
      launcherMs = outcome.launcherMs ?? 0;
      return { ms, launcherMs };
    };

    const trueSpec: JobSpec = { argv: ["/bin/true"], cwd: "/", env: { PATH }, timeoutMs: 10_000 };
    await sandboxed(trueSpec, false);
    await timeDirect(["/bin/true"], "/");
    const direct: number[] = [];
    const boxed: number[] = [];
    const setup: number[] = [];
    for (let i = 0; i < runs; i++) {
      direct.push(await timeDirect(["/bin/true"], "/"));
      const r = await sandboxed(trueSpec, false);
      boxed.push(r.ms);
      setup.push(r.launcherMs);
    }
    results.push(
      { name: "/bin/true spawned directly (median)", value: round(median(direct)), unit: "ms" },
      { name: "/bin/true through runJob (median)", value: round(median(boxed)), unit: "ms" },
      {
        name: "sandbox overhead per job (median difference)",
        value: round(median(boxed) - median(direct)),
        unit: "ms",
      },
      {
        name: "launcher set-up inside the launcher (median)",
        value: round(median(setup)),
        unit: "ms",
        note: "start of the launcher to the job's exec: namespaces, mounts, chroot, privileges",
      },
    );

    // The job's own network namespace, one reused from a pool, and the
    // worker's: blocks of jobs alternated, each measured by its wall time,
    // the CPU of this process's reaped children (launcher, init, job; getrusage
    // to the µs) and the
    // whole machine's (the kernel's asynchronous clean-up of dead network
    // namespaces runs in a kernel worker).
    const pool = await NetnsPool.open(`${base}/netns`, await ensureLauncher(cacheDir));
    const arms = ["own", "pooled", "host"] as const;
    type Arm = typeof arms[number];
    const blocks = options.quick ? 3 : 8;
    const perBlock = 25;
    const byNetwork = { own: [], pooled: [], host: [] } as Record<Arm, number[]>;
    const setupByNetwork = { own: [], pooled: [], host: [] } as Record<Arm, number[]>;
    const childrenCpu = { own: [], pooled: [], host: [] } as Record<Arm, number[]>;
    const machineCpu = { own: [], pooled: [], host: [] } as Record<Arm, number[]>;
    try {
      for (let block = 0; block < blocks; block++) {
        const order = block % 2 ? [...arms].reverse() : arms;
        for (const arm of order) {
          // The previous arm's clean-up by the kernel is not this one's.
          await new Promise((r) => setTimeout(r, 200));
          const children0 = childrenCpuMs();
          const machine0 = await machineBusyMs();
          for (let i = 0; i < perBlock; i++) {
            const r = await sandboxed(
              trueSpec,
              false,
              undefined,
              arm === "host" ? "host" : "none",
              cacheDir,
              arm === "pooled" ? pool : undefined,
            );
            byNetwork[arm].push(r.ms);
            setupByNetwork[arm].push(r.launcherMs);
          }
          childrenCpu[arm].push((childrenCpuMs() - children0) / perBlock);
          await new Promise((r) => setTimeout(r, 200));
          machineCpu[arm].push((await machineBusyMs() - machine0) / perBlock);
        }
      }
    } finally {
      await pool.close();
    }
    const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
    const label = {
      own: "own network namespace",
      pooled: "a pooled one",
      host: "the worker's network",
    };
    for (const arm of arms) {
      results.push({
        name: `/bin/true, ${blocks * perBlock} jobs: ${label[arm]} (median)`,
        value: round(median(byNetwork[arm])),
        unit: "ms",
        note: `mean ${round(mean(byNetwork[arm]))} ms; launcher set-up median ${
          round(median(setupByNetwork[arm]))
        } ms; CPU per job (median of blocks of ${perBlock}): ${"launcher and job"} ${
          round(median(childrenCpu[arm]))
        } ms, whole machine ${round(median(machineCpu[arm]))} ms`,
      });
    }

    // The launcher as built (static; against musl where musl-gcc is) against the
    // same source linked statically and dynamically against glibc, in blocks of
    // jobs that alternate: the CPU of the launcher's processes and the job per
    // job (this process's reaped children, getrusage to the µs).
    const launcher = await ensureLauncher(cacheDir);
    const launcherName = launcher.slice(launcher.lastIndexOf("/") + 1);
    const links = { "as built": cacheDir, "glibc, static": "", "glibc, dynamic": "" };
    for (
      const [link, flags] of [["glibc, static", LAUNCHER_CFLAGS], [
        "glibc, dynamic",
        LAUNCHER_CFLAGS_DYNAMIC,
      ]] as const
    ) {
      const dir = `${base}/launcher-${link.replace(/\W+/g, "-")}`;
      await Deno.mkdir(dir, { mode: 0o700 });
      const gcc = await new Deno.Command("gcc", {
        args: [
          ...flags,
          "-o",
          `${dir}/${launcherName}`,
          decodeURIComponent(new URL("../sandbox/launcher.c", import.meta.url).pathname),
        ],
      }).output();
      if (!gcc.success) throw new Error(`Cannot build the launcher (${link})`);
      links[link] = dir;
    }
    type Link = keyof typeof links;
    const linkNames = Object.keys(links) as Link[];
    const byLink = Object.fromEntries(linkNames.map((l) => [l, [] as number[]])) as Record<
      Link,
      number[]
    >;
    const linkPool = await NetnsPool.open(`${base}/netns-links`, launcher);
    try {
      for (let block = 0; block < (options.quick ? 3 : 8); block++) {
        for (const link of block % 2 ? [...linkNames].reverse() : linkNames) {
          const before = childrenCpuMs();
          for (let i = 0; i < 25; i++) {
            await sandboxed(trueSpec, false, undefined, "none", links[link], linkPool);
          }
          byLink[link].push((childrenCpuMs() - before) / 25);
        }
      }
    } finally {
      await linkPool.close();
    }
    for (const link of linkNames) {
      results.push({
        name:
          `/bin/true jobs, launcher ${link}: ${"the launcher's and the job's"} CPU per job (median of blocks)`,
        value: round(median(byLink[link])),
        unit: "ms",
        note: `blocks of 25 jobs: ${byLink[link].map(round).join(", ")}`,
      });
    }

    const compile = ["gcc", "-O2", "-c", "hello.c", "-o", "hello.o"];
    const compileRuns = options.quick ? 5 : 15;
    const compileSpec: JobSpec = { argv: compile, cwd: w, env: { PATH }, timeoutMs: 60_000 };
    await sandboxed(compileSpec, true);
    const directCompile: number[] = [];
    const boxedCompile: number[] = [];
    const boxedCompileNoCgroup: number[] = [];
    const directTmp = `${base}/direct`;
    await Deno.mkdir(directTmp);
    await Deno.copyFile(`${w}/hello.c`, `${directTmp}/hello.c`);
    for (let i = 0; i < compileRuns; i++) {
      directCompile.push(await timeDirect(compile, directTmp));
      boxedCompile.push((await sandboxed(compileSpec, true)).ms);
      boxedCompileNoCgroup.push((await sandboxed(compileSpec, true, null)).ms);
    }
    results.push(
      {
        name: "gcc -O2 -c hello.c directly (median)",
        value: round(median(directCompile)),
        unit: "ms",
      },
      {
        name: "gcc -O2 -c hello.c through runJob + collectResultSet (median)",
        value: round(median(boxedCompile)),
        unit: "ms",
      },
      {
        name: "same, process cap by RLIMIT_NPROC instead of a pids cgroup (median)",
        value: round(median(boxedCompileNoCgroup)),
        unit: "ms",
        note: "cgroup v1 migration waits for an RCU grace period unless another happened recently",
      },
      {
        name: "sandboxed compile / direct compile",
        value: Math.round((median(boxedCompile) / median(directCompile)) * 100) / 100,
        unit: "x",
      },
    );

    t = performance.now();
    const parallel = 8;
    await Promise.all(
      Array.from({ length: parallel }, () => sandboxed(trueSpec, false)),
    );
    results.push({
      name: `${parallel} concurrent /bin/true jobs, wall time`,
      value: round(performance.now() - t),
      unit: "ms",
    });
  } finally {
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
  return results;
}

if (import.meta.main) {
  const results = await run({ quick: Deno.args.includes("--quick") });
  console.table(results);
}
