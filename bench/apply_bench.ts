/**
 * The master's CPU per job in applying a small result: one 24 KiB object file
 * that came inline with the reply, written into a tree by descriptor (as the
 * master does, with its tree handle open) — new, and replacing the previous
 * build's file — and a set of 100 files: the median wall time of an apply and
 * the process's CPU time per apply. Not in bench/main.ts's list: run alone.
 *
 * Run alone: `deno run -A bench/apply_bench.ts [--quick]`.
 */
import { createHash } from "node:crypto";
import { cpuUsage } from "node:process";
import { applyResultSet } from "../master/apply.ts";
import { Beneath } from "../master/beneath.ts";
import { HashCache } from "../master/hash_cache.ts";
import type { ResultFile, ResultSet } from "../common/types.ts";
import type { BenchResult } from "./types.ts";

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const allRounds = options.quick ? 300 : 2000;
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "apply_bench_" }));
  await Deno.mkdir(`${root}/obj/sub`, { recursive: true });
  const obj = crypto.getRandomValues(new Uint8Array(24 * 1024));
  const hash = createHash("sha256").update(obj).digest("hex");
  const file = (path: string): ResultFile => ({
    path,
    hash,
    size: obj.length,
    mode: 0o644,
    mtimeMs: 0,
  });
  const cache = await HashCache.open();
  const tree = Beneath.open(root);
  const results: BenchResult[] = [];
  try {
    const apply = (set: ResultSet) =>
      applyResultSet(set, {
        writableRoot: root,
        tree,
        hashCache: cache,
        fetchBlob: () => Promise.reject(new Error("inline only")),
        inline: () => obj,
      });
    const measure = async (
      name: string,
      make: (i: number) => ResultSet,
      before?: () => void,
      rounds = allRounds,
    ) => {
      const times: number[] = [];
      let cpu = { user: 0, system: 0 };
      for (let i = 0; i < rounds + rounds / 10; i++) {
        if (i === rounds / 10) cpu = cpuUsage();
        before?.();
        const set = make(i);
        const t = performance.now();
        await apply(set);
        if (i >= rounds / 10) times.push(performance.now() - t); // after a warm-up
      }
      const used = cpuUsage(cpu);
      times.sort((a, b) => a - b);
      results.push({
        name,
        value: quantile(times, 0.5),
        unit: "ms",
        note: `p10 ${quantile(times, 0.1).toFixed(3)}, p90 ${quantile(times, 0.9).toFixed(3)}; ` +
          `CPU ${((used.user + used.system) / 1000 / rounds).toFixed(3)} ms per apply`,
      });
    };
    const empty = { deletions: [], dirs: [], symlinks: [] };
    await measure("apply: one object file, replacing", () => ({
      ...empty,
      files: [file(`${root}/obj/sub/a.o`)],
    }));
    await measure(
      "apply: one object file, new",
      () => ({ ...empty, files: [file(`${root}/obj/sub/b.o`)] }),
      () => {
        try {
          Deno.removeSync(`${root}/obj/sub/b.o`);
        } catch {
          // The first round.
        }
      },
    );
    await measure(
      "apply: 100 object files, replacing",
      () => ({
        ...empty,
        files: Array.from({ length: 100 }, (_, i) => file(`${root}/obj/sub/m${i}.o`)),
      }),
      undefined,
      allRounds / 20,
    );
  } finally {
    tree.close();
    await cache.close();
    await Deno.remove(root, { recursive: true });
  }
  return results;
}

if (import.meta.main) {
  for (const r of await run({ quick: Deno.args.includes("--quick") })) {
    console.log(`${r.name}: ${r.value.toFixed(3)} ${r.unit} (${r.note})`);
  }
}
