/**
 * Where the master's CPU goes during warm builds: a farm (two workers × two
 * slots) whose master runs with `--inspect` on loopback; V8's sampling
 * profiler is started over the inspector after a cold lua build and stopped
 * after `--builds` warm ones, so start-up and the cold build are not counted.
 * Prints the self time by function and by file, and writes the profile
 * (`.cpuprofile`, for Chrome's DevTools) next to the farm.
 *
 * With `--perf`, the CPU instead (V8 samples wall time: a thread waiting in a
 * system call counts): `perf record -g` on the master's process for the warm
 * builds, the kernel included, V8 started with `--perf-basic-prof
 * --interpreted-frames-native-stack` so that JavaScript frames have names;
 * prints each function's share of the samples with what it calls (every
 * function on a sample's stack counts once) and the share of the stacks with
 * no JavaScript. Needs `perf` and root.
 *
 * With `--syscalls`, the system calls instead: `strace -c` on every thread of
 * the process for the warm builds, printed per job.
 *
 * With `--cold`, the first build instead: every cache fresh (the farm's and the master's), the
 * cold-master case of issue 15.
 *
 * `deno run -A bench/master_profile.ts [--builds N] [--top N] [--port P] [--perf | --syscalls] [--cold] [--cached]`;
 * `--cached` (not with `--perf`): the workers record reads, so the cold build fills the master's
 * action cache and the profiled builds are replayed from it.
 */
import { parseArgs } from "node:util";
import { Farm, ROOT } from "../farm/mod.ts";
import { timedCommand } from "./_proc.ts";
import { LUA, resetTree } from "./_projects.ts";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** One inspector session over a websocket: calls by id. */
class Inspector {
  #ws: WebSocket;
  #seq = 0;
  #pending = new Map<number, (result: unknown) => void>();

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (e) => {
      const msg = JSON.parse(String(e.data));
      if (typeof msg.id === "number") this.#pending.get(msg.id)?.(msg.result ?? msg.error);
      this.#pending.delete(msg.id);
    };
  }

  static async connect(port: number): Promise<Inspector> {
    let url = "";
    for (let i = 0; i < 100 && url === ""; i++) {
      try {
        const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
        url = list[0]?.webSocketDebuggerUrl ?? "";
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    if (url === "") throw new Error(`No inspector on port ${port}`);
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    return new Inspector(ws);
  }

  call<T>(method: string, params: object = {}): Promise<T> {
    const id = ++this.#seq;
    const reply = new Promise<T>((resolve) => this.#pending.set(id, resolve as never));
    this.#ws.send(JSON.stringify({ id, method, params }));
    return reply;
  }

  close(): void {
    this.#ws.close();
  }
}

/** Self time (ms) by key, from a profile's samples. */
function selfTimes(profile: Profile, key: (n: ProfileNode) => string): Map<string, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const out = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]);
    if (!node) continue;
    const k = key(node);
    out.set(k, (out.get(k) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  }
  return out;
}

/** Time (ms) with each key somewhere on the stack, from a profile's samples. */
function totalTimes(profile: Profile, key: (n: ProfileNode) => string): Map<string, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const out = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const keys = new Set<string>();
    for (let id: number | undefined = profile.samples[i]; id !== undefined; id = parent.get(id)) {
      const node = byId.get(id);
      if (node) keys.add(key(node));
    }
    for (const k of keys) out.set(k, (out.get(k) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  }
  return out;
}

function shortUrl(url: string): string {
  return url.startsWith(`file://${ROOT}/`) ? url.slice(`file://${ROOT}/`.length) : url;
}

function top(times: Map<string, number>, total: number, n: number): string[] {
  return [...times].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([k, ms]) =>
      `${(100 * ms / total).toFixed(1).padStart(5)}% ${ms.toFixed(0).padStart(6)} ms  ${k}`
    );
}

/** Threads of the profiled Deno process (perf's comm): others are processes it started. */
const DENO_THREADS = /^(deno|tokio-runtime-w|V8 DefaultWorke|worker|main)/;

/**
 * Per function (`JS:` frames of perf's map), the share of samples with it on
 * the stack; samples of the processes it started (the master's local `ar`,
 * a worker's launcher and jobs) counted apart, by command name.
 */
export function perfShares(
  script: string,
): {
  samples: number;
  noJs: number;
  shares: Map<string, number>;
  children: Map<string, number>;
} {
  const shares = new Map<string, number>();
  const children = new Map<string, number>();
  let samples = 0;
  let noJs = 0;
  for (const block of script.split("\n\n")) {
    const lines = block.split("\n").map((l) => l.trim()).filter((l) => l !== "");
    if (lines.length === 0) continue;
    // "comm tid ..." (perf script -F comm,tid,ip,sym)
    const comm = lines[0].replace(/\s+\d+\s*$/, "").trim();
    if (!DENO_THREADS.test(comm)) {
      children.set(comm, (children.get(comm) ?? 0) + 1);
      continue;
    }
    samples++;
    const names = new Set<string>();
    for (const frame of lines.slice(1)) {
      const at = frame.indexOf("JS:");
      if (at < 0) continue;
      // "JS:*name url:line:col" ("*" optimized, "^" baseline, "+" maglev, ...)
      names.add(frame.slice(at + 4).replace(`file://${ROOT}/`, "").replace(/^'/, ""));
    }
    if (names.size === 0) noJs++;
    for (const n of names) shares.set(n, (shares.get(n) ?? 0) + 1);
  }
  return { samples, noJs, shares, children };
}

const PERF_V8_FLAGS = "--v8-flags=--perf-basic-prof,--interpreted-frames-native-stack";

async function perfProfile(
  builds: number,
  topN: number,
  target: "master" | "worker",
  cold: boolean,
  tool: "perf" | "strace" = "perf",
): Promise<void> {
  const work = `${ROOT}/.cache/bench-profile`;
  await Deno.remove(work, { recursive: true }).catch(() => {});
  const tree = `${work}/tree`;
  await Deno.mkdir(tree, { recursive: true });
  for (const d of [work, tree]) await Deno.chmod(d, 0o755);
  const farm = await Farm.start({
    dir: `${work}/farm`,
    tree,
    workers: 2,
    slotsPerWorker: 2,
    prefix: `termite-prof${Deno.pid}`,
    masterDenoFlags: target === "master" && tool === "perf" ? [PERF_V8_FLAGS] : [],
    workerDenoFlags: target === "worker" && tool === "perf" ? [PERF_V8_FLAGS] : [],
  });
  const data = `${work}/${target}.perf.data`;
  let jobs = 0;
  const pid = target === "master" ? farm.master.child.pid : farm.workers[0].child.pid;
  try {
    const src = await LUA.source();
    const build = async (round: number) => {
      await resetTree(src, `${tree}/lua`, "in-place");
      const run = await timedCommand({
        argv: LUA.command(4),
        cwd: `${tree}/lua`,
        env: farm.env,
        logPath: `${farm.dir}/build-${round}.log`,
        timeoutS: LUA.timeoutS,
      });
      if (run.code !== 0) throw new Error(`The build failed: ${farm.dir}/build-${round}.log`);
    };
    if (!cold) await build(0); // cold
    // strace: every thread of the process (-f also follows what it starts:
    // the counts then include ar and ranlib's own calls, told apart by -ff).
    const threads = tool === "strace"
      ? [...Deno.readDirSync(`/proc/${pid}/task`)].map((t) => t.name)
      : [];
    const perf = new Deno.Command(tool, {
      args: tool === "perf"
        ? ["record", "-q", "-g", "-F", "4000", "-p", String(pid), "-o", data]
        : ["-c", "-o", `${data}.strace`, ...threads.flatMap((t) => ["-p", t])],
      stdout: "null",
      stderr: "inherit",
    }).spawn();
    await new Promise((r) => setTimeout(r, 500)); // attached
    const jobsOf = async () => {
      const status = await farm.status();
      if (target === "master") return status.jobs.jobs;
      // The profiled worker's jobs.
      const w = status.workers.find((w) => w.address === farm.workers[0].address);
      return w?.done ?? NaN;
    };
    const before = await jobsOf();
    if (cold) await build(0);
    else for (let round = 1; round <= builds; round++) await build(round);
    jobs = await jobsOf() - before;
    perf.kill("SIGINT");
    await perf.status;
  } finally {
    await farm.stop();
  }
  if (tool === "strace") {
    const text = Deno.readTextFileSync(`${data}.strace`);
    console.log(`${target}: ${jobs} jobs; system calls of its threads (strace -c):`);
    for (const line of text.split("\n")) {
      const m = line.match(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)(?:\s+\d+)?\s+(\w+)$/);
      if (m) console.log(`${(Number(m[1]) / jobs).toFixed(2).padStart(8)} per job  ${m[2]}`);
      else if (line.includes("total")) console.log(line);
    }
    return;
  }
  const out = await new Deno.Command("perf", {
    args: ["script", "-i", data, "-F", "comm,tid,ip,sym"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const { samples, noJs, shares, children } = perfShares(new TextDecoder().decode(out.stdout));
  await Deno.remove(`/tmp/perf-${pid}.map`).catch(() => {}); // V8's, read by perf script
  console.log(
    `${target}: ${jobs} jobs, ${samples} samples of its own threads at 4 kHz = ` +
      `${(samples / 4 / jobs).toFixed(2)} ms of CPU per job (perf's own cost included); ` +
      `no JavaScript on the stack: ${(100 * noJs / samples).toFixed(1)}%`,
  );
  console.log(
    "processes it started, ms of CPU per job: " +
      ([...children].sort((a, b) => b[1] - a[1]).map(([c, n]) =>
        `${c} ${(n / 4 / jobs).toFixed(2)}`
      )
        .join(", ") || "none"),
  );
  console.log(
    "\nby function, with what it calls:\n" +
      top(new Map([...shares].map(([k, n]) => [k, n / 4])), samples / 4, topN).join("\n"),
  );
  console.log(`\nperf data: ${data} (perf report -i ${data})`);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      builds: { type: "string", default: "3" },
      top: { type: "string", default: "40" },
      port: { type: "string", default: "9339" },
      perf: { type: "boolean", default: false },
      syscalls: { type: "boolean", default: false },
      target: { type: "string", default: "master" },
      cached: { type: "boolean", default: false },
      cold: { type: "boolean", default: false },
    },
  });
  if (values.perf || values.syscalls) {
    if (values.target !== "master" && values.target !== "worker") {
      throw new Error(`--target: master or worker, not ${values.target}`);
    }
    await perfProfile(
      Number(values.builds),
      Number(values.top),
      values.target,
      values.cold,
      values.syscalls ? "strace" : "perf",
    );
    Deno.exit(0);
  }
  const port = Number(values.port);
  const work = `${ROOT}/.cache/bench-profile`;
  await Deno.remove(work, { recursive: true }).catch(() => {});
  const tree = `${work}/tree`;
  await Deno.mkdir(tree, { recursive: true });
  for (const d of [work, tree]) await Deno.chmod(d, 0o755);
  const farm = await Farm.start({
    dir: `${work}/farm`,
    tree,
    workers: 2,
    slotsPerWorker: 2,
    prefix: `termite-prof${Deno.pid}`,
    masterDenoFlags: [`--inspect=127.0.0.1:${port}`],
    // The first build fills the action cache; the profiled ones are replayed from it.
    workerArgs: values.cached ? ["--record-reads"] : [],
  });
  let profile: Profile;
  let jobs = 0;
  try {
    const src = await LUA.source();
    const build = async (round: number) => {
      await resetTree(src, `${tree}/lua`, "in-place");
      const run = await timedCommand({
        argv: LUA.command(4),
        cwd: `${tree}/lua`,
        env: farm.env,
        logPath: `${farm.dir}/build-${round}.log`,
        timeoutS: LUA.timeoutS,
      });
      if (run.code !== 0) throw new Error(`The build failed: ${farm.dir}/build-${round}.log`);
    };
    if (!values.cold) await build(0); // cold
    const inspector = await Inspector.connect(port);
    await inspector.call("Profiler.enable");
    await inspector.call("Profiler.setSamplingInterval", { interval: 100 });
    const before = (await farm.status()).jobs.jobs;
    await inspector.call("Profiler.start");
    if (values.cold) await build(0);
    else for (let round = 1; round <= Number(values.builds); round++) await build(round);
    ({ profile } = await inspector.call<{ profile: Profile }>("Profiler.stop"));
    jobs = (await farm.status()).jobs.jobs - before;
    inspector.close();
  } finally {
    await farm.stop();
  }
  await Deno.writeTextFile(`${work}/master.cpuprofile`, JSON.stringify(profile));
  const all = selfTimes(profile, () => "all");
  const idle = selfTimes(profile, (n) => n.callFrame.functionName === "(idle)" ? "idle" : "busy");
  const busy = idle.get("busy") ?? 0;
  const n = Number(values.top);
  console.log(
    `${jobs} jobs, profiled ${((all.get("all") ?? 0) / 1000).toFixed(1)} s, busy ${
      busy.toFixed(0)
    } ms = ${
      (busy / jobs).toFixed(2)
    } ms/job (sampled; the thread pool and GC threads not counted)`,
  );
  const busyOnly = (f: (n: ProfileNode) => string) => (node: ProfileNode) =>
    node.callFrame.functionName === "(idle)" ? "(idle)" : f(node);
  const byFile = selfTimes(profile, busyOnly((node) => shortUrl(node.callFrame.url) || "(native)"));
  byFile.delete("(idle)");
  console.log("\nby file:\n" + top(byFile, busy, n).join("\n"));
  const byFn = selfTimes(
    profile,
    busyOnly((node) =>
      `${node.callFrame.functionName || "(anonymous)"} ${shortUrl(node.callFrame.url)}:${
        node.callFrame.lineNumber + 1
      }`
    ),
  );
  byFn.delete("(idle)");
  console.log("\nby function, self:\n" + top(byFn, busy, n).join("\n"));
  const inFn = totalTimes(
    profile,
    (node) =>
      `${node.callFrame.functionName || "(anonymous)"} ${shortUrl(node.callFrame.url)}:${
        node.callFrame.lineNumber + 1
      }`,
  );
  for (const k of [...inFn.keys()]) if (k.startsWith("(")) inFn.delete(k);
  console.log("\nby function, with what it calls:\n" + top(inFn, busy, n).join("\n"));
}
