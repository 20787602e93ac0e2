/**
 * Per-job overhead on the worker: the time from request to result, as the
 * worker measures it (mirror updates, sandbox, result collection), for
 * `/bin/true` and a small real compile, side by side with running the same
 * command directly, plus the whole round trip through wrapper and master.
 */
import { Farm, ROOT, runIn } from "../farm/mod.ts";
import type { BenchResult } from "./types.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function timed(n: number, fn: () => Promise<void>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  return median(times);
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const n = options.quick ? 5 : 30;
  await Deno.mkdir(`${ROOT}/.cache/bench`, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/bench`, prefix: "worker-" });
  await Deno.chmod(dir, 0o755);
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree);
  await Deno.writeTextFile(
    `${tree}/tiny.c`,
    '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n',
  );
  const farm = await Farm.start({ dir: `${dir}/farm`, tree, workers: 1, slotsPerWorker: 2 });
  const out: BenchResult[] = [];
  try {
    const sh = `${farm.binDir}/termite-sh`;
    const check = (r: { code: number; stderr: string }) => {
      if (r.code !== 0) throw new Error(r.stderr);
    };
    // Warm the mirror and the content store first.
    check(await runIn(tree, [sh, "-c", "/bin/true x; gcc -c tiny.c -o warm.o"], farm.env));
    for (
      const [label, script, direct] of [
        ["/bin/true", "/bin/true x", ["/bin/true", "x"]],
        ["gcc -c tiny.c", "gcc -c tiny.c -o tiny.o", ["gcc", "-c", "tiny.c", "-o", "direct.o"]],
      ] as const
    ) {
      const directMs = await timed(n, async () => check(await runIn(tree, [...direct])));
      const before = (await farm.status()).jobs.perWorker;
      const roundMs = await timed(
        n,
        async () => check(await runIn(tree, [sh, "-c", script], farm.env)),
      );
      const after = (await farm.status()).jobs.perWorker;
      let workerMs = 0, applyMs = 0, jobs = 0;
      for (const [address, w] of Object.entries(after)) {
        const b = before[address];
        jobs += w.done - (b?.done ?? 0);
        workerMs += w.workerMs - (b?.workerMs ?? 0);
        applyMs += w.applyMs - (b?.applyMs ?? 0);
      }
      out.push(
        { name: `${label}: direct`, value: directMs, unit: "ms" },
        {
          name: `${label}: on the worker (request to result)`,
          value: workerMs / jobs,
          unit: "ms",
          note: `${(workerMs / jobs / directMs).toFixed(1)}× direct`,
        },
        { name: `${label}: master applying the result`, value: applyMs / jobs, unit: "ms" },
        {
          name: `${label}: round trip through wrapper, master, worker`,
          value: roundMs,
          unit: "ms",
          note: `+${(roundMs - directMs).toFixed(0)} ms over direct`,
        },
      );
    }
  } finally {
    await farm.stop();
    await Deno.remove(dir, { recursive: true });
  }
  return out;
}

if (import.meta.main) {
  for (const r of await run({ quick: Deno.args.includes("--quick") })) {
    console.log(`${r.name}: ${r.value.toFixed(2)} ${r.unit}${r.note ? ` (${r.note})` : ""}`);
  }
}
