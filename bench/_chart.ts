/**
 * The farm benchmark's chart, as hand-written SVG: the scaling curve (speed-up
 * over the master alone against the number of workers, with the ideal and the
 * goal lines) and bars of time ratios against local make (1.0 = as fast).
 */

export interface ChartData {
  title: string;
  /**
   * Speed-up over the master alone; `null` where the run failed. With the
   * build host's CPU per compile job (ms), written under each point.
   */
  scaling: { workers: number; speedup: number | null; hostCpuMsPerJob?: number | null }[];
  /** The goal: speed-up ≥ goalPerWorker × N. */
  goalPerWorker: number;
  /** Time ratios to local make (lower is better); `null` where a run failed. */
  ratios: { label: string; value: number | null }[];
  /** The goal line drawn across the bars. */
  ratioGoal: number;
  note?: string;
}

const W = 960, H = 420;
const FONT = 'font-family="sans-serif"';

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

function fmt(n: number): string {
  return n >= 10 ? n.toFixed(0) : n >= 1 ? n.toFixed(2) : n.toFixed(3);
}

/** A tidy axis for values up to `v`: its top and tick step (at most 6 ticks). */
function axis(v: number): { top: number; step: number } {
  const p = 10 ** Math.floor(Math.log10(Math.max(v, 1e-9)));
  for (const m of [0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10]) {
    const step = m * p;
    const top = Math.ceil(v / step - 1e-9) * step;
    if (top / step <= 6) return { top: Math.max(top, step), step };
  }
  return { top: 10 * p, step: 2 * p };
}

function tick(v: number): string {
  return String(Number(v.toPrecision(3)));
}

function scalingPanel(d: ChartData, x0: number, y0: number, w: number, h: number): string {
  const out: string[] = [];
  const maxN = Math.max(1, ...d.scaling.map((p) => p.workers));
  const { top, step } = axis(Math.max(maxN, ...d.scaling.map((p) => p.speedup ?? 0)));
  const px = (n: number) => x0 + (n / maxN) * w;
  const py = (v: number) => y0 + h - (v / top) * h;
  out.push(
    `<text x="${x0 + w / 2}" y="${y0 - 12}" text-anchor="middle" ${FONT} font-size="14" ` +
      `font-weight="bold">Speed-up over the master alone (0.4 core per host)</text>`,
  );
  for (let i = 0; i * step <= top + 1e-9; i++) {
    const v = i * step;
    out.push(
      `<line x1="${x0}" y1="${py(v)}" x2="${x0 + w}" y2="${py(v)}" stroke="#ddd"/>`,
      `<text x="${x0 - 6}" y="${py(v) + 4}" text-anchor="end" ${FONT} font-size="11">` +
        `${tick(v)}×</text>`,
    );
  }
  for (let n = 0; n <= maxN; n++) {
    out.push(
      `<text x="${px(n)}" y="${y0 + h + 16}" text-anchor="middle" ${FONT} font-size="11">` +
        `${n}</text>`,
    );
  }
  out.push(
    `<text x="${x0 + w / 2}" y="${y0 + h + 34}" text-anchor="middle" ${FONT} font-size="12">` +
      `workers (0 = local make on the master host)</text>`,
    `<line x1="${x0}" y1="${y0 + h}" x2="${x0 + w}" y2="${y0 + h}" stroke="#333"/>`,
    `<line x1="${x0}" y1="${y0}" x2="${x0}" y2="${y0 + h}" stroke="#333"/>`,
    // Ideal: N workers, N times faster; goal: goalPerWorker × N.
    `<line x1="${px(1)}" y1="${py(1)}" x2="${px(maxN)}" y2="${py(maxN)}" stroke="#999" ` +
      `stroke-dasharray="6 4"/>`,
    `<line x1="${px(1)}" y1="${py(d.goalPerWorker)}" x2="${px(maxN)}" ` +
      `y2="${py(d.goalPerWorker * maxN)}" stroke="#c33" stroke-dasharray="2 3"/>`,
  );
  const pts = d.scaling.filter((p) => p.speedup !== null).sort((a, b) => a.workers - b.workers);
  if (pts.length > 1) {
    const path = pts.map((p, i) => `${i === 0 ? "M" : "L"}${px(p.workers)},${py(p.speedup!)}`);
    out.push(`<path d="${path.join(" ")}" fill="none" stroke="#1f6fb5" stroke-width="2.5"/>`);
  }
  for (const p of pts) {
    out.push(
      `<circle cx="${px(p.workers)}" cy="${py(p.speedup!)}" r="4" fill="#1f6fb5"/>`,
      `<text x="${px(p.workers) + 6}" y="${py(p.speedup!) - 6}" ${FONT} font-size="11" ` +
        `fill="#1f6fb5">${fmt(p.speedup!)}×</text>`,
    );
    if (typeof p.hostCpuMsPerJob === "number") {
      out.push(
        `<text x="${px(p.workers) + 6}" y="${py(p.speedup!) + 14}" ${FONT} font-size="10" ` +
          `fill="#7a4b00">${fmt(p.hostCpuMsPerJob)} ms/job</text>`,
      );
    }
  }
  for (const p of d.scaling.filter((p) => p.speedup === null)) {
    out.push(
      `<text x="${px(p.workers)}" y="${y0 + h - 6}" text-anchor="middle" ${FONT} ` +
        `font-size="11" fill="#c33">failed</text>`,
    );
  }
  const lx = x0 + 10, ly = y0 + 10;
  out.push(
    `<line x1="${lx}" y1="${ly}" x2="${lx + 24}" y2="${ly}" stroke="#1f6fb5" stroke-width="2.5"/>`,
    `<text x="${lx + 30}" y="${ly + 4}" ${FONT} font-size="11">measured</text>`,
    `<line x1="${lx}" y1="${ly + 16}" x2="${lx + 24}" y2="${ly + 16}" stroke="#999" ` +
      `stroke-dasharray="6 4"/>`,
    `<text x="${lx + 30}" y="${ly + 20}" ${FONT} font-size="11">ideal (N×)</text>`,
    `<line x1="${lx}" y1="${ly + 32}" x2="${lx + 24}" y2="${ly + 32}" stroke="#c33" ` +
      `stroke-dasharray="2 3"/>`,
    `<text x="${lx + 30}" y="${ly + 36}" ${FONT} font-size="11">goal (${d.goalPerWorker}×N)</text>`,
    `<text x="${lx}" y="${ly + 52}" ${FONT} font-size="10" fill="#7a4b00">` +
      `ms/job: the build host's CPU per compile job (make, wrappers, master)</text>`,
  );
  return out.join("\n");
}

function ratioPanel(d: ChartData, x0: number, y0: number, w: number, h: number): string {
  const out: string[] = [];
  const values = d.ratios.map((r) => r.value ?? 0);
  const { top, step } = axis(Math.max(d.ratioGoal, 1, ...values) * 1.05);
  const n = Math.max(1, d.ratios.length);
  const slot = w / n, bar = Math.min(44, slot * 0.6);
  const py = (v: number) => y0 + h - (v / top) * h;
  out.push(
    `<text x="${x0 + w / 2}" y="${y0 - 16}" text-anchor="middle" ${FONT} font-size="14" ` +
      `font-weight="bold">Time / local (same -j; one command: / direct)</text>`,
  );
  for (let i = 0; i * step <= top + 1e-9; i++) {
    const v = i * step;
    out.push(
      `<line x1="${x0}" y1="${py(v)}" x2="${x0 + w}" y2="${py(v)}" stroke="#ddd"/>`,
      `<text x="${x0 - 6}" y="${py(v) + 4}" text-anchor="end" ${FONT} font-size="11">` +
        `${tick(v)}</text>`,
    );
  }
  d.ratios.forEach((r, i) => {
    const cx = x0 + slot * (i + 0.5);
    if (r.value === null) {
      out.push(
        `<text x="${cx}" y="${y0 + h - 6}" text-anchor="middle" ${FONT} font-size="11" ` +
          `fill="#c33">failed</text>`,
      );
    } else {
      const color = r.value <= d.ratioGoal ? "#3a9a4a" : "#d9822b";
      out.push(
        `<rect x="${cx - bar / 2}" y="${py(r.value)}" width="${bar}" ` +
          `height="${y0 + h - py(r.value)}" fill="${color}"/>`,
        `<text x="${cx}" y="${py(r.value) - 4}" text-anchor="middle" ${FONT} font-size="11">` +
          `${fmt(r.value)}</text>`,
      );
    }
    out.push(
      `<text transform="translate(${cx + 4},${y0 + h + 12}) rotate(-30)" ${FONT} ` +
        `font-size="11" text-anchor="end">${esc(r.label)}</text>`,
    );
  });
  out.push(
    `<line x1="${x0}" y1="${y0 + h}" x2="${x0 + w}" y2="${y0 + h}" stroke="#333"/>`,
    `<line x1="${x0}" y1="${y0}" x2="${x0}" y2="${y0 + h}" stroke="#333"/>`,
    `<line x1="${x0}" y1="${py(d.ratioGoal)}" x2="${x0 + w}" y2="${py(d.ratioGoal)}" ` +
      `stroke="#c33" stroke-dasharray="2 3"/>`,
    `<text x="${x0 + w}" y="${y0 - 1}" text-anchor="end" ${FONT} ` +
      `font-size="11" fill="#c33">dotted: build goal ≤ ${d.ratioGoal}</text>`,
  );
  return out.join("\n");
}

/** The whole chart as an SVG document. */
export function renderChart(d: ChartData): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" ` +
    `viewBox="0 0 ${W} ${H}">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" ${FONT} font-size="16" font-weight="bold">` +
    `${esc(d.title)}</text>`,
    scalingPanel(d, 60, 70, 370, 260),
    ratioPanel(d, 540, 70, 400, 230),
    d.note
      ? `<text x="${W / 2}" y="${H - 8}" text-anchor="middle" ${FONT} font-size="11" ` +
        `fill="#555">${esc(d.note)}</text>`
      : "",
    "</svg>",
    "",
  ].join("\n");
}
