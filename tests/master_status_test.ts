/**
 * The master's status page, JSON, metrics and reports to the coordinator,
 * with jobs handed in by the real wrapper (no workers: they run here).
 */
import assert from "node:assert/strict";
import { secretFromBytes } from "../rpc/mod.ts";
import { startCoordinator } from "../coordinator/mod.ts";
import { startMaster } from "../master/mod.ts";
import { commandText, JobLog, outcomeOf } from "../master/job_log.ts";
import { promtoolCheck } from "./_tools.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

async function waitFor(
  condition: () => boolean | Promise<boolean>,
  what: string,
  limitMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

function wrap(args: string[], cwd: string) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-config", "--no-lock", `${ROOT}wrapper.ts`, ...args],
    cwd,
    env: { PATH: "/usr/bin:/bin", HOME: cwd },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
}

Deno.test("job log: outcomes, the slowest kept, commands on one line", () => {
  let nowMs = 0;
  const log = new JobLog({ now: () => nowMs });
  const ends = [1, 2, 3].map((i) => log.start(`job ${i}`));
  assert.deepEqual(log.running(2).map((j) => j.command), ["job 1", "job 2"]);
  nowMs = 500;
  ends[1]({ code: 0 });
  nowMs = 2000;
  ends[0]({ code: 1 });
  ends[2]({ code: 130, error: "cancelled" });
  ends[2]({ code: 0 }); // once only
  assert.equal(log.finished, 3);
  assert.deepEqual(log.byOutcome, { ok: 1, exit_nonzero: 1, error: 0, cancelled: 1 });
  assert.deepEqual(log.slowest().map((j) => [j.command, j.ms]), [["job 1", 2000], ["job 2", 500]]);
  for (let i = 0; i < 30; i++) log.start(`quick ${i}`)({ code: 0 });
  assert.equal(log.slowest().length, 10);
  assert.equal(log.slowest()[0].command, "job 1");
  assert.equal(commandText(["termite-sh", "-c", "a\n\tb"], true), "a b");
  assert.equal(commandText(["gcc", "x".repeat(300)]).length, 200);
  assert.equal(outcomeOf({ code: 255, error: "no coordinator" }), "error");
});

Deno.test("master status: jobs in flight and finished, metrics, and its report on the coordinator", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-mstatus-" });
  await Deno.chmod(dir, 0o755);
  const cache = await Deno.makeTempDir({ prefix: "termite-mcache-" });
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  await using coordinator = await startCoordinator({
    hostname: "127.0.0.1",
    port: 0,
    httpPort: 0,
    httpHostname: "127.0.0.1",
    secret,
  });
  try {
    await using running = await startMaster({
      root: dir,
      secret,
      cacheDir: cache,
      coordinator: `127.0.0.1:${coordinator.port}`,
      statusPort: 0,
      reportIntervalMs: 100,
      log: () => {},
    });
    const base = `http://127.0.0.1:${running.statusPort}`;
    const status = async () => await (await fetch(`${base}/status.json`)).json();

    const job = wrap(["--as", "sh", "-c", "sleep 1.5; exit 3"], dir);
    await waitFor(async () => (await status()).running.length === 1, "the job in flight");
    const during = await status();
    assert.equal(during.running[0].command, "sleep 1.5; exit 3");
    assert.equal(during.build.inFlight, 1);
    // No worker: the job runs here, nothing waits for a slot; the page shows both apart.
    assert.equal(during.build.localRunning, 1);
    assert.equal(during.build.queued, 0);
    const duringHtml = await (await fetch(`${base}/`)).text();
    assert.match(duringHtml, /<b id="sum-queued">0<\/b> queued for a worker's slot/);
    assert.match(duringHtml, /<b id="sum-local-running">1<\/b> running here/);
    await waitFor(
      () => coordinator.masters()[0]?.build?.jobsInFlight === 1,
      "the coordinator to hear of it",
    );
    const listed = coordinator.masters()[0];
    assert.equal(listed.id, running.master.masterId);
    assert.equal(listed.root, dir);
    assert.equal(listed.statusUrl, `${base}/`);
    assert.equal(listed.build?.running[0].command, "sleep 1.5; exit 3");

    const out = await job;
    assert.equal(out.code, 3, dec.decode(out.stderr));
    const after = await status();
    assert.equal(after.build.finished, 1);
    assert.equal(after.build.byOutcome.exit_nonzero, 1);
    assert.equal(after.slowest[0].command, "sleep 1.5; exit 3");
    assert.ok(after.slowest[0].ms >= 1500);
    assert.equal(after.build.local.total, 1);
    assert.equal(after.build.local.fallback["no-workers"], 1);
    assert.equal(after.jobs.jobsLocal, 1, "the master's own counters are still there");
    assert.equal(after.coordinator.statusUrl, `http://127.0.0.1:${coordinator.httpPort}/`);

    const page = await fetch(`${base}/`);
    assert.match(page.headers.get("content-security-policy")!, /script-src 'self'/);
    const html = await page.text();
    assert.ok(html.includes(`href="http://127.0.0.1:${coordinator.httpPort}/"`), "links the farm");
    assert.match(html, /<script type="module" src="\/master\/build_page\.js">/);
    assert.match(html, /Last resort: no worker was listed<\/td><td>1</);
    assert.match(html, /1\.[5-9]\d s<\/td><td>3<\/td>/, "the slowest job, with its time and exit");
    const js = await fetch(`${base}/master/build_view.js`);
    assert.equal(js.status, 200);
    assert.match(await js.text(), /export function renderBuild/);
    const missing = await fetch(`${base}/master/master.ts`);
    assert.equal(missing.status, 404);
    await missing.body?.cancel();

    const metrics = await (await fetch(`${base}/metrics`)).text();
    const check = await promtoolCheck(metrics);
    assert.equal(check.code, 0, check.output);
    assert.equal(check.output.trim(), "", "no lint warnings");
    assert.match(metrics, /^termite_master_jobs_total\{outcome="exit_nonzero"\} 1$/m);
    assert.match(
      metrics,
      /^termite_master_job_duration_seconds_count\{outcome="exit_nonzero"\} 1$/m,
    );
    assert.match(
      metrics,
      /^termite_master_job_duration_seconds_bucket\{outcome="exit_nonzero",le="1"\} 0$/m,
    );
    assert.match(
      metrics,
      /^termite_master_job_duration_seconds_bucket\{outcome="exit_nonzero",le="2\.5"\} 1$/m,
    );
    assert.match(metrics, /^termite_master_jobs_run_total\{where="local"\} 1$/m);
    assert.match(metrics, /^termite_master_local_fallbacks_total\{cause="no-workers"\} 1$/m);
    assert.match(metrics, /^termite_master_jobs_in_flight 0$/m);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});
