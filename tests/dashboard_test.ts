/**
 * The status pages in a real browser during a real build: a farm (a
 * coordinator, two workers each in a network namespace, a master) runs
 * `make -j4` of slow compiles while headless Chromium shows the coordinator's
 * and the master's pages. The DOM must show the running jobs without a
 * reload; the screenshots stay in .cache/test-artefacts/. Then a worker is
 * drained from the page with a token, and /metrics must have moved and pass
 * promtool.
 */
import assert from "node:assert/strict";
import { Farm, ROOT, runIn } from "../farm/mod.ts";
import { scratchDir } from "./_reliability.ts";
import { Browser } from "./_cdp.ts";
import { promtoolCheck } from "./_tools.ts";

const ARTEFACTS = `${ROOT}/.cache/test-artefacts`;
const JOBS = 8;
const JOB_SECONDS = 3;

function metric(text: string, pattern: RegExp): number {
  const m = pattern.exec(text);
  return m === null ? 0 : Number(m[1]);
}

async function getText(url: string): Promise<string> {
  const response = await fetch(url);
  assert.equal(response.status, 200, url);
  return await response.text();
}

Deno.test("dashboard: Chromium shows a build's running jobs live; drain from the page; metrics move", async () => {
  await Deno.mkdir(ARTEFACTS, { recursive: true });
  const dir = await scratchDir("dashboard-");
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree);
  const farm = await Farm.start({
    dir: `${dir}/farm`,
    tree,
    workers: 2,
    slotsPerWorker: 2,
    coordinatorArgs: ["--http-port", "0"],
  });
  let browser: Browser | undefined;
  try {
    browser = await Browser.launch();
    const coordinatorLog = await Deno.readTextFile(farm.coordinator.log);
    const httpPort = Number(/status page on http:\/\/[^:]+:(\d+)\//.exec(coordinatorLog)?.[1]);
    assert.ok(httpPort > 0, coordinatorLog);
    const coordinatorUrl = `http://127.0.0.1:${httpPort}`;
    const masterUrl = `http://127.0.0.1:${farm.statusPort}`;

    const objects: string[] = [];
    for (let i = 0; i < JOBS; i++) {
      await Deno.writeTextFile(`${tree}/f${i}.c`, `int f${i}(int x) { return x + ${i}; }\n`);
      objects.push(`f${i}.o`);
    }
    await Deno.writeTextFile(
      `${tree}/Makefile`,
      `all: ${objects.join(" ")}\n%.o: %.c\n\tsleep ${JOB_SECONDS}; gcc -c $< -o $@\n`,
    );
    const masterBefore = await getText(`${masterUrl}/metrics`);
    const coordinatorBefore = await getText(`${coordinatorUrl}/metrics`);
    assert.equal(metric(masterBefore, /^termite_master_jobs_total\{outcome="ok"\} (\d+)$/m), 0);

    // Both pages open before the build: what follows arrives without a reload.
    const farmPage = await browser.open(`${coordinatorUrl}/`);
    const buildPage = await browser.open(`${masterUrl}/`);
    await farmPage.waitFor("Number(document.documentElement.dataset.updates) >= 1", "an update");
    assert.equal(
      await farmPage.evaluate("document.querySelectorAll('#workers tbody tr').length"),
      2,
    );

    const make = runIn(tree, ["make", "-j4", `SHELL=${farm.binDir}/termite-sh`], farm.env);

    await farmPage.waitFor(
      `document.querySelectorAll('#workers .slot.busy').length >= 2 &&
       [...document.querySelectorAll('#workers .job a')].some((a) => a.textContent === ${
        JSON.stringify(tree)
      })`,
      "the coordinator's page to show the master's jobs on the workers",
    );
    const farmView = await farmPage.evaluate<{ busy: number; masters: string; summary: string }>(
      `({
        busy: document.querySelectorAll('#workers .slot.busy').length,
        masters: document.querySelector('#masters')?.innerText ?? '',
        summary: document.querySelector('.summary')?.innerText ?? '',
      })`,
    );
    assert.ok(farmView.busy >= 2 && farmView.busy <= 4, JSON.stringify(farmView));
    assert.ok(farmView.masters.includes(tree), farmView.masters);
    assert.match(farmView.summary, /2 workers/);
    assert.match(farmView.summary, /of 4 slots busy/);
    assert.match(farmView.summary, /jobs\/s/);
    assert.match(farmView.summary, /(^|\D)1 masters/);
    await farmPage.screenshot(`${ARTEFACTS}/dashboard-coordinator.png`);

    await buildPage.waitFor(
      `[...document.querySelectorAll('#running tbody tr')].filter((tr) =>
         tr.innerText.includes('sleep ${JOB_SECONDS}; gcc -c')).length >= 2`,
      "the master's page to list the running jobs",
    );
    const buildView = await buildPage.evaluate<{ running: string; farmLink: string | null }>(
      `({
        running: document.querySelector('#running').innerText,
        farmLink: document.querySelector('main a[href^="http://"]')?.getAttribute('href') ?? null,
      })`,
    );
    assert.match(buildView.running, /\d+(\.\d+)? m?s/, "with how long each has run");
    assert.equal(buildView.farmLink, `${coordinatorUrl}/`, "the master's page links the farm's");
    await buildPage.screenshot(`${ARTEFACTS}/dashboard-master.png`);

    const masterDuring = await getText(`${masterUrl}/metrics`);
    assert.ok(
      metric(masterDuring, /^termite_master_jobs_in_flight (\d+)$/m) > 0,
      "jobs in flight during the build",
    );

    const build = await make;
    assert.equal(build.code, 0, build.stdout + build.stderr);

    // The pages follow the end of the build by themselves.
    await buildPage.waitFor(
      `document.querySelector('#sum-finished')?.textContent === '${JOBS}' &&
       document.querySelectorAll('#running tbody tr').length === 0`,
      "the master's page to show the build finished",
    );
    await buildPage.waitFor(
      `document.querySelectorAll('#slowest tbody tr').length >= ${Math.min(JOBS, 10)}`,
      "the slowest jobs",
    );
    await buildPage.screenshot(`${ARTEFACTS}/dashboard-master-done.png`);

    const masterAfter = await getText(`${masterUrl}/metrics`);
    const coordinatorAfter = await getText(`${coordinatorUrl}/metrics`);
    for (const text of [masterAfter, coordinatorAfter]) {
      const check = await promtoolCheck(text);
      assert.equal(check.code, 0, check.output);
      assert.equal(check.output.trim(), "", "no lint warnings");
    }
    assert.ok(
      metric(masterAfter, /^termite_master_jobs_total\{outcome="ok"\} (\d+)$/m) >= JOBS,
      masterAfter,
    );
    assert.ok(
      metric(masterAfter, /^termite_master_jobs_run_total\{where="worker"\} (\d+)$/m) >= JOBS,
    );
    assert.ok(
      metric(masterAfter, /^termite_master_job_duration_seconds_count\{outcome="ok"\} (\d+)$/m) >=
        JOBS,
    );
    assert.ok(metric(masterAfter, /^termite_master_fetched_bytes_total (\d+)$/m) >= 0);
    assert.ok(metric(masterAfter, /^termite_master_served_attrs_total (\d+)$/m) > 0);
    assert.ok(
      metric(coordinatorAfter, /^termite_coordinator_reports_total (\d+)$/m) >
        metric(coordinatorBefore, /^termite_coordinator_reports_total (\d+)$/m),
    );
    assert.ok(
      metric(coordinatorAfter, /^termite_coordinator_registrations_total (\d+)$/m) >
        metric(coordinatorBefore, /^termite_coordinator_registrations_total (\d+)$/m),
    );

    // Drain the first worker from the page, with a token made by token.ts.
    const status = await (await fetch(`${coordinatorUrl}/status.json`)).json();
    const id: string = status.workers[0].id;
    await farmPage.evaluate(
      `document.querySelector('button[data-action="drain"][data-worker="${id}"]').click()`,
    );
    const shown = await farmPage.evaluate<string>(
      "document.getElementById('action-command').textContent",
    );
    assert.match(shown, new RegExp(`token\\.ts --secret \\S+ --action drain --worker ${id}$`));
    const made = await runIn(ROOT, [
      Deno.execPath(),
      "run",
      "-A",
      `${ROOT}/token.ts`,
      "--secret",
      farm.secretPath,
      "--action",
      "drain",
      "--worker",
      id,
    ]);
    assert.equal(made.code, 0, made.stderr);
    await farmPage.evaluate(`(() => {
      document.getElementById('action-token').value = ${JSON.stringify(made.stdout.trim())};
      document.getElementById('action-send').click();
    })()`);
    await farmPage.waitFor(
      "document.getElementById('action-result').textContent.startsWith('Done')",
      "the drain to be accepted",
    );
    await farmPage.evaluate("document.getElementById('action-cancel').click()");
    await farmPage.waitFor(
      `document.querySelector('#workers tr[data-worker="${id}"]')?.classList.contains('draining')`,
      "the page to show the worker draining",
    );
    await farmPage.screenshot(`${ARTEFACTS}/dashboard-drained.png`);
    // The same token again is refused (used once).
    await farmPage.evaluate(
      `document.querySelector('button[data-action="stop"][data-worker="${id}"]').click()`,
    );
    await farmPage.evaluate(`(() => {
      document.getElementById('action-token').value = ${JSON.stringify(made.stdout.trim())};
      document.getElementById('action-send').click();
    })()`);
    await farmPage.waitFor(
      "document.getElementById('action-result').textContent.startsWith('Refused')",
      "a reused token to be refused",
    );
    assert.deepEqual(
      browser.console.filter((l) => /^(error|exception)/.test(l)),
      [],
      "no script errors",
    );
  } finally {
    await browser?.close();
    await farm.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
