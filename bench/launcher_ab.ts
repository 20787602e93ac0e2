/**
 * Two revisions of the sandbox side by side: `/bin/true` jobs through each
 * revision's runJob() and launcher (built by that revision's
 * ensureLauncher()), in blocks of 25 that alternate between the two (A B,
 * B A, ...). Reports the CPU of the launcher's processes and the job per job
 * (this process's reaped children, getrusage to the µs) and of this process
 * (the worker's side of runJob()), by block and their medians.
 *
 * `deno run -A bench/launcher_ab.ts --a REV --b REV [--blocks N]` (as root):
 * REV is a git revision of this repository (checked out into .cache/ab/) or
 * `.` for the working tree.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { childrenCpuMs } from "./_proc.ts";
import { checkout } from "./_checkout.ts";
import type * as Sandbox from "../sandbox/mod.ts";

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
  const arms = [["A", values.a], ["B", values.b]] as const;
  const sandboxes: Record<string, typeof Sandbox> = {};
  const pools: Record<string, Sandbox.NetnsPool> = {};
  const dirs: Record<string, string> = {};
  for (const [arm, rev] of arms) {
    sandboxes[arm] = await import(`${await checkout(rev)}/sandbox/mod.ts`);
    dirs[arm] = `${base}/launcher-${arm}`;
    const launcher = await sandboxes[arm].ensureLauncher(dirs[arm]);
    pools[arm] = await sandboxes[arm].NetnsPool.open(`${base}/netns-${arm}`, launcher);
    console.log(`${arm}: ${rev} (${launcher})`);
  }
  let job = 0;
  const one = async (arm: string) => {
    const outcome = await sandboxes[arm].runJob(
      { argv: ["/bin/true"], cwd: "/", env: { PATH }, timeoutMs: 10_000 },
      {
        lowerRoot: "/",
        writableRoot: writable,
        jobDir: `${base}/jobs/${job++}`,
        launcherCacheDir: dirs[arm],
        netnsPool: pools[arm],
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
    for (const pool of Object.values(pools)) await pool.close();
  }
} finally {
  await Deno.remove(base, { recursive: true }).catch(() => {});
}
