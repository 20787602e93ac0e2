/**
 * The action cache's cost and gain on a farm (one worker recording reads):
 * 8 lua files compiled (a) with recording, every job a miss, (b) without
 * recording (a rule says `"cache": false`), interleaved, and (c) replayed
 * from the cache after the objects are removed. Prints wall times, the
 * worker's time per job (as the master counts it) and the worker's CPU per
 * job (its processes: worker, bpftrace, launchers and jobs), with the load
 * average. `deno run -A bench/action_cache_bench.ts [rounds] [--trace-all]`
 * (as root; lua's sources from `fetchSource`); `--trace-all`: the worker's
 * tracer prints every lookup (TERMITE_TRACE_ALL_LOOKUPS), as before the
 * in-kernel filter of repeats.
 */
import { Farm, fetchSource, ROOT, runIn } from "../farm/mod.ts";
import { processTree, procStat, threadsCpuMs } from "./_proc.ts";

const FILES = ["lapi", "lcode", "ldo", "lgc", "llex", "lparser", "lvm", "ltable"];
const traceAll = Deno.args.includes("--trace-all");
const rounds = Number(Deno.args.find((a) => !a.startsWith("--")) ?? 3);
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new RangeError("rounds: 1 to 50");

const src = `${await fetchSource("lua5.4")}/src`;
await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "acache-bench-" });
await Deno.chmod(dir, 0o755);
const tree = `${dir}/tree`;
await Deno.mkdir(tree);
for await (const e of Deno.readDir(src)) {
  if (/\.[ch]$/.test(e.name)) await Deno.copyFile(`${src}/${e.name}`, `${tree}/${e.name}`);
}
await Deno.writeTextFile(
  `${tree}/Makefile`,
  `OBJS = ${FILES.map((f) => `${f}.o`).join(" ")}\nall: $(OBJS)\n%.o: %.c\n` +
    `\tgcc -std=gnu99 -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX $(X) -c $< -o $@\n`,
);
await Deno.writeTextFile(`${tree}/.termite-localrc`, '[{"regexp": "NOCACHE", "cache": false}]\n');
const farm = await Farm.start({
  dir: `${dir}/farm`,
  tree,
  workers: 1,
  slotsPerWorker: 2,
  workerArgs: ["--record-reads"],
  workerEnv: traceAll ? { TERMITE_TRACE_ALL_LOOKUPS: "1" } : {},
});
const workerPids = await processTree(farm.workers[0].child.pid);
/** The worker's processes' CPU so far (threads, and reaped children: launchers, jobs), ms. */
async function workerCpuMs(): Promise<number> {
  let ms = 0;
  for (const pid of workerPids) {
    const threads = await threadsCpuMs(pid);
    const stat = await procStat(pid);
    if (!Number.isNaN(threads) && stat !== null) ms += threads + stat.childrenS * 1000;
  }
  return ms;
}
const loadAverage = async () => (await Deno.readTextFile("/proc/loadavg")).split(" ")[0];

async function build(
  x: string,
): Promise<{ wallMs: number; workerMsPerJob: number; cpuMsPerJob: number; cached: number }> {
  for (const f of FILES) await Deno.remove(`${tree}/${f}.o`).catch(() => {});
  const before = (await farm.status()).jobs;
  const cpu0 = await workerCpuMs();
  const t = performance.now();
  const r = await runIn(tree, ["make", "-j2", `X=${x}`], farm.env);
  const wallMs = performance.now() - t;
  if (r.code !== 0) throw new Error(r.stderr);
  const cpuMs = await workerCpuMs() - cpu0;
  const after = (await farm.status()).jobs;
  const w = Object.values(after.perWorker)[0];
  const w0 = Object.values(before.perWorker)[0];
  const jobs = after.jobsRemote - before.jobsRemote;
  return {
    wallMs,
    workerMsPerJob: jobs === 0 ? 0 : (w.workerMs - (w0?.workerMs ?? 0)) / jobs,
    cpuMsPerJob: jobs === 0 ? 0 : cpuMs / jobs,
    cached: after.jobsCached - before.jobsCached,
  };
}

try {
  await build("-DWARM"); // the mirror warm
  console.log(`tracer: ${traceAll ? "every lookup printed" : "repeated lookups dropped"}`);
  const sums = { rec: [0, 0], plain: [0, 0] };
  for (let i = 0; i < rounds; i++) {
    const load = await loadAverage();
    // Alternate which goes first: the second may find caches warmer.
    const first = await build(i % 2 === 0 ? `-DROUND=${i}` : `-DROUND=${i}-NOCACHE`);
    const second = await build(i % 2 === 0 ? `-DROUND=${i}-NOCACHE` : `-DROUND=${i}`);
    const [rec, plain] = i % 2 === 0 ? [first, second] : [second, first];
    const hit = await build(`-DROUND=${i}`);
    sums.rec[0] += rec.wallMs, sums.rec[1] += rec.cpuMsPerJob;
    sums.plain[0] += plain.wallMs, sums.plain[1] += plain.cpuMsPerJob;
    console.log(
      `round ${i} (load ${load}): recorded miss ${rec.wallMs.toFixed(0)} ms (worker ${
        rec.workerMsPerJob.toFixed(0)
      } ms/job, CPU ${rec.cpuMsPerJob.toFixed(0)} ms/job), not recorded ${
        plain.wallMs.toFixed(0)
      } ms (worker ${plain.workerMsPerJob.toFixed(0)} ms/job, CPU ${
        plain.cpuMsPerJob.toFixed(0)
      } ms/job), replayed ${hit.wallMs.toFixed(0)} ms (${hit.cached}/8 from the cache)`,
    );
  }
  console.log(
    `recorded / not recorded over ${rounds} rounds: wall ${
      (sums.rec[0] / sums.plain[0]).toFixed(3)
    }, worker CPU per job ${
      (sums.rec[1] / sums.plain[1]).toFixed(3)
    } (load ${await loadAverage()})`,
  );
  console.log(JSON.stringify((await farm.status()).build.cached));
} finally {
  await farm.stop();
  if (Deno.env.get("KEEP")) console.log(dir);
  else await Deno.remove(dir, { recursive: true });
}
