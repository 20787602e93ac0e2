import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { ResultSet } from "../common/types.ts";
import { collectResultSet, runJob, SandboxError } from "../sandbox/mod.ts";

const LAUNCHER_CACHE = new URL("../.cache/sandbox-launcher", import.meta.url).pathname;
const PATH = "/usr/local/bin:/usr/bin:/bin";
const decoder = new TextDecoder();
const encoder = new TextEncoder();

async function sh(script: string): Promise<void> {
  const r = await new Deno.Command("/bin/sh", {
    args: ["-e", "-c", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) throw new Error(`sh failed: ${script}: ${decoder.decode(r.stderr)}`);
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A store double: records what was put and from where. */
class FakeStore {
  readonly blobs = new Map<string, Uint8Array>();
  readonly putPaths: string[] = [];

  put = async (path: string): Promise<{ hash: string; size: number }> => {
    this.putPaths.push(path);
    const bytes = await Deno.readFile(path);
    const hash = sha256(bytes);
    this.blobs.set(hash, bytes);
    return { hash, size: bytes.length };
  };
}

function file(path: string, text: string, mode = 0o644) {
  return { path, hash: sha256(encoder.encode(text)), size: encoder.encode(text).length, mode };
}

function withoutMtimes(set: ResultSet) {
  return { ...set, files: set.files.map(({ mtimeMs: _, ...f }) => f) };
}

const LOWER_TREE = `
mkdir -p dir_ren/sub rmdir_me rmrf/x deep/nested tofile modedir
printf 'keep\\n' > keep.txt
printf 'old\\n' > over.txt
printf 'x\\n' > del.txt
printf 'r\\n' > ren.txt
printf 'a\\n' > dir_ren/a.txt
printf 'b\\n' > dir_ren/sub/b.txt
printf 'y\\n' > rmrf/x/y.txt
printf '#!/bin/sh\\n' > chmod.sh && chmod 644 chmod.sh
printf 'long contents\\n' > trunc.txt
printf 'n\\n' > deep/nested/file.txt
printf 't\\n' > todir
printf 'c\\n' > tofile/c.txt
printf 'm\\n' > modedir/m.txt
ln -s keep.txt link_old
touch -d 2020-01-02T03:04:05.678Z ren.txt dir_ren/a.txt
chown -R -h 65534:65534 .
`;

const JOB = `
set -e
echo new > over.txt
rm del.txt
mv ren.txt renamed.txt
mv dir_ren dir_renamed
rmdir rmdir_me
rm -rf rmrf
chmod 755 chmod.sh
truncate -s 3 trunc.txt
echo more >> deep/nested/file.txt
rm todir; mkdir todir
rm -rf tofile; echo f > tofile
rm link_old; ln -s over.txt link_old
mkdir -p newdir/inner; echo n > newdir/inner/new.txt
ln -s keep.txt newlink
mkdir emptydir; chmod 700 emptydir
chmod 700 modedir
mkdir gone; rmdir gone
echo t > gone.txt; rm gone.txt
`;

Deno.test("collectResultSet() turns a job's writes, deletions, renames, chmods, truncations and symlinks into the exact result set", async () => {
  const base = `/var/tmp/termite-result-set-test-${crypto.randomUUID().slice(0, 8)}`;
  const w = `${base}/w`;
  try {
    await Deno.mkdir(w, { recursive: true });
    await sh(`cd ${w}\n${LOWER_TREE}`);
    const startMs = Date.now() - 2000;
    const store = new FakeStore();
    let withLower: ResultSet | undefined;
    let withoutLower: ResultSet | undefined;
    let upperDir = "";
    const outcome = await runJob(
      { argv: ["/bin/sh", "-c", JOB], cwd: w, env: { PATH }, timeoutMs: 30_000 },
      {
        lowerRoot: "/",
        writableRoot: w,
        jobDir: `${base}/job`,
        launcherCacheDir: LAUNCHER_CACHE,
        onStderr: (b) => {
          throw new Error(`job stderr: ${decoder.decode(b)}`);
        },
        onUpper: async (upper, lowerDir) => {
          upperDir = upper;
          withLower = await collectResultSet(upper, w, store.put, { lowerDir });
          withoutLower = await collectResultSet(upper, w, store.put);
        },
      },
    );
    assert.equal(outcome.exitCode, 0);
    assert.ok(withLower && withoutLower);

    const files = [
      file(`${w}/chmod.sh`, "#!/bin/sh\n", 0o755),
      file(`${w}/deep/nested/file.txt`, "n\nmore\n"),
      file(`${w}/dir_renamed/a.txt`, "a\n"),
      file(`${w}/dir_renamed/sub/b.txt`, "b\n"),
      file(`${w}/newdir/inner/new.txt`, "n\n"),
      file(`${w}/over.txt`, "new\n"),
      file(`${w}/renamed.txt`, "r\n"),
      file(`${w}/tofile`, "f\n"),
      file(`${w}/trunc.txt`, "lon"),
    ];
    const symlinks = [
      { path: `${w}/link_old`, target: "over.txt" },
      { path: `${w}/newlink`, target: "keep.txt" },
    ];
    assert.deepEqual(withoutMtimes(withLower), {
      deletions: [
        `${w}/del.txt`,
        `${w}/dir_ren`,
        `${w}/ren.txt`,
        `${w}/rmdir_me`,
        `${w}/rmrf`,
        `${w}/todir`,
        `${w}/tofile`,
      ],
      dirs: [
        { path: `${w}/dir_renamed`, mode: 0o755 },
        { path: `${w}/dir_renamed/sub`, mode: 0o755 },
        { path: `${w}/emptydir`, mode: 0o700 },
        { path: `${w}/modedir`, mode: 0o700 },
        { path: `${w}/newdir`, mode: 0o755 },
        { path: `${w}/newdir/inner`, mode: 0o755 },
        { path: `${w}/todir`, mode: 0o755 },
      ],
      files,
      symlinks,
    });

    // Without the lower layer: copied-up parents are listed, and the
    // directory a file replaced cannot be seen.
    assert.deepEqual(withoutMtimes(withoutLower), {
      deletions: withLower.deletions.filter((p) => p !== `${w}/tofile`),
      dirs: [
        { path: `${w}/deep`, mode: 0o755 },
        { path: `${w}/deep/nested`, mode: 0o755 },
        ...withLower.dirs,
      ].sort((a, b) => (a.path < b.path ? -1 : 1)),
      files,
      symlinks,
    });

    // Moved files keep their mtimes; the others were written just now.
    const preserved = Date.parse("2020-01-02T03:04:05.678Z");
    for (const f of withLower.files) {
      if (f.path.endsWith("/renamed.txt") || f.path.endsWith("/dir_renamed/a.txt")) {
        assert.equal(f.mtimeMs, preserved, f.path);
      } else {
        assert.ok(f.mtimeMs >= startMs, f.path);
      }
    }
    // Contents went through putFile, from the upper layer, in path order.
    assert.deepEqual(
      store.putPaths.slice(0, files.length),
      files.map((f) => f.path.replace(w, upperDir)),
    );
    for (const f of files) assert.equal(store.blobs.get(f.hash)?.length, f.size, f.path);
    // The host tree is untouched.
    assert.equal(await Deno.readTextFile(`${w}/over.txt`), "old\n");
    assert.ok((await Deno.stat(`${w}/tofile`)).isDirectory);
  } finally {
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});

Deno.test("collectResultSet() reads a hand-made upper dir: whiteouts, opaque dirs, skipped FIFOs, deepest deletions first", async () => {
  const upper = await Deno.makeTempDir({ prefix: "termite-upper-" });
  try {
    await sh(`
      cd ${upper}
      mkdir -p a/b/c opaque/inner plain
      mknod a/b/c/gone c 0 0
      mknod a/gone c 0 0
      mknod zz c 0 0
      echo x > opaque/inner/f
      python3 -c 'import os; os.setxattr("opaque", "trusted.overlay.opaque", b"y")'
      python3 -c 'import os; os.setxattr("plain", "trusted.overlay.opaque", b"x")'
      mkfifo plain/fifo
      ln -s ../target plain/link
      chmod 750 plain
    `);
    const store = new FakeStore();
    const set = await collectResultSet(upper, "/build/root", store.put);
    assert.deepEqual(withoutMtimes(set), {
      deletions: [
        "/build/root/a/b/c/gone",
        "/build/root/a/gone",
        "/build/root/opaque",
        "/build/root/zz",
      ],
      dirs: [
        { path: "/build/root/a", mode: 0o755 },
        { path: "/build/root/a/b", mode: 0o755 },
        { path: "/build/root/a/b/c", mode: 0o755 },
        { path: "/build/root/opaque", mode: 0o755 },
        { path: "/build/root/opaque/inner", mode: 0o755 },
        { path: "/build/root/plain", mode: 0o750 },
      ],
      files: [file("/build/root/opaque/inner/f", "x\n")],
      symlinks: [{ path: "/build/root/plain/link", target: "../target" }],
    });
    await assert.rejects(
      collectResultSet(upper, "/build/root", store.put, { entriesMax: 5 }),
      (err: unknown) => err instanceof SandboxError && /more than 5 entries/.test(err.message),
    );
    await assert.rejects(collectResultSet(upper, "relative", store.put), SandboxError);
  } finally {
    await Deno.remove(upper, { recursive: true });
  }
});

Deno.test("collectResultSet() of an unchanged tree is empty", async () => {
  const upper = await Deno.makeTempDir({ prefix: "termite-upper-" });
  try {
    assert.deepEqual(await collectResultSet(upper, "/w", new FakeStore().put), {
      deletions: [],
      dirs: [],
      files: [],
      symlinks: [],
    });
  } finally {
    await Deno.remove(upper);
  }
});
