/**
 * The master's page body from its `/status.json` value: the build at a
 * glance, the jobs running and the slowest, the workers, why jobs ran here.
 * Rendered by the server for the first paint and by the browser on each
 * update (master/build_page.js).
 *
 * @module
 */

import {
  escapeHtml,
  formatBytes,
  formatCount,
  formatDuration,
  formatRate,
  slotCells,
  table,
} from "../common/status_view.js";

/** What each fallback cause means, and what to change. */
const CAUSES = {
  "no-workers": "no worker was listed",
  unusable: "no listed worker could be reached",
  busy: "every slot stayed taken too long",
  failed: "failed on the workers it was tried on",
  committed: "failed after its output was sent (not retried)",
  unservable: "the tree is closed to other users (jobs on workers run as nobody)",
};

/**
 * @param {number} n
 * @param {string} cls
 */
function highlight(n, cls = "bad") {
  return n > 0 ? `<span class="${cls}">${formatCount(n)}</span>` : formatCount(n);
}

/**
 * The page body (inside `<main>`).
 * @param {Record<string, any>} status the master's /status.json value
 * @returns {string}
 */
export function renderBuild(status) {
  const b = status.build;
  const coordinator = status.coordinator
    ? `Coordinator ${escapeHtml(status.coordinator.address)}` +
      (status.coordinator.statusUrl
        ? `: <a href="${escapeHtml(status.coordinator.statusUrl)}">the farm's page</a>`
        : " (its page is not known yet)")
    : "No coordinator: every job runs here.";
  const summary = [
    `<span><b id="sum-running">${formatCount(b.inFlight)}</b> jobs in flight: ` +
    `${formatCount(b.onWorkers)} on workers, <b id="sum-queued">${formatCount(b.queued ?? 0)}` +
    `</b> queued for a worker's slot, <b id="sum-local-running">${
      formatCount(b.localRunning ?? 0)
    }</b> running here</span>`,
    `<span><b id="sum-finished">${formatCount(b.finished)}</b> finished ` +
    `(${formatCount(b.byOutcome.exit_nonzero ?? 0)} exited non-zero)</span>`,
    `<span><b>${formatRate(b.jobsPerSecond)}</b></span>`,
    `<span><b>${formatCount(b.remote)}</b> on workers, <b>${formatCount(b.local.total)}</b> here, ${
      formatCount(b.builtin)
    } built in</span>`,
    `<span><b>${highlight(b.retried, "note")}</b> retried, <b>${
      highlight(b.failed)
    }</b> ran nowhere</span>`,
    `<span><b>${formatBytes(b.bytesFetched)}</b> of results fetched, ${
      formatBytes(b.bytesServed)
    } served</span>`,
  ];
  if (b.cached) {
    summary.push(
      `<span id="sum-cached"><b>${formatCount(b.cached.hits)}</b> replayed from the action ` +
        `cache (${formatCount(b.cached.misses)} misses, ${
          formatDuration(b.cached.savedMs)
        } saved; ${formatCount(b.cached.notStored)} not cacheable)</span>`,
    );
  }
  const running = table({
    id: "running",
    headers: ["Command", "Running for"],
    rows: status.running.map((j) => ({
      cells: [`<code>${escapeHtml(j.command)}</code>`, formatDuration(j.elapsedMs)],
    })),
    empty: "No job in flight.",
  });
  const slowest = table({
    id: "slowest",
    headers: ["Command", "Took", "Exit status"],
    rows: status.slowest.map((j) => ({
      cells: [
        `<code>${escapeHtml(j.command)}</code>`,
        formatDuration(j.ms),
        j.outcome === "error" ? '<span class="bad">ran nowhere</span>' : String(j.code),
      ],
    })),
    empty: "No job finished yet.",
  });
  const workers = table({
    id: "workers",
    headers: [
      "Worker",
      "Slots busy",
      "Busy for",
      "Done",
      "Failed attempts",
      "Time there per job",
      "Job CPU per job",
      "Collecting per job",
      "Applying here per job",
    ],
    rows: status.workers.map((w) => {
      const per = (ms) => w.done > 0 ? formatDuration(ms / w.done) : "–";
      return {
        attrs: `data-worker="${escapeHtml(w.address)}"`,
        cells: [
          escapeHtml(w.address),
          slotCells(w.running, Math.max(w.slots, w.running)),
          w.busyMs > 0 ? formatDuration(w.busyMs) : "idle",
          formatCount(w.done),
          highlight(w.failed),
          per(w.workerMs),
          per(w.jobCpuMs ?? 0),
          per(w.collectMs),
          per(w.applyMs),
        ],
      };
    }),
    empty: "No worker connected.",
  });
  const local = [
    ["Named in .termite-localrc (or no coordinator)", b.local.byRule],
    ["Naming paths the workers do not see or ship", b.local.outside],
    ...Object.entries(b.local.fallback).map((
      [cause, n],
    ) => [`Last resort: ${CAUSES[cause] ?? cause}`, n]),
  ];
  const localTable = table({
    id: "local",
    headers: ["Why", "Jobs"],
    rows: local.map(([why, n]) => ({ cells: [escapeHtml(why), formatCount(n)] })),
    empty: "",
  });
  const h = status.hashCache;
  const f = status.files;
  return `<p>${coordinator}</p>
<p class="summary">${summary.join("")}</p>
<h2>Running now</h2>
${running}
<p class="note">Which worker runs each job is not known to this page; the table of workers
counts their busy slots.</p>
<h2>Workers</h2>
${workers}
<h2>Slowest jobs</h2>
${slowest}
<h2>Run here: ${formatCount(b.local.total)} jobs</h2>
${localTable}
<h2>Files served to the workers</h2>
<p>${formatCount(f.attrs)} attribute lookups, ${formatCount(f.dirs)} directory listings, ${
    formatCount(f.blobs)
  } contents (${formatBytes(f.blobBytes)}). Hash cache: ${formatCount(h.entries)} entries, ${
    (h.hitRate * 100).toFixed(1)
  } % hits (${formatCount(h.hits)} of ${formatCount(h.hits + h.misses)}), ${
    formatBytes(h.bytesHashed)
  } hashed.</p>
<p class="note">Master ${escapeHtml(status.masterId)} on ${escapeHtml(status.hostname)}, version ${
    escapeHtml(status.version)
  }.</p>`;
}
