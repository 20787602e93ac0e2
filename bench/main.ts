/**
 * `deno task bench [--quick] [--only NAME,...]`: runs every benchmark module
 * in bench/ (each measures its contenders side by side in one run), prints a
 * table and writes bench/results/latest.json.
 */
import { parseArgs } from "node:util";
import type { BenchModule, BenchResult } from "./types.ts";

const MODULES = [
  "cas",
  "rpc",
  "fuse",
  "mirror",
  "sandbox",
  "worker",
  "wrapper",
  "farm",
] as const;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
  },
});

const only = values.only?.split(",");
const all: (BenchResult & { module: string })[] = [];
for (const name of MODULES) {
  if (only && !only.includes(name)) continue;
  const url = new URL(`./${name}_bench.ts`, import.meta.url);
  try {
    await Deno.stat(url);
  } catch {
    continue;
  }
  console.error(`bench: ${name}`);
  const mod = await import(url.href) as BenchModule;
  try {
    for (const r of await mod.run({ quick: values.quick })) {
      all.push({ module: name, ...r });
      console.log(
        `| ${name} | ${r.name} | ${Number(r.value.toPrecision(4))} | ${r.unit} | ${r.note ?? ""} |`,
      );
    }
  } catch (err) {
    console.error(`bench ${name} failed: ${(err as Error).stack}`);
  }
}
const dir = new URL("./results/", import.meta.url);
await Deno.mkdir(dir, { recursive: true });
await Deno.writeTextFile(
  new URL("latest.json", dir),
  JSON.stringify({ date: new Date().toISOString(), quick: values.quick, results: all }, null, 2),
);
