/**
 * Soak: a local farm (coordinator, workers in network namespaces, master)
 * builds the same generated C project again and again for N minutes, each
 * build from clean, checking every object against a local compile. Between
 * builds it samples each process (resident and peak memory, open
 * descriptors, threads), the mounts in each worker's namespace, each store's
 * bytes, leftover job dirs and sandbox processes, and reports their growth
 * from the first builds (after warm-up) to the last.
 *
 *   deno run -A scripts/soak.ts [--minutes 15] [--files 120] [--workers 2]
 *     [--slots 4] [--jobs 16] [--sample-every 30s] [--out soak.json]
 *
 * Exit status 1 when a build failed or an object differed.
 */
import { parseArgs } from "node:util";
import { createHash } from "node:crypto";
import { Farm, ROOT, runIn } from "../farm/mod.ts";
import { type FarmSample, sampleFarm } from "../farm/probe.ts";
import { parseDurationMs } from "../common/cli.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    minutes: { type: "string", default: "15" },
    files: { type: "string", default: "120" },
    workers: { type: "string", default: "2" },
    slots: { type: "string", default: "4" },
    jobs: { type: "string", default: "16" },
    "sample-every": { type: "string", default: "30s" },
    out: { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(`usage: soak.ts [--minutes 15] [--files 120] [--workers 2] [--slots 4]
  [--jobs 16] [--sample-every 30s] [--out FILE.json]`);
  Deno.exit(0);
}

const durationMs = Number(values.minutes) * 60_000;
const files = Number(values.files);
const sampleEveryMs = parseDurationMs(values["sample-every"]);

function log(message: string): void {
  console.error(`soak: ${message}`);
}

function sha(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

const work = `${ROOT}/.cache/soak/${Deno.pid}`;
await Deno.mkdir(work, { recursive: true });
await Deno.chmod(`${ROOT}/.cache/soak`, 0o755);
await Deno.chmod(work, 0o755);
const tree = `${work}/tree`;
await Deno.mkdir(tree);
const objects: string[] = [];
for (let i = 0; i < files; i++) {
  await Deno.writeTextFile(
    `${tree}/s${i}.c`,
    `#include <stdio.h>\nint s${i}(int x) { return x * ${i} + ${i % 13}; }\n`,
  );
  objects.push(`s${i}.o`);
}
await Deno.writeTextFile(
  `${tree}/Makefile`,
  `all: ${objects.join(" ")}\n%.o: %.c\n\tgcc -O1 -c $< -o $@\n` +
    `clean:\n\trm -f *.o\n`,
);
// Reference: each object compiled locally once.
const reference = new Map<string, string>();
{
  const r = await runIn(tree, ["make", `-j${navigator.hardwareConcurrency}`]);
  if (r.code !== 0) throw new Error(`local build failed: ${r.stderr}`);
  for (const o of objects) reference.set(o, sha(await Deno.readFile(`${tree}/${o}`)));
  await runIn(tree, ["make", "clean"]);
}

log(
  `farm: ${values.workers} workers × ${values.slots} slots; ${files} files, make -j${values.jobs}`,
);
const farm = await Farm.start({
  dir: `${work}/farm`,
  tree,
  workers: Number(values.workers),
  slotsPerWorker: Number(values.slots),
});

interface Build {
  n: number;
  ms: number;
  ok: boolean;
  mismatches: number;
}

const builds: Build[] = [];
const samples: FarmSample[] = [];
let failed = false;
const started = Date.now();
let lastSampleMs = 0;
let finalStatus: Awaited<ReturnType<Farm["status"]>> | null = null;
try {
  while (Date.now() - started < durationMs) {
    const t = performance.now();
    const r = await runIn(tree, ["make", `-j${values.jobs}`], farm.env);
    const ms = performance.now() - t;
    let mismatches = 0;
    if (r.code === 0) {
      for (const o of objects) {
        const got = await Deno.readFile(`${tree}/${o}`).then(sha, () => "missing");
        if (got !== reference.get(o)) mismatches++;
      }
    } else {
      log(`build ${builds.length + 1} failed (${r.code}): ${r.stderr.slice(-2000)}`);
    }
    const build = { n: builds.length + 1, ms, ok: r.code === 0, mismatches };
    builds.push(build);
    if (!build.ok || mismatches > 0) failed = true;
    const clean = await runIn(tree, ["make", "clean"]);
    if (clean.code !== 0) throw new Error(`make clean failed: ${clean.stderr}`);
    // The first build warms the stores; sample after it, then every interval.
    if (builds.length === 1 || Date.now() - lastSampleMs >= sampleEveryMs) {
      lastSampleMs = Date.now();
      const s = await sampleFarm(farm);
      samples.push(s);
      const p = s.processes.map((x) => `${x.name} ${Math.round(x.rssKb / 1024)}M/${x.fds}fd`);
      log(
        `build ${build.n} ${Math.round(ms)} ms ${build.ok ? "ok" : "FAILED"}` +
          `${mismatches ? ` ${mismatches} mismatches` : ""}; ${p.join(", ")}; ` +
          `mounts ${s.workerMounts.join("/")} (fuse ${s.workerFuseMounts.join("/")}), ` +
          `stores ${s.storeBytes.map((b) => `${(b / 2 ** 20).toFixed(1)}M`).join("/")}, ` +
          `job dirs ${s.jobDirs.join("/")}, sandbox processes ${s.sandboxProcesses}`,
      );
    }
  }
  samples.push(await sampleFarm(farm));
  finalStatus = await farm.status();
} finally {
  await farm.stop();
}

/** Mean over the first and the last three samples (the first is after warm-up). */
function growth(pick: (s: FarmSample) => number): { first: number; last: number } {
  const head = samples.slice(0, 3).map(pick);
  const tail = samples.slice(-3).map(pick);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  return { first: mean(head), last: mean(tail) };
}

const rows: [string, string, string, string][] = [];
const names = samples[0]?.processes.map((p) => p.name) ?? [];
for (const [i, name] of names.entries()) {
  const rss = growth((s) => s.processes[i].rssKb / 1024);
  const fds = growth((s) => s.processes[i].fds);
  const peak = Math.max(...samples.map((s) => s.processes[i].hwmKb)) / 1024;
  rows.push([
    `${name} RSS MiB`,
    rss.first.toFixed(1),
    rss.last.toFixed(1),
    `peak ${peak.toFixed(1)}`,
  ]);
  rows.push([`${name} fds`, fds.first.toFixed(1), fds.last.toFixed(1), ""]);
}
const wCount = samples[0]?.workerMounts.length ?? 0;
for (let w = 0; w < wCount; w++) {
  const m = growth((s) => s.workerMounts[w]);
  const f = growth((s) => s.workerFuseMounts[w]);
  const b = growth((s) => s.storeBytes[w] / 2 ** 20);
  rows.push([`worker-${w} mounts (fuse)`, `${m.first} (${f.first})`, `${m.last} (${f.last})`, ""]);
  rows.push([`worker-${w} store MiB`, b.first.toFixed(1), b.last.toFixed(1), ""]);
}
const leftovers = growth((s) => s.sandboxProcesses + s.jobDirs.reduce((a, b) => a + b, 0));
rows.push(["job dirs + sandbox processes", String(leftovers.first), String(leftovers.last), ""]);

const msList = builds.map((b) => b.ms).sort((a, b) => a - b);
const summary = {
  minutes: (Date.now() - started) / 60_000,
  builds: builds.length,
  failedBuilds: builds.filter((b) => !b.ok).length,
  mismatchedObjects: builds.reduce((a, b) => a + b.mismatches, 0),
  jobs: builds.length * files,
  buildMs: {
    first: Math.round(builds[0]?.ms ?? 0),
    median: Math.round(msList[Math.floor(msList.length / 2)] ?? 0),
    max: Math.round(msList.at(-1) ?? 0),
  },
  masterJobs: finalStatus?.jobs ?? null,
  growth: rows.map(([what, first, last, note]) => ({ what, first, last, note })),
};
console.log(
  `\nsoak: ${summary.builds} builds (${summary.jobs} jobs) in ${summary.minutes.toFixed(1)} min, ` +
    `${summary.failedBuilds} failed, ${summary.mismatchedObjects} objects differing; ` +
    `build ms first ${summary.buildMs.first}, median ${summary.buildMs.median}, max ${summary.buildMs.max}`,
);
console.log("| what | first builds | last builds | note |\n|---|---|---|---|");
for (const r of rows) console.log(`| ${r.join(" | ")} |`);
if (values.out) {
  await Deno.writeTextFile(values.out, JSON.stringify({ summary, samples, builds }, null, 2));
}
await Deno.remove(work, { recursive: true }).catch(() => {});
Deno.exit(failed ? 1 : 0);
