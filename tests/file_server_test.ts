/**
 * The master's memory of what it served: a change one worker's read finds
 * first reaches every mirror, and refresh() reports each change once.
 */
import assert from "node:assert/strict";
import { FileServer } from "../master/file_server.ts";
import { HashCache } from "../master/hash_cache.ts";
import { Exclusions } from "../master/paths.ts";
import type { FileAttr } from "../common/types.ts";

async function withServer(
  fn: (root: string, files: FileServer, changes: FileAttr[][]) => Promise<void>,
): Promise<void> {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fs-" }));
  await Deno.chmod(root, 0o755);
  const changes: FileAttr[][] = [];
  const files = new FileServer({
    exclusions: new Exclusions([], root),
    hashCache: await HashCache.open(),
    onChange: (attrs) => changes.push(attrs),
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
