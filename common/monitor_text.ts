/**
 * The terminal view of a status page (`monitor.ts`, like distccmon-text):
 * a block of lines from the coordinator's or a master's `/status.json`.
 *
 * @module
 */

import { formatBytes, formatCount, formatDuration, formatRate } from "./status_view.js";
import type { FarmStatus } from "../coordinator/farm_status.ts";
import type { MasterStatus } from "../master/status.ts";

/** Slot cells as text: "[##..]" for 2 of 4 busy. */
export function slotBar(busy: number, slots: number): string {
  const shown = Math.min(Math.max(slots, busy), 32);
  const filled = Math.min(busy, shown);
  return `[${"#".repeat(filled)}${".".repeat(shown - filled)}]`;
}

function clock(ms: number): string {
  return new Date(ms).toTimeString().slice(0, 8);
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f]/g;

/** Text from outside, safe for a terminal: no escape sequences. */
export function terminalSafe(text: unknown): string {
  return String(text ?? "").replace(CONTROL, "?");
}

function pad(text: string, width: number): string {
  return text.length >= width ? text : text + " ".repeat(width - text.length);
}

/** The coordinator's farm: a summary line, then one line per worker. */
export function farmLines(s: FarmStatus): string[] {
  const f = s.farm;
  const lines = [
    `termite farm ${clock(s.nowMs)}: ${f.workers} workers` +
    (f.drained > 0 ? ` (${f.drained} draining)` : "") +
    `, ${f.slotsBusy}/${f.slots} slots busy, ${formatRate(f.jobsPerSecond)}, ` +
    `${formatCount(f.jobsInFlight)} in flight, ${formatCount(f.jobsFinished)} finished, ` +
    `${formatCount(f.attemptsFailed)} failed attempts, ${f.masters} masters`,
  ];
  const width = Math.max(0, ...s.workers.map((w) => terminalSafe(w.address).length));
  for (const w of s.workers) {
    const jobs = w.jobs.length === 0
      ? (w.busy > 0 ? `${w.busy} running` : "idle")
      : w.jobs.map((j) =>
        `${terminalSafe(j.root)}: ${j.running} (busy ${formatDuration(j.busyMs)})`
      ).join("; ");
    lines.push(
      `  ${pad(terminalSafe(w.address), width)} ${slotBar(w.busy, w.slots)} ` +
        `${w.busy}/${w.slots}${w.draining ? " draining" : ""}  ${jobs}`,
    );
  }
  if (s.workers.length === 0) lines.push("  (no workers)");
  return lines;
}

/** A master's build: a summary line, the workers, the jobs running. */
export function buildLines(s: MasterStatus): string[] {
  const b = s.build;
  const lines = [
    `termite master ${terminalSafe(s.root)} ${clock(s.nowMs)}: ${b.inFlight} in flight ` +
    `(${b.onWorkers} on workers, ${b.queued} queued, ${b.localRunning} here), ` +
    `${formatCount(b.finished)} finished, ${formatRate(b.jobsPerSecond)}, ` +
    `${formatCount(b.retried)} retried, ${formatCount(b.local.total)} here, ` +
    `${formatCount(b.failed)} ran nowhere, ${formatBytes(b.bytesFetched)} fetched` +
    (b.cached
      ? `, ${formatCount(b.cached.hits)} replayed from cache (${
        formatCount(b.cached.misses)
      } misses, ${formatDuration(b.cached.savedMs)} saved)`
      : ""),
  ];
  const width = Math.max(0, ...s.workers.map((w) => terminalSafe(w.address).length));
  for (const w of s.workers) {
    lines.push(
      `  ${pad(terminalSafe(w.address), width)} ${slotBar(w.running, w.slots)} ` +
        `${w.running}/${w.slots}  done ${formatCount(w.done)}, failed ${formatCount(w.failed)}` +
        (w.busyMs > 0 ? `, busy ${formatDuration(w.busyMs)}` : ""),
    );
  }
  for (const j of s.running.slice(0, 10)) {
    lines.push(`  ${pad(formatDuration(j.elapsedMs), 9)} ${terminalSafe(j.command).slice(0, 100)}`);
  }
  return lines;
}

/** Lines for either page's status; an unknown shape says so. */
export function statusLines(status: unknown): string[] {
  const s = status as Record<string, unknown> | null;
  if (s !== null && typeof s === "object" && "farm" in s) return farmLines(s as never);
  if (s !== null && typeof s === "object" && "build" in s) return buildLines(s as never);
  return ["(not a Termite status: neither a coordinator's nor a master's /status.json)"];
}
