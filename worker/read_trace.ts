/**
 * One long-lived bpftrace per worker recording what its jobs read (see
 * read_trace_script.ts for the program, read_set.ts for the folding). A job
 * is recognised by its pids cgroup's id; its recording ends when two markers
 * the worker sends after the job ended have come back through the trace (the
 * per-CPU buffers are drained in each poll, so the job's own events are in
 * by then). Lost events, a line that is not whole, a tracer that died: every
 * recording under way is incomplete. Needs root, tracefs and BTF.
 *
 * @module
 */

import type { ReadSet } from "../common/protocol.ts";
import { ReadSetBuilder, type TraceEvent } from "./read_set.ts";
import { FLUSH_PADDING_LINE_CHARS, TRACE_MARK_DIR, traceScript } from "./read_trace_script.ts";
import { PIDS_CGROUP_ROOT } from "../sandbox/mod.ts";

/** How long bpftrace may take to compile and attach its probes (it is slow: 10–30 s here). */
const TRACER_START_MS = 180_000;
/** How long a marker may take to come back. */
const MARK_MS = 10_000;
/** Events kept per job (sorted by time when it ends); beyond, its recording is incomplete. */
const EVENTS_MAX = 1_000_000;
/** Bytes of trace output buffered before a line ends (the flush padding's lines fit). */
export const LINE_BYTES_MAX = 4096;
if (FLUSH_PADDING_LINE_CHARS >= LINE_BYTES_MAX) {
  throw new Error("The trace's flush padding has lines longer than its reader takes");
}
/**
 * After a small read, the reader waits this long (or until a marker is sent)
 * so that lines gather in the pipe: a wake-up per write cost the worker more
 * than the lines themselves (bpftrace writes 4 KiB at a time, or a line at a
 * time when line-buffered).
 */
const READ_PAUSE_MS = 20;
/** A read this large is not followed by a pause. */
const READ_PAUSE_BELOW_BYTES = 16 * 1024;

export interface ReadTracerOptions {
  /** Where the program is written (root only). */
  cacheDir: string;
  /** The jobs' uid; default 65534. */
  uid?: number;
  log(message: string): void;
  /** The bpftrace binary; default `bpftrace` on PATH. */
  bpftrace?: string;
  /**
   * Where recorded jobs get their pids cgroups (made at start, removed at
   * close); only processes in cgroups right under it are traced. Default a
   * directory of this tracer's own under the sandbox's pids cgroup root.
   */
  cgroupRoot?: string;
  /**
   * Print a job's repeated lookups of a path once, in the kernel. Default
   * true, unless TERMITE_TRACE_ALL_LOOKUPS is set (to measure what it saves).
   */
  dedup?: boolean;
  /**
   * bpftrace writes each line as it prints it (its default), instead of a
   * buffer at a time flushed by the markers. Default false, unless
   * TERMITE_TRACE_LINE_BUFFERED is set (to measure what the buffering saves).
   */
  lineBuffered?: boolean;
}

/** A job being recorded. */
export class Recording {
  readonly builder: ReadSetBuilder;
  cgroupId: string | null = null;
  events: { t: number; event: TraceEvent }[] = [];

  constructor(cwd: string) {
    this.builder = new ReadSetBuilder(cwd);
  }
}

export class ReadTracer {
  readonly #options: ReadTracerOptions;
  readonly #token = [...crypto.getRandomValues(new Uint8Array(16))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  /** The pids cgroup directory recorded jobs go under. */
  /** The inode of {@link cgroupRoot} when bpftrace started: what its filter names. */
  #parentCgroupId: number | undefined;
  readonly cgroupRoot: string;
  /** Event lines read: in all, and those of no job being recorded (dropped). */
  readonly stats: { events: number; unclaimed: number } = { events: 0, unclaimed: 0 };
  #child: Deno.ChildProcess | null = null;
  #ready = false;
  #dead: string | null = null;
  #byCgroup = new Map<string, Recording>();
  #marks = new Map<string, () => void>();
  #markSeq = 0;
  #reading: Promise<void> | null = null;
  /** Ends the reader's pause (a marker was sent: its line is wanted now). */
  #wake: (() => void) | null = null;

  constructor(options: ReadTracerOptions) {
    this.#options = options;
    this.cgroupRoot = options.cgroupRoot ?? `${PIDS_CGROUP_ROOT}/rec-${this.#token.slice(0, 16)}`;
  }

  /** bpftrace's pid once started (for its CPU in benchmarks). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Whether jobs started now get recorded. */
  get ready(): boolean {
    return this.#ready && this.#dead === null;
  }

  /** Why the tracer is not running, if it died or could not start. */
  get deadReason(): string | null {
    return this.#dead;
  }

  /** Starts bpftrace in the background; `ready` turns true once its probes are attached. */
  async start(): Promise<void> {
    const pidsIndex = await pidsControllerIndex();
    const lineBuffered = this.#options.lineBuffered ??
      Deno.env.get("TERMITE_TRACE_LINE_BUFFERED") !== undefined;
    await Deno.mkdir(this.cgroupRoot, { recursive: true });
    const parentCgroupId = (await Deno.stat(this.cgroupRoot)).ino ?? undefined;
    if (parentCgroupId === undefined) throw new Error(`No inode number for ${this.cgroupRoot}`);
    this.#parentCgroupId = parentCgroupId;
    const script = traceScript({
      parentCgroupId,
      pidsIndex,
      uid: this.#options.uid ?? 65534,
      workerPid: Deno.pid,
      token: this.#token,
      dedup: this.#options.dedup ?? Deno.env.get("TERMITE_TRACE_ALL_LOOKUPS") === undefined,
      fullyBuffered: !lineBuffered,
    });
    await Deno.mkdir(this.#options.cacheDir, { recursive: true, mode: 0o700 });
    const file = `${this.#options.cacheDir}/read-trace.bt`;
    await Deno.writeTextFile(file, script, { mode: 0o600 });
    await mountTracefs();
    this.#child = new Deno.Command(this.#options.bpftrace ?? "bpftrace", {
      // Fully buffered, a write per 4 KiB: a line at a time, bpftrace's writes
      // and this reader's wake-ups cost more than the lines themselves.
      args: lineBuffered ? [file] : ["-B", "full", file],
      env: { BPFTRACE_STRLEN: "200", BPFTRACE_PERF_RB_PAGES: "1024" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const child = this.#child;
    const ready = Promise.withResolvers<void>();
    const timer = setTimeout(
      () => ready.reject(new Error("bpftrace did not start in time")),
      TRACER_START_MS,
    );
    let stderrTail = "";
    const stderrDone = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        stderrTail = (stderrTail + chunk).slice(-2000);
      }
    })().catch(() => {});
    this.#reading = this.#read(child.stdout, () => ready.resolve()).then(async () => {
      await stderrDone;
      this.#die(`bpftrace ended: ${stderrTail.replace(/.*RLIMIT_MEMLOCK.*\n?/g, "").trim()}`);
      ready.reject(new Error(this.#dead ?? "bpftrace ended"));
    });
    try {
      await ready.promise;
      this.#ready = true;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Starts recording a job (before its sandbox exists); null when the tracer is not ready. */
  begin(cwd: string): Recording | null {
    return this.ready ? new Recording(cwd) : null;
  }

  /** The job's cgroup directory is known: its events are taken from now on. */
  async attach(recording: Recording, cgroupDir: string | null): Promise<void> {
    if (cgroupDir === null) return recording.builder.fail("the job has no pids cgroup");
    // Only cgroups right under the root are traced (the filter is in the kernel).
    if (cgroupDir.slice(0, cgroupDir.lastIndexOf("/")) !== this.cgroupRoot) {
      return recording.builder.fail(`the job's cgroup is not under ${this.cgroupRoot}`);
    }
    // The kernel filters by the directory bpftrace was given: one removed and
    // made again (a neighbour's clean-up) would show the job nothing.
    const parent = await Deno.stat(this.cgroupRoot).catch(() => null);
    if (parent?.ino !== this.#parentCgroupId) {
      return recording.builder.fail(`${this.cgroupRoot} is not the directory being traced`);
    }
    const info = await Deno.stat(cgroupDir);
    recording.cgroupId = String(info.ino);
    this.#byCgroup.set(recording.cgroupId, recording);
  }

  /** After the job ended: waits for its last events, then its read set. */
  async end(recording: Recording): Promise<ReadSet> {
    try {
      if (recording.cgroupId === null) recording.builder.fail("the job's cgroup is unknown");
      else {
        try {
          for (let i = 0; i < 2 && recording.builder.incomplete === undefined; i++) {
            await this.#mark();
          }
        } catch (err) {
          recording.builder.fail((err as Error).message);
        }
        if (recording.events.length === 0) recording.builder.fail("no events traced for the job");
        // In the order they happened (a process moved to another CPU writes
        // to another buffer, read in any order).
        recording.events.sort((a, b) => a.t - b.t);
        for (const { event } of recording.events) recording.builder.add(event);
      }
      if (this.#dead !== null) recording.builder.fail(this.#dead);
      return recording.builder.result();
    } finally {
      if (recording.cgroupId !== null) this.#byCgroup.delete(recording.cgroupId);
    }
  }

  async close(): Promise<void> {
    this.#die("closed");
    try {
      this.#child?.kill("SIGTERM");
    } catch { /* already gone */ }
    await this.#child?.status;
    await this.#reading;
    // Fails while a job's cgroup is still in it (removed with the job): left then.
    await Deno.remove(this.cgroupRoot).catch(() => {});
  }

  /** Sends one marker (a stat the program prints) and waits until it is read back. */
  async #mark(): Promise<void> {
    if (this.#dead !== null) throw new Error(this.#dead);
    const name = `${this.#token}-${++this.#markSeq}`;
    const seen = Promise.withResolvers<void>();
    this.#marks.set(name, seen.resolve);
    const timer = setTimeout(() => seen.reject(new Error("trace marker timed out")), MARK_MS);
    try {
      await Deno.stat(`${TRACE_MARK_DIR}/${name}`).catch(() => {});
      this.#wake?.();
      await seen.promise;
    } finally {
      clearTimeout(timer);
      this.#marks.delete(name);
    }
  }

  #die(why: string): void {
    if (this.#dead !== null) return;
    this.#dead = why;
    if (why !== "closed") this.#options.log(`read tracing stopped: ${why}`);
    for (const r of this.#byCgroup.values()) r.builder.fail(why);
  }

  async #read(stream: ReadableStream<Uint8Array>, onReady: () => void): Promise<void> {
    const end = ` |${this.#token}`;
    // A reader and a decoder, not a TextDecoderStream: bpftrace writes a line
    // at a time, and each chunk through a second stream costs more than its line.
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let rest = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        rest += decoder.decode(value, { stream: true });
        let start = 0;
        let nl: number;
        while ((nl = rest.indexOf("\n", start)) >= 0) {
          this.#line(rest.slice(start, nl), end, onReady);
          start = nl + 1;
        }
        rest = rest.slice(start);
        if (rest.length > LINE_BYTES_MAX) {
          this.#failAll("a trace line too long");
          rest = "";
        }
        if (value.length < READ_PAUSE_BELOW_BYTES && this.#marks.size === 0) await this.#pause();
      }
    } finally {
      reader.releaseLock();
    }
  }

  /** Waits READ_PAUSE_MS, or less when a marker is sent meanwhile. */
  async #pause(): Promise<void> {
    const woken = Promise.withResolvers<void>();
    const timer = setTimeout(woken.resolve, READ_PAUSE_MS);
    this.#wake = woken.resolve;
    try {
      await woken.promise;
    } finally {
      clearTimeout(timer);
      this.#wake = null;
    }
  }

  #line(line: string, end: string, onReady: () => void): void {
    if (line.startsWith("#")) return; // the padding that flushes bpftrace's buffer
    if (line.startsWith("E ")) {
      const sp1 = line.indexOf(" ", 2);
      const cgroupId = line.slice(2, sp1);
      const recording = this.#byCgroup.get(cgroupId);
      this.stats.events++;
      if (recording === undefined) {
        this.stats.unclaimed++;
        return;
      }
      if (!line.endsWith(end)) return recording.builder.fail("a path with a newline in it");
      const fields = line.slice(sp1 + 1, line.length - end.length).split(" ");
      if (fields.length < 7) return recording.builder.fail(`a bad trace line: ${line}`);
      const [ns, tgid, kind, ret, a1, a2] = fields;
      if (recording.events.length >= EVENTS_MAX) {
        return recording.builder.fail("too many events");
      }
      recording.events.push({
        t: Number(ns), // exact below 2^53 ns: 104 days of uptime; past it, merely rounded
        event: {
          tgid: Number(tgid),
          kind,
          ret: Number(ret),
          a1: Number(a1),
          a2: Number(a2),
          path: fields.slice(6).join(" "),
        },
      });
    } else if (line.startsWith("M ")) {
      if (!line.endsWith(end)) return;
      const path = line.slice(2, line.length - end.length);
      const name = path.slice(TRACE_MARK_DIR.length + 1);
      this.#marks.get(name)?.();
    } else if (line === "READY") {
      onReady();
    } else if (/^Lost \d+ events/.test(line)) {
      this.#failAll(line);
    } else if (line.length > 0 && !line.startsWith("Attaching ")) {
      // A piece of a path with a newline (its line was failed) or bpftrace's own text.
      if (!line.includes(end)) return;
      this.#failAll(`an unexpected trace line`);
    }
  }

  #failAll(why: string): void {
    for (const r of this.#byCgroup.values()) r.builder.fail(why);
  }
}

/** The pids controller's index among the kernel's cgroup subsystems (its line in /proc/cgroups). */
async function pidsControllerIndex(): Promise<number> {
  const lines = (await Deno.readTextFile("/proc/cgroups")).split("\n")
    .filter((l) => l && !l.startsWith("#"));
  const i = lines.findIndex((l) => l.split("\t")[0] === "pids");
  if (i < 0) throw new Error("No pids cgroup controller in /proc/cgroups");
  return i;
}

/** bpftrace finds tracepoints in tracefs; mounts it when absent. */
async function mountTracefs(): Promise<void> {
  try {
    await Deno.stat("/sys/kernel/tracing/events/syscalls");
    return;
  } catch { /* not mounted */ }
  const out = await new Deno.Command("mount", {
    args: ["-t", "tracefs", "nodev", "/sys/kernel/tracing"],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`Cannot mount tracefs: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}
