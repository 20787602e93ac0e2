import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { applyResultSet, ResultSetError } from "../master/apply.ts";
import { HashCache } from "../master/hash_cache.ts";
import type { ResultSet } from "../common/types.ts";

const enc = new TextEncoder();

function sha(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      const info = await Deno.lstat(p);
      let extra = "";
      if (info.isFile) extra = sha(await Deno.readFile(p));
      if (info.isSymlink) extra = await Deno.readLink(p);
      out.push(`${p.slice(dir.length)} ${info.mode?.toString(8)} ${extra}`);
      if (info.isDirectory) await walk(p);
    }
  };
  await walk(dir);
  return out.sort();
}

async function withTree(fn: (root: string, blobs: Map<string, Uint8Array>) => Promise<void>) {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-apply-" }));
  await Deno.mkdir(`${root}/src/sub`, { recursive: true });
  await Deno.writeTextFile(`${root}/src/a.c`, "int a;\n");
  await Deno.writeTextFile(`${root}/src/old.o`, "old");
  await Deno.writeTextFile(`${root}/src/sub/x.h`, "#define X 1\n");
  await Deno.symlink("/etc", `${root}/escape`);
  const outside = await Deno.makeTempDir({ prefix: "termite-outside-" });
  await Deno.symlink(outside, `${root}/src/out`);
  try {
    await fn(root, new Map());
    // Nothing ever lands outside the root.
    assert.deepEqual([...Deno.readDirSync(outside)], []);
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
}

function fetcherFor(blobs: Map<string, Uint8Array>) {
  return async (hash: string, sink: { write(c: Uint8Array): Promise<void> }) => {
    const b = blobs.get(hash);
    if (!b) throw new Error(`no blob ${hash}`);
    await sink.write(b);
  };
}

Deno.test("applyResultSet() applies deletions, dirs, files and symlinks", async () => {
  await withTree(async (root, blobs) => {
    const obj = enc.encode("\x7fELF object");
    blobs.set(sha(obj), obj);
    const cache = await HashCache.open();
    const set: ResultSet = {
      deletions: [`${root}/src/old.o`, `${root}/src/sub`],
      dirs: [{ path: `${root}/build`, mode: 0o755 }, { path: `${root}/build/deep`, mode: 0o750 }],
      files: [
        { path: `${root}/build/a.o`, hash: sha(obj), size: obj.length, mode: 0o644, mtimeMs: 0 },
        {
          path: `${root}/build/deep/b.o`,
          hash: sha(obj),
          size: obj.length,
          mode: 0o755,
          mtimeMs: 0,
        },
      ],
      symlinks: [{ path: `${root}/build/link`, target: "a.o" }],
    };
    const out = await applyResultSet(set, {
      writableRoot: root,
      fetchBlob: fetcherFor(blobs),
      hashCache: cache,
    });
    assert.equal(await Deno.readTextFile(`${root}/build/a.o`), "\x7fELF object");
    assert.equal((await Deno.stat(`${root}/build/deep/b.o`)).mode! & 0o777, 0o755);
    assert.equal((await Deno.stat(`${root}/build/deep`)).mode! & 0o777, 0o750);
    assert.equal(await Deno.readLink(`${root}/build/link`), "a.o");
    await assert.rejects(Deno.stat(`${root}/src/old.o`), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(`${root}/src/sub`), Deno.errors.NotFound);
    assert.equal(out.bytesFetched, obj.length, "the same blob is fetched once");
    assert.ok(out.touched.includes(`${root}/build/a.o`));
    assert.ok(out.touched.includes(`${root}/src`), "parents of changes are touched");
    assert.equal(cache.pathOf(sha(obj)) !== undefined, true);
    // No staging leftovers.
    assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name).sort(), [
      "build",
      "escape",
      "src",
    ]);
    await cache.close();
  });
});

const hostile: [string, (root: string, hash: string, size: number) => unknown][] = [
  [
    "a path with ..",
    (r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/src/../../x`, hash: h, size: s, mode: 0o644 }],
    }),
  ],
  [
    "an absolute path outside the root",
    (_r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: "/etc/termite-pwned", hash: h, size: s, mode: 0o644 }],
    }),
  ],
  [
    "a relative path",
    (_r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: "src/x.o", hash: h, size: s, mode: 0o644 }],
    }),
  ],
  [
    "a write through a symlink",
    (r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/escape/termite-pwned`, hash: h, size: s, mode: 0o644 }],
    }),
  ],
  [
    "a write through a nested symlink",
    (r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/src/out/pwned`, hash: h, size: s, mode: 0o644 }],
    }),
  ],
  [
    "a deletion through a symlink",
    (r) => ({ deletions: [`${r}/escape/passwd`], dirs: [], files: [], symlinks: [] }),
  ],
  ["deleting the root itself", (r) => ({ deletions: [r], dirs: [], files: [], symlinks: [] })],
  [
    "a wrong hash",
    (r, _h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/ok.o`, hash: "0".repeat(64), size: s, mode: 0o644 }],
    }),
  ],
  [
    "a giant size",
    (r, h) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/ok.o`, hash: h, size: 2 ** 50, mode: 0o644 }],
    }),
  ],
  [
    "a lying size",
    (r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/ok.o`, hash: h, size: s + 1, mode: 0o644 }],
    }),
  ],
  [
    "a file over a directory",
    (r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/src/sub`, hash: h, size: s, mode: 0o644 }],
    }),
  ],
  [
    "a path listed twice",
    (r, h, s) => ({
      deletions: [],
      dirs: [{ path: `${r}/d`, mode: 0o755 }],
      symlinks: [],
      files: [{ path: `${r}/d`, hash: h, size: s, mode: 0o644 }],
    }),
  ],
  ["garbage", () => ({ deletions: "x" })],
  [
    "a NUL in a path",
    (r, h, s) => ({
      deletions: [],
      dirs: [],
      symlinks: [],
      files: [{ path: `${r}/a\0b`, hash: h, size: s, mode: 0o644 }],
    }),
  ],
];

for (const [name, make] of hostile) {
  Deno.test(`applyResultSet() refuses ${name}, tree untouched`, async () => {
    await withTree(async (root, blobs) => {
      const good = enc.encode("good bytes");
      const bad = enc.encode("other bytes");
      blobs.set(sha(good), good);
      blobs.set("0".repeat(64), bad);
      const cache = await HashCache.open();
      const before = await snapshot(root);
      // A valid change comes first in every set: it must not land either.
      const set = make(root, sha(good), good.length) as ResultSet;
      if (Array.isArray(set.files)) {
        set.files.unshift({
          path: `${root}/first.o`,
          hash: sha(good),
          size: good.length,
          mode: 0o644,
          mtimeMs: 0,
        });
      }
      await assert.rejects(
        applyResultSet(set, { writableRoot: root, fetchBlob: fetcherFor(blobs), hashCache: cache }),
        (err: Error) => err instanceof ResultSetError || err.message.includes("Blob"),
      );
      assert.deepEqual(await snapshot(root), before);
      await cache.close();
    });
  });
}

Deno.test("applyResultSet() writes inline contents without a fetch, and refuses wrong ones", async () => {
  await withTree(async (root) => {
    const obj = enc.encode("\x7fELF inline object");
    const cache = await HashCache.open();
    const set = (hash: string): ResultSet => ({
      deletions: [],
      dirs: [],
      files: [
        { path: `${root}/src/a.o`, hash, size: obj.length, mode: 0o644, mtimeMs: 0 },
        { path: `${root}/src/a2.o`, hash, size: obj.length, mode: 0o600, mtimeMs: 0 },
      ],
      symlinks: [],
    });
    let fetches = 0;
    const fetchBlob = () => {
      fetches++;
      return Promise.reject(new Error("no fetch expected"));
    };
    const out = await applyResultSet(set(sha(obj)), {
      writableRoot: root,
      fetchBlob,
      inline: (hash) => hash === sha(obj) ? obj : undefined,
      hashCache: cache,
    });
    assert.equal(fetches, 0);
    assert.equal(out.bytesFetched, obj.length);
    assert.deepEqual(await Deno.readFile(`${root}/src/a2.o`), obj);
    assert.equal((await Deno.stat(`${root}/src/a2.o`)).mode! & 0o777, 0o600);

    // Bytes that do not match their hash: refused, and the tree is left as it was.
    const before = await snapshot(root);
    const other = enc.encode("something else entirely");
    await assert.rejects(
      applyResultSet(set(sha(other)), {
        writableRoot: root,
        fetchBlob,
        inline: () => obj,
        hashCache: cache,
      }),
      (err) => err instanceof ResultSetError && /verification failed/.test(err.message),
    );
    assert.deepEqual(await snapshot(root), before);
    assert.equal(fetches, 0);
  });
});

// ---- Limits count what they claim ----

function fileEntry(path: string, bytes: Uint8Array, mode = 0o644) {
  return { path, hash: sha(bytes), size: bytes.length, mode, mtimeMs: 0 };
}

function emptySet(): ResultSet {
  return { deletions: [], dirs: [], files: [], symlinks: [] };
}

/** Applies `set` with contents from `contents` (fetched); the error, if any. */
async function tryApply(
  root: string,
  set: unknown,
  contents: Uint8Array[] = [],
  extra: Partial<Parameters<typeof applyResultSet>[1]> = {},
): Promise<Error | null> {
  const blobs = new Map(contents.map((c) => [sha(c), c]));
  const cache = extra.hashCache ?? await HashCache.open();
  try {
    await applyResultSet(set, {
      writableRoot: root,
      fetchBlob: fetcherFor(blobs),
      hashCache: cache,
      ...extra,
    });
    return null;
  } catch (err) {
    return err as Error;
  } finally {
    if (!extra.hashCache) await cache.close();
  }
}

Deno.test("applyResultSet() counts name lengths in UTF-8 bytes (NAME_BYTES_MAX) and refuses lone surrogates", async () => {
  await withTree(async (root) => {
    const obj = enc.encode("x");
    const before = await snapshot(root);
    for (
      const [name, why] of [
        ["é".repeat(200), /NAME_BYTES_MAX/],
        ["a".repeat(256), /NAME_BYTES_MAX/],
        ["😀".repeat(64), /NAME_BYTES_MAX/],
        ["bad\ud800name", /Unicode/],
      ] as const
    ) {
      const err = await tryApply(root, {
        ...emptySet(),
        files: [fileEntry(`${root}/${name}`, obj)],
      }, [
        obj,
      ]);
      assert.ok(err instanceof ResultSetError, String(err));
      assert.match(err.message, why);
    }
    // At the limit: 127 × "é" + "a" is 255 bytes.
    assert.equal(
      await tryApply(root, {
        ...emptySet(),
        files: [fileEntry(`${root}/${"é".repeat(127)}a`, obj)],
      }, [obj]),
      null,
    );
    assert.equal(before.length + 1, (await snapshot(root)).length);
  });
});

Deno.test("applyResultSet() refuses modes that are not integers in 0..0o7777", async () => {
  await withTree(async (root) => {
    const obj = enc.encode("x");
    const before = await snapshot(root);
    for (const mode of [-1, 1.5, 0o10000, NaN, Infinity, "644", null]) {
      for (const kind of ["file", "dir"]) {
        const set = kind === "file"
          ? { ...emptySet(), files: [{ ...fileEntry(`${root}/m.o`, obj), mode }] }
          : { ...emptySet(), dirs: [{ path: `${root}/m`, mode }] };
        const err = await tryApply(root, set, [obj]);
        assert.ok(err instanceof ResultSetError, `${kind} mode ${mode}: ${err}`);
        assert.match(err.message, /mode|bad/);
      }
    }
    assert.deepEqual(await snapshot(root), before);
  });
});

Deno.test("applyResultSet() takes RESULT_ENTRIES_MAX entries, the worker's limit too, and refuses one more by name", async () => {
  const { RESULT_ENTRIES_MAX } = await import("../common/types.ts");
  const sandbox = await import("../sandbox/result_set.ts");
  assert.equal(sandbox.RESULT_ENTRIES_MAX, RESULT_ENTRIES_MAX);
  await withTree(async (root) => {
    // The last entry is refused for itself (a bad hash), after the count passed.
    const set = (entries: number) => ({
      ...emptySet(),
      deletions: Array.from({ length: entries - 1 }, (_, i) => `${root}/gone${i}`),
      files: [{ path: `${root}/last.o`, hash: "bad", size: 1, mode: 0o644, mtimeMs: 0 }],
    });
    const atLimit = await tryApply(root, set(RESULT_ENTRIES_MAX));
    assert.match(String(atLimit), /bad hash/);
    const past = await tryApply(root, set(RESULT_ENTRIES_MAX + 1));
    assert.ok(past instanceof ResultSetError);
    assert.match(past.message, /200001 entries, more than RESULT_ENTRIES_MAX \(200000\)/);
  });
});
