/**
 * What recording a job's reads costs, outside the farm: lua files compiled
 * one at a time as uid nobody, each in a pids cgroup of its own (as a
 * worker's jobs run), not recorded and recorded, interleaved. Once per
 * variant of the tracer, one tracer at a time: "all" prints every lookup,
 * "dedup" drops a job's repeated lookups of a path in the kernel,
 * "dedup-lines" the same with bpftrace writing a line at a time (as before
 * its output was fully buffered, flushed by the markers). Per
 * compile: events (by kind), the job's CPU and wall, bpftrace's CPU, this
 * process's CPU (reading and folding the events), and whether both variants
 * give the same read set. Root only.
 * `deno run -A bench/read_trace_bench.ts [--rounds 3] [--variants all,dedup,dedup-lines]`
 */
import { parseArgs } from "node:util";
import { fetchSource, ROOT } from "../farm/mod.ts";
import { ReadTracer } from "../worker/read_trace.ts";
import { createPidsCgroup, removeCgroup } from "../sandbox/job_cgroup.ts";
import { childrenCpuMs, threadsCpuMs } from "./_proc.ts";

const FILES = ["lapi", "lcode", "ldo", "lgc", "llex", "lparser", "lvm", "ltable"];
const GCC = ["gcc", "-std=gnu99", "-O2", "-Wall", "-Wextra", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"];
const VARIANTS = ["all", "dedup", "dedup-lines"] as const;
type Variant = typeof VARIANTS[number];
/** A compile's time limit. */
const COMPILE_TIMEOUT_MS = 120_000;

const { values } = parseArgs({
  args: Deno.args,
  options: { rounds: { type: "string", default: "3" }, variants: { type: "string" } },
});
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) {
  throw new RangeError(`--rounds: 1 to 50, not ${values.rounds}`);
}
const variants = (values.variants?.split(",") ?? [...VARIANTS]).map((v) => {
  if (!VARIANTS.includes(v as Variant)) throw new Error(`Unknown variant: ${v} (${VARIANTS})`);
  return v as Variant;
});

interface Run {
  wallMs: number;
  jobCpuMs: number;
  /** This process's CPU over the run (spawn, wait; reading and folding the events), ms. */
  selfCpuMs: number;
}
/**
 * Time bpftrace's programs ran in the kernel, and how often, so far (the
 * fdinfo of its program descriptors; kernel.bpf_stats_enabled must be 1).
 * The programs run for every process's calls (most stop at the filter).
 */
async function bpfRunNs(pid: number): Promise<{ ns: number; runs: number }> {
  let ns = 0, runs = 0;
  for await (const fd of Deno.readDir(`/proc/${pid}/fd`)) {
    const link = await Deno.readLink(`/proc/${pid}/fd/${fd.name}`).catch(() => "");
    if (link !== "anon_inode:bpf-prog") continue;
    const info = await Deno.readTextFile(`/proc/${pid}/fdinfo/${fd.name}`).catch(() => "");
    ns += Number(info.match(/^run_time_ns:\s*(\d+)/m)?.[1] ?? 0);
    runs += Number(info.match(/^run_cnt:\s*(\d+)/m)?.[1] ?? 0);
  }
  return { ns, runs };
}

interface Traced extends Run {
  /** bpftrace's programs in the kernel over the compile (every process's calls), ms and runs. */
  bpfKernelMs: number;
  bpfRuns: number;
  /** From the job's end to its read set (the markers' round trips and the fold), ms. */
  endMs: number;
  bpftraceCpuMs: number;
  events: number;
  kinds: Record<string, number>;
  entries: string[];
}

const loadAverage = async () => (await Deno.readTextFile("/proc/loadavg")).split(" ")[0];

const src = `${await fetchSource("lua5.4")}/src`;
await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "trace-bench-" });
await Deno.chmod(dir, 0o755);
const tree = `${dir}/tree`;
await Deno.mkdir(tree);
await Deno.chmod(tree, 0o777);
for await (const e of Deno.readDir(src)) {
  if (/\.[ch]$/.test(e.name)) await Deno.copyFile(`${src}/${e.name}`, `${tree}/${e.name}`);
}

/** Where the jobs not recorded get their cgroups: not traced at all (the tracer's filter). */
const PLAIN_ROOT = "/sys/fs/cgroup/pids/termite-trace-bench";

/**
 * Compiles `file` as nobody in a fresh pids cgroup under `root`; `onCgroup`
 * sees the cgroup before it starts.
 */
async function compile(
  file: string,
  root: string,
  onCgroup: (cg: string) => Promise<void>,
): Promise<Run> {
  const cg = createPidsCgroup(root, 1000);
  if (cg === null) throw new Error("No pids cgroup (needs root and cgroup v1 pids)");
  try {
    await onCgroup(cg);
    const script = `echo $$ > ${cg}/cgroup.procs && exec setpriv --reuid=65534 --regid=65534 ` +
      `--clear-groups -- env -C ${tree} ${GCC.join(" ")} -c ${file}.c -o ${file}.o`;
    const cpu0 = childrenCpuMs(), self0 = await threadsCpuMs(Deno.pid);
    const t0 = performance.now();
    const out = await new Deno.Command("sh", {
      args: ["-c", script],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      signal: AbortSignal.timeout(COMPILE_TIMEOUT_MS),
    }).output();
    const wallMs = performance.now() - t0;
    if (!out.success) throw new Error(`${file}: ${new TextDecoder().decode(out.stderr)}`);
    return {
      wallMs,
      jobCpuMs: childrenCpuMs() - cpu0,
      selfCpuMs: await threadsCpuMs(Deno.pid) - self0,
    };
  } finally {
    await removeCgroup(cg);
  }
}

async function traced(tracer: ReadTracer, file: string): Promise<Traced> {
  const recording = tracer.begin(tree)!;
  // Outside this process's window: reading bpftrace's fdinfo takes tens of ms.
  const kernel0 = await bpfRunNs(tracer.pid!);
  const bpf0 = await threadsCpuMs(tracer.pid!), self0 = await threadsCpuMs(Deno.pid);
  const run = await compile(file, tracer.cgroupRoot, (cg) => tracer.attach(recording, cg));
  const t0 = performance.now();
  const reads = await tracer.end(recording);
  const endMs = performance.now() - t0;
  const selfCpuMs = await threadsCpuMs(Deno.pid) - self0;
  const bpftraceCpuMs = await threadsCpuMs(tracer.pid!) - bpf0;
  const kernel1 = await bpfRunNs(tracer.pid!);
  if (!reads.complete) throw new Error(`${file}: recording incomplete: ${reads.why}`);
  const kinds: Record<string, number> = {};
  for (const { event } of recording.events) kinds[event.kind] = (kinds[event.kind] ?? 0) + 1;
  // gcc's temporary files have random names: not comparable between runs.
  const entries = reads.entries.filter(([p]) => !p.startsWith("/tmp/"))
    .map(([p, k]) => `${p} ${k.join("")}`);
  return {
    ...run,
    bpfKernelMs: (kernel1.ns - kernel0.ns) / 1e6,
    bpfRuns: kernel1.runs - kernel0.runs,
    endMs,
    selfCpuMs,
    bpftraceCpuMs,
    events: recording.events.length,
    kinds,
    entries,
  };
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const per = (xs: number[]) => (sum(xs) / xs.length).toFixed(1);

// Counts the time BPF programs run (a few ns per run while on); put back as it was at the end.
const statsFile = "/proc/sys/kernel/bpf_stats_enabled";
const statsBefore = (await Deno.readTextFile(statsFile).catch(() => "0")).trim();
await Deno.writeTextFile(statsFile, "1").catch(() => {});
const readSets = new Map<string, string[]>();
const mismatches: string[] = [];
console.log(`load average at start ${await loadAverage()}; ${rounds} rounds of ${FILES.length}`);
try {
  for (const variant of variants) {
    const tracer = new ReadTracer({
      cacheDir: `${dir}/tracer-${variant}`,
      log: (m) => console.error(m),
      dedup: variant !== "all",
      lineBuffered: variant === "dedup-lines",
    });
    const t0 = performance.now();
    await tracer.start();
    const startCpu = await threadsCpuMs(tracer.pid!);
    console.log(
      `${variant}: bpftrace started in ${(performance.now() - t0).toFixed(0)} ms ` +
        `(${startCpu.toFixed(0)} ms CPU), load ${await loadAverage()}`,
    );
    const plain: Run[] = [], rec: Traced[] = [];
    try {
      for (let r = 0; r < rounds; r++) {
        for (const [i, file] of FILES.entries()) {
          // Alternate which goes first: the second finds the page cache warmer.
          if ((r + i) % 2 === 0) {
            plain.push(await compile(file, PLAIN_ROOT, () => Promise.resolve()));
          }
          const t = await traced(tracer, file);
          rec.push(t);
          if ((r + i) % 2 === 1) {
            plain.push(await compile(file, PLAIN_ROOT, () => Promise.resolve()));
          }
          const before = readSets.get(file);
          if (before === undefined) readSets.set(file, t.entries);
          else if (before.join("\n") !== t.entries.join("\n")) {
            const a = new Set(before), b = new Set(t.entries);
            mismatches.push(
              `${variant} ${file}: only before ${[...a].filter((x) => !b.has(x)).slice(0, 5)}; ` +
                `only now ${[...b].filter((x) => !a.has(x)).slice(0, 5)}`,
            );
          }
        }
      }
    } finally {
      await tracer.close();
    }
    const kinds: Record<string, number> = {};
    for (const t of rec) {
      for (const [k, n] of Object.entries(t.kinds)) kinds[k] = (kinds[k] ?? 0) + n;
    }
    const n = rec.length;
    console.log(
      `${variant} (load ${await loadAverage()}), per compile over ${n}:\n` +
        `  events ${per(rec.map((t) => t.events))} (${
          Object.entries(kinds).sort((a, b) => b[1] - a[1])
            .map(([k, c]) => `${k} ${(c / n).toFixed(0)}`).join(", ")
        }); read set ${per(rec.map((t) => t.entries.length))} paths\n` +
        `  job CPU: not recorded ${per(plain.map((p) => p.jobCpuMs))} ms, recorded ` +
        `${per(rec.map((t) => t.jobCpuMs))} ms\n` +
        `  wall: not recorded ${per(plain.map((p) => p.wallMs))} ms, recorded ` +
        `${per(rec.map((t) => t.wallMs))} ms, then ${per(rec.map((t) => t.endMs))} ms ` +
        `to the read set\n` +
        `  bpftrace's programs in the kernel over a compile (every process's calls): ${
          per(rec.map((t) => t.bpfKernelMs))
        } ms in ${per(rec.map((t) => t.bpfRuns))} runs\n` +
        `  bpftrace CPU ${per(rec.map((t) => t.bpftraceCpuMs))} ms; this process: not recorded ` +
        `${per(plain.map((p) => p.selfCpuMs))} ms, recorded ${
          per(rec.map((t) => t.selfCpuMs))
        } ms\n` +
        `  recorded ÷ not, CPU (job + bpftrace + this process): ${
          (sum(rec.map((t) => t.jobCpuMs + t.bpftraceCpuMs + t.selfCpuMs)) /
            sum(plain.map((p) => p.jobCpuMs + p.selfCpuMs))).toFixed(3)
        }; wall: ${
          (sum(rec.map((t) => t.wallMs)) / sum(plain.map((p) => p.wallMs))).toFixed(3)
        }\n` +
        // The job's own CPU moves by ±5 % from run to run, more than recording
        // adds: the recording's parts, measured apart, against the compile.
        `  recording's parts (programs in the kernel + bpftrace + this process's extra) ÷ ` +
        `the compile's CPU not recorded: ${
          (
            (sum(rec.map((t) => t.bpfKernelMs + t.bpftraceCpuMs + t.selfCpuMs)) / n -
              sum(plain.map((p) => p.selfCpuMs)) / plain.length) /
            (sum(plain.map((p) => p.jobCpuMs)) / plain.length)
          ).toFixed(3)
        }`,
    );
  }
  console.log(
    mismatches.length === 0
      ? `read sets: the same in every run and variant (${readSets.size} files)`
      : `read sets DIFFER:\n${mismatches.join("\n")}`,
  );
} finally {
  await Deno.remove(PLAIN_ROOT).catch(() => {});
  await Deno.writeTextFile(statsFile, statsBefore).catch(() => {});
  await Deno.remove(dir, { recursive: true });
}
