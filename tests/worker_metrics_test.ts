/**
 * The worker's /metrics during a real build: a farm (coordinator, one worker
 * on the loopback, a master) compiles a few files, one command fails and one
 * is killed by the worker's time limit. The worker's and the master's
 * counters must have moved, and promtool must accept both outputs.
 */
import assert from "node:assert/strict";
import { Farm, runIn } from "../farm/mod.ts";
import { scratchDir } from "./_reliability.ts";
import { promtoolCheck } from "./_tools.ts";

const FILES = 4;

function metric(text: string, name: string): number {
  const escaped = name.replace(/[{}\\"+.]/g, (c) => `\\${c}`);
  const m = new RegExp(`^${escaped} (\\S+)$`, "m").exec(text);
  return m === null ? NaN : Number(m[1]);
}

async function getText(url: string): Promise<string> {
  const response = await fetch(url);
  assert.equal(response.status, 200, url);
  assert.match(response.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return await response.text();
}

async function promtoolAccepts(text: string): Promise<void> {
  const check = await promtoolCheck(text);
  assert.equal(check.code, 0, check.output);
  assert.equal(check.output.trim(), "", "no lint warnings");
}

Deno.test("worker metrics: counters move during a build; promtool accepts them", async () => {
  const dir = await scratchDir("wmetrics-");
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree);
  const farm = await Farm.start({
    dir: `${dir}/farm`,
    tree,
    workers: 1,
    slotsPerWorker: 2,
    netns: false,
    workerArgs: ["--job-timeout-max", "8s"],
  });
  try {
    const url = farm.workers[0].metricsUrl;
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const before = await getText(url);
    await promtoolAccepts(before);
    assert.equal(metric(before, 'termite_worker_jobs_total{outcome="ok"}'), 0);
    assert.equal(metric(before, "termite_worker_slots"), 2);
    assert.equal(metric(before, "termite_worker_slots_busy"), 0);
    assert.equal(metric(before, 'termite_worker_sandbox_kills_total{cause="timeout"}'), 0);

    const objects: string[] = [];
    for (let i = 0; i < FILES; i++) {
      await Deno.writeTextFile(`${tree}/f${i}.c`, `int f${i}(int x) { return x * ${i}; }\n`);
      objects.push(`f${i}.o`);
    }
    await Deno.writeTextFile(
      `${tree}/Makefile`,
      `all: ${objects.join(" ")}\n%.o: %.c\n\tgcc -c $< -o $@\n` +
        `fail:\n\tgcc -c missing.c -o missing.o\nslow:\n\tsleep 60\nbig:\n\thead -c 300000 /dev/urandom > big.bin\n`,
    );
    const shell = [`SHELL=${farm.binDir}/termite-sh`];
    const build = await runIn(tree, ["make", "-j2", ...shell], farm.env);
    assert.equal(build.code, 0, build.stdout + build.stderr);
    // A job runs while it is scraped: the slow one, until the time limit kills it.
    const slow = runIn(tree, ["make", ...shell, "slow"], farm.env);
    let during = "";
    for (let i = 0; i < 200; i++) {
      during = await getText(url);
      if (metric(during, "termite_worker_slots_busy") === 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(metric(during, "termite_worker_slots_busy"), 1, during);
    const slowDone = await slow;
    assert.notEqual(slowDone.code, 0, "the slow job was killed");
    assert.match(slowDone.stderr, /killed/);
    const failed = await runIn(tree, ["make", ...shell, "fail"], farm.env);
    assert.notEqual(failed.code, 0);
    // Too large to travel in the reply: the master fetches it from the worker's store.
    const big = await runIn(tree, ["make", ...shell, "big"], farm.env);
    assert.equal(big.code, 0, big.stderr);
    assert.equal((await Deno.stat(`${tree}/big.bin`)).size, 300000);

    const after = await getText(url);
    await promtoolAccepts(after);
    assert.ok(metric(after, 'termite_worker_jobs_total{outcome="ok"}') >= FILES, after);
    assert.equal(metric(after, 'termite_worker_jobs_total{outcome="exit_nonzero"}'), 1, after);
    assert.equal(metric(after, 'termite_worker_jobs_total{outcome="killed"}'), 1, after);
    assert.equal(metric(after, 'termite_worker_sandbox_kills_total{cause="timeout"}'), 1, after);
    assert.ok(
      metric(after, 'termite_worker_job_duration_seconds_count{outcome="ok"}') >= FILES,
      after,
    );
    assert.ok(
      metric(after, 'termite_worker_job_duration_seconds_bucket{outcome="killed",le="+Inf"}') ===
        1,
      after,
    );
    assert.ok(metric(after, "termite_worker_mirror_lookups_total") > 0, after);
    assert.ok(metric(after, "termite_worker_mirror_lookups_waited_total") > 0, after);
    assert.ok(metric(after, "termite_worker_fetched_blobs_total") > 0, after);
    assert.ok(metric(after, "termite_worker_fetched_bytes_total") > 0, after);
    assert.ok(metric(after, "termite_worker_store_bytes") > 0, after);
    assert.ok(metric(after, "termite_worker_served_blobs_total") >= 1, after);
    assert.ok(metric(after, "termite_worker_served_bytes_total") >= 300000, after);
    assert.equal(metric(after, "termite_worker_slots_busy"), 0, after);
    assert.equal(metric(after, "termite_worker_mirrors"), 1, after);

    // Only GET /metrics: no other page, no other method.
    const other = await fetch(url.replace(/\/metrics$/, "/status.json"));
    assert.equal(other.status, 404);
    await other.body?.cancel();
    const post = await fetch(url, { method: "POST" });
    assert.equal(post.status, 405);
    await post.body?.cancel();

    // The master's queue, local runs and blobs fetched, beside its other counters.
    const master = await getText(`http://127.0.0.1:${farm.statusPort}/metrics`);
    await promtoolAccepts(master);
    assert.equal(metric(master, "termite_master_jobs_queued"), 0, master);
    assert.equal(metric(master, "termite_master_jobs_local_running"), 0, master);
    assert.ok(metric(master, "termite_master_fetched_blobs_total") >= 1, master);
  } finally {
    await farm.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
