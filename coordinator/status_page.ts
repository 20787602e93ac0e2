/**
 * The coordinator's HTML status page.
 *
 * @module
 */

import type { WorkerInfo } from "./types.ts";

const HTML_ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

/** Formats how long ago an event was, in whole seconds: "3s ago". */
export function formatAgo(thenMs: number, nowMs: number): string {
  return `${Math.max(0, Math.round((nowMs - thenMs) / 1000))}s ago`;
}

/** What the page shows besides the workers. */
export interface StatusPageOptions {
  version: string;
  nowMs: number;
}

/** Renders the worker table as a complete HTML document. */
export function renderStatusPage(
  workers: readonly WorkerInfo[],
  options: StatusPageOptions,
): string {
  const rows = workers.map((w) =>
    "<tr>" +
    [
      w.address,
      w.hostname,
      String(w.slots),
      String(w.jobsRunning),
      w.load.toFixed(2),
      w.version,
      formatAgo(w.lastContactMs, options.nowMs),
      w.draining ? "yes" : "no",
    ].map((cell) => `<td>${escapeHtml(cell)}</td>`).join("") +
    "</tr>"
  );
  const slots = workers.reduce((sum, w) => sum + w.slots, 0);
  const running = workers.reduce((sum, w) => sum + w.jobsRunning, 0);
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Termite coordinator</title>
<style>
body { font-family: sans-serif; margin: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
</style>
</head>
<body>
<h1>Termite coordinator</h1>
<p>Version ${
    escapeHtml(options.version)
  }. ${workers.length} workers, ${running} of ${slots} slots busy.</p>
<table>
<thead><tr><th>Address</th><th>Host</th><th>Slots</th><th>Jobs running</th><th>Load</th><th>Version</th><th>Last contact</th><th>Draining</th></tr></thead>
<tbody>
${rows.join("\n")}
</tbody>
</table>
</body>
</html>
`;
}
