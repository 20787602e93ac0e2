/**
 * Network, disk and storage faults against a real farm: the link to a worker
 * cut mid-transfer and mid-job, a worker's disk full, blobs corrupted on disk
 * and files changed under the master's hash cache. Jobs move elsewhere or are
 * detected and fetched again; builds complete with the right bytes.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { type Host, setLink } from "../farm/netns.ts";
import { type Farm, runIn, sleep, stagedEntries, waitUntil, withFarm } from "./_reliability.ts";

/** Runs a command through the farm's shell wrapper; output captured. */
function viaShell(
  farm: { binDir: string; env: Record<string, string> },
  tree: string,
  script: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return runIn(tree, [`${farm.binDir}/termite-sh`, "-c", script], farm.env);
}

/** The index of the one worker with nothing running, once the other runs a job. */
async function idleWorker(farm: Farm): Promise<number> {
  let idle = -1;
  assert.ok(
    await waitUntil(async () => {
      const ws = (await farm.status()).workers;
      const busy = ws.filter((w) => w.running > 0).map((w) => w.address);
      if (busy.length !== 1) return false;
      idle = farm.workers.findIndex((w) => !busy.includes(w.address));
      return idle >= 0;
    }, 10_000),
    "one worker busy",
  );
  return idle;
}

async function tc(host: Host, args: string[]): Promise<void> {
  const dev = host.hostIf.replace("tmh", "tmn");
  const out = await runIn("/", [
    ...host.exec,
    "tc",
    "qdisc",
    ...args.map((a) => a === "DEV" ? dev : a),
  ]);
  assert.equal(out.code, 0, out.stderr);
}

Deno.test("fault: the link to a worker cut mid-transfer and mid-job; deadlines fire, jobs move, builds complete", async () => {
  await withFarm("fault-link", {
    slotsPerWorker: 1,
    masterArgs: ["--job-silence", "3s"],
  }, async (farm, tree) => {
    // 1. Mid-transfer: the result's 6 MB crawl back at 4 Mbit/s when the link goes.
    const blocker = viaShell(farm, tree, "sleep 5");
    const t = await idleWorker(farm);
    const host = farm.workers[t].host!;
    await tc(host, [
      "add",
      "dev",
      "DEV",
      "root",
      "tbf",
      "rate",
      "4mbit",
      "burst",
      "32kbit",
      "latency",
      "400ms",
    ]);
    const big = viaShell(farm, tree, "head -c 6000000 /dev/urandom > big.bin; echo made");
    // The master is fetching it: its staging file grows.
    assert.ok(
      await waitUntil(
        async () => (await stagedEntries(tree)).some((e) => e.size > 100_000),
        10_000,
        50,
      ),
      "the transfer started",
    );
    await setLink(host, false);
    const cut = Date.now();
    const r = await big;
    const recoveredMs = Date.now() - cut;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "made\n");
    assert.equal((await Deno.stat(`${tree}/big.bin`)).size, 6_000_000);
    assert.equal((await blocker).code, 0);
    assert.deepEqual(await stagedEntries(tree), []);
    const masterLog = await Deno.readTextFile(farm.master.log);
    assert.match(masterLog, /stalled for 3000 ms sending blob/);
    assert.match(masterLog, /setting worker \S+ aside/);
    console.log(`mid-transfer cut: job completed elsewhere ${recoveredMs} ms after the cut`);
    await tc(host, ["del", "dev", "DEV", "root"]);
    await setLink(host, true);
    await farm.waitForWorkers(2);

    // 2. Mid-job: the worker falls silent (no heartbeat) while its job runs.
    const blocker2 = viaShell(farm, tree, "sleep 6");
    const t2 = await idleWorker(farm);
    const job = viaShell(farm, tree, "sleep 3; echo c > c.txt; echo ok");
    await waitUntil(async () => (await farm.status()).jobs.jobsRunning >= 2, 5_000);
    await sleep(500);
    await setLink(farm.workers[t2].host!, false);
    const cut2 = Date.now();
    const r2 = await job;
    const recovered2Ms = Date.now() - cut2;
    assert.equal(r2.code, 0, r2.stderr);
    assert.equal(r2.stdout, "ok\n");
    assert.equal(await Deno.readTextFile(`${tree}/c.txt`), "c\n");
    assert.equal((await blocker2).code, 0);
    assert.match(await Deno.readTextFile(farm.master.log), /silent for 3000 ms/);
    console.log(`mid-job cut: job completed elsewhere ${recovered2Ms} ms after the cut`);
    await setLink(farm.workers[t2].host!, true);
    // Back: both workers serve again.
    await farm.waitForWorkers(2);
    const status = await farm.status();
    assert.equal(status.jobs.jobsFailed, 0);
    assert.ok(status.jobs.retries >= 2, JSON.stringify(status.jobs));
  });
});

/** Runs a shell script inside worker `i`'s mount namespace (its cache dir may be a tmpfs there). */
async function inWorkerNs(farm: Farm, i: number, script: string): Promise<string> {
  const out = await runIn("/", [
    "nsenter",
    "-t",
    String(farm.workers[i].child.pid),
    "-m",
    "--",
    "sh",
    "-c",
    script,
  ]);
  assert.equal(out.code, 0, out.stderr);
  return out.stdout;
}

Deno.test("fault: a worker's disk full while storing results or running; the job fails over, the worker recovers", async () => {
  await withFarm("fault-disk", {
    slotsPerWorker: 1,
    workerCacheBytes: 48 * 2 ** 20,
  }, async (farm, tree) => {
    const cases = [
      { name: "store", script: "head -c 2000000 /dev/urandom > out0.bin; echo wrote", size: 2e6 },
      { name: "job", script: "head -c 4000000 /dev/urandom > out1.bin; echo wrote", size: 4e6 },
    ];
    // Each worker's store holds sh, head and their libraries: only results need room.
    const warm = await Promise.all(
      [0, 1].map(() =>
        viaShell(farm, tree, "sleep 1; head -c 10 /dev/urandom | cmp -s - /dev/null")
      ),
    );
    assert.ok(warm.every((w) => w.code === 1), "both workers warmed up");
    for (const [k, c] of cases.entries()) {
      await farm.waitForWorkers(2);
      const blocker = viaShell(farm, tree, "sleep 4");
      const t = await idleWorker(farm);
      const cache = farm.workerCacheDir(t);
      // 3 MB left: enough for the job's 2 MB but not for storing them too,
      // or not for the job's 4 MB at all.
      await inWorkerNs(
        farm,
        t,
        `free=$(( $(stat -f -c '%a * %S' ${cache}) ));` +
          ` fallocate -l $(( free - 3 * 1024 * 1024 )) ${cache}/filler`,
      );
      const r = await viaShell(farm, tree, c.script);
      assert.equal(r.code, 0, `${c.name}: ${r.stderr}`);
      assert.equal(r.stdout, "wrote\n", "printed once");
      assert.equal((await Deno.stat(`${tree}/out${k}.bin`)).size, c.size);
      assert.equal((await blocker).code, 0);
      assert.match(await Deno.readTextFile(farm.master.log), /No space left on this worker/);
      // Nothing half-written in its store: no temp file, every blob whole.
      const check = await inWorkerNs(
        farm,
        t,
        `cd ${cache}/cas && ls tmp | wc -l && for f in ??/*; do [ -f "$f" ] || continue;` +
          ` h=$(sha256sum < "$f" | cut -c1-64); [ "$h" = "\${f#??/}" ] || echo "BAD $f"; done`,
      );
      assert.equal(check, "0\n", `store of worker ${t}: ${check}`);
      // Space returns: the worker runs jobs again.
      await inWorkerNs(farm, t, `rm ${cache}/filler`);
      await farm.waitForWorkers(2);
      const before = (await farm.status()).jobs.perWorker[farm.workers[t].address]?.done ?? 0;
      const blocker2 = viaShell(farm, tree, "sleep 3");
      const t2 = await idleWorker(farm);
      const again = await viaShell(farm, tree, `${c.script}; cmp -s out${k}.bin out${k}.bin`);
      assert.equal(again.code, 0, again.stderr);
      assert.equal((await blocker2).code, 0);
      const after = (await farm.status()).jobs.perWorker[farm.workers[t2].address]?.done ?? 0;
      assert.ok(after > before || t2 !== t, "the worker serves again");
    }
    const status = await farm.status();
    assert.equal(status.jobs.jobsFailed, 0);
    assert.equal(status.jobs.jobsLocal, 0);
    console.log(
      `disk full: jobs remote ${status.jobs.jobsRemote}, retries ${status.jobs.retries}, ` +
        `failed 0, local 0`,
    );
  });
});

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

Deno.test("fault: blobs corrupted on disk are detected by hash, discarded and fetched again; a file changed under the hash cache is seen", async () => {
  await withFarm("fault-corrupt", { workers: 1 }, async (farm, tree) => {
    const data = new Uint8Array(200_000).map((_, i) => (i * 7) % 251);
    await Deno.writeFile(`${tree}/data.bin`, data);
    const hash = sha256Hex(data);
    const sum = (file: string) => viaShell(farm, tree, `sha256sum ${file} | cut -c1-64`);
    assert.equal((await sum("data.bin")).stdout, `${hash}\n`);

    // Worker store: flip bytes of the stored blob in place (same size).
    const blob = `${farm.workerCacheDir(0)}/cas/${hash.slice(0, 2)}/${hash}`;
    {
      using f = await Deno.open(blob, { write: true });
      await f.seek(1000, Deno.SeekMode.Start);
      await f.write(new TextEncoder().encode("CORRUPTED"));
    }
    assert.notEqual(sha256Hex(await Deno.readFile(blob)), hash);
    // A fresh mirror (a new master session) reads it: detected, fetched again.
    await farm.restartMaster();
    await farm.waitForWorkers(1);
    assert.equal((await sum("data.bin")).stdout, `${hash}\n`);
    const mirror = Object.values((await farm.status()).jobs.perWorker)[0]?.mirror;
    assert.equal(mirror?.corruptBlobs, 1, JSON.stringify(mirror));
    assert.equal(sha256Hex(await Deno.readFile(blob)), hash, "the stored blob is whole again");

    // Master: same size, same mtime, new content (only ctime tells), while it runs...
    const changed = data.map((v) => v ^ 0x55);
    const mtime = (await Deno.stat(`${tree}/data.bin`)).mtime!;
    const rewrite = async (bytes: Uint8Array) => {
      // Deno reports ctime in whole seconds: a rewrite within the second of
      // the previous change would look unchanged (see RELIABILITY.md).
      await sleep(1100);
      using f = await Deno.open(`${tree}/data.bin`, { write: true });
      await f.write(bytes);
      await Deno.utime(`${tree}/data.bin`, mtime, mtime);
    };
    await rewrite(changed);
    assert.equal((await sum("data.bin")).stdout, `${sha256Hex(changed)}\n`);
    // ... and while it is down (its hash cache on disk says otherwise).
    await farm.killMaster("SIGTERM");
    await rewrite(data);
    await farm.startMaster();
    await farm.waitForWorkers(1);
    assert.equal((await sum("data.bin")).stdout, `${hash}\n`);
  });
});
