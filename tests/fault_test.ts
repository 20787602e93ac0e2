/**
 * Process faults against a real farm (coordinator, workers each in a network
 * namespace, master, as processes): a worker killed mid-job, the coordinator
 * and the master restarted during a build. Every build completes with objects
 * identical to local compiles, or its wrappers fail clearly; nothing is left
 * behind. Network, disk and corruption faults are in fault_io_test.ts.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import {
  checkObjects,
  mounts,
  namesStartingWith,
  pidsMentioning,
  runIn,
  sleep,
  stagedEntries,
  waitUntil,
  withFarm,
  writeProject,
} from "./_reliability.ts";

Deno.test("fault: a worker killed mid-job; jobs complete elsewhere, its leftovers cleaned at restart", async () => {
  await withFarm("fault-kill", { slotsPerWorker: 2 }, async (farm, tree) => {
    const objects = await writeProject(tree, {
      n: 12,
      before: "sleep 2",
      shell: `${farm.binDir}/termite-sh`,
    });
    const cacheDir = farm.workerCacheDir(0);
    // Two long jobs, one per worker (least loaded first), cancelled at the end.
    const long = [0, 1].map(() =>
      new Deno.Command(`${farm.binDir}/termite-sh`, {
        args: ["-c", "sleep 60"],
        cwd: tree,
        env: farm.env,
        stdout: "null",
        stderr: "null",
      }).spawn()
    );
    assert.ok(await waitUntil(async () => (await farm.status()).jobs.jobsRunning >= 2, 10_000));
    const building = runIn(tree, ["make", "-j4"], farm.env);
    // Jobs are running on both workers (2 s sleeps) when worker 0 dies.
    assert.ok(
      await waitUntil(async () => (await farm.status()).jobs.jobsRunning >= 6, 10_000),
      "six jobs running",
    );
    await sleep(500);
    const launchers = await pidsMentioning(`${cacheDir}/jobs/`);
    assert.ok(launchers.length > 0, "worker 0 was running jobs");
    await farm.killWorker(0);
    const killedAt = Date.now();
    // Its sandboxes die with it: no launcher or job is left running.
    assert.ok(
      await waitUntil(async () => (await pidsMentioning(`${cacheDir}/jobs/`)).length === 0, 3_000),
      `processes left behind: ${await pidsMentioning(`${cacheDir}/jobs/`)}`,
    );
    for (const w of long) w.kill("SIGINT");
    for (const w of long) assert.equal((await w.status).code, 130, "^C cancels");
    const build = await building;
    const buildDoneMs = Date.now() - killedAt;
    assert.equal(build.code, 0, build.stdout + build.stderr);
    assert.equal(await checkObjects(tree, objects), objects.length);
    const status = await farm.status();
    assert.ok(status.jobs.retries + status.jobs.jobsLocal > 0, JSON.stringify(status.jobs));
    assert.equal(status.jobs.jobsFailed, 0);
    console.log(
      `worker killed: build done ${buildDoneMs} ms later; jobs remote ${status.jobs.jobsRemote}, ` +
        `local ${status.jobs.jobsLocal}, retries ${status.jobs.retries}, failed 0`,
    );

    // Start it again on the same cache dir: no stale mount, no job dir left,
    // and its mirror mounts again at the same place for new jobs.
    await farm.startWorker(0);
    const pid = farm.workers[0].child.pid;
    assert.deepEqual(
      await mounts(pid, { type: /fuse/, under: cacheDir }),
      [],
      "no FUSE mount in the new worker",
    );
    assert.deepEqual([...Deno.readDirSync(`${cacheDir}/jobs`)], []);
    await farm.waitForWorkers(2);
    const before = (await farm.status()).jobs.perWorker[farm.workers[0].address]?.done ?? 0;
    const more = await writeProject(tree, {
      n: 6,
      prefix: "g",
      before: "sleep 1",
      shell: `${farm.binDir}/termite-sh`,
    });
    const again = await runIn(tree, ["make", "-j4"], farm.env);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await checkObjects(tree, more), more.length);
    const after = (await farm.status()).jobs.perWorker[farm.workers[0].address]?.done ?? 0;
    assert.ok(after > before, "the restarted worker ran jobs");
    const fuse = await mounts(pid, { type: /fuse/, under: cacheDir });
    assert.equal(fuse.length, 1, fuse.join("\n"));
    assert.match(fuse[0], new RegExp(`${cacheDir}/mirrors/[^ ]+/root(-\\d+)? `));
  });
});

Deno.test("fault: the coordinator killed and restarted mid-build; workers re-register, the master keeps them", async () => {
  await withFarm("fault-coord", { slotsPerWorker: 2 }, async (farm, tree) => {
    const objects = await writeProject(tree, {
      n: 12,
      before: "sleep 1",
      shell: `${farm.binDir}/termite-sh`,
    });
    const building = runIn(tree, ["make", "-j4"], farm.env);
    assert.ok(await waitUntil(async () => (await farm.status()).jobs.jobsRunning >= 4, 10_000));
    await farm.killCoordinator();
    // Meanwhile the master keeps its workers.
    let fewest = 2;
    for (let i = 0; i < 10; i++) {
      fewest = Math.min(fewest, (await farm.status()).workers.length);
      await sleep(100);
    }
    await farm.startCoordinator();
    const restartedAt = Date.now();
    for (let i = 0; i < 30; i++) {
      fewest = Math.min(fewest, (await farm.status()).workers.length);
      await sleep(100);
    }
    const build = await building;
    assert.equal(build.code, 0, build.stdout + build.stderr);
    assert.equal(await checkObjects(tree, objects), objects.length);
    assert.equal(fewest, 2, "the master kept both workers through the restart");
    // Both workers registered again, the master subscribed again.
    for (const w of farm.workers) {
      assert.ok(
        await waitUntil(
          async () =>
            ((await Deno.readTextFile(w.log)).match(/Registered with coordinator/g) ?? []).length >=
              2,
          15_000,
        ),
        `${w.name} registered again`,
      );
    }
    const reregisteredMs = Date.now() - restartedAt;
    const masterLog = await Deno.readTextFile(farm.master.log);
    assert.ok((masterLog.match(/Watching workers at coordinator/g) ?? []).length >= 2, masterLog);
    const jobs = (await farm.status()).jobs;
    console.log(
      `coordinator restarted: workers registered again within ${reregisteredMs} ms; build ` +
        `jobs remote ${jobs.jobsRemote}, local ${jobs.jobsLocal}, retries ${jobs.retries}`,
    );
    // The new coordinator's list reaches the master: a worker started now is used.
    await farm.restartWorker(1);
    await farm.waitForWorkers(2);
    const before = (await farm.status()).jobs;
    const more = await writeProject(tree, {
      n: 6,
      prefix: "g",
      before: "sleep 1",
      shell: `${farm.binDir}/termite-sh`,
    });
    const again = await runIn(tree, ["make", "-j4"], farm.env);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await checkObjects(tree, more), more.length);
    const after = (await farm.status()).jobs;
    assert.equal(after.jobsLocal, before.jobsLocal, "no job ran locally");
    assert.equal(after.jobsRemote - before.jobsRemote, more.length);
    const address = farm.workers[1].address;
    assert.ok(
      (after.perWorker[address]?.done ?? 0) > (before.perWorker[address]?.done ?? 0),
      "the restarted worker ran jobs",
    );
  });
});

/** Runs `make` and fails (instead of hanging the suite) if it takes longer than `ms`. */
async function makeWithin(
  farm: { env: Record<string, string> },
  tree: string,
  args: string[],
  ms: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      runIn(tree, ["make", ...args], farm.env),
      new Promise<never>((_, reject) =>
        timer = setTimeout(() => reject(new Error(`make hung for ${ms} ms`)), ms)
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

for (const signal of ["SIGKILL", "SIGTERM"] as const) {
  Deno.test(`fault: the master ${signal === "SIGKILL" ? "killed" : "stopped"} (${signal}) while wrappers wait; none hangs, the tree stays consistent`, async () => {
    await withFarm("fault-master", { slotsPerWorker: 2 }, async (farm, tree) => {
      const objects = await writeProject(tree, {
        n: 16,
        before: "sleep 1.5",
        shell: `${farm.binDir}/termite-sh`,
      });
      const building = makeWithin(farm, tree, ["-j8", "-k"], 60_000);
      // Four jobs on the workers, four wrappers waiting for a slot.
      assert.ok(await waitUntil(async () => (await farm.status()).jobs.jobsRunning >= 8, 15_000));
      // Some results landed, more are being applied now.
      const landed = () => objects.filter((o) => existsSync(`${tree}/${o}`)).length;
      assert.ok(await waitUntil(() => landed() >= 4, 20_000, 20), "objects landing");
      await farm.killMaster(signal);
      const killedAt = Date.now();
      if (signal === "SIGTERM") {
        // A clean stop: exit 0, nothing staged left in the tree.
        assert.equal((await farm.master.done).code, 0);
        assert.deepEqual(await namesStartingWith(tree, ".termite-staging"), []);
      }
      const build = await building;
      const makeDoneMs = Date.now() - killedAt;
      assert.notEqual(build.code, 0);
      // Each wrapper that lost its job says so; one started after a clean
      // stop removed the socket says there is none (and runs its command here).
      const lost = build.stderr.split("\n").filter((l) => /^termite: /.test(l));
      assert.ok(lost.length > 0, build.stderr);
      for (const line of lost) {
        assert.match(
          line,
          /master closed the connection|lost the master|no master for|cannot reach|there is no such socket/i,
        );
      }
      // What landed is whole: every object present equals a local compile.
      const present = await checkObjects(tree, objects, { requireAll: false });
      assert.ok(present < objects.length);
      console.log(
        `master ${signal}: make -k ended ${makeDoneMs} ms later; ${lost.length} wrappers failed ` +
          `clearly; ${present} of ${objects.length} objects present, all identical to local`,
      );
      // The workers cancelled the master's jobs: none left running.
      for (let i = 0; i < farm.workers.length; i++) {
        const jobs = `${farm.workerCacheDir(i)}/jobs/`;
        assert.ok(await waitUntil(async () => (await pidsMentioning(jobs)).length === 0, 10_000));
      }
      // A wrapper started while the master is down fails at once, clearly, when told to;
      // by default it compiles here, with one warning line.
      const gcc = [`${farm.binDir}/gcc`, "-c", "f0.c", "-o", "x.o"];
      const down = await runIn(tree, gcc, { ...farm.env, TERMITE_LOCAL_FALLBACK: "0" });
      assert.equal(down.code, 255);
      assert.match(down.stderr, /^termite: .*master/m);
      const here = await runIn(tree, gcc, farm.env);
      assert.equal(here.code, 0, here.stderr);
      // SIGKILL leaves a stale socket; SIGTERM removes it.
      assert.match(
        here.stderr,
        /^termite: (cannot reach the master|no master for) .*; running gcc here$/m,
      );
      await Deno.remove(`${tree}/x.o`);
      // Restarted, the master clears staging dirs (its own private one is empty); the build
      // completes.
      await farm.startMaster();
      assert.equal((await namesStartingWith(tree, ".termite-staging")).length, 1);
      assert.deepEqual(await stagedEntries(tree), []);
      await farm.waitForWorkers(2);
      const again = await makeWithin(farm, tree, ["-j8"], 60_000);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(await checkObjects(tree, objects), objects.length);
      assert.deepEqual(await stagedEntries(tree), []);
    });
  });
}
