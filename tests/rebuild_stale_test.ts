/**
 * In-place rebuilds through a farm: the tree cleaned (objects, archive and
 * program removed, as `make clean` does) and built again at the same path,
 * with a header and some sources changed between builds, two workers of two
 * slots each. Every program must come from its own build's header and
 * sources (this found the master's hash cache answering for a rewritten file
 * with a hash begun on its old bytes). A job that hits a stale file handle in
 * a mirror is retried by the master, so the build would still pass: what is
 * counted here is those retries, in the master's and workers' logs: none.
 * (Retries for other reasons, say a job cgroup removed by another farm
 * starting on this machine, are not this test's business.)
 */
import assert from "node:assert/strict";
import { Farm, runIn } from "../farm/mod.ts";
import { scratchDir } from "./_reliability.ts";

const SOURCES = 48;
const BUILDS = 6;

Deno.test("e2e: a few hundred jobs of in-place rebuilds hit no stale file handle", async () => {
  const dir = await scratchDir("rebuild-");
  const tree = `${dir}/tree`;
  const src = `${tree}/src`;
  await Deno.mkdir(src, { recursive: true });
  const objects = Array.from({ length: SOURCES }, (_, i) => `a${i}.o`);
  await Deno.writeTextFile(
    `${src}/Makefile`,
    `all: prog\nprog: main.o lib.a\n\tgcc -o $@ main.o lib.a\n` +
      `lib.a: ${objects.join(" ")}\n\tar rc $@ $^\n\tranlib $@\n` +
      `%.o: %.c common.h\n\tgcc -c $< -o $@\n` +
      `clean:\n\trm -f *.o lib.a prog\n`,
  );
  // The archivers too run on the workers (by default they stay on the master):
  // they read every object just rebuilt in place.
  await Deno.writeTextFile(
    `${tree}/.termite-localrc`,
    JSON.stringify([{ regexp: String.raw`^(?:ar|ranlib)\s`, local: false }]),
  );
  await Deno.chmod(`${tree}/.termite-localrc`, 0o644);
  const farm = await Farm.start({ dir: `${dir}/farm`, tree, workers: 2, slotsPerWorker: 2 });
  let jobs = 0;
  try {
    for (let build = 0; build < BUILDS; build++) {
      // Changed between builds: the header every time, a few sources now and then.
      await Deno.writeTextFile(`${src}/common.h`, `#define BUILD ${build}\nint sum(void);\n`);
      for (let i = 0; i < SOURCES; i++) {
        if (build > 0 && i % 5 !== build % 5) continue;
        await Deno.writeTextFile(
          `${src}/a${i}.c`,
          `#include "common.h"\nint a${i}(void) { return BUILD + ${i * (build + 1)}; }\n`,
        );
      }
      await Deno.writeTextFile(
        `${src}/main.c`,
        `#include "common.h"\nint main(void) { return BUILD == ${build} ? 0 : 1; }\n`,
      );
      const clean = await runIn(src, ["make", "clean"]);
      assert.equal(clean.code, 0, clean.stderr);
      const made = await runIn(src, ["make", "-j8"], farm.env);
      assert.equal(made.code, 0, `build ${build}: ${made.stderr}`);
      const ran = await runIn(src, [`${src}/prog`]);
      assert.equal(ran.code, 0, `build ${build}: the program was built from this build's header`);
    }
    const status = await farm.status();
    jobs = status.jobs.jobs;
    assert.ok(jobs >= BUILDS * (SOURCES + 3), `${jobs} jobs`);
    assert.equal(status.jobs.jobsLocal, 0, "every job ran on a worker");
  } finally {
    await farm.stop();
  }
  let stale = "";
  for (const name of ["master", "worker-0", "worker-1"]) {
    const log = await Deno.readTextFile(`${dir}/farm/logs/${name}.log`);
    stale += log.split("\n").filter((l) => /stale file handle/i.test(l)).join("\n");
  }
  assert.equal(stale, "", "no job failed on a stale file handle");
  console.log(`${jobs} jobs in ${BUILDS} in-place rebuilds, 0 stale file handles`);
  await Deno.remove(dir, { recursive: true });
});
