/**
 * MirrorFs through a real mount: `find` (lookups, readdir) and `cat` of every
 * file (open, read) over a mirrored /usr/include, served in process by a
 * DirLink (no network; optionally with an added delay per link call).
 *
 * Defaults: no open/opendir requests (zeroOpen) and readdirplus; other rows
 * turn them off. Cold = fresh mount and empty store; warm = the same mount again (kernel
 * caches hot); store-warm = a fresh mount over a store that already has the
 * blobs (a new master, or a mirror remounted between jobs).
 *
 * Run alone: `deno run -A bench/mirror_bench.ts [--quick]`.
 */
import { Store } from "../cas/mod.ts";
import { FuseSession } from "../fuse/mod.ts";
import { DirLink } from "../worker/_mirror_dir_link.ts";
import { MirrorFs, type MirrorStats } from "../worker/mirror_fs.ts";

export type BenchResult = { name: string; value: number; unit: string; note?: string };

const decoder = new TextDecoder();

async function sh(script: string): Promise<{ ms: number; out: string }> {
  const start = performance.now();
  const out = await new Deno.Command("sh", {
    args: ["-c", script],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const ms = performance.now() - start;
  if (out.code !== 0) throw new Error(`Cannot run ${script}: ${decoder.decode(out.stderr)}`);
  return { ms, out: decoder.decode(out.stdout).trim() };
}

function findCmd(dir: string): string {
  return `find ${dir} -type f | wc -l`;
}

function catCmd(dir: string): string {
  return `find ${dir} -type f -print0 | xargs -0 cat | wc -c`;
}

interface Mounted extends AsyncDisposable {
  fs: MirrorFs;
  mnt: string;
}

interface Variant {
  latencyMs: number;
  readdirPlus: boolean;
  zeroOpen: boolean;
}

async function mount(
  options: Variant & { dir: string; store: Store; link: DirLink; name: string },
): Promise<Mounted> {
  const mnt = `${options.dir}/${options.name}`;
  await Deno.mkdir(mnt);
  const fs = new MirrorFs({
    link: options.link,
    store: options.store,
    writableRoot: "/nonexistent",
    readdirPlus: options.readdirPlus,
    zeroOpen: options.zeroOpen,
  });
  const session = await FuseSession.mount(fs, {
    mountpoint: mnt,
    allowOther: true,
    defaultPermissions: true,
    readOnly: true,
  });
  fs.attach(session);
  return {
    fs,
    mnt,
    async [Symbol.asyncDispose]() {
      await session.close();
      await fs.close();
    },
  };
}

function statsNote(stats: MirrorStats): string {
  return `lookups ${stats.lookups}, waited ${stats.lookupsWaited}, negative ${stats.negativeLocal}, ` +
    `dir fetches ${stats.dirFetches}, attr fetches ${stats.attrFetches}, blobs ${stats.blobFetches}`;
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const tree = options.quick ? "/usr/include/linux" : "/usr/include";
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "mirror_bench_" });
  await Deno.chmod(dir, 0o755);
  try {
    const localFind = await sh(findCmd(tree));
    const localCat = await sh(catCmd(tree));
    const files = Number(localFind.out);
    const bytes = Number(localCat.out);
    results.push({
      name: "mirror: local find (page cache warm)",
      value: Math.round(localFind.ms),
      unit: "ms",
      note: `${tree}: ${files} files, ${(bytes / 1e6).toFixed(1)} MB`,
    });
    results.push({ name: "mirror: local cat", value: Math.round(localCat.ms), unit: "ms" });

    // The defaults are zeroOpen and readdirPlus; the others show what they bring.
    const variants: Variant[] = options.quick
      ? [
        { latencyMs: 0, readdirPlus: true, zeroOpen: true },
        { latencyMs: 1, readdirPlus: true, zeroOpen: true },
      ]
      : [
        { latencyMs: 0, readdirPlus: true, zeroOpen: true },
        { latencyMs: 0, readdirPlus: false, zeroOpen: true },
        { latencyMs: 0, readdirPlus: false, zeroOpen: false },
        { latencyMs: 1, readdirPlus: true, zeroOpen: true },
      ];
    let n = 0;
    for (const variant of variants) {
      const { latencyMs, readdirPlus, zeroOpen } = variant;
      const label = `latency ${latencyMs} ms${readdirPlus ? "" : ", no readdirplus"}${
        zeroOpen ? "" : ", open requests"
      }`;
      await using store = await Store.open({
        dir: `${dir}/store${n}`,
        bytesMax: 2 * 1024 * 1024 * 1024,
      });
      // One link per variant: its hash cache stands for the master's, kept across mounts.
      const link = new DirLink({ root: "/", excludes: [dir, "/proc", "/sys", "/dev"], latencyMs });
      {
        await using m = await mount({ ...variant, dir, store, link, name: `mnt${n++}` });
        const coldFind = await sh(findCmd(m.mnt + tree));
        if (Number(coldFind.out) !== files) throw new Error(`find through mirror: ${coldFind.out}`);
        results.push({
          name: `mirror: cold find (${label})`,
          value: Math.round(coldFind.ms),
          unit: "ms",
          note: statsNote(m.fs.stats),
        });
        const coldCat = await sh(catCmd(m.mnt + tree));
        if (Number(coldCat.out) !== bytes) throw new Error(`cat through mirror: ${coldCat.out}`);
        results.push({
          name: `mirror: cold cat after find (${label})`,
          value: Math.round(coldCat.ms),
          unit: "ms",
          note: `blobs ${m.fs.stats.blobFetches}, ${(m.fs.stats.blobBytes / 1e6).toFixed(1)} MB`,
        });
        const before = { ...m.fs.stats };
        const warmFind = await sh(findCmd(m.mnt + tree));
        const warmCat = await sh(catCmd(m.mnt + tree));
        results.push({
          name: `mirror: warm find (${label})`,
          value: Math.round(warmFind.ms),
          unit: "ms",
          note: `lookups ${m.fs.stats.lookups - before.lookups}, waited ${
            m.fs.stats.lookupsWaited - before.lookupsWaited
          }`,
        });
        results.push({
          name: `mirror: warm cat (${label})`,
          value: Math.round(warmCat.ms),
          unit: "ms",
        });
      }
      {
        await using m = await mount({ ...variant, dir, store, link, name: `mnt${n++}` });
        const findCat = await sh(`${findCmd(m.mnt + tree)} && ${catCmd(m.mnt + tree)}`);
        results.push({
          name: `mirror: store-warm find+cat (${label})`,
          value: Math.round(findCat.ms),
          unit: "ms",
          note: statsNote(m.fs.stats),
        });
      }
    }
    await compileBench(dir, results);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return results;
}

const COMPILE_SOURCE = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>
#include <pthread.h>
int main(int argc, char **argv) {
  struct stat st;
  if (stat(argv[0], &st) != 0) return errno;
  printf("%s %f\\n", strerror(0), sqrt((double)st.st_size));
  return EXIT_SUCCESS;
}
`;

/** gcc -c of a small file whose system headers come through the mirror (-nostdinc -isystem). */
async function compileBench(dir: string, results: BenchResult[]): Promise<void> {
  const source = `${dir}/compile.c`;
  await Deno.writeTextFile(source, COMPILE_SOURCE);
  const gccInclude = (await sh("gcc -print-file-name=include")).out;
  const command = (prefix: string) =>
    `gcc -c -O2 -nostdinc ${
      [gccInclude, "/usr/include/x86_64-linux-gnu", "/usr/include"].map((path) =>
        `-isystem ${prefix}${path}`
      ).join(" ")
    } ${source} -o ${dir}/compile.o`;
  await sh(command(""));
  const local = await sh(command(""));
  results.push({ name: "mirror: gcc -c, local headers", value: Math.round(local.ms), unit: "ms" });
  for (const latencyMs of [0, 1]) {
    await using store = await Store.open({
      dir: `${dir}/store-gcc${latencyMs}`,
      bytesMax: 1024 * 1024 * 1024,
    });
    const link = new DirLink({ root: "/", excludes: [dir, "/proc", "/sys", "/dev"], latencyMs });
    const variant = { latencyMs, readdirPlus: true, zeroOpen: true };
    const cases = [
      ["cold (empty store, no hashes on master)", "again (same mount)"],
      ["new mount (store and master hashes warm)", "again (same mount)"],
    ];
    for (const [index, [first, again]] of cases.entries()) {
      await using m = await mount({
        ...variant,
        dir,
        store,
        link,
        name: `gcc${latencyMs}_${index}`,
      });
      const cold = await sh(command(m.mnt));
      const coldStats = { ...m.fs.stats };
      const warm = await sh(command(m.mnt));
      results.push({
        name: `mirror: gcc -c through mirror, ${first}, latency ${latencyMs} ms`,
        value: Math.round(cold.ms),
        unit: "ms",
        note: statsNote(coldStats),
      });
      results.push({
        name: `mirror: gcc -c through mirror, ${again}, latency ${latencyMs} ms`,
        value: Math.round(warm.ms),
        unit: "ms",
        note: `lookups ${m.fs.stats.lookups - coldStats.lookups}, waited ${
          m.fs.stats.lookupsWaited - coldStats.lookupsWaited
        }`,
      });
    }
  }
}

if (import.meta.main) {
  const results = await run({ quick: Deno.args.includes("--quick") });
  console.table(results);
}
