/**
 * The master's memory of what it served: a change one worker's read finds
 * first reaches every mirror, and refresh() reports each change once.
 */
import assert from "node:assert/strict";
import { FileServer } from "../master/file_server.ts";
import { HashCache } from "../master/hash_cache.ts";
import { Exclusions } from "../master/paths.ts";
import { PathStat } from "../master/path_stat.ts";
import type { FileAttr } from "../common/types.ts";

async function withServer(
  fn: (root: string, files: FileServer, changes: FileAttr[][]) => Promise<void>,
  options: { exclusions?: string[] } = {},
): Promise<void> {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fs-" }));
  await Deno.chmod(root, 0o755);
  const changes: FileAttr[][] = [];
  // As the master's: paths read through libc.
  using lstat = new PathStat();
  const files = new FileServer({
    exclusions: new Exclusions(options.exclusions ?? [], root),
    hashCache: await HashCache.open(),
    onChange: (attrs) => changes.push(attrs),
    lstat,
  });
  try {
    await fn(root, files, changes);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("FileServer: a change a worker's read finds first is told to every mirror", async () => {
  await withServer(async (root, files, changes) => {
    await Deno.mkdir(`${root}/obj`, { mode: 0o755 });
    await Deno.chmod(`${root}/obj`, 0o755);
    const first = await files.dir(root);
    assert.deepEqual(first.map((a) => a.path), [`${root}/obj`]);
    assert.equal(changes.length, 0, "served for the first time: nothing to tell");
    // make's shell makes a directory; a worker lists obj before the tree
    // watcher reports it: the others still believe obj is empty.
    await Deno.mkdir(`${root}/obj/sub`, { mode: 0o755 });
    await Deno.chmod(`${root}/obj/sub`, 0o755);
    const seen = await files.attr(`${root}/obj`);
    assert.deepEqual(seen.children, { sub: "dir" });
    const told: FileAttr[] = changes.flat();
    assert.equal(told.length, 1);
    assert.equal(told[0].path, `${root}/obj`);
    assert.deepEqual(told[0].children, { sub: "dir" });
    // The watcher's refresh then finds nothing new to tell.
    assert.deepEqual(await files.refresh([`${root}/obj`]), []);
    // The same answer again is no change.
    await files.attr(`${root}/obj`);
    assert.equal(changes.length, 1);
  });
});

Deno.test("FileServer: refresh() tells a change once, and never of paths no mirror was served", async () => {
  await withServer(async (root, files, changes) => {
    await Deno.writeTextFile(`${root}/a.c`, "int a;\n");
    await Deno.chmod(`${root}/a.c`, 0o644);
    await Deno.writeTextFile(`${root}/never.c`, "int n;\n");
    await files.attr(`${root}/a.c`);
    await Deno.writeTextFile(`${root}/a.c`, "int a = 1;\n");
    await Deno.writeTextFile(`${root}/never.c`, "int n = 1;\n");
    const changed = await files.refresh([`${root}/a.c`, `${root}/never.c`]);
    assert.deepEqual(changed.map((a) => [a.path, a.size]), [[`${root}/a.c`, 11]]);
    assert.deepEqual(await files.refresh([`${root}/a.c`]), []);
    assert.deepEqual(changes.flat().map((a) => a.path), [`${root}/a.c`], "told once");
  });
});

Deno.test("FileServer: of two overlapping refreshes, the newer listing is told last", async () => {
  await withServer(async (root, files, changes) => {
    await Deno.mkdir(`${root}/obj`, { mode: 0o755 });
    await Deno.chmod(`${root}/obj`, 0o755);
    // A large file whose hash must be computed again: a slow read.
    const big = `${root}/big.bin`;
    await Deno.writeFile(big, new Uint8Array(96 * 2 ** 20).fill(7), { mode: 0o644 });
    await Deno.chmod(big, 0o644);
    await files.attr(big, { withHash: true });
    await files.attr(`${root}/obj`);
    await Deno.chmod(big, 0o644); // a new ctime: the hash cache no longer vouches for it
    // A job's result lands in obj; its refresh reads obj, then hashes big.bin.
    await Deno.writeTextFile(`${root}/obj/a.o`, "");
    const first = files.refresh([`${root}/obj`, big]);
    await new Promise((resolve) => setTimeout(resolve, 15));
    // Meanwhile make's shell makes obj/d29, and the next job's refresh sees it.
    await Deno.mkdir(`${root}/obj/d29`, { mode: 0o755 });
    await files.refresh([`${root}/obj`]);
    await first;
    const latest = changes.flat().filter((a) => a.path === `${root}/obj`).at(-1)!;
    assert.deepEqual(Object.keys(latest.children ?? {}).sort(), ["a.o", "d29"]);
  });
});

/** Makes `path` (a file or directory) with exactly `mode`, whatever the umask. */
async function make(path: string, mode: number, text?: string): Promise<void> {
  if (text === undefined) await Deno.mkdir(path);
  else await Deno.writeTextFile(path, text);
  await Deno.chmod(path, mode);
}

Deno.test("FileServer: a world-readable file behind a symlink into a 0700 directory is not served", async () => {
  await withServer(async (root, files) => {
    // Someone's private directory, with a world-readable corner inside.
    const home = `${root}/home`;
    await make(home, 0o700);
    await make(`${home}/notes`, 0o755);
    await make(`${home}/notes/secret.txt`, 0o644, "the password\n");
    await make(`${root}/tree`, 0o755);
    await Deno.symlink(`${home}/notes`, `${root}/tree/peek`);
    const link = await files.attr(`${root}/tree/peek`);
    assert.equal(link.kind, "symlink", "the link itself is the tree's");
    const through = await files.attr(`${root}/tree/peek/secret.txt`, { withHash: true });
    assert.equal(through.kind, null);
    assert.equal(through.hash, undefined);
    assert.equal((await files.attr(`${root}/tree/peek/secret.txt`)).kind, null);
    assert.deepEqual(await files.dir(`${root}/tree/peek`), [], "a link is not listed");
    // Nor by its real name.
    assert.equal((await files.attr(`${home}/notes/secret.txt`)).kind, null);
  });
});

Deno.test("FileServer: a file made after its directory was chmod 700 is not served (no permission remembered)", async () => {
  await withServer(async (root, files) => {
    const dir = `${root}/src`;
    await make(dir, 0o755);
    await make(`${dir}/a.c`, 0o644, "int a;\n");
    assert.equal((await files.attr(`${dir}/a.c`, { withHash: true })).kind, "file");
    assert.equal((await files.dir(dir)).length, 1);
    await Deno.chmod(dir, 0o700);
    await make(`${dir}/new-secret.c`, 0o644, "int key = 42;\n");
    assert.equal((await files.attr(`${dir}/new-secret.c`, { withHash: true })).kind, null);
    assert.equal((await files.attr(`${dir}/a.c`)).kind, null);
    assert.deepEqual(await files.dir(dir), []);
    assert.deepEqual((await files.attr(dir)).children, {});
    // Opened again: served again.
    await Deno.chmod(dir, 0o755);
    assert.equal((await files.attr(`${dir}/new-secret.c`)).kind, "file");
    // Searchable but not listable: its files are served, its listing is not.
    await Deno.chmod(dir, 0o711);
    assert.equal((await files.attr(`${dir}/a.c`)).kind, "file");
    assert.deepEqual((await files.attr(dir)).children, {});
  });
});

Deno.test("FileServer: an excluded path reached through a symlink (tree/p -> /proc/self) is not served", async () => {
  await withServer(async (root, files) => {
    await Deno.symlink("/proc/self", `${root}/p`);
    assert.equal((await files.attr("/proc/self/cmdline")).kind, null, "excluded by name");
    assert.equal((await files.attr(`${root}/p/cmdline`, { withHash: true })).kind, null);
    assert.deepEqual(await files.dir(`${root}/p/task`), []);
    assert.equal((await files.attr(`${root}/p/task`)).kind, null);
  }, { exclusions: ["/proc"] });
});

Deno.test("FileServer: only young paths no watcher covers are read again", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fs-" }));
  await Deno.chmod(root, 0o755);
  const files = new FileServer({
    exclusions: new Exclusions([], root),
    hashCache: await HashCache.open(),
    watch: { covers: (path) => path.startsWith(`${root}/watched`), watchOf: () => null },
  });
  try {
    await make(`${root}/watched`, 0o755);
    await make(`${root}/watched/a.o`, 0o644, "a");
    await make(`${root}/b.o`, 0o644, "b");
    for (const p of [`${root}/watched`, `${root}/watched/a.o`, `${root}/b.o`]) await files.attr(p);
    assert.deepEqual(files.youngPaths(), [`${root}/b.o`], "changed moments ago, and unwatched");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("FileServer: a file replaced while it is hashed is served as it is after the hash", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fs-" }));
  await Deno.chmod(root, 0o755);
  const hashCache = await HashCache.open();
  const path = `${root}/gen.h`;
  const hash = hashCache.hash.bind(hashCache);
  let replaced = false;
  // The file is replaced (a new inode, other size and content) just as the
  // first hash starts: that hash describes neither what was read nor what is there.
  hashCache.hash = async (p, info) => {
    if (!replaced) {
      replaced = true;
      await Deno.writeTextFile(`${root}/gen.h.tmp`, "int generated_again;\n");
      await Deno.chmod(`${root}/gen.h.tmp`, 0o644);
      await Deno.rename(`${root}/gen.h.tmp`, path);
    }
    return await hash(p, info);
  };
  const files = new FileServer({ exclusions: new Exclusions([], root), hashCache });
  try {
    await make(path, 0o644, "int generated;\n");
    const served = await files.attr(path, { withHash: true });
    const info = await Deno.lstat(path);
    assert.equal(served.size, info.size);
    assert.equal(served.mtimeMs, info.mtime?.getTime());
    const hex = (bytes: ArrayBuffer) =>
      Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
    const content = new TextEncoder().encode("int generated_again;\n");
    assert.equal(served.hash, hex(await crypto.subtle.digest("SHA-256", content)));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("FileServer: a watched directory is read child by child, whole under a new watch or mode", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fs-" }));
  await Deno.chmod(root, 0o755);
  let watch = "w1";
  const files = new FileServer({
    exclusions: new Exclusions([], root),
    hashCache: await HashCache.open(),
    hiddenPrefixes: [`${root}/obj/.staging`],
    watch: { covers: () => true, watchOf: () => watch },
  });
  const obj = `${root}/obj`;
  const listed = async () => Object.keys((await files.attr(obj)).children ?? {}).sort();
  const served = () => files.servedUnder(obj).length > 0;
  try {
    await make(obj, 0o755);
    await make(`${obj}/a.o`, 0o644, "a");
    assert.deepEqual(await listed(), ["a.o"]);
    assert.ok(served());
    await make(`${obj}/b.o`, 0o644, "b");
    await make(`${obj}/c.o`, 0o644, "c");
    await make(`${obj}/.staging-1`, 0o755);
    await Deno.remove(`${obj}/a.o`);
    // Told of b.o, a.o and the hidden staging directory only: the others are not read.
    const names = new Set(["b.o", "a.o", ".staging-1"]);
    const [told] = await files.refresh([obj], { children: new Map([[obj, names]]) });
    assert.deepEqual(Object.keys(told.children ?? {}).sort(), ["b.o"]);
    // Under a new watch (moved away and back, events lost): read whole.
    watch = "w2";
    const [whole] = await files.refresh([obj], { children: new Map([[obj, new Set(["b.o"])]]) });
    assert.deepEqual(Object.keys(whole.children ?? {}).sort(), ["b.o", "c.o"]);
    // A new mode: whole again; not told which children changed: whole.
    await make(`${obj}/d.o`, 0o644, "d");
    await Deno.chmod(obj, 0o775);
    const [chmodded] = await files.refresh([obj], { children: new Map([[obj, new Set(["x"])]]) });
    assert.deepEqual(Object.keys(chmodded.children ?? {}).sort(), ["b.o", "c.o", "d.o"]);
    await make(`${obj}/e.o`, 0o644, "e");
    const [untold] = await files.refresh([obj]);
    assert.deepEqual(Object.keys(untold.children ?? {}).sort(), ["b.o", "c.o", "d.o", "e.o"]);
    // Made again: the watcher watches it anew (its inode number may be the old one's).
    await Deno.remove(obj, { recursive: true });
    await make(obj, 0o775);
    watch = "w3";
    await make(`${obj}/f.o`, 0o644, "f");
    const [again] = await files.refresh([obj], { children: new Map([[obj, new Set(["x"])]]) });
    assert.deepEqual(Object.keys(again.children ?? {}).sort(), ["f.o"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("FileServer: an unwatched directory listed by mirrors at about the same time is read once, and again after any change", async () => {
  await withServer(async (root, files, changes) => {
    const dir = `${root}/sys`;
    await Deno.mkdir(dir, { mode: 0o755 });
    await Deno.chmod(dir, 0o755);
    await Deno.writeTextFile(`${dir}/a.h`, "a");
    await Deno.chmod(`${dir}/a.h`, 0o644);
    // As system files are: changed long ago (a young one is read again anyway).
    const age = (...paths: string[]) => Promise.all(paths.map((p) => Deno.utime(p, 1e9, 1e9)));
    await age(dir, `${dir}/a.h`);
    // Two mirrors at once, then a third moments later: one read.
    const [one, two] = await Promise.all([files.dir(dir), files.dir(dir)]);
    const three = await files.dir(dir);
    assert.deepEqual(one, two);
    assert.deepEqual(one, three);
    assert.equal(files.stats.dirs, 1);
    assert.equal(files.stats.dirsReused, 2);
    // A name added changes the directory: read again.
    await Deno.writeTextFile(`${dir}/b.h`, "b");
    await Deno.chmod(`${dir}/b.h`, 0o644);
    await age(dir, `${dir}/b.h`);
    assert.deepEqual((await files.dir(dir)).map((a) => a.path).sort(), [
      `${dir}/a.h`,
      `${dir}/b.h`,
    ]);
    assert.equal(files.stats.dirs, 2);
    // A child's new bytes, found by a refresh, are told; the next listing is read again.
    await Deno.writeTextFile(`${dir}/a.h`, "longer");
    await age(`${dir}/a.h`);
    await files.refresh([`${dir}/a.h`]);
    assert.ok(changes.some((c) => c.some((a) => a.path === `${dir}/a.h` && a.size === 6)));
    const after = await files.dir(dir);
    assert.equal(after.find((a) => a.path === `${dir}/a.h`)?.size, 6);
    assert.equal(files.stats.dirs, 3);
    // Closed to others on the way: refused at once, not served from memory.
    await Deno.chmod(root, 0o700);
    assert.deepEqual(await files.dir(dir), []);
    await Deno.chmod(root, 0o755);
    assert.equal((await files.dir(dir)).length, 2);
  });
});

Deno.test("FileServer: a directory a watcher covers is read for every mirror", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fs-" }));
  await Deno.chmod(root, 0o755);
  using lstat = new PathStat();
  const files = new FileServer({
    exclusions: new Exclusions([], root),
    hashCache: await HashCache.open(),
    watch: { covers: (path) => isInsideOrAt(path, root), watchOf: () => null },
    lstat,
  });
  try {
    await Deno.writeTextFile(`${root}/x.c`, "x");
    await Promise.all([files.dir(root), files.dir(root)]);
    await files.dir(root);
    assert.equal(files.stats.dirs, 3);
    assert.equal(files.stats.dirsReused, 0);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

function isInsideOrAt(path: string, root: string): boolean {
  return path === root || path.startsWith(`${root}/`);
}

Deno.test("FileServer: a listing stops at childrenMax names it may show, hidden names not counted", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fs-" }));
  await Deno.chmod(root, 0o755);
  using lstat = new PathStat();
  const files = new FileServer({
    exclusions: new Exclusions([], root),
    hashCache: await HashCache.open(),
    hidden: ["h1", "h2", "h3"].map((n) => `${root}/small/${n}`),
    lstat,
    childrenMax: 3,
  });
  try {
    await make(`${root}/big`, 0o755);
    for (const n of ["a", "b", "c", "d", "e"]) await make(`${root}/big/${n}`, 0o644, n);
    await make(`${root}/small`, 0o755);
    for (const n of ["a", "b", "h1", "h2", "h3"]) await make(`${root}/small/${n}`, 0o644, n);
    const big = Object.keys((await files.attr(`${root}/big`)).children ?? {});
    assert.equal(big.length, 3, "cut at the limit");
    const small = Object.keys((await files.attr(`${root}/small`)).children ?? {}).sort();
    assert.deepEqual(small, ["a", "b"], "five names, three hidden: the two shown");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
