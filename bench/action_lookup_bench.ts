/**
 * The master's CPU per action-cache hit, apart from everything else: a lua
 * build through a one-worker farm recording reads fills an action cache once
 * (kept in `<dir>` for later runs); then, in this process, the cache is
 * opened over that tree as the master opens it, and every entry's key is
 * looked up, round after round: the lookup alone (the read set's states),
 * then the lookup and the apply of the replayed result set (the objects
 * removed first, as a cached rebuild finds them). Prints wall and CPU per
 * hit (medians over rounds), hits and misses.
 *
 * `deno run -A bench/action_lookup_bench.ts [--rounds N] [--dir DIR] [--refill]`
 * (as root; lua's sources from `fetchSource`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Farm, ROOT, runIn } from "../farm/mod.ts";
import { ActionCache } from "../master/action_cache.ts";
import { Beneath } from "../master/beneath.ts";
import { HashCache } from "../master/hash_cache.ts";
import { ActionReplay } from "../master/replay.ts";
import type { JobIo, MasterStats } from "../master/master_types.ts";
import { LUA, resetTree } from "./_projects.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "15" },
    dir: { type: "string", default: `${ROOT}/.cache/test/action-lookup-bench` },
    refill: { type: "boolean", default: false },
  },
});
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 1000) {
  throw new RangeError("--rounds: 1 to 1000");
}
const dir = values.dir!;
const tree = `${dir}/tree`;
const farmDir = `${dir}/farm`;
const filled = `${dir}/filled`;

if (values.refill || !(await Deno.stat(filled).then(() => true, () => false))) {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  await Deno.chmod(dir, 0o755);
  await resetTree(await LUA.source(), tree, "recopy");
  const farm = await Farm.start({
    dir: farmDir,
    tree,
    workers: 1,
    slotsPerWorker: 2,
    workerArgs: ["--record-reads"],
  });
  try {
    const r = await runIn(tree, LUA.command(2), farm.env);
    if (r.code !== 0) throw new Error(`the fill build failed: ${r.stderr}`);
    const jobs = (await farm.status()).jobs;
    console.log(`fill build: ${jobs.jobsRemote} remote jobs`);
  } finally {
    await farm.stop();
  }
  await Deno.writeTextFile(filled, "");
}

const cacheDir = `${farmDir}/master-cache`;
let actionsDir = "";
let hashesFile = "";
for await (const e of Deno.readDir(cacheDir)) {
  if (e.name.startsWith("actions-")) actionsDir = `${cacheDir}/${e.name}`;
  if (e.name.startsWith("hashes-")) hashesFile = `${cacheDir}/${e.name}`;
}
if (actionsDir === "") throw new Error(`no action cache in ${cacheDir}`);
const keys = new Set<string>();
for await (const e of Deno.readDir(`${actionsDir}/entries`)) keys.add(e.name.split(".")[0]);

const hashCache = await HashCache.open(hashesFile === "" ? {} : { file: hashesFile });
const actions = await ActionCache.open({
  dir: actionsDir,
  root: tree,
  hashCache,
  log: (m) => console.log(m),
});
const beneath = Beneath.open(tree);
const stats = { jobsCached: 0 } as MasterStats;
const replay = new ActionReplay({
  actions,
  root: tree,
  tree: beneath,
  control: { paths: [], names: [] },
  hashCache,
  flush: () => Promise.resolve(),
  stats,
  log: (m) => console.log(m),
});
const sink = () => Promise.resolve();
const io = { stdin: null, stdout: sink, stderr: sink } as unknown as JobIo;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

async function objects(): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${tree}/src`)) {
    if (e.name.endsWith(".o")) out.push(`${tree}/src/${e.name}`);
  }
  return out;
}

interface Row {
  wall: number[];
  cpu: number[];
  hits: number;
  misses: number;
  /** States answered from the memo, per hit, last round. */
  reused: number;
}
const rows: Record<string, Row> = {
  lookup: { wall: [], cpu: [], hits: 0, misses: 0, reused: 0 },
  "lookup + apply": { wall: [], cpu: [], hits: 0, misses: 0, reused: 0 },
};
const reusedSoFar = () => (actions.stats as { statesReused?: number }).statesReused ?? 0;
try {
  for (let round = 0; round < rounds; round++) {
    for (const [name, row] of Object.entries(rows)) {
      if (name !== "lookup") { for (const o of await objects()) await Deno.remove(o); }
      let hits = 0;
      const reused0 = reusedSoFar();
      const c0 = cpuMs();
      const t0 = performance.now();
      for (const key of keys) {
        const hit = name === "lookup"
          ? await actions.lookup(key)
          : await replay.replay(key, io) !== null;
        if (hit) hits++;
        else row.misses++;
      }
      const wall = performance.now() - t0;
      const cpu = cpuMs() - c0;
      row.hits += hits;
      row.reused = hits === 0 ? 0 : (reusedSoFar() - reused0) / hits;
      if (hits > 0) {
        row.wall.push(wall / hits);
        row.cpu.push(cpu / hits);
      }
    }
  }
} finally {
  beneath.close();
  actions.close();
  await hashCache.close();
}
console.log(
  `${keys.size} keys, ${rounds} rounds; load average ${
    (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ")
  }`,
);
for (const [name, row] of Object.entries(rows)) {
  console.log(
    `${name.padEnd(16)} wall ${median(row.wall).toFixed(3)} ms/hit  CPU ${
      median(row.cpu).toFixed(3)
    } ms/hit  (min ${Math.min(...row.cpu).toFixed(3)})  hits ${row.hits} misses ${row.misses}` +
      `  states from the memo ${row.reused.toFixed(0)}/hit`,
  );
}
