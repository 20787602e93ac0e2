/**
 * FUSE mirror benchmark, side by side in one run on /usr/include (and /usr for
 * compiles): the bare directory, the same read-only mirror in C against
 * libfuse3's low-level API (bench/fuse_c/mirror.c, built here with gcc), and
 * ours (fuse/loopback.ts served by fuse/session.ts in this process).
 *
 * Figures: lookups/s (lstat of every path) with kernel caching off (timeouts
 * 0) and on (timeouts 60 s, second round), read MB/s of a 256 MiB file, wall
 * time of compiling a C file with many includes, and of `find` over the tree.
 *
 *   deno run -A bench/fuse_bench.ts [--quick]
 */

import { FuseSession } from "../fuse/session.ts";
import { LoopbackFs } from "../fuse/loopback.ts";
import type { BenchResult } from "./types.ts";

const HERE = new URL(".", import.meta.url).pathname;
const INCLUDE_DIR = "/usr/include";

interface Timeouts {
  entryTimeoutS: number;
  attrTimeoutS: number;
  negativeTimeoutS: number;
  keepCache: boolean;
  noOpen?: boolean;
}

const CACHING_OFF: Timeouts = {
  entryTimeoutS: 0,
  attrTimeoutS: 0,
  negativeTimeoutS: 0,
  keepCache: false,
};
const CACHING_ON: Timeouts = {
  entryTimeoutS: 60,
  attrTimeoutS: 60,
  negativeTimeoutS: 60,
  keepCache: true,
};

const COMPILE_VARIANTS: ReadonlyArray<[string, Timeouts]> = [
  ["", CACHING_ON],
  [" no-open", { ...CACHING_ON, noOpen: true }],
];

type Impl = "bare" | "c" | "deno";
const IMPLS: readonly Impl[] = ["bare", "c", "deno"];

/** A view of `source` at `path`, closed by `close()`. */
interface View {
  path: string;
  close(): Promise<void>;
}

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Wall time of a command whose output is discarded. */
async function timeQuietMs(cmd: string, args: string[]): Promise<number> {
  const start = performance.now();
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
  const elapsed = performance.now() - start;
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed`);
  return elapsed;
}

async function buildC(dir: string): Promise<{ mirror: string; client: string }> {
  const mirror = `${dir}/mirror`;
  const client = `${dir}/client`;
  await run("gcc", [
    "-O2",
    "-I/usr/include/fuse3",
    "-o",
    mirror,
    `${HERE}fuse_c/mirror.c`,
    "-lfuse3",
  ]);
  await run("gcc", ["-O2", "-o", client, `${HERE}fuse_c/client.c`]);
  return { mirror, client };
}

async function mountView(
  impl: Impl,
  source: string,
  mnt: string,
  timeouts: Timeouts,
  mirrorBin: string,
): Promise<View> {
  if (impl === "bare") return { path: source, close: () => Promise.resolve() };
  if (impl === "deno") {
    const fs = new LoopbackFs(source, timeouts);
    const session = await FuseSession.mount(fs, {
      mountpoint: mnt,
      readOnly: true,
      allowOther: true,
      defaultPermissions: true,
    });
    return {
      path: mnt,
      close: async () => {
        await session.close();
        fs.close();
      },
    };
  }
  const child = new Deno.Command(mirrorBin, {
    args: [
      source,
      mnt,
      String(timeouts.entryTimeoutS),
      String(timeouts.attrTimeoutS),
      String(timeouts.negativeTimeoutS),
      timeouts.keepCache ? "1" : "0",
      timeouts.noOpen ? "1" : "0",
    ],
    stdout: "piped",
  }).spawn();
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  reader.releaseLock();
  if (!new TextDecoder().decode(value).includes("ready")) throw new Error("C mirror did not start");
  return {
    path: mnt,
    close: async () => {
      child.kill("SIGTERM");
      await child.status;
      await child.stdout.cancel();
    },
  };
}

async function withView<T>(
  impl: Impl,
  source: string,
  timeouts: Timeouts,
  mirrorBin: string,
  body: (path: string) => Promise<T>,
): Promise<T> {
  const mnt = await Deno.makeTempDir({ prefix: "fuse_bench_mnt_" });
  const view = await mountView(impl, source, mnt, timeouts, mirrorBin);
  try {
    return await body(view.path);
  } finally {
    await view.close();
    await Deno.remove(mnt);
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * Mount the C and the Deno mirror of `source` at once and run `measure`
 * round-robin over bare/C/Deno, `rounds` times after `warmup` unmeasured
 * rounds, so that load from elsewhere on the machine hits all alike.
 */
async function interleaved(
  source: string,
  timeouts: Timeouts,
  mirrorBin: string,
  rounds: number,
  measure: (impl: Impl, root: string) => Promise<number>,
  warmup = 0,
): Promise<Record<Impl, number[]>> {
  const values: Record<Impl, number[]> = { bare: [], c: [], deno: [] };
  await withView(
    "c",
    source,
    timeouts,
    mirrorBin,
    (cRoot) =>
      withView("deno", source, timeouts, mirrorBin, async (denoRoot) => {
        const roots: Record<Impl, string> = { bare: source, c: cRoot, deno: denoRoot };
        for (let round = 0; round < warmup + rounds; round++) {
          for (const impl of IMPLS) {
            const value = await measure(impl, roots[impl]);
            if (round >= warmup) values[impl].push(value);
          }
        }
      }),
  );
  return values;
}

/** `measure` on a fresh mount of every implementation, round-robin, `rounds` times. */
async function freshMounts(
  source: string,
  timeouts: Timeouts,
  mirrorBin: string,
  rounds: number,
  measure: (impl: Impl, root: string) => Promise<number>,
): Promise<Record<Impl, number[]>> {
  const values: Record<Impl, number[]> = { bare: [], c: [], deno: [] };
  for (let round = 0; round < rounds; round++) {
    for (const impl of IMPLS) {
      values[impl].push(
        await withView(impl, source, timeouts, mirrorBin, (root) => measure(impl, root)),
      );
    }
  }
  return values;
}

const COMPILE_HEADERS = [
  "stdio.h",
  "stdlib.h",
  "string.h",
  "math.h",
  "errno.h",
  "fcntl.h",
  "unistd.h",
  "signal.h",
  "time.h",
  "ctype.h",
  "limits.h",
  "stdint.h",
  "inttypes.h",
  "assert.h",
  "locale.h",
  "pthread.h",
  "sys/stat.h",
  "sys/types.h",
  "sys/socket.h",
  "netinet/in.h",
  "arpa/inet.h",
  "dirent.h",
  "poll.h",
  "sys/mman.h",
  "setjmp.h",
  "wchar.h",
  "netdb.h",
  "sys/wait.h",
  "sys/time.h",
  "sys/ioctl.h",
  "termios.h",
  "regex.h",
  "glob.h",
  "search.h",
  "complex.h",
  "fenv.h",
  "sys/epoll.h",
  "sys/uio.h",
  "sys/resource.h",
  "linux/fs.h",
  "linux/input.h",
  "sqlite3.h",
  "zlib.h",
];

export async function runBench(options: { quick: boolean }): Promise<BenchResult[]> {
  const work = await Deno.makeTempDir({ prefix: "fuse_bench_" });
  const results: BenchResult[] = [];
  const table: Record<string, Partial<Record<Impl, number>>> = {};
  const record = (name: string, impl: Impl, value: number, unit: string) => {
    (table[`${name} (${unit})`] ??= {})[impl] = value;
    results.push({ name: `fuse ${name} ${impl}`, value, unit });
  };
  try {
    const { mirror, client } = await buildC(work);
    const relative = (await run("find", [INCLUDE_DIR, "-mindepth", "1"])).trim().split("\n")
      .map((p) => p.slice(INCLUDE_DIR.length + 1));
    const rounds = options.quick ? 3 : 5;

    // lookups/s: lstat of every path, rounds interleaved across implementations
    for (const [label, timeouts] of [["off", CACHING_OFF], ["on", CACHING_ON]] as const) {
      const rates = await interleaved(INCLUDE_DIR, timeouts, mirror, rounds, async (impl, root) => {
        const list = `${work}/list-${impl}.txt`;
        await Deno.writeTextFile(list, relative.map((p) => `${root}/${p}`).join("\n") + "\n");
        const [rate, failures] = (await run(client, ["stat", list, "1"])).trim().split(" ")
          .map(Number);
        if (failures !== 0) throw new Error(`${impl}: ${failures} lstat failures`);
        return rate;
      }, label === "on" ? 1 : 0);
      for (const impl of IMPLS) {
        record(`lookups caching ${label}`, impl, Math.round(median(rates[impl])), "ops/s");
      }
    }

    // read MB/s of a large file (the source stays in the page cache; each
    // round reads through a fresh open, keep_cache off so FUSE serves it)
    const bigDir = `${work}/big`;
    await Deno.mkdir(bigDir);
    const bigMiB = options.quick ? 64 : 256;
    await run("dd", [
      "if=/dev/urandom",
      `of=${bigDir}/big.bin`,
      "bs=1M",
      `count=${bigMiB}`,
      "status=none",
    ]);
    const readRates = await interleaved(
      bigDir,
      { ...CACHING_ON, keepCache: false },
      mirror,
      rounds,
      async (_impl, root) => {
        const [mbs] = (await run(client, ["read", `${root}/big.bin`, String(1 << 20)])).split(" ");
        return Number(mbs);
      },
    );
    for (const impl of IMPLS) {
      record("read 1 MiB blocks", impl, Math.round(median(readRates[impl])), "MB/s");
    }

    // compile with many includes, through a mirror of /usr
    const gccInclude = (await run("gcc", ["-print-file-name=include"])).trim();
    const available = [];
    for (const header of COMPILE_HEADERS) {
      try {
        await Deno.stat(`/usr/include/${header}`);
        available.push(header);
      } catch {
        // not installed here
      }
    }
    await Deno.writeTextFile(
      `${work}/prog.c`,
      available.map((h) => `#include <${h}>`).join("\n") + "\nint main(void) { return 0; }\n",
    );
    // All views mounted at once and compiles interleaved round-robin, so that
    // load from elsewhere on the machine hits every implementation alike.
    const compileArgs = (root: string, impl: string) => [
      "-O2",
      "-nostdinc",
      "-isystem",
      `${root}${gccInclude.slice("/usr".length)}`,
      "-isystem",
      `${root}/include/x86_64-linux-gnu`,
      "-isystem",
      `${root}/include`,
      "-c",
      `${work}/prog.c`,
      "-o",
      `${work}/prog-${impl}.o`,
    ];
    const compileRounds = options.quick ? 3 : 9;
    for (const [label, timeouts] of COMPILE_VARIANTS) {
      // cold: the first compile on a fresh mount; warm: again on the same one
      const cold = await freshMounts(
        "/usr",
        timeouts,
        mirror,
        compileRounds,
        (impl, root) => timeQuietMs("gcc", compileArgs(root, impl)),
      );
      const warm = await interleaved(
        "/usr",
        timeouts,
        mirror,
        compileRounds,
        (impl, root) => timeQuietMs("gcc", compileArgs(root, impl)),
        1,
      );
      for (const impl of IMPLS) {
        record(`compile cold${label}`, impl, Math.round(median(cold[impl])), "ms");
        record(`compile warm${label}`, impl, Math.round(median(warm[impl])), "ms");
      }
    }

    // find over the tree on a fresh mount (cold kernel caches). Its output
    // goes to /dev/null: piped into this process, it would compete with our
    // file system's request loop on the same thread, which C's separate
    // process is spared.
    const findRounds = options.quick ? 5 : 11;
    for (const [label, timeouts] of [["on", CACHING_ON], ["off", CACHING_OFF]] as const) {
      const times = await freshMounts(
        INCLUDE_DIR,
        timeouts,
        mirror,
        findRounds,
        (_impl, root) => timeQuietMs("find", [root]),
      );
      for (const impl of IMPLS) {
        record(`find caching ${label}`, impl, Math.round(median(times[impl])), "ms");
      }
    }

    for (const [name, row] of Object.entries(table)) {
      if (name.startsWith("compile") && row.bare && row.deno) {
        results.push({
          name: `fuse ${name} deno/bare`,
          value: Math.round((row.deno / row.bare) * 100) / 100,
          unit: "x",
          note: "time through our mirror relative to the bare directory (goal: at most 1.3)",
        });
      }
      if (row.c && row.deno) {
        const higherIsBetter = name.includes("/s");
        const ratio = higherIsBetter ? row.deno / row.c : row.c / row.deno;
        results.push({
          name: `fuse ${name} deno/c`,
          value: Math.round(ratio * 100) / 100,
          unit: "x",
          note: "speed of ours relative to C (1 = same, higher is better)",
        });
      }
    }
    return results;
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

export { runBench as run };

if (import.meta.main) {
  const quick = Deno.args.includes("--quick");
  const results = await runBench({ quick });
  for (const r of results) {
    console.log(`${r.name.padEnd(48)} ${String(r.value).padStart(10)} ${r.unit}`);
  }
}
