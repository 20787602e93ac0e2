/**
 * The master's dispatch policy as a deterministic state machine: which job
 * runs on which worker (least loaded first), how long a job waits for a slot,
 * retries on other workers, setting a failed worker aside, and the fall back
 * to a local run, always with the reason. No I/O and no clock of its own:
 * every call takes effect at `options.now()` and returns what to do next, so
 * it is tested from scripts (tests/testdata/dispatch/) apart from any
 * connection. `WorkerPool` feeds it the connections' events.
 */

export interface DispatchOptions {
  now: () => number;
  /** Other workers tried after a failed attempt before running locally. */
  retries: number;
  /** A job waits this long for a free slot before it runs locally. */
  slotWaitMs: number;
  /** A worker that failed is left alone this long. */
  setAsideMs: number;
  /** Jobs waiting for a slot, at most; past it a job runs locally at once. */
  waitersMax: number;
  /** Run a job locally when no worker can (else the job fails). */
  localFallback: boolean;
}

/** How an attempt on a worker ended. */
export type AttemptEnd =
  | { kind: "ok" }
  | { kind: "cancelled" }
  | {
    kind: "failed";
    why: string;
    /** The worker's fault (bad result, broken or silent link, full disk): set it aside. */
    workerFault: boolean;
    /** A passing state of the worker's view (a stale handle): it may try again. */
    transient: boolean;
    /** Output was already forwarded: running again would print it twice. */
    committed: boolean;
  };

/** Why a job did not get a worker. */
export type FallbackCause =
  | "no-workers"
  | "unusable"
  | "busy"
  | "failed"
  | "committed"
  | "unservable";

/** What to do with a job. */
export type Placement =
  | { kind: "run"; job: number; worker: string }
  | { kind: "local"; job: number; cause: FallbackCause; reason: string }
  | { kind: "fail"; job: number; cause: FallbackCause; reason: string };

/** A decision, or a worker to disconnect because it was set aside. */
export type Effect = Placement | { kind: "drop"; worker: string; why: string };

interface WorkerState {
  status: "connecting" | "up" | "down";
  /** Slots for this master while up. */
  slots: number;
  /** Attempts not ended yet, kept while it is down (they end as its connection does). */
  running: number;
}

interface JobState {
  /** Workers not to try again (a transient failure takes its worker off). */
  tried: Set<string>;
  /** Workers it failed on, for the reason given when it runs locally. */
  failedOn: string[];
  attempts: number;
  lastFailure?: string;
  /** While waiting for a slot: when it stops waiting. */
  deadline?: number;
}

export class Dispatch {
  readonly #o: DispatchOptions;
  readonly #workers = new Map<string, WorkerState>();
  readonly #setAside = new Map<string, { until: number; why: string }>();
  readonly #jobs = new Map<number, JobState>();
  /** Jobs waiting for a slot, oldest first. */
  #waiting: number[] = [];

  constructor(options: DispatchOptions) {
    this.#o = options;
  }

  /** Connected workers: id, slots, running. */
  get workers(): { id: string; slots: number; running: number }[] {
    return [...this.#workers].filter(([, w]) => w.status === "up").map(([id, w]) => ({
      id,
      slots: w.slots,
      running: w.running,
    }));
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  /** Whether a worker may be connected now (not set aside). */
  mayConnect(id: string): boolean {
    const aside = this.#setAside.get(id);
    return aside === undefined || aside.until <= this.#o.now();
  }

  /** When the next set-aside worker may be tried again; undefined if none is waiting. */
  nextRetryAt(): number | undefined {
    const now = this.#o.now();
    let at: number | undefined;
    for (const { until } of this.#setAside.values()) {
      if (until > now) at = Math.min(at ?? until, until);
    }
    return at;
  }

  /** A connection to the worker is being made: jobs may wait for it. */
  connecting(id: string): Effect[] {
    const w = this.#workers.get(id);
    if (w === undefined) this.#workers.set(id, { status: "connecting", slots: 0, running: 0 });
    else if (w.status === "down") w.status = "connecting";
    return [];
  }

  /** The worker is connected with `slots` slots for this master. */
  up(id: string, slots: number): Effect[] {
    const w = this.#workers.get(id);
    this.#workers.set(id, { status: "up", slots, running: w?.running ?? 0 });
    this.#setAside.delete(id);
    return this.#wake();
  }

  /**
   * The worker is gone or could not be reached; `why` is remembered as the
   * reason jobs ran locally. Its running attempts end through `ended`.
   */
  down(id: string, why: string): Effect[] {
    this.#markDown(id);
    this.#setAside.set(id, { until: this.#o.now() + this.#o.setAsideMs, why });
    return this.#wake();
  }

  /** The worker left the list (drained, or gone from the coordinator). */
  removed(id: string): Effect[] {
    this.#markDown(id);
    this.#setAside.delete(id);
    return this.#wake();
  }

  /** A new job: where it runs, or nothing yet (it waits for a slot). */
  submit(job: number): Effect[] {
    if (this.#jobs.has(job)) throw new Error(`Job ${job} submitted twice`);
    this.#jobs.set(job, { tried: new Set(), failedOn: [], attempts: 0 });
    return this.#place(job);
  }

  /** An attempt of `job` on `worker` ended: its slot is free; what next for the job. */
  ended(job: number, worker: string, end: AttemptEnd): Effect[] {
    const w = this.#workers.get(worker);
    if (w && w.running > 0) w.running--;
    if (w && w.status === "down" && w.running === 0) this.#workers.delete(worker);
    const state = this.#jobs.get(job);
    if (state === undefined) throw new Error(`Job ${job} is not known`);
    const effects: Effect[] = [];
    if (end.kind !== "failed") {
      this.#jobs.delete(job);
    } else {
      state.lastFailure = end.why;
      if (!state.failedOn.includes(worker)) state.failedOn.push(worker);
      if (end.workerFault) {
        this.#markDown(worker);
        this.#setAside.set(worker, { until: this.#o.now() + this.#o.setAsideMs, why: end.why });
        effects.push({ kind: "drop", worker, why: end.why });
      }
      if (end.transient) state.tried.delete(worker);
      if (end.committed) {
        this.#jobs.delete(job);
        effects.push({
          kind: "fail",
          job,
          cause: "committed",
          reason: `the job failed on ${worker} after its output was sent, so it is not run ` +
            `again: ${end.why}`,
        });
      } else if (state.attempts > this.#o.retries) {
        effects.push(
          this.#fallBack(job, "failed", `it failed on ${this.#triedList(state)}: ${end.why}`),
        );
      } else {
        effects.push(...this.#place(job));
      }
    }
    effects.push(...this.#wake());
    return effects;
  }

  /** The job's caller went away while it waited: forget it. */
  cancel(job: number): void {
    this.#jobs.delete(job);
    this.#waiting = this.#waiting.filter((j) => j !== job);
  }

  /** Time passed: jobs that waited too long run locally. */
  tick(): Effect[] {
    const now = this.#o.now();
    const effects: Effect[] = [];
    for (const job of [...this.#waiting]) {
      const state = this.#jobs.get(job)!;
      if ((state.deadline ?? Infinity) > now) continue;
      this.#waiting = this.#waiting.filter((j) => j !== job);
      const why = `no worker had a free slot for ${this.#o.slotWaitMs} ms`;
      effects.push(this.#fallBack(job, "busy", why));
    }
    return effects;
  }

  /** When the next waiting job times out; undefined if none waits. */
  nextDeadline(): number | undefined {
    let at: number | undefined;
    for (const job of this.#waiting) {
      const d = this.#jobs.get(job)!.deadline!;
      at = Math.min(at ?? d, d);
    }
    return at;
  }

  #place(job: number): Effect[] {
    const state = this.#jobs.get(job)!;
    const worker = this.#pick(state.tried);
    if (worker !== null) return [this.#start(job, worker)];
    if (!this.#hopeful(state.tried)) return [this.#noWorker(job, state)];
    if (this.#waiting.length >= this.#o.waitersMax) {
      return [this.#fallBack(job, "busy", `more than ${this.#o.waitersMax} jobs wait for a slot`)];
    }
    state.deadline = this.#o.now() + this.#o.slotWaitMs;
    this.#waiting.push(job);
    return [];
  }

  #start(job: number, worker: string): Placement {
    const state = this.#jobs.get(job)!;
    this.#workers.get(worker)!.running++;
    state.tried.add(worker);
    state.attempts++;
    state.deadline = undefined;
    return { kind: "run", job, worker };
  }

  /** Least loaded connected worker with a free slot, not in `exclude`. */
  #pick(exclude: ReadonlySet<string>): string | null {
    let best: string | null = null;
    let bestLoad = Infinity;
    for (const [id, w] of this.#workers) {
      if (w.status !== "up" || exclude.has(id) || w.running >= w.slots) continue;
      const load = w.running / w.slots;
      if (load < bestLoad) {
        best = id;
        bestLoad = load;
      }
    }
    return best;
  }

  /** Whether a worker not in `exclude` is connected or being connected. */
  #hopeful(exclude: ReadonlySet<string>): boolean {
    for (const [id, w] of this.#workers) if (w.status !== "down" && !exclude.has(id)) return true;
    return false;
  }

  #markDown(id: string): void {
    const w = this.#workers.get(id);
    if (w === undefined) return;
    if (w.running === 0) this.#workers.delete(id);
    else w.status = "down";
  }

  /** Gives waiting jobs the slots that are free now, oldest first. */
  #wake(): Effect[] {
    const effects: Effect[] = [];
    const still: number[] = [];
    for (const job of this.#waiting) {
      const state = this.#jobs.get(job)!;
      const worker = this.#pick(state.tried);
      if (worker !== null) effects.push(this.#start(job, worker));
      else if (!this.#hopeful(state.tried)) effects.push(this.#noWorker(job, state));
      else still.push(job);
    }
    this.#waiting = still;
    return effects;
  }

  #fallBack(job: number, cause: FallbackCause, reason: string): Placement {
    this.#jobs.delete(job);
    return this.#o.localFallback ? { kind: "local", job, cause, reason } : {
      kind: "fail",
      job,
      cause,
      reason: `no worker could run it (local fallback is off): ${reason}`,
    };
  }

  #noWorker(job: number, state: JobState): Placement {
    if (state.failedOn.length > 0) {
      const why = state.lastFailure ?? "no reason given";
      return this.#fallBack(job, "failed", `it failed on ${this.#triedList(state)}: ${why}`);
    }
    const aside = [...this.#setAside].map(([id, a]) => `${id} (${a.why})`);
    if (aside.length > 0) {
      return this.#fallBack(
        job,
        "unusable",
        `no worker is usable: ${aside.slice(0, 3).join("; ")}`,
      );
    }
    return this.#fallBack(job, "no-workers", "the coordinator lists no workers");
  }

  #triedList(state: JobState): string {
    return state.failedOn.join(", ");
  }
}
