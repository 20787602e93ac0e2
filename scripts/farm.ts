/**
 * The main job (`deno task dev`): a local farm — a coordinator, two workers
 * each in its own network namespace, and a master — builds lua 5.4 from its
 * Debian source with `make -j` through the wrapper, checks that the built lua
 * runs and that every object file is identical to a local build, prints a
 * summary and stops everything, removing its mounts and namespaces.
 * `--native-client` links the tools to the native wrapper client instead of
 * the Deno wrapper (`bin/termite-client`, built with gcc when needed).
 */
import { parseArgs } from "node:util";
import { Farm, fetchSource, ROOT, runIn } from "../farm/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    workers: { type: "string", default: "2" },
    slots: { type: "string", default: "2" },
    jobs: { type: "string", default: "4" },
    keep: { type: "boolean", default: false },
    // Link the tools to the native client (bin/termite-client) instead of the Deno wrapper.
    "native-client": { type: "boolean", default: false },
  },
});

async function files(dir: string, suffix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(suffix)) out.push(e.name);
  }
  return out.sort();
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

const src = await fetchSource("lua5.4");
const work = `${ROOT}/.cache/dev/${Deno.pid}`;
await Deno.remove(work, { recursive: true }).catch(() => {});
await Deno.mkdir(work, { recursive: true });
await Deno.chmod(work, 0o755);
const local = `${work}/local`, tree = `${work}/tree`;
for (const dir of [local, tree]) {
  const cp = await runIn(ROOT, ["cp", "-a", src, dir]);
  if (cp.code !== 0) throw new Error(cp.stderr);
}

console.log(`termite dev: local reference build of lua (make -j${values.jobs})`);
let t = performance.now();
const ref = await runIn(local, ["make", `-j${values.jobs}`, "linux"]);
const localMs = performance.now() - t;
if (ref.code !== 0) throw new Error(`local build failed:\n${ref.stderr}`);

console.log(`termite dev: starting a farm (${values.workers} workers × ${values.slots} slots)`);
const farm = await Farm.start({
  dir: `${work}/farm`,
  tree,
  workers: Number(values.workers),
  slotsPerWorker: Number(values.slots),
  nativeClient: values["native-client"],
});
let ok = false;
try {
  console.log(`termite dev: building lua through the farm (make -j${values.jobs})`);
  t = performance.now();
  const build = await runIn(tree, ["make", `-j${values.jobs}`, "linux"], farm.env);
  const farmMs = performance.now() - t;
  if (build.code !== 0) {
    throw new Error(`farm build failed (exit ${build.code}):\n${build.stdout}\n${build.stderr}`);
  }
  const run = await runIn(tree, [`${tree}/src/lua`, "-e", "print(('ok'):rep(2, ' '))"]);
  if (run.stdout.trim() !== "ok ok") throw new Error(`built lua does not run: ${run.stderr}`);
  const objects = await files(`${local}/src`, ".o");
  const differ: string[] = [];
  for (const o of objects) {
    if (!await sameBytes(`${local}/src/${o}`, `${tree}/src/${o}`).catch(() => false)) {
      differ.push(o);
    }
  }
  const status = await farm.status();
  const jobs = status.jobs;
  // lua's `ar rcu` and `ranlib` stay here by the default rules, as with distcc.
  const byRule = status.build.local.byRule;
  console.log("\ntermite dev: summary");
  console.log(`  lua runs:            yes (${run.stdout.trim()})`);
  console.log(
    `  object files:        ${
      objects.length - differ.length
    }/${objects.length} identical to the local build`,
  );
  console.log(
    `  jobs:                ${jobs.jobs} (remote ${jobs.jobsRemote}, local ${jobs.jobsLocal} of which ${byRule} by rule (ar, ranlib), master builtins ${jobs.jobsBuiltin}, retries ${jobs.retries})`,
  );
  for (const [address, w] of Object.entries(jobs.perWorker)) {
    const m = w.mirror ?? {};
    const per = (x: number) => (w.done ? x / w.done : 0).toFixed(0);
    console.log(
      `  worker ${address.padEnd(18)} ${w.done} done, ${w.failed} failed; per job: ` +
        `${per(w.workerMs)} ms on the worker, ${per(w.applyMs)} ms applying; mirror: ` +
        `${m.lookups ?? 0} lookups, ${m.lookupsWaited ?? 0} waited on the network, ` +
        `${m.blobFetches ?? 0} blobs fetched`,
    );
  }

  console.log(
    `  wall time:           farm ${(farmMs / 1000).toFixed(2)} s, local ${
      (localMs / 1000).toFixed(2)
    } s (ratio ${(farmMs / localMs).toFixed(2)})`,
  );
  console.log(
    `  hash cache:          ${status.hashCache.entries} entries, hit rate ${
      (status.hashCache.hitRate * 100).toFixed(0)
    }%`,
  );
  if (differ.length > 0) throw new Error(`object files differ: ${differ.join(", ")}`);
  if (jobs.jobsRemote === 0 || jobs.jobsLocal > byRule) {
    throw new Error(
      `${jobs.jobsLocal - byRule} of ${jobs.jobs} jobs ran on the master instead of a worker ` +
        `(see ${farm.dir}/logs/master.log)`,
    );
  }
  ok = true;
} finally {
  await farm.stop();
  if (!values.keep) await Deno.remove(work, { recursive: true }).catch(() => {});
}
console.log(ok ? "termite dev: OK" : "termite dev: FAILED");
Deno.exit(ok ? 0 : 1);
