/**
 * The action cache's cost and gain on a farm (one worker recording reads):
 * 8 lua files compiled (a) with recording, every job a miss, (b) without
 * recording (a rule says `"cache": false`), interleaved, and (c) replayed
 * from the cache after the objects are removed. Prints wall times and the
 * workers' time per job. `deno run -A bench/action_cache_bench.ts [rounds]`
 * (as root; lua's sources from `fetchSource`).
 */
import { Farm, fetchSource, ROOT, runIn } from "../farm/mod.ts";

const FILES = ["lapi", "lcode", "ldo", "lgc", "llex", "lparser", "lvm", "ltable"];
const rounds = Number(Deno.args[0] ?? 3);

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
});

async function build(
  x: string,
): Promise<{ wallMs: number; workerMsPerJob: number; cached: number }> {
  for (const f of FILES) await Deno.remove(`${tree}/${f}.o`).catch(() => {});
  const before = (await farm.status()).jobs;
  const t = performance.now();
  const r = await runIn(tree, ["make", "-j2", `X=${x}`], farm.env);
  const wallMs = performance.now() - t;
  if (r.code !== 0) throw new Error(r.stderr);
  const after = (await farm.status()).jobs;
  const w = Object.values(after.perWorker)[0];
  const w0 = Object.values(before.perWorker)[0];
  const jobs = after.jobsRemote - before.jobsRemote;
  return {
    wallMs,
    workerMsPerJob: jobs === 0 ? 0 : (w.workerMs - (w0?.workerMs ?? 0)) / jobs,
    cached: after.jobsCached - before.jobsCached,
  };
}

try {
  await build("-DWARM"); // the mirror warm
  const rows: string[] = [];
  for (let i = 0; i < rounds; i++) {
    const rec = await build(`-DROUND=${i}`);
    const plain = await build(`-DROUND=${i}-NOCACHE`);
    const hit = await build(`-DROUND=${i}`);
    rows.push(
      `round ${i}: recorded miss ${rec.wallMs.toFixed(0)} ms (worker ${
        rec.workerMsPerJob.toFixed(0)
      } ms/job), not recorded ${plain.wallMs.toFixed(0)} ms (worker ${
        plain.workerMsPerJob.toFixed(0)
      } ms/job), replayed ${hit.wallMs.toFixed(0)} ms (${hit.cached}/8 from the cache)`,
    );
    console.log(rows.at(-1));
  }
  console.log(JSON.stringify((await farm.status()).build.cached));
} finally {
  await farm.stop();
  if (Deno.env.get("KEEP")) console.log(dir);
  else await Deno.remove(dir, { recursive: true });
}
