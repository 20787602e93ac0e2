/**
 * The action cache end to end: a real farm (coordinator, one worker recording
 * reads with bpftrace, master), real compiles. Each case builds, changes
 * something, rebuilds through the cache and compares every output byte with
 * a clean local build; hits and misses are read from the master's status.
 */
import assert from "node:assert/strict";
import { buildLines } from "../common/monitor_text.ts";
import {
  ACTION_CACHE_FARM,
  assertSameAsLocal,
  type Farm,
  runIn,
  withFarm,
} from "./_reliability.ts";

interface Cached {
  jobsCached: number;
  jobsRemote: number;
  jobsLocal: number;
  hits: number;
  misses: number;
  stored: number;
  notStored: number;
  lastNotStored: string;
}

async function counts(farm: Farm): Promise<Cached> {
  const jobs = (await farm.status()).jobs as unknown as Record<string, unknown> & {
    actionCache: Record<string, number | string>;
  };
  return {
    jobsCached: jobs.jobsCached as number,
    jobsRemote: jobs.jobsRemote as number,
    jobsLocal: jobs.jobsLocal as number,
    hits: jobs.actionCache.hits as number,
    misses: jobs.actionCache.misses as number,
    stored: jobs.actionCache.stored as number,
    notStored: jobs.actionCache.notStored as number,
    lastNotStored: jobs.actionCache.lastNotStored as string,
  };
}

const SOURCES = ["main", "util", "shadow"];
/** As in the Makefile. */
const CFLAGS = ["-O1", "-I", "inc1", "-I", "inc2"];
const MAKEFILE = [
  "OBJS = main.o util.o shadow.o",
  "all: $(OBJS)",
  "%.o: %.c",
  "\tgcc -O1 -I inc1 -I inc2 -c $< -o $@",
  "clean:",
  "\trm -f $(OBJS)",
  "",
].join("\n");

async function writeProject(tree: string, outside: string): Promise<void> {
  await Deno.mkdir(`${tree}/inc1`, { recursive: true });
  await Deno.mkdir(`${tree}/inc2`, { recursive: true });
  await Deno.mkdir(`${tree}/fakebin`, { recursive: true });
  await Deno.mkdir(outside, { recursive: true });
  await Deno.writeTextFile(`${tree}/Makefile`, MAKEFILE);
  await Deno.writeTextFile(`${tree}/inc2/conf.h`, "#define CONF 2\n");
  await Deno.writeTextFile(`${tree}/inc1/util.h`, "int util(int);\n#define UTIL_K 7\n");
  await Deno.writeTextFile(`${outside}/far.h`, "#define FAR 100\n");
  await Deno.writeTextFile(
    `${tree}/main.c`,
    '#include "util.h"\n#include "conf.h"\nint main(void) { return util(CONF) + UTIL_K; }\n',
  );
  await Deno.writeTextFile(
    `${tree}/util.c`,
    `#include "util.h"\n#include "${outside}/far.h"\nint util(int x) { return x * FAR; }\n`,
  );
  await Deno.writeTextFile(
    `${tree}/shadow.c`,
    '#include "conf.h"\nint shadow(void) { return CONF * 3; }\n',
  );
}

/** Every object equal to one compiled here, locally, from the tree as it is now. */
async function checkAgainstLocal(tree: string, ref: string, what = ""): Promise<void> {
  await Deno.mkdir(ref, { recursive: true });
  for (const name of SOURCES) {
    await assertSameAsLocal({
      cwd: tree,
      argv: ["gcc", ...CFLAGS, "-c", `${name}.c`],
      built: `${tree}/${name}.o`,
      ref: `${ref}/${name}.o`,
      message: `${what}: ${name}.o as built here`,
    });
  }
}

async function make(tree: string, farm: Farm, env: Record<string, string> = {}): Promise<void> {
  const r = await runIn(tree, ["make", "-j3"], { ...farm.env, ...env });
  assert.equal(r.code, 0, r.stderr);
}

async function clean(tree: string): Promise<void> {
  for (const name of SOURCES) await Deno.remove(`${tree}/${name}.o`).catch(() => {});
}

Deno.test("action cache: hits after make clean, misses on every changed input, bytes as a local build", async () => {
  const prepare = (tree: string, dir: string) => writeProject(tree, `${dir}/outside`);
  await withFarm("acache", { ...ACTION_CACHE_FARM, prepare }, async (farm, tree, dir) => {
    const outside = `${dir}/outside`;
    // PATH with a directory of the tree ahead of gcc's own (empty for now).
    const env = { PATH: `${farm.binDir}:${tree}/fakebin:${Deno.env.get("PATH")}` };
    const build = async (what: string, expect: { hits: number; misses: number }) => {
      const before = await counts(farm);
      await make(tree, farm, env);
      const after = await counts(farm);
      const hits = after.hits - before.hits;
      const misses = after.misses - before.misses;
      assert.deepEqual(
        { hits, misses },
        expect,
        `${what}: hits and misses (${JSON.stringify(after)})`,
      );
      assert.equal(after.notStored, before.notStored, `${what}: ${after.lastNotStored}`);
      await checkAgainstLocal(tree, `${dir}/ref`, what);
    };

    await build("first build", { hits: 0, misses: 3 });
    await clean(tree);
    await build("after make clean", { hits: 3, misses: 0 });

    // Edit a header: the two compiles that read it run again.
    await Deno.writeTextFile(`${tree}/inc2/conf.h`, "#define CONF 5\n");
    await clean(tree);
    await build("header edited", { hits: 1, misses: 2 });

    // A header in an earlier -I directory shadows the one that was found.
    await Deno.writeTextFile(`${tree}/inc1/conf.h`, "#define CONF 9\n");
    await clean(tree);
    await build("header shadowed", { hits: 1, misses: 2 });

    // Touched, not changed: make runs the compiles again, the cache answers.
    const now = new Date(Date.now() + 2000);
    await Deno.utime(`${tree}/main.c`, now, now);
    await Deno.utime(`${tree}/util.c`, now, now);
    await build("header touched", { hits: 2, misses: 0 });

    // A file outside the tree that a compile reads.
    await Deno.writeTextFile(`${outside}/far.h`, "#define FAR 200\n");
    await clean(tree);
    await build("outside file changed", { hits: 2, misses: 1 });

    // gcc on PATH is now another compiler (a script in front of the real one).
    await Deno.writeTextFile(
      `${tree}/fakebin/gcc`,
      '#!/bin/sh\nexec /usr/bin/gcc "$@" -O0\n',
    );
    await Deno.chmod(`${tree}/fakebin/gcc`, 0o755);
    await clean(tree);
    const before = await counts(farm);
    await make(tree, farm, env);
    const after = await counts(farm);
    assert.equal(after.hits - before.hits, 0, "no compile may hit: gcc is another program now");
    await assertSameAsLocal({
      cwd: tree,
      argv: [`${tree}/fakebin/gcc`, ...CFLAGS, "-c", "main.c"],
      built: `${tree}/main.o`,
      ref: `${dir}/fake-main.o`,
      message: "main.o from the new gcc",
    });
    await Deno.remove(`${tree}/fakebin/gcc`);
    await clean(tree);
    await build("the script removed again", { hits: 3, misses: 0 });

    // An environment variable the compiler reads.
    await clean(tree);
    const withCpath = await runIn(tree, ["make", "-j3"], {
      ...farm.env,
      ...env,
      CPATH: `${outside}`,
    });
    assert.equal(withCpath.code, 0, withCpath.stderr);
    const c = await counts(farm);
    assert.ok(c.misses >= after.misses + 3, "a new environment: every compile misses");
  });
});

Deno.test("action cache: a failing compile is replayed with its exit status and stderr; a listing misses after a file is added", async () => {
  const prepare = async (tree: string) => {
    await Deno.mkdir(`${tree}/list`, { recursive: true });
    await Deno.writeTextFile(`${tree}/bad.c`, "int main(void) { return undefined_thing; }\n");
    await Deno.writeTextFile(`${tree}/list/a`, "a\n");
    // Shell commands are not cached by default: a rule takes this one.
    await Deno.writeTextFile(
      `${tree}/.termite-localrc`,
      '[{"regexp": "^ls list", "cache": true}]\n',
    );
    await Deno.chmod(`${tree}/.termite-localrc`, 0o644);
  };
  const options = { ...ACTION_CACHE_FARM, slotsPerWorker: 2, prepare };
  await withFarm("acache-fail", options, async (farm, tree) => {
    const direct = await runIn(tree, ["gcc", "-c", "bad.c", "-o", "bad.o"]);
    assert.equal(direct.code, 1);
    for (let i = 0; i < 2; i++) {
      const before = await counts(farm);
      const r = await runIn(tree, ["gcc", "-c", "bad.c", "-o", "bad.o"], farm.env);
      const after = await counts(farm);
      assert.equal(r.code, 1);
      assert.equal(r.stderr, direct.stderr, "gcc's own message, byte for byte");
      assert.equal(
        after.hits - before.hits,
        i,
        `${i === 0 ? "first: a miss" : "then: a hit"} (${after.lastNotStored})`,
      );
    }

    const sh = `${farm.binDir}/termite-sh`;
    const list = async () => {
      const r = await runIn(tree, [sh, "-c", "ls list > listing.txt"], farm.env);
      assert.equal(r.code, 0, r.stderr);
      return await Deno.readTextFile(`${tree}/listing.txt`);
    };
    assert.equal(await list(), "a\n");
    let before = await counts(farm);
    assert.equal(await list(), "a\n");
    let after = await counts(farm);
    assert.equal(after.hits - before.hits, 1, `the same listing: a hit (${after.lastNotStored})`);
    await Deno.writeTextFile(`${tree}/list/b`, "b\n");
    before = after;
    assert.equal(await list(), "a\nb\n", "the new file is listed");
    after = await counts(farm);
    assert.equal(after.hits - before.hits, 0, "a file added: a miss");

    // The figures on the build page and in the monitor's summary line.
    const page = await (await fetch(`http://127.0.0.1:${farm.statusPort}/`)).text();
    assert.match(page, /id="sum-cached"><b>2<\/b> replayed from the action cache/);
    const status = await farm.status();
    assert.match(buildLines(status)[0], /2 replayed from cache \(\d+ misses/);
  });
});

Deno.test("action cache: a read set larger than a reply's frame comes in parts and is cached", async () => {
  // 2,000 names of 120 characters: `ls -l` looks at each (lstat, getxattr), a
  // read set of about 0.9 MB by the worker's estimate, four parts.
  const prepare = async (tree: string) => {
    await Deno.mkdir(`${tree}/big`, { recursive: true });
    for (let i = 0; i < 2_000; i++) {
      await Deno.writeTextFile(`${tree}/big/${"n".repeat(112)}${String(i).padStart(8, "0")}`, "");
    }
    await Deno.writeTextFile(
      `${tree}/.termite-localrc`,
      '[{"regexp": "^ls -l big", "cache": true}]\n',
    );
    await Deno.chmod(`${tree}/.termite-localrc`, 0o644);
  };
  const options = { ...ACTION_CACHE_FARM, slotsPerWorker: 1, prepare };
  await withFarm("acache-big", options, async (farm, tree) => {
    const sh = `${farm.binDir}/termite-sh`;
    const list = async () => {
      const before = await counts(farm);
      const r = await runIn(tree, [sh, "-c", "ls -l big > big.txt"], farm.env);
      assert.equal(r.code, 0, r.stderr);
      const after = await counts(farm);
      const lines = (await Deno.readTextFile(`${tree}/big.txt`)).trimEnd().split("\n");
      return { hits: after.hits - before.hits, stored: after.stored - before.stored, lines, after };
    };
    const first = await list();
    assert.equal(first.lines.length, 2_001);
    assert.equal(first.stored, 1, `stored (${first.after.lastNotStored})`);
    const second = await list();
    assert.equal(second.hits, 1, `a hit (${second.after.lastNotStored})`);
    assert.deepEqual(second.lines, first.lines);
    await Deno.writeTextFile(`${tree}/big/added`, "");
    const third = await list();
    assert.equal(third.hits, 0, "a file added: a miss");
    assert.equal(third.lines.length, 2_002);
  });
});
