/** master/action_cache.ts without a farm: states, hits and misses, persistence, corruption, caps. */
import assert from "node:assert/strict";
import { ActionCache, incompleteWhy, interpreterOf, NotCacheable } from "../master/action_cache.ts";
import { HashCache } from "../master/hash_cache.ts";
import type { ReadSet } from "../common/protocol.ts";

async function setUp() {
  const dir = await Deno.makeTempDir({ prefix: "acache-store-" });
  const tree = `${dir}/tree`;
  await Deno.mkdir(`${tree}/inc`, { recursive: true });
  await Deno.writeTextFile(`${tree}/a.c`, "int a;\n");
  await Deno.writeTextFile(`${tree}/inc/a.h`, "#define A 1\n");
  await Deno.writeTextFile(`${tree}/a.o`, "object bytes");
  const hashCache = await HashCache.open();
  const opened: ActionCache[] = [];
  const open = async (bytesMax?: number) => {
    const cache = await ActionCache.open({ dir: `${dir}/cache`, root: tree, hashCache, bytesMax });
    opened.push(cache);
    return cache;
  };
  const done = async () => {
    for (const cache of opened) cache.close();
    await Deno.remove(dir, { recursive: true });
  };
  return { dir, tree, hashCache, open, done };
}

const output = (tree: string, hash: string) => ({
  resultSet: {
    deletions: [],
    dirs: [],
    files: [{ path: `${tree}/a.o`, hash, size: 12, mode: 0o644, mtimeMs: 0 }],
    symlinks: [],
  },
  stdout: new TextEncoder().encode("out"),
  stderr: new TextEncoder().encode("warning: x\n"),
  exitCode: 0,
  ranMs: 50,
});

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("ActionCache: a stored run hits while its inputs hold, misses when one changes, survives a restart", async () => {
  const { dir, tree, open, done } = await setUp();
  try {
    let cache = await open();
    const reads: ReadSet = {
      complete: true,
      entries: [
        [`${tree}/a.c`, ["r"]],
        [`${tree}/inc/a.h`, ["r"]],
        [`${tree}/a.h`, ["s"]], // probed, absent
        [`${tree}/inc`, ["d"]],
        ["/tmp/cc123.s", ["r"]], // private to the job
      ],
    };
    const started = Date.now() + 60_000; // nothing changed "after" it
    const states = await cache.states(reads, started);
    assert.ok(!states.some(([p]) => p === "/tmp/cc123.s"), "job-private paths are no inputs");
    assert.ok(states.some(([p, k]) => p === tree && k === "s"), "ancestors count");
    const key = cache.key(["gcc", "-c", "a.c"], tree, { PATH: "/usr/bin", MAKEFLAGS: "-j4" });
    assert.equal(
      key,
      cache.key(["gcc", "-c", "a.c"], tree, { PATH: "/usr/bin", MAKEFLAGS: "-j8 --jobserver" }),
      "MAKEFLAGS is no part of the key",
    );
    assert.notEqual(key, cache.key(["gcc", "-c", "a.c"], tree, { PATH: "/bin" }));
    await cache.store(key, states, output(tree, await sha256(`${tree}/a.o`)));
    const hit = await cache.lookup(key);
    assert.ok(hit);
    assert.equal(new TextDecoder().decode(hit.stderr), "warning: x\n");
    assert.equal(cache.stats.hits, 1);

    // Touched: the same content.
    const later = new Date(Date.now() + 5000);
    await Deno.utime(`${tree}/inc/a.h`, later, later);
    assert.ok(await cache.lookup(key), "touched only: a hit");

    // A restart keeps it.
    cache = await open();
    assert.ok(await cache.lookup(key), "after a restart: a hit");

    // Each input, changed: a miss.
    await Deno.writeTextFile(`${tree}/a.h`, "shadow\n");
    assert.equal(await cache.lookup(key), null, "a probed name appeared");
    await Deno.remove(`${tree}/a.h`);
    assert.ok(await cache.lookup(key));
    await Deno.writeTextFile(`${tree}/inc/b.h`, "\n");
    assert.equal(await cache.lookup(key), null, "the listed directory got a file");
    await Deno.remove(`${tree}/inc/b.h`);
    await Deno.writeTextFile(`${tree}/inc/a.h`, "#define A 2\n");
    assert.equal(await cache.lookup(key), null, "a header changed");
    assert.equal((await Deno.stat(`${dir}/cache`)).mode! & 0o777, 0o700);

    // A run that read its stdin (/dev/null) serves only jobs without a stdin.
    await Deno.writeTextFile(`${tree}/inc/a.h`, "#define A 1\n");
    const key2 = cache.key(["gcc", "-"], tree, {});
    const out2 = { ...output(tree, await sha256(`${tree}/a.o`)), readStdin: true };
    await cache.store(key2, await cache.states(reads, started), out2);
    assert.equal(await cache.lookup(key2, true), null, "a job with a stdin: a miss");
    assert.ok(await cache.lookup(key2, false), "a job without: a hit");
  } finally {
    await done();
  }
});

Deno.test("ActionCache: a corrupt entry is discarded, never applied; an incomplete or raced recording is refused", async () => {
  const { dir, tree, open, done } = await setUp();
  try {
    const cache = await open();
    const reads: ReadSet = { complete: true, entries: [[`${tree}/a.c`, ["r"]]] };
    const key = cache.key(["gcc"], tree, {});
    await cache.store(
      key,
      await cache.states(reads, Date.now() + 60_000),
      output(tree, await sha256(`${tree}/a.o`)),
    );
    const [entry] = [...Deno.readDirSync(`${dir}/cache/entries`)];
    const file = `${dir}/cache/entries/${entry.name}`;
    const text = await Deno.readTextFile(file);
    await Deno.writeTextFile(file, text.replace('"exitCode":0', '"exitCode":1'));
    // The running cache applies the entry as it checked it, never the altered file.
    assert.equal((await cache.lookup(key))?.exitCode, 0);
    // Read again (a restart): discarded.
    const reopened = await open();
    assert.equal(reopened.stats.corrupt, 1);
    await assert.rejects(Deno.stat(file), Deno.errors.NotFound);
    assert.equal(await reopened.lookup(key), null);

    await assert.rejects(cache.states({ complete: false, why: "lost events" }, 0), NotCacheable);
    // a.c changed after the job started: it may have read either version.
    await assert.rejects(cache.states(reads, Date.now() - 60_000), NotCacheable);
    // Result contents that changed after apply are not stored.
    await assert.rejects(cache.store(key, [], output(tree, "0".repeat(64))), NotCacheable);
  } finally {
    await done();
  }
});

Deno.test("ActionCache: capped in bytes, least recently used out first, a few entries per key", async () => {
  const { tree, open, done } = await setUp();
  try {
    const cache = await open(4000);
    const hash = await sha256(`${tree}/a.o`);
    const reads: ReadSet = { complete: true, entries: [[`${tree}/a.c`, ["r"]]] };
    const states = await cache.states(reads, Date.now() + 60_000);
    for (let i = 0; i < 20; i++) {
      await cache.store(cache.key(["gcc", String(i)], tree, {}), states, output(tree, hash));
    }
    assert.ok(cache.stats.bytes <= 4000, `${cache.stats.bytes} bytes`);
    assert.ok(cache.stats.evicted > 0);
    assert.ok(await cache.lookup(cache.key(["gcc", "19"], tree, {})), "the newest stays");
    assert.equal(await cache.lookup(cache.key(["gcc", "0"], tree, {})), null, "the oldest went");
    // Several input sets under one key, bounded.
    const big = await open();
    const key = big.key(["gcc", "x"], tree, {});
    for (let i = 0; i < 8; i++) {
      await Deno.writeTextFile(`${tree}/a.c`, `int a${i};\n`);
      const s = await big.states(reads, Date.now() + 60_000);
      await big.store(key, s, output(tree, hash));
    }
    assert.ok(await big.lookup(key), "the latest input set hits");
    await Deno.writeTextFile(`${tree}/a.c`, "int a0;\n");
    assert.equal(await big.lookup(key), null, "the first of 8 was dropped (4 per key)");
  } finally {
    await done();
  }
});

Deno.test("interpreterOf() names a script's interpreter and an ELF's loader", async () => {
  const dir = await Deno.makeTempDir({ prefix: "acache-interp-" });
  try {
    await Deno.writeTextFile(`${dir}/s`, "#!/bin/sh -e\necho\n", { mode: 0o755 });
    await Deno.chmod(`${dir}/s`, 0o755);
    assert.equal(await interpreterOf(`${dir}/s`), "/bin/sh");
    assert.match((await interpreterOf("/usr/bin/gcc-12")) ?? "", /ld-linux/);
    assert.equal(await interpreterOf("/etc/hostname"), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("incompleteWhy() names a worker's reason without converting what is not a string", () => {
  assert.equal(
    incompleteWhy({ why: "this worker records no reads" }),
    "recording incomplete: this worker records no reads",
  );
  assert.equal(
    incompleteWhy({ why: "x".repeat(5000) }).length,
    "recording incomplete: ".length + 200,
  );
  // Decoded from a worker's reply: a toString that is not a function throws if converted.
  const hostile = { toString: "boom", valueOf: "boom" };
  assert.equal(incompleteWhy({ why: hostile }), "recording incomplete: object");
  assert.equal(incompleteWhy({ why: 7 }), "recording incomplete: number");
  assert.equal(incompleteWhy(undefined), "recording incomplete: undefined");
  assert.equal(incompleteWhy(null), "recording incomplete: undefined");
});
