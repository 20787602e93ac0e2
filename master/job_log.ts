/**
 * The master's jobs as the wrappers see them: each job from the moment a
 * wrapper hands it in until its exit status goes back, whatever ran it. For
 * the status page (jobs in flight, the slowest) and the metrics (outcomes,
 * the duration histogram). Which worker ran a job is not known here.
 *
 * @module
 */

import { COMMAND_CHARS_MAX } from "../coordinator/types.ts";

/** How a job ended, as its wrapper saw it. */
export type JobOutcome = "ok" | "exit_nonzero" | "error" | "cancelled";

export const JOB_OUTCOMES: readonly JobOutcome[] = ["ok", "exit_nonzero", "error", "cancelled"];

/** A job in flight. */
export interface JobInFlight {
  command: string;
  startedMs: number;
}

/** A finished job. */
export interface FinishedJob {
  command: string;
  ms: number;
  outcome: JobOutcome;
  code: number;
  endedMs: number;
}

/** The slowest finished jobs kept. */
export const SLOWEST_MAX = 10;

/** A command line for display: one line, control characters as spaces, shortened. */
export function commandText(argv: readonly string[], shell = false): string {
  const text = (shell && argv.length >= 3 ? argv[2] : argv.join(" "))
    // deno-lint-ignore no-control-regex
    .replace(/[\x00-\x1f\x7f]+/g, " ").trim();
  const shown = text === "" ? "(empty command)" : text;
  return shown.length <= COMMAND_CHARS_MAX ? shown : shown.slice(0, COMMAND_CHARS_MAX - 1) + "…";
}

/** The outcome of a job from what `Master.run` returned. */
export function outcomeOf(result: { code: number; error?: string }): JobOutcome {
  if (result.error === "cancelled") return "cancelled";
  if (result.error !== undefined) return "error";
  return result.code === 0 ? "ok" : "exit_nonzero";
}

/** Jobs in flight and the slowest finished ones. */
export class JobLog {
  readonly #now: () => number;
  readonly #inFlight = new Set<JobInFlight>();
  #slowest: FinishedJob[] = [];
  readonly byOutcome: Record<JobOutcome, number> = {
    ok: 0,
    exit_nonzero: 0,
    error: 0,
    cancelled: 0,
  };
  finished = 0;
  #onFinish: (job: FinishedJob) => void;

  constructor(options: { now?: () => number; onFinish?: (job: FinishedJob) => void } = {}) {
    this.#now = options.now ?? Date.now;
    this.#onFinish = options.onFinish ?? (() => {});
  }

  /** Notes a job's start; call the returned function with its result. */
  start(command: string): (result: { code: number; error?: string }) => void {
    const job: JobInFlight = { command, startedMs: this.#now() };
    this.#inFlight.add(job);
    let ended = false;
    return (result) => {
      if (ended) return;
      ended = true;
      this.#inFlight.delete(job);
      const endedMs = this.#now();
      const outcome = outcomeOf(result);
      const done: FinishedJob = {
        command,
        ms: endedMs - job.startedMs,
        outcome,
        code: result.code,
        endedMs,
      };
      this.finished++;
      this.byOutcome[outcome]++;
      if (outcome !== "cancelled") this.#keepIfSlow(done);
      this.#onFinish(done);
    };
  }

  #keepIfSlow(job: FinishedJob): void {
    const last = this.#slowest.at(-1);
    if (this.#slowest.length >= SLOWEST_MAX && last !== undefined && last.ms >= job.ms) return;
    this.#slowest.push(job);
    this.#slowest.sort((a, b) => b.ms - a.ms);
    this.#slowest.length = Math.min(this.#slowest.length, SLOWEST_MAX);
  }

  /** Jobs in flight, longest first, at most `max`. */
  running(max: number): { command: string; elapsedMs: number }[] {
    const nowMs = this.#now();
    return [...this.#inFlight]
      .sort((a, b) => a.startedMs - b.startedMs)
      .slice(0, max)
      .map((j) => ({ command: j.command, elapsedMs: Math.max(0, nowMs - j.startedMs) }));
  }

  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** The slowest finished jobs, slowest first. */
  slowest(): readonly FinishedJob[] {
    return this.#slowest;
  }
}
