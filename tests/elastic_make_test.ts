/**
 * termite-make: make's parallelism follows the farm's slots through a GNU
 * make jobserver the wrapper owns.
 */
import assert from "node:assert/strict";
import { Farm, runIn } from "../farm/mod.ts";
import { scratchDir } from "./_reliability.ts";
import { jobsFor, withoutJobs } from "../wrapper/elastic_make.ts";

Deno.test("termite-make drops make's own -j and takes the workers' slots, else the local ones", () => {
  assert.deepEqual(
    withoutJobs(["-j4", "-j", "8", "--jobs=3", "--jobs", "2", "-k", "all", "-j", "-C", "src"]),
    ["-k", "all", "-C", "src"],
  );
  assert.deepEqual(withoutJobs(["all", "--", "-j4"]), ["all", "--", "-j4"]);
  assert.equal(jobsFor({ remote: 6, local: 2 }), 6);
  assert.equal(jobsFor({ remote: 0, local: 2 }), 2);
  assert.equal(jobsFor({ remote: 0, local: 0 }), 1);
  assert.equal(jobsFor({ remote: 1e9, local: 2 }), 1024);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("termite-make: a worker joining mid-build raises the jobs running at once, one leaving lowers it", async () => {
  const dir = await scratchDir("elastic-");
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree);
  const n = 100;
  const targets = Array.from({ length: n }, (_, i) => `t${i}`);
  await Deno.writeTextFile(
    `${tree}/Makefile`,
    `all: ${targets.join(" ")}\nt%:\n\tsleep 1; echo $@ > $@\n`,
  );
  const farm = await Farm.start({ dir: `${dir}/farm`, tree, workers: 2, slotsPerWorker: 2 });
  try {
    await farm.killWorker(1);
    for (let i = 0; (await farm.status()).workers.length > 1; i++) {
      assert.ok(i < 300, "the master never saw worker 1 go");
      await sleep(100);
    }
    // `-j1` is the user's guess: dropped, the farm decides.
    const build = runIn(tree, [`${farm.binDir}/termite-make`, "-j1", "SHELL=termite-sh"], farm.env);
    let ended = false;
    build.finally(() => ended = true);
    const running = async () => (await farm.status()).jobs.jobsRunning;
    /** The most jobs seen running at once while `until` is false. */
    const watch = async (until: () => boolean | Promise<boolean>) => {
      let max = 0;
      while (!ended && !await until()) {
        max = Math.max(max, await running());
        await sleep(100);
      }
      return max;
    };
    // One worker, 2 slots: 2 at once (make's own job and one token).
    await watch(async () => await running() > 0);
    let samples = 0;
    const first = await watch(() => ++samples > 40);
    assert.equal(first, 2, "one worker of 2 slots: 2 jobs at once");
    await farm.startWorker(1);
    // Two workers: 4 at once, soon.
    let deadline = Date.now() + 30_000;
    let most = 0;
    await watch(async () => {
      most = Math.max(most, await running());
      return most >= 4 || Date.now() > deadline;
    });
    assert.ok(!ended, "the build ended before the new worker was used");
    assert.equal(most, 4, "two workers of 2 slots: 4 jobs at once");
    // It leaves: the jobs holding its tokens end (make competes with
    // termite-make for the tokens they give back, so it may take a few), then
    // 2 at once again, and never more.
    await farm.killWorker(1);
    deadline = Date.now() + 90_000;
    let calm = 0;
    await watch(async () => {
      calm = await running() <= 2 ? calm + 1 : 0;
      return calm >= 30 || Date.now() > deadline;
    });
    assert.ok(!ended, "the build ended before its jobs at once came down to 2");
    assert.ok(calm >= 30, "the jobs at once never came down to 2 after the worker left");
    const after = await watch(() => false);
    assert.ok(after <= 2, `${after} jobs at once after the worker left`);
    const r = await build;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /termite-make: 2 jobs at once \(2 worker slots\), following the farm/);
    assert.match(r.stderr, /termite-make: 4 jobs at once \(4 worker slots\)/);
    for (const t of targets) assert.equal(await Deno.readTextFile(`${tree}/${t}`), `${t}\n`);
  } finally {
    await farm.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
