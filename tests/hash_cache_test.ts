import assert from "node:assert/strict";
import { HashCache, SYNC_HASH_BYTES_MAX } from "../master/hash_cache.ts";
import { hashBytes } from "../cas/mod.ts";

Deno.test("HashCache persists across restarts: an unchanged tree is not hashed again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-hc-" });
  try {
    const file = `${dir}/cache.json`;
    const paths: string[] = [];
    for (let i = 0; i < 20; i++) {
      const p = `${dir}/f${i}.c`;
      await Deno.writeTextFile(p, `int f${i};\n`);
      // Old enough not to be "racy" (modified within the timestamp granularity).
      const old = new Date(Date.now() - 60_000);
      await Deno.utime(p, old, old);
      paths.push(p);
    }
    // Their ctime too: whole seconds, so the racy window and one more second.
    await new Promise((resolve) => setTimeout(resolve, 3_100));
    const first = await HashCache.open({ file });
    for (const p of paths) {
      assert.equal(await first.hash(p, await Deno.stat(p)), hashBytes(await Deno.readFile(p)));
    }
    assert.equal(first.stats.misses, 20);
    await first.close();

    const second = await HashCache.open({ file });
    for (const p of paths) await second.hash(p, await Deno.stat(p));
    assert.equal(second.stats.misses, 0, "nothing re-hashed after a restart");
    assert.equal(second.stats.hits, 20);
    assert.equal(second.pathOf(hashBytes(await Deno.readFile(paths[3]))), paths[3]);

    // A changed file (same size, new mtime) is hashed again.
    await Deno.writeTextFile(paths[0], "int g0;\n");
    const h = await second.hash(paths[0], await Deno.stat(paths[0]));
    assert.equal(h, hashBytes(new TextEncoder().encode("int g0;\n")));
    assert.equal(second.stats.misses, 1);
    await second.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HashCache ignores a corrupt cache file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-hc-" });
  try {
    await Deno.writeTextFile(`${dir}/cache.json`, "{not json");
    const cache = await HashCache.open({ file: `${dir}/cache.json` });
    assert.equal(cache.size, 0);
    await cache.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HashCache: a hash in flight for an older version of a file never answers for the new one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-hc-" });
  try {
    const path = `${dir}/common.h`;
    const old = new Uint8Array(32 * 2 ** 20).fill(1);
    const now = new Uint8Array(32 * 2 ** 20).fill(2); // same size, other bytes
    await Deno.writeFile(path, old);
    await Deno.utime(path, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    const cache = await HashCache.open({});
    const before = await Deno.stat(path);
    const first = cache.hash(path, before);
    assert.equal(cache.hash(path, before), first, "the same version: one hash for both");
    // Rewritten in place (same inode, same size) while the first hash runs.
    await Deno.writeFile(path, now);
    await Deno.utime(path, new Date(), new Date(Date.now() + 10_000));
    const after = await Deno.stat(path);
    assert.equal(after.ino, before.ino);
    const second = cache.hash(path, after);
    assert.notEqual(second, first, "a new version is hashed anew");
    assert.equal(await second, hashBytes(now));
    await first;
    await cache.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HashCache: new bytes written under an old mtime within ctime's second are hashed anew", async () => {
  // `cp -p` or a tar extraction: same size, same inode, the same old mtime,
  // and a ctime that has whole seconds here. The first version's hash must
  // not answer for the second (it did while only the mtime was checked for
  // being recent). Retried when the two writes fall in different seconds.
  const dir = await Deno.makeTempDir({ prefix: "termite-hc-" });
  try {
    const path = `${dir}/gen.h`;
    const old = new Date(Date.now() - 60_000);
    let checked = 0;
    for (let attempt = 0; attempt < 20 && checked < 3; attempt++) {
      const cache = await HashCache.open({});
      await Deno.writeTextFile(path, "#define V 1\n");
      await Deno.utime(path, old, old);
      const first = await Deno.stat(path);
      assert.equal(
        await cache.hash(path, first),
        hashBytes(new TextEncoder().encode("#define V 1\n")),
      );
      await Deno.writeTextFile(path, "#define V 2\n");
      await Deno.utime(path, old, old);
      const second = await Deno.stat(path);
      await cache.close();
      if (second.ctime?.getTime() !== first.ctime?.getTime()) continue; // crossed a second
      assert.equal(second.ino, first.ino);
      assert.equal(second.mtime?.getTime(), first.mtime?.getTime());
      assert.equal(
        await cache.hash(path, second),
        hashBytes(new TextEncoder().encode("#define V 2\n")),
      );
      checked++;
    }
    assert.ok(checked > 0, "no two writes fell within one second in 20 tries");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HashCache: a small file grown past the synchronous bound after its lstat is hashed whole", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-hc-" });
  try {
    const path = `${dir}/grows.log`;
    await Deno.writeTextFile(path, "small\n");
    const seen = await Deno.lstat(path);
    assert.ok(seen.size <= SYNC_HASH_BYTES_MAX);
    // Appended to (same inode) between the lstat and the hash.
    const big = new Uint8Array(SYNC_HASH_BYTES_MAX * 3).fill(7);
    const file = await Deno.open(path, { append: true });
    await file.write(big);
    file.close();
    const cache = await HashCache.open({});
    const whole = new Uint8Array(6 + big.length);
    whole.set(new TextEncoder().encode("small\n"));
    whole.set(big, 6);
    assert.equal(await cache.hash(path, seen), hashBytes(whole));
    assert.equal(cache.lookup(path, seen), undefined, "not cached under the old attributes");
    assert.equal(cache.stats.misses, 1);
    await cache.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
