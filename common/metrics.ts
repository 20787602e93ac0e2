/**
 * A small Prometheus registry: counters, gauges and histograms with labels,
 * and values read at scrape time from counters kept elsewhere (a role's
 * `stats` object), rendered in the text exposition format 0.0.4 for
 * `GET /metrics`. Shared by the coordinator, the master and (later) the
 * worker.
 *
 * Names follow Prometheus conventions: a `termite_` prefix, base units
 * (`_seconds`, `_bytes`), counters ending in `_total`.
 *
 * @module
 */

/** Label name → value for one series. */
export type Labels = Readonly<Record<string, string>>;

/** The `Content-Type` of {@linkcode Registry.render}'s output. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Series one metric keeps at most; updates of further label sets are dropped. */
export const SERIES_MAX_DEFAULT = 1000;

/** Histogram buckets for job durations, in seconds. */
export const JOB_SECONDS_BUCKETS: readonly number[] = [
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  300,
];

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

type MetricType = "counter" | "gauge" | "histogram";

interface Metric {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  /** Lines after HELP and TYPE. */
  lines(): string[];
}

/** Options of a labelled metric. */
export interface MetricOptions {
  /** Label names, in the order values are given; none by default. */
  labelNames?: readonly string[];
  /** Most label sets kept; default {@linkcode SERIES_MAX_DEFAULT}. */
  seriesMax?: number;
}

/** Escapes a label value: backslash, double quote and line feed. */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => c === "\n" ? "\\n" : `\\${c}`);
}

function escapeHelp(help: string): string {
  return help.replace(/[\\\n]/g, (c) => c === "\n" ? "\\n" : "\\\\");
}

/** A sample value as the format wants it: `+Inf`, `-Inf`, `NaN` or a number. */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function labelText(names: readonly string[], values: readonly string[], extra = ""): string {
  const parts = names.map((n, i) => `${n}="${escapeLabelValue(values[i])}"`);
  if (extra !== "") parts.push(extra);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

function checkLabelNames(metric: string, names: readonly string[], reserved: string[]): void {
  const seen = new Set<string>();
  for (const n of names) {
    if (!LABEL_NAME.test(n) || n.startsWith("__") || reserved.includes(n) || seen.has(n)) {
      throw new Error(`Cannot register metric ${metric}: bad label name ${JSON.stringify(n)}`);
    }
    seen.add(n);
  }
}

/** The values of `labels` in the order of `names`; a missing label is "". */
function labelValues(names: readonly string[], labels: Labels | undefined): string[] {
  return names.map((n) => labels?.[n] ?? "");
}

/** Series by their label values, capped. */
class SeriesMap<T> {
  readonly #max: number;
  readonly #series = new Map<string, { values: string[]; state: T }>();
  dropped = 0;

  constructor(max: number) {
    this.#max = max;
  }

  get(values: string[], create: () => T): T | undefined {
    const key = JSON.stringify(values);
    let entry = this.#series.get(key);
    if (entry === undefined) {
      if (this.#series.size >= this.#max) {
        this.dropped++;
        return undefined;
      }
      entry = { values, state: create() };
      this.#series.set(key, entry);
    }
    return entry.state;
  }

  entries(): { values: string[]; state: T }[] {
    return [...this.#series.values()];
  }
}

/** A value that only goes up (reset when the process restarts). */
export class Counter implements Metric {
  readonly type = "counter";
  readonly #labelNames: readonly string[];
  readonly #series: SeriesMap<{ value: number }>;

  constructor(readonly name: string, readonly help: string, options: MetricOptions = {}) {
    this.#labelNames = options.labelNames ?? [];
    this.#series = new SeriesMap(options.seriesMax ?? SERIES_MAX_DEFAULT);
  }

  /** Adds `amount` (≥ 0, default 1) to the series of `labels`. */
  inc(labels?: Labels, amount = 1): void {
    if (!(amount >= 0)) throw new RangeError(`Cannot add ${amount} to counter ${this.name}`);
    const s = this.#series.get(labelValues(this.#labelNames, labels), () => ({ value: 0 }));
    if (s !== undefined) s.value += amount;
  }

  /** The current value of the series of `labels` (0 when none). */
  value(labels?: Labels): number {
    const key = JSON.stringify(labelValues(this.#labelNames, labels));
    return this.#series.entries().find((e) => JSON.stringify(e.values) === key)?.state.value ?? 0;
  }

  lines(): string[] {
    return this.#series.entries().map(({ values, state }) =>
      `${this.name}${labelText(this.#labelNames, values)} ${formatValue(state.value)}`
    );
  }
}

/** A value that goes up and down. */
export class Gauge implements Metric {
  readonly type = "gauge";
  readonly #labelNames: readonly string[];
  readonly #series: SeriesMap<{ value: number }>;

  constructor(readonly name: string, readonly help: string, options: MetricOptions = {}) {
    this.#labelNames = options.labelNames ?? [];
    this.#series = new SeriesMap(options.seriesMax ?? SERIES_MAX_DEFAULT);
  }

  set(value: number, labels?: Labels): void {
    const s = this.#series.get(labelValues(this.#labelNames, labels), () => ({ value: 0 }));
    if (s !== undefined) s.value = value;
  }

  inc(labels?: Labels, amount = 1): void {
    const s = this.#series.get(labelValues(this.#labelNames, labels), () => ({ value: 0 }));
    if (s !== undefined) s.value += amount;
  }

  lines(): string[] {
    return this.#series.entries().map(({ values, state }) =>
      `${this.name}${labelText(this.#labelNames, values)} ${formatValue(state.value)}`
    );
  }
}

/** Options of {@linkcode Histogram}. */
export interface HistogramOptions extends MetricOptions {
  /** Upper bounds, ascending; `+Inf` is added. */
  buckets: readonly number[];
}

interface HistogramState {
  counts: number[];
  sum: number;
  count: number;
}

/** Observations counted in buckets, with their sum and count. */
export class Histogram implements Metric {
  readonly type = "histogram";
  readonly #labelNames: readonly string[];
  readonly #buckets: readonly number[];
  readonly #series: SeriesMap<HistogramState>;

  constructor(readonly name: string, readonly help: string, options: HistogramOptions) {
    this.#labelNames = options.labelNames ?? [];
    const b = options.buckets.filter((x) => x !== Infinity);
    if (b.length === 0 || b.some((x, i) => !Number.isFinite(x) || (i > 0 && x <= b[i - 1]))) {
      throw new Error(`Cannot register histogram ${name}: buckets must ascend`);
    }
    this.#buckets = b;
    this.#series = new SeriesMap(options.seriesMax ?? SERIES_MAX_DEFAULT);
  }

  observe(value: number, labels?: Labels): void {
    if (Number.isNaN(value)) return;
    const s = this.#series.get(
      labelValues(this.#labelNames, labels),
      () => ({ counts: this.#buckets.map(() => 0), sum: 0, count: 0 }),
    );
    if (s === undefined) return;
    for (let i = 0; i < this.#buckets.length; i++) if (value <= this.#buckets[i]) s.counts[i]++;
    s.sum += value;
    s.count++;
  }

  lines(): string[] {
    const out: string[] = [];
    for (const { values, state } of this.#series.entries()) {
      this.#buckets.forEach((le, i) => {
        const labels = labelText(this.#labelNames, values, `le="${formatValue(le)}"`);
        out.push(`${this.name}_bucket${labels} ${state.counts[i]}`);
      });
      out.push(
        `${this.name}_bucket${labelText(this.#labelNames, values, 'le="+Inf"')} ${state.count}`,
      );
      const labels = labelText(this.#labelNames, values);
      out.push(`${this.name}_sum${labels} ${formatValue(state.sum)}`);
      out.push(`${this.name}_count${labels} ${state.count}`);
    }
    return out;
  }
}

/** One sample of a collected metric: labels (or none) and a value. */
export type Sample = number | readonly [Labels, number];

/** A metric whose samples are read at scrape time from state kept elsewhere. */
class Collected implements Metric {
  readonly #read: () => Iterable<Sample> | number;
  readonly #labelNames: readonly string[];
  readonly #seriesMax: number;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge",
    read: () => Iterable<Sample> | number,
    options: MetricOptions,
  ) {
    this.#read = read;
    this.#labelNames = options.labelNames ?? [];
    this.#seriesMax = options.seriesMax ?? SERIES_MAX_DEFAULT;
  }

  lines(): string[] {
    const read = this.#read();
    const samples: Iterable<Sample> = typeof read === "number" ? [read] : read;
    const out: string[] = [];
    for (const sample of samples) {
      if (out.length >= this.#seriesMax) break;
      const [labels, value] = typeof sample === "number" ? [undefined, sample] : sample;
      if (typeof value !== "number") continue;
      const values = labelValues(this.#labelNames, labels);
      out.push(`${this.name}${labelText(this.#labelNames, values)} ${formatValue(value)}`);
    }
    return out;
  }
}

/** A set of metrics rendered together. */
export class Registry {
  readonly #metrics = new Map<string, Metric>();

  #add<T extends Metric>(metric: T, labelNames: readonly string[], reserved: string[]): T {
    const { name, type } = metric;
    if (!METRIC_NAME.test(name)) throw new Error(`Cannot register metric: bad name ${name}`);
    if (type === "counter" && !name.endsWith("_total")) {
      throw new Error(`Cannot register counter ${name}: a counter's name ends in _total`);
    }
    if (this.#metrics.has(name)) throw new Error(`Cannot register metric ${name}: taken`);
    checkLabelNames(name, labelNames, reserved);
    this.#metrics.set(name, metric);
    return metric;
  }

  counter(name: string, help: string, options: MetricOptions = {}): Counter {
    return this.#add(new Counter(name, help, options), options.labelNames ?? [], []);
  }

  gauge(name: string, help: string, options: MetricOptions = {}): Gauge {
    return this.#add(new Gauge(name, help, options), options.labelNames ?? [], []);
  }

  histogram(name: string, help: string, options: HistogramOptions): Histogram {
    return this.#add(new Histogram(name, help, options), options.labelNames ?? [], ["le"]);
  }

  /**
   * A metric read at scrape time: `read` returns one number (no labels) or
   * samples `[labels, value]`. For counters kept by other code (a `stats`
   * object) and for gauges computed from live state.
   */
  collect(
    name: string,
    help: string,
    type: "counter" | "gauge",
    read: () => Iterable<Sample> | number,
    options: MetricOptions = {},
  ): void {
    this.#add(new Collected(name, help, type, read, options), options.labelNames ?? [], []);
  }

  /** Every metric in the text exposition format, ending with a line feed. */
  render(): string {
    const out: string[] = [];
    for (const metric of this.#metrics.values()) {
      out.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`);
      out.push(`# TYPE ${metric.name} ${metric.type}`);
      out.push(...metric.lines());
    }
    return out.length === 0 ? "" : out.join("\n") + "\n";
  }
}

/** The registry as a `GET /metrics` response. */
export function metricsResponse(registry: Registry, headers: HeadersInit = {}): Response {
  return new Response(registry.render(), {
    headers: { ...Object.fromEntries(new Headers(headers)), "content-type": METRICS_CONTENT_TYPE },
  });
}
