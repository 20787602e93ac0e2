/**
 * Learned warm sets: what the master records per tool and keeps in its cache
 * dir (validated, discarded when damaged, bounded), what it streams (read
 * again at that moment), and, end to end with real workers, that a mirror
 * warmed from a set learned in an earlier build never sees stale content: a
 * file of the set changed between the builds is compiled with its new bytes,
 * one deleted is gone.
 */
import assert from "node:assert/strict";
import type { FileAttr } from "../common/types.ts";
import { Farm, ROOT, runIn } from "../farm/mod.ts";
import { scratchDir } from "./_reliability.ts";
import {
  streamWarmSet,
  toolKey,
  WARM_FILE_BYTES_MAX,
  type WarmChunk,
  WarmSets,
} from "../master/warm_set.ts";
import type { RpcPeer } from "../rpc/mod.ts";
import { DEFERRED_LISTINGS_MAX, WARM_FIRST_BYTES_MIN, Warmer } from "../worker/mirror_warm.ts";

/** Stands in for a worker connection (only `closed` is used). */
function fakePeer(): RpcPeer & { close(): void } {
  const closed = Promise.withResolvers<void>();
  return { closed: closed.promise, close: () => closed.resolve() } as unknown as
    & RpcPeer
    & { close(): void };
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "warm-set-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** What the Warmer unit tests give it alike: counters, no abort, failures thrown, tasks kept. */
function warmerCommon(tasks: Promise<unknown>[]) {
  return {
    updates: { count: 0 } as never,
    stats: { warmStreams: 0, warmDirs: 0, warmAttrs: 0, warmBlobs: 0, warmBytes: 0 },
    signal: new AbortController().signal,
    failed: (error: unknown): never => {
      throw error;
    },
    track: (task: Promise<unknown>) => tasks.push(task),
  };
}

Deno.test("toolKey() keeps the tool and the shape of its arguments, not the files", () => {
  assert.equal(toolKey(["gcc", "-c", "a.c", "-o", "a.o"]), toolKey(["gcc", "-O2", "-c", "b.c"]));
  assert.equal(toolKey(["/usr/bin/gcc", "-c", "a.c"]), "gcc -c");
  assert.notEqual(toolKey(["gcc", "-c", "a.c"]), toolKey(["gcc", "-o", "prog", "a.o"]));
  assert.notEqual(toolKey(["gcc", "-c", "a.c"]), toolKey(["g++", "-c", "a.cc"]));
  assert.ok(toolKey(["x".repeat(10_000)]).length <= 256);
});

Deno.test("WarmSets: learns per tool what a worker needed while its jobs ran, and keeps it across runs", async () => {
  await withDir(async (dir) => {
    const file = `${dir}/warm.json`;
    const sets = await WarmSets.open({ file });
    const a = fakePeer(), b = fakePeer();
    sets.jobStarted(a, "gcc -c");
    sets.jobStarted(b, "ar ");
    sets.noteDir(a, "/usr/include");
    sets.noteFile(a, "/usr/include/stdio.h");
    sets.noteFile(a, "/usr/include/stdio.h");
    sets.noteFile(b, "/usr/lib/bfd-plugins/x.so");
    sets.jobEnded(a, "gcc -c");
    // Between jobs (a prefetch finishing): the tool of the connection's last job.
    sets.noteFile(a, "/usr/include/stdlib.h");
    assert.deepEqual(sets.setFor("gcc -c"), {
      dirs: ["/usr/include"],
      files: ["/usr/include/stdio.h", "/usr/include/stdlib.h"],
    });
    assert.deepEqual(sets.setFor("ar "), { dirs: [], files: ["/usr/lib/bfd-plugins/x.so"] });
    // Two tools running on one worker: which one needed it is unknown, so neither learns it.
    sets.jobStarted(a, "cc1 -c");
    sets.jobStarted(a, "ld ");
    sets.noteFile(a, "/usr/lib/libLLVM.so");
    sets.jobEnded(a, "ld ");
    sets.jobEnded(a, "cc1 -c");
    assert.deepEqual(sets.setFor("cc1 -c").files, []);
    assert.deepEqual(sets.setFor("ld ").files, []);
    assert.deepEqual(sets.setFor("unknown"), { dirs: [], files: [] });
    sets.jobStarted(b, "ar ");
    sets.jobEnded(b, "ar ");
    sets.jobStarted(b, "idle");
    sets.jobEnded(b, "idle");
    assert.deepEqual(sets.busiestTools(4), ["ar ", "gcc -c"], "most jobs first, none empty");
    assert.deepEqual(sets.busiestTools(1), ["ar "]);
    await sets.close();
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    const again = await WarmSets.open({ file });
    assert.deepEqual(again.busiestTools(4), ["ar ", "gcc -c"]);
    assert.deepEqual(again.setFor("gcc -c").files, [
      "/usr/include/stdio.h",
      "/usr/include/stdlib.h",
    ]);
    await again.close();
    a.close();
    b.close();
  });
});

Deno.test("WarmSets: entries per tool and tools are bounded", async () => {
  const sets = await WarmSets.open({ entriesMax: 3, toolsMax: 2 });
  const peer = fakePeer();
  sets.jobStarted(peer, "t1");
  for (let i = 0; i < 10; i++) sets.noteFile(peer, `/f${i}`);
  assert.deepEqual(sets.setFor("t1").files, ["/f0", "/f1", "/f2"]);
  for (const tool of ["t2", "t3"]) {
    sets.jobStarted(peer, tool);
    sets.noteDir(peer, "/d");
  }
  assert.equal(sets.size, 2, "the least recently used tool went");
  await sets.close();
  peer.close();
});

Deno.test("WarmSets: a damaged learned-set file is reported, discarded and replaced", async () => {
  await withDir(async (dir) => {
    const file = `${dir}/warm.json`;
    const damaged: [string, string | Uint8Array][] = [
      ["not JSON", "{not json"],
      ["format", JSON.stringify({ format: "other", tools: {} })],
      ["relative", JSON.stringify({ format: "termite-warm-1", tools: { t: { dirs: ["a/b"] } } })],
      [
        "dot-dot",
        JSON.stringify({ format: "termite-warm-1", tools: { t: { files: ["/a/../b"] } } }),
      ],
      ["not a list", JSON.stringify({ format: "termite-warm-1", tools: { t: { files: 7 } } })],
      ["too large", new Uint8Array(WARM_FILE_BYTES_MAX + 1)],
    ];
    for (const [what, content] of damaged) {
      if (typeof content === "string") await Deno.writeTextFile(file, content);
      else await Deno.writeFile(file, content);
      const logs: string[] = [];
      const sets = await WarmSets.open({ file, log: (m) => logs.push(m) });
      assert.equal(sets.size, 0, what);
      assert.equal(logs.length, 1, what);
      assert.match(logs[0], /discarding the learned warm sets/, what);
      await assert.rejects(Deno.stat(file), Deno.errors.NotFound, `${what}: removed`);
      await sets.close();
    }
  });
});

Deno.test("streamWarmSet(): listings parents first, files read now with their hashes, bytes bounded", async () => {
  const listed: string[] = [];
  const sent: WarmChunk[] = [];
  const files: Record<string, FileAttr> = {
    "/a/x": { path: "/a/x", kind: "file", mode: 0o644, size: 600, mtimeMs: 1, hash: "1" },
    "/a/y": { path: "/a/y", kind: "file", mode: 0o644, size: 600, mtimeMs: 1, hash: "2" },
    "/a/gone": { path: "/a/gone", kind: null, mode: 0, size: 0, mtimeMs: 0 },
  };
  const result = await streamWarmSet({
    set: { dirs: ["/a/b/c", "/a", "/a/b", "/broken"], files: ["/a/x", "/a/gone", "/a/y"] },
    dir: (path) => {
      if (path === "/broken") return Promise.reject(new Error("unreadable"));
      listed.push(path);
      return Promise.resolve(
        Array.from({ length: path === "/a" ? 1100 : 1 }, (_, i) => ({
          path: `${path}/n${i}`,
          kind: "file" as const,
          mode: 0o644,
          size: 1,
          mtimeMs: 1,
        })),
      );
    },
    attr: (path) => Promise.resolve(files[path]),
    send: (chunk) => {
      sent.push(chunk);
      return Promise.resolve();
    },
    signal: new AbortController().signal,
    bytesMax: 1000,
  });
  assert.deepEqual(listed, ["/a", "/a/b", "/a/b/c"]);
  const dirChunks = sent.filter((c) => "d" in c) as { d: string; a: FileAttr[]; more?: true }[];
  assert.deepEqual(dirChunks.map((c) => [c.d, c.a.length, c.more ?? false]), [
    ["/a", 512, true],
    ["/a", 512, true],
    ["/a", 76, false],
    ["/a/b", 1, false],
    ["/a/b/c", 1, false],
  ]);
  const fileChunks = sent.filter((c) => "f" in c) as { f: FileAttr[] }[];
  assert.deepEqual(fileChunks.flatMap((c) => c.f.map((a) => a.path)), ["/a/x", "/a/gone"]);
  assert.deepEqual(result, { dirs: 3, files: 2, bytes: 600 });
});

Deno.test("Warmer: a big content goes before the small ones queued, two at a time, the rest in the order they came", async () => {
  const started: string[] = [];
  const done: (() => void)[] = [];
  const file = (path: string, size: number, hash: string): FileAttr => ({
    path,
    kind: "file",
    mode: 0o644,
    size,
    mtimeMs: 1,
    hash: hash.repeat(64),
  });
  const big = WARM_FIRST_BYTES_MIN;
  const chunk = {
    f: [
      file("/usr/bin/gcc", 1000, "a"),
      file("/usr/lib/libc.so.6", 2000, "b"),
      file("/usr/share/locale.bin", 3000, "c"),
      file("/usr/lib/cc1", big, "d"),
      file("/usr/lib/lto1", big + 1, "e"),
      file("/usr/include/stdio.h", 4000, "f"),
    ],
  };
  const tasks: Promise<unknown>[] = [];
  const warmer = new Warmer({
    ...warmerCommon(tasks),
    link: {
      warm: (_tool: string, onChunk: (c: unknown) => unknown) => {
        onChunk(chunk);
        return Promise.resolve();
      },
    } as never,
    cache: {} as never,
    fetches: { epoch: 0, absorbAttr: () => false } as never,
    store: { sizeOf: () => undefined } as never,
    blobs: {
      ensure: (_hash: string, options: { source: { path: string } }) => {
        started.push(options.source.path);
        return new Promise<string>((resolve) => done.push(() => resolve("")));
      },
      markVerified: () => {},
    } as never,
  });
  warmer.warm("gcc -c");
  await Promise.all(tasks);
  // The first two started as they came; then the big ones, in their order.
  assert.deepEqual(started, ["/usr/bin/gcc", "/usr/lib/libc.so.6"]);
  for (let i = 0; i < 4; i++) {
    done.shift()!();
    await new Promise((r) => setTimeout(r, 0));
  }
  assert.deepEqual(started, [
    "/usr/bin/gcc",
    "/usr/lib/libc.so.6",
    "/usr/lib/cc1",
    "/usr/lib/lto1",
    "/usr/share/locale.bin",
    "/usr/include/stdio.h",
  ]);
  while (done.length > 0) done.shift()!();
  await Promise.all(tasks);
});

Deno.test("Warmer: listings whose parent is still being listed wait for it, in order, and at most a bounded number of them", async () => {
  // `/` is being listed (the mount's walk) when the stream's listings come:
  // each of /d0.. would find no parent. A hostile or slow master keeps the
  // fetch waiting and streams many more: only DEFERRED_LISTINGS_MAX wait.
  type Node = { path: string; complete: boolean; kids: Map<string, Node> };
  const root: Node = { path: "/", complete: false, kids: new Map() };
  let listRoot!: () => void;
  const rootFetch = new Promise<void>((resolve) => listRoot = resolve);
  const absorbed: string[] = [];
  const tasks: Promise<unknown>[] = [];
  const n = DEFERRED_LISTINGS_MAX + 40;
  const warmer = new Warmer({
    ...warmerCommon(tasks),
    link: {
      warm: (_tool: string, onChunk: (c: unknown) => void) => {
        for (let i = 0; i < n; i++) {
          onChunk({
            d: `/d${i}`,
            a: [{ path: `/d${i}/x`, kind: "file", mode: 0o644, size: 1, mtimeMs: 1 }],
          });
        }
        return Promise.resolve();
      },
    } as never,
    cache: {
      root,
      find: (path: string) => root.complete ? root.kids.get(path.slice(1)) : undefined,
    } as never,
    fetches: {
      epoch: 0,
      isFetching: (node: Node) => node === root && !root.complete,
      fetchDir: () => rootFetch,
      absorbListing: (node: Node) => {
        absorbed.push(node.path);
        return true;
      },
    } as never,
    store: {} as never,
    blobs: {} as never,
  });
  warmer.warm("gcc -c");
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(absorbed, [], "none taken before their parent is listed");
  // `/` arrives, listing every d<i>.
  for (let i = 0; i < n; i++) {
    root.kids.set(`d${i}`, { path: `/d${i}`, complete: false, kids: new Map() });
  }
  root.complete = true;
  listRoot();
  await Promise.all(tasks);
  assert.deepEqual(
    absorbed,
    Array.from({ length: DEFERRED_LISTINGS_MAX }, (_, i) => `/d${i}`),
    "the first ones, in order; the rest left to lazy lookups",
  );
});

// ---- end to end ----

/** A farm of one worker with fresh caches, in `dir`, with master cache `masterCache` if given. */
async function coldFarm(dir: string, tree: string, masterCache?: string): Promise<Farm> {
  if (masterCache !== undefined) {
    await Deno.mkdir(dir, { recursive: true });
    assert.equal((await runIn(ROOT, ["cp", "-a", masterCache, `${dir}/master-cache`])).code, 0);
  }
  return await Farm.start({ dir, tree, workers: 1, slotsPerWorker: 2 });
}

Deno.test("e2e: a mirror warmed from a learned set sees a changed file's new bytes and not a deleted one", async () => {
  const dir = await scratchDir("warm-");
  const tree = `${dir}/tree`;
  await Deno.mkdir(`${tree}/inc`, { recursive: true });
  // Both headers are part of the tool's learned set after the first build.
  await Deno.writeTextFile(`${tree}/inc/value.h`, "#define VALUE 1\n");
  await Deno.writeTextFile(`${tree}/inc/extra.h`, "#define EXTRA 1\n");
  await Deno.writeTextFile(
    `${tree}/m.c`,
    '#include "inc/value.h"\n#if __has_include("inc/extra.h")\n#include "inc/extra.h"\n' +
      "#else\n#define EXTRA 0\n#endif\nint value = VALUE, extra = EXTRA;\n",
  );
  const compile = "sleep 0.5; gcc -c m.c -o m.o && nm -S m.o > /dev/null";
  try {
    const first = await coldFarm(`${dir}/farm1`, tree);
    try {
      const sh = `${first.binDir}/termite-sh`;
      const r = await runIn(tree, [sh, "-c", compile], first.env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await first.status()).jobs.jobsRemote, 1);
    } finally {
      await first.stop();
    }
    const warmFile = [...Deno.readDirSync(`${dir}/farm1/master-cache`)].find((e) =>
      e.name.startsWith("warm-")
    );
    assert.ok(warmFile, "the master kept what the job needed");
    const learned = await Deno.readTextFile(`${dir}/farm1/master-cache/${warmFile.name}`);
    assert.ok(learned.includes(`${tree}/inc/value.h`), learned.slice(0, 2000));
    assert.ok(learned.includes(`${tree}/inc/extra.h`));
    // The compiler proper, whose content the worker copied from its own host
    // (never sent by the master), is learned too: its hash was asked for.
    const cc1 = (await runIn(tree, ["gcc", "-print-prog-name=cc1"])).stdout.trim();
    assert.ok(cc1.startsWith("/"), cc1);
    assert.ok(learned.includes(JSON.stringify(await Deno.realPath(cc1))), `${cc1} learned`);

    // Between the builds: one file of the set changes, another goes.
    await Deno.writeTextFile(`${tree}/inc/value.h`, "#define VALUE 42\n");
    await Deno.remove(`${tree}/inc/extra.h`);
    await Deno.remove(`${tree}/m.o`);
    const local = await runIn(tree, ["gcc", "-c", "m.c", "-o", "m.local.o"]);
    assert.equal(local.code, 0, local.stderr);

    const second = await coldFarm(`${dir}/farm2`, tree, `${dir}/farm1/master-cache`);
    try {
      const sh = `${second.binDir}/termite-sh`;
      const r = await runIn(tree, [sh, "-c", compile], second.env);
      assert.equal(r.code, 0, r.stderr);
      const status = await second.status();
      const log = await Deno.readTextFile(`${dir}/farm2/logs/master.log`);
      assert.equal(status.jobs.jobsRemote, 1, `the job ran on the cold worker:\n${log}`);
      const mirror = Object.values(status.jobs.perWorker)[0].mirror ?? {};
      assert.equal(mirror.warmStreams, 1, "the mirror asked for the tool's warm set");
      assert.ok((mirror.warmDirs ?? 0) > 0, "listings of the set were taken, none dropped");
      assert.ok((mirror.warmBlobs ?? 0) > 0, "contents of the set were stored");
      console.log(
        `warm: ${mirror.warmDirs} listings, ${mirror.warmAttrs} attributes, ` +
          `${mirror.warmBlobs} blobs from the learned set`,
      );
    } finally {
      await second.stop();
    }
    const [remote, reference] = await Promise.all([
      Deno.readFile(`${tree}/m.o`),
      Deno.readFile(`${tree}/m.local.o`),
    ]);
    assert.deepEqual(remote, reference, "compiled with VALUE 42 and without extra.h");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
