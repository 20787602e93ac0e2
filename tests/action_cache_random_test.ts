/**
 * The action cache under random edits: a generated project (sources, headers
 * in two -I directories, one shadowing the other now and then), a random
 * edit, a rebuild of every object through the farm (hits and misses), every
 * object compared with a local gcc. ACACHE_EDITS sets the number of edits
 * (default 200), ACACHE_SEED the seed (printed).
 */
import assert from "node:assert/strict";
import { ACTION_CACHE_FARM, assertSameAsLocal, runIn, withFarm } from "./_reliability.ts";

const EDITS = Number(Deno.env.get("ACACHE_EDITS") ?? 200);
const SOURCES = 6;
const HEADERS = 4;

/** mulberry32: small, seeded, good enough to pick edits. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("action cache: random edits, a rebuild after each, never a byte different from a local build", async () => {
  const seed = Number(Deno.env.get("ACACHE_SEED") ?? Date.now() % 1_000_000);
  console.log(`seed ${seed}, ${EDITS} edits`);
  const random = prng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)];
  const header = (h: number, v: number) => `#define H${h} ${v}\n`;
  const source = (s: number, v: number) => {
    const uses = Array.from({ length: HEADERS }, (_, h) => h).filter((h) => (s + h) % 3 !== 0);
    return uses.map((h) => `#include "h${h}.h"\n`).join("") +
      `int f${s}(void) { return ${v}${uses.map((h) => ` + H${h}`).join("")}; }\n`;
  };
  const objs = Array.from({ length: SOURCES }, (_, s) => `s${s}.o`);
  const prepare = async (tree: string) => {
    await Deno.mkdir(`${tree}/inc1`, { recursive: true });
    await Deno.mkdir(`${tree}/inc2`, { recursive: true });
    for (let h = 0; h < HEADERS; h++) {
      await Deno.writeTextFile(`${tree}/inc2/h${h}.h`, header(h, 1));
    }
    for (let s = 0; s < SOURCES; s++) await Deno.writeTextFile(`${tree}/s${s}.c`, source(s, 0));
    await Deno.writeTextFile(
      `${tree}/Makefile`,
      `all: ${objs.join(" ")}\n%.o: %.c\n\tgcc -O1 -I inc1 -I inc2 -c $< -o $@\n`,
    );
  };
  await withFarm("acache-random", { ...ACTION_CACHE_FARM, prepare }, async (farm, tree, dir) => {
    for (let i = 0; i <= EDITS; i++) {
      // Values from a small range: edits often go back to an earlier state (older entries hit).
      const v = Math.floor(random() * 3);
      const h = Math.floor(random() * HEADERS);
      const edit = i === 0 ? "none" : pick(["header", "shadow", "unshadow", "source", "touch"]);
      if (edit === "header") await Deno.writeTextFile(`${tree}/inc2/h${h}.h`, header(h, v));
      else if (edit === "shadow") {
        await Deno.writeTextFile(`${tree}/inc1/h${h}.h`, header(h, 10 + v));
      } else if (edit === "unshadow") await Deno.remove(`${tree}/inc1/h${h}.h`).catch(() => {});
      else if (edit === "source") {
        const s = Math.floor(random() * SOURCES);
        await Deno.writeTextFile(`${tree}/s${s}.c`, source(s, v));
      } else if (edit === "touch") {
        const s = Math.floor(random() * SOURCES);
        const t = new Date(Date.now() + 1000);
        await Deno.utime(`${tree}/s${s}.c`, t, t);
      }
      for (const o of objs) await Deno.remove(`${tree}/${o}`).catch(() => {});
      const r = await runIn(tree, ["make", "-j3"], farm.env);
      assert.equal(r.code, 0, `edit ${i} (${edit}): ${r.stderr}`);
      for (let s = 0; s < SOURCES; s++) {
        await assertSameAsLocal({
          cwd: tree,
          argv: ["gcc", "-O1", "-I", "inc1", "-I", "inc2", "-c", `s${s}.c`],
          built: `${tree}/s${s}.o`,
          ref: `${dir}/ref-s${s}.o`,
          message: `seed ${seed}, edit ${i} (${edit}): s${s}.o differs from a local build`,
        });
      }
    }
    const cached = (await farm.status()).build.cached!;
    console.log(
      `${cached.hits} hits, ${cached.misses} misses, ${cached.notStored} not cacheable` +
        (cached.notStored > 0 ? ` (last: ${cached.lastNotStored})` : ""),
    );
    assert.ok(cached.hits > 0, "some rebuilds hit");
  });
});
