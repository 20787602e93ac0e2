/**
 * The master's CPU per job, two versions of this code side by side: a farm
 * for each (two workers × two slots, each in network namespaces of its own),
 * the same builds alternated between them (A, B, A, B, ...), then remote
 * `gcc -c tiny.c` round trips alternated the same way. What each master
 * spent is read from its threads (/proc/<pid>/task/<tid>/schedstat, to the
 * nanosecond), so the load of the machine falls on both alike; the same code
 * on both sides differs by a few µs per job at the median.
 *
 * `deno run -A bench/master_ab.ts --a REV --b REV [--builds N] [--round-trips N] [--cached] [--cold] [--shell] [--a-flags F] [--b-flags F]`:
 * REV is a git revision of this repository (checked out with `git archive`
 * into .cache/ab/) or `.` for the working tree. Builds are lua 5.4 with
 * `make -j4` (the first of each farm, cold, is not counted). `--cached`: the
 * workers record reads and the first build fills each master's action
 * cache; every later one (the objects removed by the reset) is replayed from
 * it, and no round trips are run: the master's CPU per action-cache hit.
 * `--shell`: make runs every recipe line through the farm's `termite-sh`
 * (`make SHELL=...`). The workers' CPU per job (their processes, the
 * launchers and jobs included) is reported beside the master's.
 * `--project generated-N`: instead of lua, a generated project of N
 * translation units in one directory (whose listing every job changes).
 * `--cold`: every build on new farms, their caches and the master's fresh
 * (issue 15's cold-master build), no round trips.
 * `--a-flags`, `--b-flags`: flags for `deno run` of that side's master
 * (`--v8-flags=...`), so that one code can be compared with itself.
 */
import { parseArgs } from "node:util";
import { type Farm, ROOT } from "../farm/mod.ts";
import { processesCpuMs, processTree, threadsCpuMs, timedCommand } from "./_proc.ts";
import { generatedProject, LUA, type Project, resetTree } from "./_projects.ts";
import { checkout } from "./_checkout.ts";

const TINY_C = "int tiny(int x) { return x * 3 + 1; }\n";

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[s.length >> 1];
}

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** CPU of the farm's workers so far, ms: their process trees, launchers and jobs included. */
async function workersCpuMs(farm: Farm): Promise<number> {
  const pids: number[] = [];
  for (const w of farm.workers) pids.push(...await processTree(w.child.pid));
  return await processesCpuMs(pids);
}

async function jobsDone(farm: Farm): Promise<number> {
  return (await farm.status()).jobs.jobs;
}

/** CPU of the remote jobs' own processes so far, as the workers said, ms. */
async function jobsCpuMs(farm: Farm): Promise<number> {
  const perWorker = Object.values((await farm.status()).jobs.perWorker) as { jobCpuMs?: number }[];
  return perWorker.reduce((a, w) => a + (Number(w.jobCpuMs) || 0), 0);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      a: { type: "string", default: "HEAD" },
      b: { type: "string", default: "." },
      builds: { type: "string", default: "4" },
      "round-trips": { type: "string", default: "150" },
      cached: { type: "boolean", default: false },
      shell: { type: "boolean", default: false },
      "a-flags": { type: "string", default: "" },
      "b-flags": { type: "string", default: "" },
      project: { type: "string", default: "lua" },
      cold: { type: "boolean", default: false },
    },
  });
  // lua, or `generated-N`: N translation units in one directory (its listing in every job's updates).
  const generated = /^generated-(\d+)$/.exec(values.project)?.[1];
  if (values.project !== "lua" && generated === undefined) {
    throw new Error(`--project: lua or generated-N, not ${values.project}`);
  }
  const project: Project = generated === undefined
    ? LUA
    : generatedProject(`${ROOT}/.cache/bench-ab-${values.project}`, Number(generated));
  const cached = values.cached;
  // Every build on new farms: issue 15's cold-master builds.
  const cold = values.cold;
  // make hands every recipe line to its SHELL, the farm's termite-sh.
  const shellMode = values.shell;
  const roundTrips = cached || cold ? 0 : Number(values["round-trips"]);
  const revs = [values.a, values.b];
  const masterFlags = [values["a-flags"], values["b-flags"]].map((f) =>
    f.split(" ").filter((w) => w !== "")
  );
  const dirs = await Promise.all(revs.map(checkout));
  const work = `${ROOT}/.cache/bench-ab`;
  await Deno.remove(work, { recursive: true }).catch(() => {});
  const farms: Farm[] = [];
  const builds = [[], []] as number[][], walls = [[], []] as number[][];
  const trips = [[], []] as number[][];
  const tripsBeyond = [[], []] as number[][];
  const workerCpu = [[], []] as number[][];
  const beyondJobs = [[], []] as number[][];
  // Side i's farm; with --cold a new one (every cache fresh) for each build.
  const startFarm = async (i: number, round: number): Promise<Farm> => {
    const { Farm: FarmOf } = await import(
      `${dirs[i]}/farm/mod.ts`
    ) as typeof import("../farm/mod.ts");
    const tree = `${work}/${i}/tree`;
    await Deno.mkdir(tree, { recursive: true });
    for (const d of [work, `${work}/${i}`, tree]) await Deno.chmod(d, 0o755);
    return await FarmOf.start({
      dir: `${work}/${i}/farm${cold ? `-${round}` : ""}`,
      tree,
      workers: 2,
      slotsPerWorker: 2,
      prefix: `termite-ab${Deno.pid}-${i}`,
      workerArgs: cached ? ["--record-reads"] : [],
      masterDenoFlags: masterFlags[i],
    });
  };
  try {
    for (const i of [0, 1]) farms.push(await startFarm(i, 0));
    const src = await project.source();
    for (let round = 0; round <= Number(values.builds); round++) {
      for (const i of [0, 1]) {
        if (cold && round > 0) {
          await farms[i].stop();
          farms[i] = await startFarm(i, round);
        }
        const farm = farms[i];
        const tree = `${farm.tree}/${project.name}`;
        await resetTree(src, tree, "in-place");
        const pid = farm.master.child.pid;
        const [jobs, cpu] = [await jobsDone(farm), await threadsCpuMs(pid)];
        const workersBefore = await workersCpuMs(farm);
        const jobsCpuBefore = await jobsCpuMs(farm);
        const hits = (await farm.status()).jobs.jobsCached;
        const run = await timedCommand({
          argv: shellMode
            ? [...project.command(4), `SHELL=${farm.binDir}/termite-sh`]
            : project.command(4),
          cwd: tree,
          env: farm.env,
          logPath: `${farm.dir}/build-${round}.log`,
          timeoutS: project.timeoutS,
        });
        if (run.code !== 0) throw new Error(`The build of ${revs[i]} failed: ${farm.dir}`);
        const jobsNow = await jobsDone(farm) - jobs;
        const perJob = (await threadsCpuMs(pid) - cpu) / jobsNow;
        const workersPerJob = (await workersCpuMs(farm) - workersBefore) / jobsNow;
        const beyondPerJob = workersPerJob - (await jobsCpuMs(farm) - jobsCpuBefore) / jobsNow;
        const hit = (await farm.status()).jobs.jobsCached - hits;
        if (round === 0) continue; // cold (with --cold, a first build to warm the page cache)
        builds[i].push(perJob);
        workerCpu[i].push(workersPerJob);
        beyondJobs[i].push(beyondPerJob);
        walls[i].push(run.wallMs);
        console.error(
          `build ${round} ${"AB"[i]}: master ${perJob.toFixed(2)} ms/job, workers ` +
            `${workersPerJob.toFixed(1)} ms/job (beyond the jobs ${beyondPerJob.toFixed(1)}), ` +
            `${(run.wallMs / 1000).toFixed(2)} s` +
            (cached ? `, ${hit} hits of ${await jobsDone(farm) - jobs} jobs` : ""),
        );
      }
    }
    for (const farm of farms) {
      await Deno.mkdir(`${farm.tree}/rt`, { recursive: true });
      await Deno.writeTextFile(`${farm.tree}/rt/tiny.c`, TINY_C);
    }
    for (let k = 0; k <= roundTrips && !cached && !cold; k++) {
      for (const [i, farm] of farms.entries()) {
        const pid = farm.master.child.pid;
        const workers0 = await workersCpuMs(farm), jobs0 = await jobsCpuMs(farm);
        const cpu = await threadsCpuMs(pid);
        const out = await new Deno.Command(`${farm.binDir}/gcc`, {
          args: ["-c", "tiny.c"],
          cwd: `${farm.tree}/rt`,
          env: farm.env,
          clearEnv: true,
          stdout: "null",
          stderr: "piped",
        }).output();
        if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
        const spent = await threadsCpuMs(pid) - cpu;
        if (k > 0 && spent >= 0) trips[i].push(spent); // < 0: a thread ended meanwhile
        // The workers' CPU beyond the compile's own processes (launcher, worker, FUSE).
        const beyond = await workersCpuMs(farm) - workers0 - (await jobsCpuMs(farm) - jobs0);
        if (k > 0) tripsBeyond[i].push(beyond);
      }
    }
  } finally {
    for (const farm of farms) await farm.stop();
  }
  const lines = [
    `| | code | master CPU ms/job, ${project.name} -j4 (median; each build) | ` +
    "workers' CPU ms/job (median; " +
    "each build) | workers' CPU ms/job beyond the jobs' own (median; each build) | " +
    "build s (median) | master CPU ms per remote tiny compile (median; mean) | " +
    "workers' CPU ms per remote tiny compile beyond the compile (median; mean) |",
    "|---|---|---|---|---|---|---|---|",
  ];
  for (const i of [0, 1]) {
    lines.push(
      `| ${"AB"[i]} | ${revs[i]}${masterFlags[i].length ? ` ${masterFlags[i].join(" ")}` : ""} | ${
        median(builds[i]).toFixed(2)
      } (${builds[i].map((v) => v.toFixed(2)).join(", ")}) | ${median(workerCpu[i]).toFixed(1)} (${
        workerCpu[i].map((v) => v.toFixed(1)).join(", ")
      }) | ${median(beyondJobs[i]).toFixed(1)} (${
        beyondJobs[i].map((v) => v.toFixed(1)).join(", ")
      }) | ${(median(walls[i]) / 1000).toFixed(2)} | ${median(trips[i]).toFixed(3)}; ${
        mean(trips[i]).toFixed(3)
      } (${trips[i].length}) | ${median(tripsBeyond[i]).toFixed(2)}; ${
        mean(tripsBeyond[i]).toFixed(2)
      } |`,
    );
  }
  console.log(lines.join("\n"));
}
