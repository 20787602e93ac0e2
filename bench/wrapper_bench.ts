/**
 * The wrapper's own cost: it is started once per compile. Side by side in one
 * run, interleaved (one of each kind per round, so load from elsewhere spreads
 * over all): `/bin/true` spawned directly; a bare `deno run` of an empty
 * script; the wrapper in shell mode answering `true` itself (pure start-up);
 * `/bin/true x` through the wrapper and a master with no workers (start-up +
 * socket + the master spawning it); and the last two through the native
 * client (bin/termite-client, opt-in). Wall time (median) and CPU (the
 * children's rusage, median) per command.
 */
import { startMaster } from "../master/mod.ts";
import { secretFromBytes } from "../rpc/mod.ts";
import { buildClient } from "../wrapper/native/build.ts";
import { childrenCpuMs } from "./_proc.ts";
import type { BenchResult } from "./types.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

interface Kind {
  name: string;
  cmd: string[];
  wallMs: number[];
  cpuMs: number[];
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const n = options.quick ? 10 : 100;
  const dir = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/var/tmp", prefix: "termite-wb-" }),
  );
  await Deno.chmod(dir, 0o755);
  const bin = `${dir}/bin`, nativeBin = `${dir}/bin-native`;
  await Deno.mkdir(bin);
  await Deno.mkdir(nativeBin);
  await Deno.symlink(`${ROOT}/bin/termite-wrap`, `${bin}/termite-sh`);
  await Deno.symlink(await buildClient(), `${nativeBin}/termite-sh`);
  await Deno.writeTextFile(`${dir}/empty.js`, "");
  const cache = await Deno.makeTempDir({ prefix: "termite-wb-cache-" });
  const master = await startMaster({
    root: dir,
    secret: await secretFromBytes(crypto.getRandomValues(new Uint8Array(32))),
    cacheDir: cache,
    log: () => {},
  });
  const env = { PATH: `/usr/bin:/bin`, HOME: dir };
  const kinds: Kind[] = [
    { name: "/bin/true, direct", cmd: ["/bin/true"] },
    { name: "deno run empty.js (bare Deno start)", cmd: [Deno.execPath(), "run", "empty.js"] },
    { name: "wrapper start: termite-sh -c true", cmd: [`${bin}/termite-sh`, "-c", "true"] },
    {
      name: "native client start: termite-sh -c true",
      cmd: [`${nativeBin}/termite-sh`, "-c", "true"],
    },
    {
      name: "wrapper + master (no workers): /bin/true x",
      cmd: [`${bin}/termite-sh`, "-c", "/bin/true x"],
    },
    {
      name: "native client + master (no workers): /bin/true x",
      cmd: [`${nativeBin}/termite-sh`, "-c", "/bin/true x"],
    },
  ].map((k) => ({ ...k, wallMs: [], cpuMs: [] }));
  try {
    // Round 0 warms up and is not counted.
    for (let i = 0; i <= n; i++) {
      for (const k of kinds) {
        const cpu = childrenCpuMs();
        const t = performance.now();
        const out = await new Deno.Command(k.cmd[0], {
          args: k.cmd.slice(1),
          cwd: dir,
          env,
          clearEnv: true,
          stdin: "null",
          stdout: "null",
          stderr: "null",
        }).output();
        const wall = performance.now() - t;
        if (!out.success) throw new Error(`${k.cmd.join(" ")} failed with ${out.code}`);
        if (i === 0) continue;
        k.wallMs.push(wall);
        k.cpuMs.push(childrenCpuMs() - cpu);
      }
    }
  } finally {
    await master.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  return kinds.map((k) => ({
    name: `${k.name} (median of ${n})`,
    value: median(k.wallMs),
    unit: "ms",
    note: `CPU ${median(k.cpuMs).toFixed(2)} ms per command; load average after ${load}`,
  }));
}

if (import.meta.main) {
  for (const r of await run({ quick: Deno.args.includes("--quick") })) {
    console.log(`${r.name}: ${r.value.toFixed(2)} ${r.unit}${r.note ? ` (${r.note})` : ""}`);
  }
}
