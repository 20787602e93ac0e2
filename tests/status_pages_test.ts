/**
 * The status pages without a browser: what the coordinator's page, JSON and
 * metrics show of workers and masters, escaping, headers, the scripts served.
 * (tests/dashboard_test.ts loads them in Chromium during a real build.)
 */
import assert from "node:assert/strict";
import { connect, secretFromBytes } from "../rpc/mod.ts";
import {
  adminToken,
  farmStatus,
  type MasterReport,
  registerWorker,
  startCoordinator,
} from "../coordinator/mod.ts";
import { renderFarm } from "../coordinator/farm_view.js";
import {
  escapeHtml,
  formatBytes,
  formatCount,
  formatDuration,
  formatRate,
} from "../common/status_view.js";
import { promtoolCheck } from "./_tools.ts";
import { RateWindow } from "../common/rate.ts";

const HOST = "127.0.0.1";
const HOSTILE = `<img src=x onerror="alert(1)">&'`;

async function waitFor(condition: () => boolean, what: string, limitMs = 10_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function masterReport(address: string): MasterReport {
  return {
    master: {
      id: "m1",
      root: `/src/${HOSTILE}`,
      hostname: "build-1",
      version: "test",
      statusUrl: "http://127.0.0.1:1233/",
    },
    build: {
      jobsInFlight: 3,
      jobsOnWorkers: 2,
      jobsFinished: 40,
      jobsFailed: 1,
      jobsExitNonZero: 0,
      jobsRemote: 38,
      jobsLocal: 2,
      retries: 1,
      bytesFetched: 3 * 1024 * 1024,
      workers: [{ address, running: 2, done: 38, failed: 1, busyMs: 4200 }],
      running: [{ command: `gcc -c ${HOSTILE}.c`, elapsedMs: 1234 }],
    },
  };
}

Deno.test("status view: units on every number", () => {
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(3 * 1024 * 1024), "3.00 MiB");
  assert.equal(formatBytes(150 * 1024), "150 KiB");
  assert.equal(formatDuration(22672.449085000146), "22.7 s");
  assert.equal(formatDuration(850.2), "850 ms");
  assert.equal(formatDuration(125_000), "2 min 05 s");
  assert.equal(formatDuration(7_500_000), "2 h 05 min");
  assert.equal(formatRate(3.456), "3.5 jobs/s");
  assert.equal(formatCount(1234567), "1\u202f234\u202f567");
  assert.equal(escapeHtml(`<a href="x">'&`), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
});

Deno.test("status view: renderFarm shows whose jobs run where, escaped", () => {
  const nowMs = 1_000_000;
  const worker = {
    id: "w1",
    address: "10.0.0.2:1232",
    hostname: HOSTILE,
    slots: 4,
    jobsRunning: 1,
    load: 0.5,
    version: "test",
    lastContactMs: nowMs - 2000,
    draining: false,
  };
  const report = masterReport(worker.address);
  const status = farmStatus([worker, {
    ...worker,
    id: "w2",
    address: "10.0.0.3:1232",
    draining: true,
  }], [{
    ...report.master,
    remoteAddr: "127.0.0.1:5000",
    subscribed: true,
    lastReportMs: nowMs - 500,
    jobsPerSecond: 12.5,
    build: report.build,
  }, { remoteAddr: "127.0.0.1:6000", subscribed: true }], { version: "test", nowMs });
  assert.equal(status.workers[0].busy, 2, "the master's fresher count wins");
  assert.equal(status.farm.slots, 4, "a draining worker's slots do not count");
  assert.equal(status.farm.drained, 1);
  assert.equal(
    status.farm.masters,
    1,
    "the unnamed watch from the named master's host is not another",
  );
  assert.equal(status.farm.jobsPerSecond, 12.5);
  const html = renderFarm(status);
  assert.ok(!html.includes(HOSTILE), "nothing raw");
  assert.ok(html.includes(escapeHtml(HOSTILE)));
  assert.match(html, /<a href="http:\/\/127\.0\.0\.1:1233\/">\/src\/&lt;img/);
  assert.match(html, /2 jobs, busy 4\.20 s/);
  assert.match(html, /12\.5 jobs\/s/);
  assert.match(html, /3\.00 MiB/);
  assert.match(html, /2\.00 s ago/);
  assert.match(html, /without saying who they are .*\n.*127\.0\.0\.1:6000/);
  assert.match(html, /data-action="drain" data-worker="w2" disabled/);
  assert.match(html, /<b id="sum-busy">3<\/b> of 4 slots busy/);
  // A stale report does not count.
  const later = farmStatus([worker], status.masters, { version: "test", nowMs: nowMs + 60_000 });
  assert.equal(later.workers[0].busy, 1);
  assert.equal(later.workers[0].jobs.length, 0);
});

Deno.test("coordinator page: HTML, JSON, scripts and metrics over HTTP", async () => {
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  await using coordinator = await startCoordinator({
    hostname: HOST,
    port: 0,
    httpPort: 0,
    httpHostname: HOST,
    secret,
    version: "9.9.9",
    tokenCommand: `deno run -A /opt/termite/token.ts --secret "/etc/termite/se cret"`,
  });
  await using worker = registerWorker({
    coordinator: `${HOST}:${coordinator.port}`,
    secret,
    info: () => ({
      id: "w1",
      address: "127.0.0.1:4100",
      hostname: "host-1",
      slots: 4,
      jobsRunning: 1,
      load: 0.25,
      version: "test",
    }),
    intervalMs: 50,
  });
  await waitFor(() => worker.registered, "w1 to register");
  const master = await connect({
    transport: "tcp",
    hostname: HOST,
    port: coordinator.port,
    secret,
    role: "master",
  });
  try {
    await master.call("report", masterReport("127.0.0.1:4100"));
    const base = `http://${HOST}:${coordinator.httpPort}`;

    const page = await fetch(`${base}/`);
    const csp = page.headers.get("content-security-policy")!;
    assert.match(csp, /script-src 'self'/);
    assert.ok(!/script-src[^;]*unsafe/.test(csp), csp);
    const html = await page.text();
    assert.match(html, /<script type="module" src="\/coordinator\/farm_page\.js"><\/script>/);
    assert.ok(!/<script>/.test(html), "no inline script");
    assert.match(html, /<tr data-worker="w1">/);
    assert.match(html, /data-token-command="deno run -A \/opt\/termite\/token\.ts --secret &quot;/);
    assert.match(html, /href="\/metrics"/);
    assert.ok(html.includes(escapeHtml(`/src/${HOSTILE}`)) && !html.includes(HOSTILE));

    const status = await (await fetch(`${base}/status.json`)).json();
    assert.equal(status.version, "9.9.9");
    assert.equal(status.workers[0].id, "w1");
    assert.equal(status.workers[0].busy, 2);
    assert.equal(status.workers[0].jobs[0].masterId, "m1");
    assert.equal(status.masters[0].build.jobsFinished, 40);
    assert.equal(status.farm.jobsInFlight, 3);

    for (
      const path of [
        "/coordinator/farm_page.js",
        "/coordinator/farm_view.js",
        "/common/status_view.js",
        "/common/live_page.js",
      ]
    ) {
      const js = await fetch(`${base}${path}`);
      assert.equal(js.status, 200, path);
      assert.match(js.headers.get("content-type")!, /^text\/javascript/);
      assert.match(await js.text(), /export|import/);
    }
    for (const path of ["/coordinator/server.ts", "/common/../deno.json", "/farm_page.js"]) {
      const r = await fetch(`${base}${path}`);
      assert.equal(r.status, 404, path);
      await r.body?.cancel();
    }
    const post = await fetch(`${base}/coordinator/farm_page.js`, { method: "POST" });
    assert.equal(post.status, 405);
    await post.body?.cancel();

    // A refused action is counted.
    const refused = await fetch(`${base}/workers/w1/drain`, {
      method: "POST",
      headers: { authorization: await adminToken(secret, "stop", "w1") },
    });
    assert.equal(refused.status, 403);
    await refused.body?.cancel();

    const metrics = await (await fetch(`${base}/metrics`)).text();
    const check = await promtoolCheck(metrics);
    assert.equal(check.code, 0, check.output);
    assert.equal(check.output.trim(), "", "no lint warnings");
    assert.match(metrics, /^termite_coordinator_workers 1$/m);
    assert.match(metrics, /^termite_coordinator_slots 4$/m);
    assert.match(metrics, /^termite_coordinator_slots_busy 2$/m);
    assert.match(
      metrics,
      /^termite_coordinator_worker_slots_busy\{worker="127\.0\.0\.1:4100"\} 2$/m,
    );
    assert.match(metrics, /^termite_coordinator_masters 1$/m);
    assert.match(metrics, /^termite_coordinator_reports_total 1$/m);
    assert.match(metrics, /^termite_coordinator_jobs_in_flight 3$/m);
    assert.match(
      metrics,
      /^termite_coordinator_admin_actions_total\{action="drain",result="refused"\} 1$/m,
    );
    const registrations = Number(
      /^termite_coordinator_registrations_total (\d+)$/m.exec(metrics)![1],
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    const again = await (await fetch(`${base}/metrics`)).text();
    assert.ok(
      Number(/^termite_coordinator_registrations_total (\d+)$/m.exec(again)![1]) > registrations,
      "the registration counter moves",
    );
  } finally {
    master.close();
    await master.closed.catch(() => {});
  }
});

Deno.test("RateWindow: a rate over the last samples, decaying once they stop", () => {
  const rate = new RateWindow(10_000);
  assert.equal(rate.perSecond(0), 0);
  for (let t = 0; t <= 20; t++) rate.add(t * 1000, t * 3);
  assert.equal(rate.perSecond(20_500), 3);
  assert.equal(rate.perSecond(30_000), 30 / 20 * 1, "10 s after the last sample: halved");
  rate.add(31_000, 5); // a restart: the count fell
  assert.equal(rate.perSecond(31_000), 0);
});
