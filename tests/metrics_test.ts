import assert from "node:assert/strict";
import {
  escapeLabelValue,
  formatValue,
  JOB_SECONDS_BUCKETS,
  METRICS_CONTENT_TYPE,
  metricsResponse,
  Registry,
} from "../common/metrics.ts";
import { promtoolCheck } from "./_tools.ts";

function sample(): Registry {
  const r = new Registry();
  const jobs = r.counter("termite_test_jobs_total", "Jobs by outcome.", {
    labelNames: ["outcome"],
  });
  jobs.inc({ outcome: "ok" });
  jobs.inc({ outcome: "ok" }, 2);
  jobs.inc({ outcome: 'we"ird\\\nvalue' });
  r.gauge("termite_test_queue_jobs", "Jobs waiting.\nSecond line \\ here.").set(4);
  const h = r.histogram("termite_test_job_duration_seconds", "Job time.", {
    buckets: JOB_SECONDS_BUCKETS,
    labelNames: ["where"],
  });
  for (const s of [0.003, 0.2, 0.2, 7, 1000]) h.observe(s, { where: "worker" });
  r.collect("termite_test_bytes_total", "Bytes, read at scrape time.", "counter", () => 12345);
  r.collect("termite_test_slots", "Slots per worker.", "gauge", () => [
    [{ worker: "10.0.0.1:1232" }, 4],
    [{ worker: "[::1]:1232" }, 2],
  ], { labelNames: ["worker"] });
  return r;
}

Deno.test("metrics: the registry renders counters, gauges, histograms and collected values", () => {
  const text = sample().render();
  assert.match(text, /^# HELP termite_test_jobs_total Jobs by outcome\.$/m);
  assert.match(text, /^# TYPE termite_test_jobs_total counter$/m);
  assert.match(text, /^termite_test_jobs_total\{outcome="ok"\} 3$/m);
  assert.ok(text.includes('termite_test_jobs_total{outcome="we\\"ird\\\\\\nvalue"} 1'), text);
  assert.match(text, /^# HELP termite_test_queue_jobs Jobs waiting\.\\nSecond line \\\\ here\.$/m);
  assert.match(text, /^termite_test_job_duration_seconds_bucket\{where="worker",le="0\.01"\} 1$/m);
  assert.match(text, /^termite_test_job_duration_seconds_bucket\{where="worker",le="0\.25"\} 3$/m);
  assert.match(text, /^termite_test_job_duration_seconds_bucket\{where="worker",le="300"\} 4$/m);
  assert.match(text, /^termite_test_job_duration_seconds_bucket\{where="worker",le="\+Inf"\} 5$/m);
  assert.match(text, /^termite_test_job_duration_seconds_count\{where="worker"\} 5$/m);
  assert.match(text, /^termite_test_job_duration_seconds_sum\{where="worker"\} 1007\.403$/m);
  assert.match(text, /^termite_test_bytes_total 12345$/m);
  assert.match(text, /^termite_test_slots\{worker="\[::1\]:1232"\} 2$/m);
  assert.ok(text.endsWith("\n"));
});

Deno.test("metrics: promtool check metrics accepts the output", async () => {
  const { code, output } = await promtoolCheck(sample().render());
  assert.equal(code, 0, output);
  assert.equal(output.trim(), "", "no lint warnings");
});

Deno.test("metrics: names, labels and buckets are checked at registration", () => {
  const r = new Registry();
  assert.throws(() => r.counter("termite_jobs", "x"), /ends in _total/);
  assert.throws(() => r.gauge("termite-bad", "x"), /bad name/);
  assert.throws(() => r.gauge("termite_x", "x", { labelNames: ["__reserved"] }), /label name/);
  assert.throws(() => r.gauge("termite_y", "x", { labelNames: ["a", "a"] }), /label name/);
  assert.throws(
    () => r.histogram("termite_h_seconds", "x", { buckets: [1, 1], labelNames: [] }),
    /ascend/,
  );
  assert.throws(
    () => r.histogram("termite_h2_seconds", "x", { buckets: [1], labelNames: ["le"] }),
    /label name/,
  );
  r.gauge("termite_once", "x");
  assert.throws(() => r.gauge("termite_once", "x"), /taken/);
  assert.throws(() => r.counter("termite_c_total", "x").inc(undefined, -1), RangeError);
});

Deno.test("metrics: a metric keeps at most seriesMax label sets", () => {
  const r = new Registry();
  const c = r.counter("termite_many_total", "x", { labelNames: ["k"], seriesMax: 3 });
  for (let i = 0; i < 10; i++) c.inc({ k: String(i) });
  assert.equal(r.render().split("\n").filter((l) => l.startsWith("termite_many_total{")).length, 3);
  assert.equal(c.value({ k: "1" }), 1);
  assert.equal(c.value({ k: "9" }), 0);
});

Deno.test("metrics: values and label escapes as the format wants them", () => {
  assert.equal(formatValue(NaN), "NaN");
  assert.equal(formatValue(Infinity), "+Inf");
  assert.equal(formatValue(-Infinity), "-Inf");
  assert.equal(formatValue(0.5), "0.5");
  assert.equal(escapeLabelValue('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
});

Deno.test("metrics: metricsResponse has the exposition format's content type", async () => {
  const response = metricsResponse(sample(), { "cache-control": "no-store" });
  assert.equal(response.headers.get("content-type"), METRICS_CONTENT_TYPE);
  assert.equal(response.headers.get("cache-control"), "no-store");
  assert.match(await response.text(), /termite_test_jobs_total/);
});
