/**
 * The action cache's memo of states between lookups (master/action_cache.ts
 * `#memoState`): every change that alters a state must end its memo, inside
 * the tree and outside it (where nothing is watched). Each case checks first
 * that the memo answered (so that a miss after the change is the memo's
 * doing), then changes one thing and expects a miss, then undoes it and
 * expects a hit again.
 */
import assert from "node:assert/strict";
import { ActionCache, NotCacheable, STATE_RACY_MS } from "../master/action_cache.ts";
import { HashCache } from "../master/hash_cache.ts";
import { StatProbe } from "../master/path_probe.ts";
import type { ReadKind, ReadSet } from "../common/protocol.ts";

const encoder = new TextEncoder();

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Waits until a change made now gets another ctime than `path` has: the
 * test's clock says every file is old, so a rewrite within the same
 * timestamp tick would keep the print (the real clock's racy window is what
 * covers that case). Bounded: 2,000 tries.
 */
async function nextTick(base: string, path: string): Promise<void> {
  // Deno's FileInfo.ctime has whole seconds only: the probe reads nanoseconds.
  using probe = new StatProbe();
  const changedMs = (p: string) => {
    assert.equal(probe.probe(p, false), 0);
    return probe.changedMs();
  };
  const before = changedMs(path);
  const tick = `${base}/tick`;
  for (let i = 0; i < 2000; i++) {
    await Deno.writeTextFile(tick, String(i));
    if (changedMs(tick) > before) return;
    await new Promise((r) => setTimeout(r, 1));
  }
  throw new Error("the file system's clock did not move");
}

interface Setup {
  base: string;
  tree: string;
  /** Outside the tree and outside the jobs' private /tmp: as /usr is. */
  out: string;
  cache: ActionCache;
  /** Stores a run that read `reads` (or with these states, as given); returns its key. */
  store(
    name: string,
    reads: [string, ReadKind[]][],
    states?: [string, ReadKind, string][],
  ): Promise<string>;
  /**
   * Looks the key up twice: hit or miss (the same both times); on a hit, that
   * the memo answered (`fromMemo`) the second time.
   */
  check(key: string, fromMemo?: boolean): Promise<boolean>;
  done(): Promise<void>;
}

async function setUp(): Promise<Setup> {
  // Not under /tmp: outside the tree, /tmp is private to each job, no input.
  const base = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "acache-memo-" });
  const tree = `${base}/tree`;
  const out = `${base}/usr`;
  await Deno.mkdir(`${tree}/inc`, { recursive: true });
  await Deno.mkdir(`${out}/v1`, { recursive: true });
  await Deno.mkdir(`${out}/v2`, { recursive: true });
  await Deno.writeTextFile(`${tree}/a.o`, "object bytes");
  await Deno.writeTextFile(`${tree}/inc/a.h`, "#define A 1\n");
  await Deno.writeTextFile(`${out}/v1/x.h`, "#define X 1\n");
  await Deno.writeTextFile(`${out}/v2/x.h`, "#define X 2\n");
  await Deno.writeTextFile(`${out}/v2/y.h`, "#define Y 2\n");
  await Deno.symlink("v1", `${out}/cur`);
  const hashCache = await HashCache.open();
  const cache = await ActionCache.open({
    dir: `${base}/cache`,
    root: tree,
    hashCache,
    // Every file old: states are memoised at once.
    clock: () => Date.now() + 3_600_000,
  });
  const objectHash = await sha256(`${tree}/a.o`);
  return {
    base,
    tree,
    out,
    cache,
    async store(name, entries, states) {
      const reads: ReadSet = { complete: true, entries };
      const key = cache.key(["cc", name], tree, {});
      await cache.store(key, states ?? await cache.states(reads, Date.now() + 60_000), {
        resultSet: {
          deletions: [],
          dirs: [],
          files: [{ path: `${tree}/a.o`, hash: objectHash, size: 12, mode: 0o644, mtimeMs: 0 }],
          symlinks: [],
        },
        stdout: encoder.encode(name),
        stderr: new Uint8Array(0),
        exitCode: 0,
        ranMs: 1,
      });
      return key;
    },
    async check(key, fromMemo = true) {
      const first = (await cache.lookup(key)) !== null;
      const reused = cache.stats.statesReused;
      const second = (await cache.lookup(key)) !== null;
      assert.equal(second, first, "two lookups in a row agree");
      if (second && fromMemo) assert.ok(cache.stats.statesReused > reused, "the memo answered");
      return second;
    },
    async done() {
      cache.close();
      await hashCache.close();
      await Deno.remove(base, { recursive: true });
    },
  };
}

Deno.test("action cache memo: a file outside the tree rewritten at the same size, or chmodded, misses", async () => {
  const s = await setUp();
  try {
    const x = `${s.out}/v1/x.h`;
    const key = await s.store("outside", [[x, ["r"]]]);
    assert.ok(await s.check(key));
    await nextTick(s.base, x);
    await Deno.writeTextFile(x, "#define X 9\n");
    assert.equal(await s.check(key), false, "same size, other bytes");
    await Deno.writeTextFile(x, "#define X 1\n");
    assert.ok(await s.check(key), "the bytes back: a hit");
    await Deno.chmod(x, 0o600);
    assert.equal(await s.check(key), false, "another mode");
    await Deno.chmod(x, 0o644);
    assert.ok(await s.check(key));
  } finally {
    await s.done();
  }
});

Deno.test("action cache memo: a header in the tree edited or replaced by a rename misses; the same bytes renamed in hit", async () => {
  const s = await setUp();
  try {
    const a = `${s.tree}/inc/a.h`;
    const key = await s.store("inside", [[a, ["r"]], [`${s.tree}/inc`, ["d"]]]);
    assert.ok(await s.check(key));
    await nextTick(s.base, a);
    await Deno.writeTextFile(a, "#define A 2\n");
    assert.equal(await s.check(key), false, "edited in place");
    await Deno.writeTextFile(`${s.base}/new.h`, "#define A 1\n");
    await Deno.rename(`${s.base}/new.h`, a);
    assert.ok(await s.check(key), "the old bytes renamed over it: a hit (another inode)");
    await Deno.writeTextFile(`${s.base}/new.h`, "#define A 3\n");
    await Deno.rename(`${s.base}/new.h`, a);
    assert.equal(await s.check(key), false, "other bytes renamed over it");
    await Deno.writeTextFile(a, "#define A 1\n");
    assert.ok(await s.check(key));
    await Deno.writeTextFile(`${s.tree}/inc/b.h`, "");
    assert.equal(await s.check(key), false, "the listed directory got a file");
    await Deno.remove(`${s.tree}/inc/b.h`);
    assert.ok(await s.check(key));
  } finally {
    await s.done();
  }
});

Deno.test("action cache memo: a symlink retargeted misses, for the link and for what it leads to", async () => {
  const s = await setUp();
  try {
    const cur = `${s.out}/cur`;
    // Through a symlinked directory: a file there, a name absent there.
    const key = await s.store("link", [
      [`${cur}/x.h`, ["r"]],
      [`${cur}/y.h`, ["s"]],
    ]);
    const linkKey = await s.store("link itself", [[cur, ["l"]]]);
    assert.ok(await s.check(key));
    assert.ok(await s.check(linkKey));
    await Deno.remove(cur);
    await Deno.symlink("v2", cur);
    assert.equal(await s.check(key), false, "x.h is v2's now, and y.h exists");
    assert.equal(await s.check(linkKey), false, "another target");
    await Deno.remove(`${s.out}/v2/x.h`);
    await Deno.writeTextFile(`${s.out}/v2/x.h`, "#define X 1\n");
    await Deno.rename(`${s.out}/v2/y.h`, `${s.out}/y.h`);
    assert.ok(await s.check(key), "v2 holds what v1 does: the same states");
    await Deno.rename(`${s.out}/y.h`, `${s.out}/v2/y.h`);
    assert.equal(await s.check(key), false, "the absent name appeared under the link");
  } finally {
    await s.done();
  }
});

Deno.test("action cache memo: an absent name that appears misses, inside and outside the tree, and under a replaced directory", async () => {
  const s = await setUp();
  try {
    const key = await s.store("absent", [
      [`${s.tree}/a.h`, ["s"]],
      [`${s.out}/v1/a.h`, ["l", "r"]],
      [`${s.out}/v1/x.h/deeper.h`, ["s"]], // ENOTDIR
      [`${s.out}/v1/none/deeper/a.h`, ["s"]], // below absent names
    ]);
    assert.ok(await s.check(key));
    await Deno.mkdir(`${s.out}/v1/none/deeper`, { recursive: true });
    assert.equal(await s.check(key), false, "the absent directories appeared");
    await Deno.writeTextFile(`${s.out}/v1/none/deeper/a.h`, "");
    assert.equal(await s.check(key), false, "and the name in them");
    await Deno.remove(`${s.out}/v1/none/deeper/a.h`);
    assert.equal(await s.check(key), false, "the directories are still there");
    await Deno.remove(`${s.out}/v1/none`, { recursive: true });
    assert.ok(await s.check(key), "all absent again");
    for (const p of [`${s.tree}/a.h`, `${s.out}/v1/a.h`]) {
      await Deno.writeTextFile(p, "");
      assert.equal(await s.check(key), false, `${p} appeared`);
      await Deno.remove(p);
      assert.ok(await s.check(key));
    }
    // The directory above swapped for another one holding the name.
    await Deno.mkdir(`${s.out}/v3`);
    await Deno.writeTextFile(`${s.out}/v3/a.h`, "");
    await Deno.copyFile(`${s.out}/v1/x.h`, `${s.out}/v3/x.h`);
    await Deno.rename(`${s.out}/v1`, `${s.out}/v1-old`);
    await Deno.rename(`${s.out}/v3`, `${s.out}/v1`);
    assert.equal(await s.check(key), false, "another directory, with the name");
    await Deno.remove(`${s.out}/v1/a.h`);
    assert.ok(await s.check(key), "another directory, the same states: a hit");
    await Deno.remove(`${s.out}/v1`, { recursive: true });
    await Deno.rename(`${s.out}/v1-old`, `${s.out}/v1`);
    assert.ok(await s.check(key));
    // A file where the path went through one.
    await Deno.remove(`${s.out}/v1/x.h`);
    await Deno.mkdir(`${s.out}/v1/x.h`);
    await Deno.writeTextFile(`${s.out}/v1/x.h/deeper.h`, "");
    assert.equal(await s.check(key), false, "the file became a directory");
  } finally {
    await s.done();
  }
});

Deno.test("action cache memo: a name absent below an absent one, in an entry without the names above it, misses once it appears", async () => {
  const s = await setUp();
  try {
    const deep = `${s.out}/v1/none/x.h`;
    const withDirs = await s.store("with its directories", [[deep, ["s"]]]);
    // As no recording makes it (every read set has each name's directories): the guard of the memo itself.
    const alone = await s.store("alone", [], [[deep, "s", "-ENOENT"]]);
    assert.ok(await s.check(withDirs));
    assert.ok(await s.check(alone, false));
    assert.ok(await s.check(withDirs), "the memo of every name of it, checked");
    await Deno.mkdir(`${s.out}/v1/none`);
    await Deno.writeTextFile(deep, "");
    assert.equal(await s.check(alone), false, "its directories were not checked in this lookup");
  } finally {
    await s.done();
  }
});

Deno.test("action cache memo: a script's interpreter, kept by its print, follows a rewrite of its #! line", async () => {
  const s = await setUp();
  try {
    const script = `${s.out}/tool`;
    await Deno.writeTextFile(script, "#!/bin/sh\necho\n", { mode: 0o755 });
    await Deno.chmod(script, 0o755);
    const reads: ReadSet = { complete: true, entries: [[script, ["r"]]] };
    const interpreters = async () =>
      (await s.cache.states(reads, Date.now() + 60_000))
        .filter(([p, k]) => k === "r" && p.startsWith("/bin/")).map(([p]) => p);
    assert.deepEqual(await interpreters(), ["/bin/sh"]);
    assert.deepEqual(await interpreters(), ["/bin/sh"], "again, from the memo");
    await nextTick(s.base, script);
    await Deno.writeTextFile(script, "#!/bin/ls\necho\n"); // the same size
    assert.deepEqual(await interpreters(), ["/bin/ls"]);
    await Deno.chmod(script, 0o644);
    assert.deepEqual(await interpreters(), [], "no longer executable: no interpreter");
  } finally {
    await s.done();
  }
});

Deno.test("action cache memo: states from the probe are the states taken the full way", async () => {
  const s = await setUp();
  try {
    await Deno.symlink("nowhere", `${s.out}/dangling`);
    await Deno.symlink("loop", `${s.out}/loop`);
    const paths = [
      "/usr/bin/gcc",
      "/usr/include/stdio.h",
      "/usr/include/no-such.h",
      "/etc/hostname/x",
      "/usr/lib",
      `${s.out}/dangling`,
      `${s.out}/loop`,
      `${s.out}/cur`,
      `${s.out}/cur/x.h`,
      `${s.tree}/inc`,
    ];
    const entries: [string, ReadKind[]][] = paths.map((p) => [p, ["r", "s", "l"]]);
    entries.push(["/usr/include", ["d"]], [`${s.out}/cur`, ["d"]]);
    const key = await s.store("all", entries);
    assert.ok(await s.check(key), "every state equal");
    assert.ok(await s.check(key), "and again, from the memo");
  } finally {
    await s.done();
  }
});

Deno.test("ActionCache.states() refuses an input changed in the same second as the job's start, just after it", async () => {
  const s = await setUp();
  try {
    const header = `${s.tree}/inc/a.h`;
    await Deno.writeTextFile(header, "#define A 7\n");
    using probe = new StatProbe();
    assert.equal(probe.probe(header, false), 0);
    const ctimeMs = probe.ctimeMs();
    const reads: ReadSet = { complete: true, entries: [[header, ["r"]]] };
    // Deno's FileInfo.ctime has whole seconds: the check must not use it.
    await assert.rejects(s.cache.states(reads, ctimeMs - 0.5), NotCacheable);
    assert.ok(await s.cache.states(reads, ctimeMs + 0.5), "changed just before the start: taken");
  } finally {
    await s.done();
  }
});

Deno.test("StatProbe: errno for absent paths, -1 for paths it cannot take, a print that tells versions apart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "stat-probe-" });
  using probe = new StatProbe();
  try {
    assert.equal(probe.probe(`${dir}/none`, false), 2);
    await Deno.writeTextFile(`${dir}/f`, "a");
    assert.equal(probe.probe(`${dir}/f/x`, false), 20);
    assert.equal(probe.probe(`${dir}/f\0x`, false), -1);
    assert.equal(probe.probe("/".repeat(20_000), false), -1);
    await Deno.symlink("f", `${dir}/l`);
    assert.equal(probe.probe(`${dir}/l`, false), 0);
    assert.ok(probe.isSymlink());
    const link = probe.print();
    assert.equal(probe.probe(`${dir}/l`, true), 0);
    assert.ok(!probe.isSymlink());
    assert.ok(!probe.same(link));
    const file = probe.print();
    const info = await Deno.lstat(`${dir}/f`);
    assert.ok(Math.abs(probe.changedMs() - info.mtime!.getTime()) < 1);
    await Deno.writeTextFile(`${dir}/f`, "ab");
    assert.equal(probe.probe(`${dir}/f`, false), 0);
    assert.ok(!probe.same(file), "another size");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("action cache memo: a file changed within the racy window is taken again, never from the memo", async () => {
  const base = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "acache-racy-" });
  const hashCache = await HashCache.open();
  let offsetMs = 0;
  let anchorMs = Date.now();
  const cache = await ActionCache.open({
    dir: `${base}/cache`,
    root: `${base}/tree`,
    hashCache,
    clock: () => anchorMs + offsetMs,
  });
  try {
    await Deno.mkdir(`${base}/tree`);
    await Deno.writeTextFile(`${base}/tree/a.o`, "object bytes");
    await Deno.writeTextFile(`${base}/h.h`, "one\n");
    // Read: h.h, and its ancestors /var, /var/tmp and base: 4 states.
    const reads: ReadSet = { complete: true, entries: [[`${base}/h.h`, ["r"]]] };
    const key = cache.key(["cc"], base, {});
    await cache.store(key, await cache.states(reads, Date.now() + 60_000), {
      resultSet: {
        deletions: [],
        dirs: [],
        files: [{
          path: `${base}/tree/a.o`,
          hash: await sha256(`${base}/tree/a.o`),
          size: 12,
          mode: 0o644,
          mtimeMs: 0,
        }],
        symlinks: [],
      },
      stdout: new Uint8Array(0),
      stderr: new Uint8Array(0),
      exitCode: 0,
      ranMs: 1,
    });
    const reusedBy = async (): Promise<number> => {
      const before = cache.stats.statesReused;
      assert.ok(await cache.lookup(key));
      return cache.stats.statesReused - before;
    };
    // The clock just after h.h and base were made: both within the window.
    anchorMs = Date.now();
    await reusedBy();
    assert.ok(await reusedBy() <= 1, "only /var may come from the memo");
    offsetMs = STATE_RACY_MS + 1000;
    await reusedBy();
    assert.ok(await reusedBy() >= 2, "settled: base and h.h from the memo");
    // The real clock: a rewrite at once, the same size, perhaps within the
    // same timestamp tick (on this kernel's ext4, a change right after a
    // stat gets a fresh ctime anyway; not on every file system).
    offsetMs = 0;
    for (let i = 0; i < 20; i++) {
      anchorMs = Date.now();
      assert.ok(await cache.lookup(key), `round ${i}: a hit`);
      await Deno.writeTextFile(`${base}/h.h`, "two\n");
      anchorMs = Date.now();
      assert.equal(await cache.lookup(key), null, `round ${i}: rewritten, a miss`);
      await Deno.writeTextFile(`${base}/h.h`, "one\n");
    }
  } finally {
    cache.close();
    await hashCache.close();
    await Deno.remove(base, { recursive: true });
  }
});
