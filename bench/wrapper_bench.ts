/**
 * The wrapper's own cost: it is started once per compile. Side by side in one
 * run: `/bin/true` spawned directly; the wrapper in shell mode answering `true`
 * itself (pure start-up); and `/bin/true x` through the wrapper and a master
 * with no workers (start-up + socket + the master spawning it).
 */
import { startMaster } from "../master/mod.ts";
import { secretFromBytes } from "../rpc/mod.ts";
import type { BenchResult } from "./types.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

async function timeRuns(
  n: number,
  cmd: string[],
  options: { cwd: string; env: Record<string, string> },
) {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const out = await new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      cwd: options.cwd,
      env: options.env,
      stdout: "null",
      stderr: "null",
    }).output();
    times.push(performance.now() - t);
    if (!out.success) throw new Error(`${cmd.join(" ")} failed with ${out.code}`);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const n = options.quick ? 10 : 100;
  const dir = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/var/tmp", prefix: "termite-wb-" }),
  );
  await Deno.chmod(dir, 0o755);
  const bin = `${dir}/bin`;
  await Deno.mkdir(bin);
  await Deno.symlink(`${ROOT}/bin/termite-wrap`, `${bin}/termite-sh`);
  const cache = await Deno.makeTempDir({ prefix: "termite-wb-cache-" });
  const master = await startMaster({
    root: dir,
    secret: await secretFromBytes(crypto.getRandomValues(new Uint8Array(32))),
    cacheDir: cache,
    log: () => {},
  });
  const env = { PATH: `${bin}:/usr/bin:/bin`, HOME: dir };
  try {
    const direct = await timeRuns(n, ["/bin/true"], { cwd: dir, env });
    const builtin = await timeRuns(n, [`${bin}/termite-sh`, "-c", "true"], { cwd: dir, env });
    const viaMaster = await timeRuns(n, [`${bin}/termite-sh`, "-c", "/bin/true x"], {
      cwd: dir,
      env,
    });
    return [
      { name: "/bin/true, direct (median)", value: direct, unit: "ms" },
      {
        name: "wrapper start: termite-sh -c true (answered by the wrapper)",
        value: builtin,
        unit: "ms",
      },
      {
        name: "wrapper + master (no workers, runs locally): /bin/true x",
        value: viaMaster,
        unit: "ms",
        note: `master side beyond wrapper start: ${(viaMaster - builtin).toFixed(1)} ms`,
      },
    ];
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
}

if (import.meta.main) {
  for (const r of await run({ quick: Deno.args.includes("--quick") })) {
    console.log(`${r.name}: ${r.value.toFixed(2)} ${r.unit}${r.note ? ` (${r.note})` : ""}`);
  }
}
