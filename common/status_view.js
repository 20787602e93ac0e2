/**
 * Formatting shared by the status pages. Plain JavaScript with no imports
 * beyond its folder: the server renders the first page with it and serves
 * the same file to the browser, which renders every update with it.
 *
 * Every value from outside goes through `escapeHtml` before it reaches
 * markup; numbers are formatted with their unit.
 *
 * @module
 */

const HTML_ESCAPES = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/**
 * Escapes text for element content and quoted attribute values.
 * @param {unknown} text
 * @returns {string}
 */
export function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

/**
 * A count with thousands separators: "12 345".
 * @param {number} n
 * @returns {string}
 */
export function formatCount(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, "\u202f");
}

/**
 * Bytes in binary units: "512 B", "4.0 KiB", "1.25 GiB".
 * @param {number} bytes
 * @returns {string}
 */
export function formatBytes(bytes) {
  if (typeof bytes !== "number" || !Number.isFinite(bytes)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  return `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${units[unit]}`;
}

/**
 * A duration from milliseconds: "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min".
 * @param {number} ms
 * @returns {string}
 */
export function formatDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const whole = Math.floor(s);
  if (whole < 3600) {
    return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
  }
  return `${Math.floor(whole / 3600)} h ${
    String(Math.floor(whole / 60) % 60).padStart(2, "0")
  } min`;
}

/**
 * How long ago, from two epoch-ms times: "3 s ago".
 * @param {number} thenMs
 * @param {number} nowMs
 * @returns {string}
 */
export function formatAgo(thenMs, nowMs) {
  if (typeof thenMs !== "number" || thenMs <= 0) return "never";
  return `${formatDuration(Math.max(0, nowMs - thenMs))} ago`;
}

/**
 * A rate: "3.4 jobs/s".
 * @param {number} perSecond
 * @param {string} unit
 * @returns {string}
 */
export function formatRate(perSecond, unit = "jobs") {
  if (typeof perSecond !== "number" || !Number.isFinite(perSecond)) return "–";
  return `${perSecond.toFixed(perSecond < 100 ? 1 : 0)} ${unit}/s`;
}

/**
 * A table: headers, rows of cells (already escaped markup), an optional
 * class per row. An empty table says `empty`.
 * @param {{headers: string[], rows: {cells: string[], attrs?: string}[], empty: string, id?: string}} t
 * @returns {string}
 */
export function table(t) {
  if (t.rows.length === 0) return `<p class="empty">${escapeHtml(t.empty)}</p>`;
  const head = t.headers.map((h) => `<th>${escapeHtml(h)}</th>`).join("");
  const body = t.rows.map((r) =>
    `<tr${r.attrs ? " " + r.attrs : ""}>${r.cells.map((c) => `<td>${c}</td>`).join("")}</tr>`
  ).join("\n");
  return `<table${t.id ? ` id="${escapeHtml(t.id)}"` : ""}><thead><tr>${head}</tr></thead>` +
    `<tbody>\n${body}\n</tbody></table>`;
}

/**
 * Slot cells, busy ones filled: a worker's slots at a glance.
 * @param {number} busy
 * @param {number} slots
 * @returns {string}
 */
export function slotCells(busy, slots) {
  const shown = Math.min(slots, 64);
  let cells = "";
  for (let i = 0; i < shown; i++) {
    cells += `<span class="slot${i < busy ? " busy" : ""}"></span>`;
  }
  return `<span class="slots" title="${busy} of ${slots} slots busy">${cells}</span> ` +
    `${formatCount(busy)}/${formatCount(slots)}`;
}

/** The pages' style sheet (inline: the pages allow inline styles only). */
export const PAGE_STYLE = `
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin-top: 1.4em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.4em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; white-space: nowrap; }
td.num, th.num { text-align: right; }
.summary span { display: inline-block; margin-right: 1.5em; }
.summary b { font-size: 1.2em; }
.slots { display: inline-block; white-space: nowrap; }
.slot { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 2px;
  border: 1px solid #888; background: #fff; vertical-align: middle; }
.slot.busy { background: #2a7; border-color: #185; }
tr.draining td { color: #888; }
.bad { color: #b00; }
.note, .empty { color: #666; font-size: 0.9em; }
#live { font-size: 0.85em; color: #666; }
#live.stale { color: #b00; }
dialog { max-width: 40em; }
dialog code { display: block; background: #f3f3f3; padding: 0.4em; word-break: break-all; }
`;
