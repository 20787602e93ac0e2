/**
 * Load against a real farm: `make -j64` of 500 compiles on 2 workers × 4
 * slots, every object checked against a local compile and the peak memory
 * of each process bounded; and a short soak (repeated clean builds) whose
 * descriptors, mounts, job dirs and sandbox processes must not grow.
 * `scripts/soak.ts` is the long version.
 */
import assert from "node:assert/strict";
import {
  checkObjects,
  type FarmSample,
  runIn,
  sampleFarm,
  withFarm,
  writeProject,
} from "./_reliability.ts";

/** Peak resident memory allowed per process (VmHWM), MiB: generous, catches leaks per job. */
const PEAK_MIB_MAX = { coordinator: 192, master: 640, worker: 640 };

Deno.test("load: make -j64 of 500 compiles on 2 workers × 4 slots; every object right, memory bounded", async () => {
  await withFarm("load", { workers: 2, slotsPerWorker: 4 }, async (farm, tree) => {
    const objects = await writeProject(tree, { n: 500 });
    const peak: FarmSample["processes"] = [];
    let sampling = true;
    let maxFds = 0;
    const sampler = (async () => {
      while (sampling) {
        const s = await sampleFarm(farm);
        for (const p of s.processes) maxFds = Math.max(maxFds, p.fds);
        peak.splice(0, peak.length, ...s.processes);
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    const started = performance.now();
    let build;
    try {
      build = await runIn(tree, ["make", "-j64"], farm.env);
    } finally {
      sampling = false;
      await sampler;
    }
    const buildMs = performance.now() - started;
    assert.equal(build.code, 0, build.stderr.slice(-3000));
    const after = await sampleFarm(farm);
    const status = await farm.status();
    assert.equal(await checkObjects(tree, objects), 500);
    assert.equal(status.jobs.jobsFailed, 0);
    assert.equal(status.jobs.jobsRemote + status.jobs.jobsLocal, 500);
    assert.ok(status.jobs.jobsRemote >= 450, JSON.stringify(status.jobs));
    const figures = after.processes.map((p) =>
      `${p.name} peak ${(p.hwmKb / 1024).toFixed(0)} MiB (now ${(p.rssKb / 1024).toFixed(0)})`
    );
    console.log(
      `500 jobs in ${(buildMs / 1000).toFixed(1)} s: remote ${status.jobs.jobsRemote}, ` +
        `local ${status.jobs.jobsLocal}, retries ${status.jobs.retries}; ${figures.join(", ")}; ` +
        `most descriptors ${maxFds}`,
    );
    for (const p of after.processes) {
      const role = p.name.replace(/-\d+$/, "") as keyof typeof PEAK_MIB_MAX;
      assert.ok(p.hwmKb / 1024 < PEAK_MIB_MAX[role], `${p.name}: ${p.hwmKb} kB peak`);
    }
    assert.equal(after.sandboxProcesses, 0);
    assert.deepEqual(after.jobDirs, [0, 0]);
  });
});

Deno.test("load: a short soak (repeated clean builds) grows no descriptors, mounts or leftovers", async () => {
  await withFarm("soak-lite", { workers: 2, slotsPerWorker: 2 }, async (farm, tree) => {
    const objects = await writeProject(tree, { n: 40 });
    const samples: FarmSample[] = [];
    for (let i = 0; i < 6; i++) {
      const build = await runIn(tree, ["make", "-j8"], farm.env);
      assert.equal(build.code, 0, build.stderr);
      if (i === 0) assert.equal(await checkObjects(tree, objects), objects.length);
      const clean = await runIn(tree, ["sh", "-c", "rm -f *.o"]);
      assert.equal(clean.code, 0);
      samples.push(await sampleFarm(farm));
    }
    // From the second build on (the first warms caches), nothing may keep growing.
    const second = samples[1], last = samples.at(-1)!;
    for (const [i, p] of last.processes.entries()) {
      const before = second.processes[i];
      // Descriptors: a bounded cache of blob descriptors may fill a little more.
      assert.ok(p.fds <= before.fds + 32, `${p.name}: ${before.fds} -> ${p.fds} descriptors`);
    }
    assert.deepEqual(last.workerMounts, second.workerMounts, "mounts under each worker's cache");
    assert.deepEqual(last.workerFuseMounts, [1, 1]);
    assert.deepEqual(last.jobDirs, [0, 0]);
    assert.equal(last.sandboxProcesses, 0);
    // The stores hold the same objects again and again: no growth after the first builds.
    for (const [w, bytes] of last.storeBytes.entries()) {
      assert.ok(
        bytes <= second.storeBytes[w] * 1.1 + 1e6,
        `store ${w}: ${second.storeBytes[w]} -> ${bytes}`,
      );
    }
  });
});
