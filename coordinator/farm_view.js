/**
 * The coordinator's page body from its `/status.json` value: the farm at a
 * glance, each worker with its slots and whose jobs run there, the masters
 * and their builds. Rendered by the server for the first paint and by the
 * browser on each update (coordinator/farm_page.js).
 *
 * @module
 */

import {
  escapeHtml,
  formatAgo,
  formatBytes,
  formatCount,
  formatDuration,
  formatRate,
  slotCells,
  table,
} from "../common/status_view.js";

/**
 * @param {Record<string, any>} w a worker of FarmStatus
 * @param {boolean} actions show the drain and stop buttons
 * @param {number} nowMs
 */
function workerRow(w, actions, nowMs) {
  const jobs = w.jobs.length === 0
    ? (w.busy > 0 ? `<span class="note">${w.busy} (no master reports them)</span>` : "idle")
    : w.jobs.map((j) => {
      const name = escapeHtml(j.root);
      const link = j.statusUrl ? `<a href="${escapeHtml(j.statusUrl)}">${name}</a>` : name;
      return `<span class="job">${link}: ${formatCount(j.running)} ` +
        `${j.running === 1 ? "job" : "jobs"}, busy ${formatDuration(j.busyMs)}</span>`;
    }).join("<br>");
  const state = w.draining ? "draining" : "ready";
  const id = escapeHtml(w.id);
  const buttons = actions
    ? `<button type="button" data-action="drain" data-worker="${id}"` +
      `${w.draining ? " disabled" : ""}>Drain</button> ` +
      `<button type="button" data-action="stop" data-worker="${id}">Stop</button>`
    : "";
  return {
    attrs: `data-worker="${id}"${w.draining ? ' class="draining"' : ""}`,
    cells: [
      escapeHtml(w.address),
      escapeHtml(w.hostname),
      slotCells(w.busy, Math.max(w.slots, w.busy)),
      jobs,
      formatCount(w.done),
      w.failed > 0 ? `<span class="bad">${formatCount(w.failed)}</span>` : "0",
      Number(w.load).toFixed(2),
      escapeHtml(w.version),
      formatAgo(w.lastContactMs, nowMs),
      state,
      buttons,
    ],
  };
}

/**
 * @param {Record<string, any>} m a master of FarmStatus
 * @param {number} nowMs
 */
function masterRow(m, nowMs) {
  const root = escapeHtml(m.root);
  const name = m.statusUrl ? `<a href="${escapeHtml(m.statusUrl)}">${root}</a>` : root;
  const b = m.build;
  return {
    attrs: `data-master="${escapeHtml(m.id)}"`,
    cells: [
      name,
      escapeHtml(m.hostname),
      escapeHtml(m.remoteAddr),
      b ? `${formatCount(b.jobsInFlight)} (${formatCount(b.jobsOnWorkers)} on workers)` : "–",
      b ? formatCount(b.jobsFinished) : "–",
      b ? formatRate(m.jobsPerSecond ?? 0) : "–",
      b ? `${formatCount(b.jobsRemote)} / ${formatCount(b.jobsLocal)}` : "–",
      b
        ? (b.jobsFailed > 0 ? `<span class="bad">${formatCount(b.jobsFailed)}</span>` : "0") +
          ` · ${formatCount(b.retries)} retried`
        : "–",
      b ? formatBytes(b.bytesFetched) : "–",
      m.subscribed ? "yes" : "no",
      m.lastReportMs ? formatAgo(m.lastReportMs, nowMs) : "no report",
    ],
  };
}

/**
 * The page body (inside `<main>`).
 * @param {Record<string, any>} status the coordinator's /status.json value
 * @param {{actions?: boolean}} [options]
 * @returns {string}
 */
export function renderFarm(status, options = {}) {
  const f = status.farm;
  const nowMs = status.nowMs;
  const actions = options.actions !== false;
  const workers = status.workers.map((w) => workerRow(w, actions, nowMs));
  const named = status.masters.filter((m) => m.id !== undefined);
  const anonymous = status.masters.filter((m) => m.id === undefined);
  const summary = [
    `<span><b id="sum-workers">${formatCount(f.workers)}</b> workers` +
    (f.drained > 0 ? ` (${formatCount(f.drained)} draining)` : "") + "</span>",
    `<span><b id="sum-busy">${formatCount(f.slotsBusy)}</b> of ${
      formatCount(f.slots)
    } slots busy</span>`,
    `<span><b id="sum-rate">${formatRate(f.jobsPerSecond)}</b></span>`,
    `<span><b>${formatCount(f.jobsInFlight)}</b> jobs in flight, ${
      formatCount(f.jobsFinished)
    } finished</span>`,
    `<span><b class="${f.attemptsFailed + f.jobsFailed > 0 ? "bad" : ""}">${
      formatCount(f.attemptsFailed)
    }</b> failed attempts, ${formatCount(f.jobsFailed)} jobs run nowhere</span>`,
    `<span><b>${formatCount(f.masters)}</b> masters</span>`,
  ];
  return `<p class="summary">${summary.join("")}</p>
<h2>Workers</h2>
${
    table({
      id: "workers",
      headers: [
        "Address",
        "Host",
        "Slots busy",
        "Jobs (build tree: count, busy for)",
        "Done",
        "Failed",
        "Load (1 min)",
        "Version",
        "Last contact",
        "State",
        actions ? "Actions" : "",
      ],
      rows: workers,
      empty: "No workers registered.",
    })
  }
<p class="note">Which job runs in which slot, and since when, the coordinator cannot know: each
master reports, once a second, how many of its jobs run on each worker and how long that worker
has been busy for it without a break; workers report their own count every 5 s.</p>
<h2>Masters</h2>
${
    table({
      id: "masters",
      headers: [
        "Build tree",
        "Host",
        "Connection",
        "Jobs in flight",
        "Finished",
        "Rate",
        "Remote / local",
        "Run nowhere · retried",
        "Fetched",
        "Watching",
        "Last report",
      ],
      rows: named.map((m) => masterRow(m, nowMs)),
      empty: "No master has reported.",
    })
  }${
    anonymous.length === 0 ? "" : `
<p class="note" id="anonymous">Also watching the worker list without saying who they are (older
masters, or a master's own watch: its report comes over another connection): ${
      anonymous.map((m) => escapeHtml(m.remoteAddr)).join(", ")
    }.</p>`
  }`;
}
