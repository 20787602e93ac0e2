/**
 * The farm benchmark harness in quick mode on a generated 6-file C project:
 * one run per contender, a few round trips, scaling with 0 and 1 workers.
 * Asserts the structure of what it reports and writes, never timings.
 */
import assert from "node:assert/strict";
import { CONTENDERS, runHarness } from "../bench/farm_bench.ts";
import { generatedProject } from "../bench/_projects.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("farm bench harness: quick mode on a generated project", async () => {
  // Not under /tmp: jobs get a private /tmp, so the master does not mirror it.
  const dir = `${ROOT}.cache/test/bench-harness-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(dir, { recursive: true });
  // The master serves only paths readable by others all along.
  await Deno.chmod(dir, 0o755);
  const messages: string[] = [];
  try {
    const project = generatedProject(`${dir}/project`, 6);
    const report = await runHarness({
      quick: true,
      projects: [project],
      roundTrips: 3,
      scalingWorkers: [0, 1],
      outDir: `${dir}/out`,
      workDir: `${dir}/work`,
      log: (m) => messages.push(m),
    });
    const context = `${report.table}\n${messages.join("\n")}`;
    console.log(report.table);

    // A summary for every contender; numbers positive where it ran, a reason where not.
    assert.equal(report.summaries.length, CONTENDERS.length, context);
    for (const c of CONTENDERS) {
      const s = report.summaries.find((x) => x.contender === c);
      assert.ok(s, `no summary for ${c}`);
      assert.equal(s.project, "generated-6");
      if (s.ok) {
        assert.equal(s.runs, 1);
        assert.ok(s.medianMs! > 0, `${c}: ${s.medianMs}`);
        assert.equal(s.objects, 6, `${c} objects`);
        assert.ok(s.clientCpuPerJobMs! >= 0);
      } else {
        assert.ok((s.error ?? "").length > 0, `${c} failed without a reason`);
      }
    }
    const local = report.summaries.find((s) => s.contender === "local")!;
    assert.ok(local.ok, `local make failed: ${local.error}`);
    assert.equal(local.vsLocal, 1);
    const distcc = report.summaries.find((s) => s.contender === "distcc")!;
    if (!distcc.ok) console.log(`note: distcc did not run: ${distcc.error}`);
    const termite = report.summaries.find((s) => s.contender === "termite")!;
    if (termite.ok) assert.ok(termite.remoteJobs! > 0 && termite.allJobs! >= termite.remoteJobs!);
    else console.log(`note: the farm did not build: ${termite.error}`);
    // The same farm through the native wrapper client: its jobs ran on workers too.
    const native = report.summaries.find((s) => s.contender === "termite-native")!;
    if (termite.ok) {
      assert.ok(native.ok && native.remoteJobs! > 0, `termite-native: ${native.error}`);
    }
    // Cold builds are recorded apart from the warm runs: the farm's first
    // (every cache fresh), then a cold round (fresh workers, then fresh master
    // too) interleaved with a local make, each with the master's bytes sent.
    for (const round of ["cold", "cold-master"]) {
      const colds = report.builds.filter((b) => b.contender === "termite" && b.round === round);
      assert.equal(colds.filter((b) => b.attempt === 0).length, round === "cold" ? 1 : 2, round);
      if (termite.ok) {
        assert.ok(colds.some((b) => b.ok && b.termiteJobs!.bytesServed > 0), `${round}: bytes`);
      }
    }
    assert.ok(report.builds.some((b) => b.contender === "local" && b.round === "cold-local"));
    if (termite.ok) {
      assert.ok(termite.coldMs! > 0 && termite.coldMasterMs! > 0, context);
      assert.ok(termite.coldVsLocal! > 0 && termite.coldVsWarm! > 0, context);
      assert.ok(termite.coldMasterBytesServed! > 0, context);
    }
    // Caching contenders: a fill build apart from the measured runs; a
    // measured run that built took its compiles from the cache.
    for (const c of ["termite-cached", "termite-cached-native", "ccache"] as const) {
      const s = report.summaries.find((x) => x.contender === c)!;
      const fills = report.builds.filter((b) => b.contender === c && b.round === "fill");
      assert.ok(fills.length >= 1, `${c}: a fill build`);
      if (s.ok) {
        assert.ok(s.fillMs! > 0 && s.fillVsLocal! > 0, `${c}: ${context}`);
        assert.ok(s.cacheHits! > 0, `${c}: hits over the measured runs (${s.cacheHits})`);
      } else console.log(`note: ${c} did not build: ${s.error}`);
    }
    assert.match(report.table, /Rebuilds from a cache/);
    const scaled = report.scaling.find((p) => p.workers === 1);
    if (scaled?.ok) assert.ok(scaled.coldBytesServed! > 0, "master bytes per worker count");

    // Round trips: every kind listed; the direct ones always work.
    assert.equal(report.roundTrips.length, 11);
    for (const k of report.roundTrips) {
      if (k.ok) {
        // Commands that fell back to the master are not timed.
        assert.ok(k.wallMs.length >= 1 && k.wallMs.length <= 3, k.name);
        assert.ok(k.medianMs! > 0 && k.clientCpuPerCmdMs! >= 0, k.name);
      } else {
        assert.ok((k.error ?? "").length > 0, `${k.name} failed without a reason`);
      }
    }
    for (const k of report.roundTrips.filter((k) => k.via === "direct")) assert.ok(k.ok, k.name);
    const remote = report.roundTrips.find((k) => k.name.startsWith("termite-sh -c '/bin/true"));
    if (remote?.ok) assert.equal(remote.remoteJobs, remote.wallMs.length);

    // Scaling: both points reported; the master-alone baseline is the reference.
    assert.deepEqual(report.scaling.map((p) => p.workers), [0, 1]);
    if (report.scaling[0].ok) assert.equal(report.scaling[0].speedup, 1);
    for (const p of report.scaling) {
      if (p.ok) {
        assert.ok(p.medianMs! > 0 && p.wallMs.length === 1);
        // make and the compiles (0 workers), or make, wrappers and master: never nothing.
        assert.ok(p.hostCpuMsPerJob! > 0, `build-host CPU per job, ${p.workers} workers`);
      } else assert.ok((p.error ?? "").length > 0);
    }

    // Goals, rows for bench/main.ts, and the three files.
    assert.ok(report.goals.length >= 3);
    assert.ok(report.results.some((r) => r.name.startsWith("generated-6 local build")));
    for (const r of report.results) assert.ok(r.name.length > 0 && r.unit.length > 0);
    const json = JSON.parse(await Deno.readTextFile(report.files.json));
    assert.equal(json.builds.length, report.builds.length);
    const md = await Deno.readTextFile(report.files.markdown);
    assert.match(md, /\| generated-6 \| local \| 6 \|/);
    const svg = await Deno.readTextFile(report.files.chart);
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.match(svg, /<\/svg>\n$/);
    if (report.scaling.some((p) => p.ok)) assert.match(svg, / ms\/job<\/text>/);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
