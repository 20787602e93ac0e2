/**
 * The tree by descriptor (master/beneath.ts): its constants against the C
 * headers, resolution that never leaves the tree nor follows a symlink, the
 * private directory and its markers, and the master's builtins on top.
 */
import assert from "node:assert/strict";
import { Beneath, BeneathError, DirHandles } from "../master/beneath.ts";
import * as c from "../master/fs_structs.ts";
import { parseBuiltin, runBuiltin } from "../master/local_rules.ts";
import { Master } from "../master/master.ts";
import { secretFromBytes } from "../rpc/mod.ts";

const PROBE_C = String.raw`
#define _GNU_SOURCE
#include <stdio.h>
#include <stddef.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/openat2.h>

#define P(name, value) printf("%s %lld\n", name, (long long)(value))
#define C(name) P(#name, name)

int main(void) {
  P("SYS_OPENAT2", SYS_openat2);
  P("OPEN_HOW_SIZE", sizeof(struct open_how));
  P("OPEN_HOW_FLAGS", offsetof(struct open_how, flags));
  P("OPEN_HOW_MODE", offsetof(struct open_how, mode));
  P("OPEN_HOW_RESOLVE", offsetof(struct open_how, resolve));
  C(O_RDONLY); C(O_WRONLY); C(O_CREAT); C(O_EXCL); C(O_NONBLOCK); C(O_DIRECTORY);
  C(O_NOFOLLOW); C(O_CLOEXEC); C(O_PATH);
  C(AT_FDCWD); C(AT_SYMLINK_NOFOLLOW); C(AT_REMOVEDIR);
  C(RESOLVE_NO_XDEV); C(RESOLVE_NO_MAGICLINKS); C(RESOLVE_NO_SYMLINKS); C(RESOLVE_BENEATH);
  C(RESOLVE_IN_ROOT);
  C(RENAME_NOREPLACE); C(RENAME_EXCHANGE);
  C(S_IFMT); C(S_IFDIR); C(S_IFREG); C(S_IFLNK); C(S_IFIFO); C(S_IFSOCK); C(S_IFCHR); C(S_IFBLK);
  return 0;
}
`;

Deno.test("fs_structs.ts constants and struct open_how match the C headers", async () => {
  const dir = await Deno.makeTempDir({ prefix: "beneath_probe_" });
  try {
    await Deno.writeTextFile(`${dir}/probe.c`, PROBE_C);
    const cc = await new Deno.Command("gcc", {
      args: ["-Wall", "-o", `${dir}/probe`, `${dir}/probe.c`],
    }).output();
    assert.equal(cc.code, 0, new TextDecoder().decode(cc.stderr));
    const run = await new Deno.Command(`${dir}/probe`).output();
    assert.equal(run.code, 0);
    const exported = c as unknown as Record<string, number | bigint>;
    const lines = new TextDecoder().decode(run.stdout).trim().split("\n");
    for (const line of lines) {
      const [name, value] = line.split(" ");
      assert.equal(Number(exported[name]), Number(value), name);
    }
    assert.equal(lines.length, Object.keys(c).length, "every constant is checked");
    // The relationships the code relies on.
    assert.equal(c.OPEN_HOW_SIZE, 3 * 8);
    assert.equal(c.RESOLVE_BENEATH & c.RESOLVE_NO_SYMLINKS, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function withTree(fn: (root: string, outside: string) => Promise<void>): Promise<void> {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-beneath-" }));
  const outside = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-beneath-out-" }));
  await Deno.mkdir(`${root}/a/b`, { recursive: true });
  await Deno.writeTextFile(`${root}/a/f`, "f\n");
  await Deno.symlink(outside, `${root}/out`);
  await Deno.symlink("a", `${root}/inner`);
  try {
    await fn(root, outside);
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
}

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof BeneathError, String(err));
    return err.errno;
  }
  assert.fail("no error");
}

Deno.test("Beneath resolves only below the root and through no symlink, not even one inside the tree", async () => {
  await withTree((root) => {
    using tree = Beneath.open(root);
    const ok = tree.openDir("a/b");
    tree.closeFd(ok);
    const ELOOP = 40, EXDEV = 18, ENOTDIR = 20;
    assert.equal(errnoOf(() => tree.openDir("out")), ELOOP);
    assert.equal(errnoOf(() => tree.openDir("out/x")), ELOOP);
    assert.equal(errnoOf(() => tree.openDir("inner/b")), ELOOP);
    assert.equal(errnoOf(() => tree.openDir("..")), EXDEV);
    assert.equal(errnoOf(() => tree.openDir("a/../..")), EXDEV);
    assert.equal(errnoOf(() => tree.openDir("/etc")), EXDEV);
    assert.equal(errnoOf(() => tree.openDir("a/f")), ENOTDIR);
    assert.equal(errnoOf(() => tree.openRead(tree.rootFd, "out")), ELOOP);
    using dirs = new DirHandles(tree);
    assert.equal(errnoOf(() => dirs.ensure("out/new/deeper", 0o755, () => {})), ELOOP);
    return Promise.resolve();
  });
});

Deno.test("Beneath creates files exclusively, never through a link; stat() is lstat() as Deno reports it", async () => {
  await withTree(async (root, outside) => {
    await Deno.writeTextFile(`${outside}/victim`, "precious\n");
    await Deno.symlink(`${outside}/victim`, `${root}/a/planted`);
    using tree = Beneath.open(root);
    using dirs = new DirHandles(tree);
    const EEXIST = 17;
    assert.equal(errnoOf(() => tree.createFile(dirs.get("a"), "planted", 0o600)), EEXIST);
    assert.equal(await Deno.readTextFile(`${outside}/victim`), "precious\n");
    for (const [rel, kind] of [["a/f", "file"], ["a/b", "dir"], ["a/planted", "symlink"]]) {
      const slash = rel.lastIndexOf("/");
      const found = tree.stat(dirs.get(rel.slice(0, slash)), rel.slice(slash + 1))!;
      const deno = Deno.lstatSync(`${root}/${rel}`);
      assert.equal(found.kind, kind);
      for (const key of ["size", "ino", "mode", "nlink", "uid", "dev", "isFile", "isSymlink"]) {
        const k = key as keyof Deno.FileInfo;
        assert.equal(found.info[k], deno[k], `${rel} ${key}`);
      }
      // The hash cache's key: these must match Deno's own exactly.
      assert.equal(found.info.mtime?.getTime(), deno.mtime?.getTime(), `${rel} mtime`);
      assert.equal(found.info.ctime?.getTime(), deno.ctime?.getTime(), `${rel} ctime`);
    }
    assert.equal(tree.stat(dirs.get("a"), "none"), null);
  });
});

Deno.test("Beneath's private directory is 0700, holds markers with unpredictable names, and goes at close", async () => {
  await withTree(async (root) => {
    const tree = Beneath.open(root);
    const info = await Deno.lstat(tree.privatePath);
    assert.equal(info.isDirectory, true);
    assert.equal(info.mode! & 0o777, 0o700);
    assert.match(tree.privateName, /^\.termite-staging-[0-9a-f]{24}$/);
    const one = tree.createMarker();
    const two = tree.createMarker();
    assert.notEqual(one, two);
    assert.ok(one.startsWith(`${tree.privatePath}/sync-`));
    assert.equal((await Deno.lstat(one)).isFile, true);
    tree.removeMarker(one);
    await assert.rejects(Deno.lstat(one), Deno.errors.NotFound);
    tree.close();
    tree.close();
    await assert.rejects(Deno.lstat(tree.privatePath), Deno.errors.NotFound);
  });
});

Deno.test("runBuiltin() works by descriptor: leaves paths through a symlink to the real tool, removes links not targets", async () => {
  await withTree(async (root, outside) => {
    await Deno.writeTextFile(`${outside}/precious`, "precious\n");
    using tree = Beneath.open(root);
    const run = (script: string) =>
      runBuiltin(parseBuiltin(["sh", "-c", script], root, root)!, tree);
    assert.deepEqual(await run("mkdir -p new/deep a/b"), { code: 0, stderr: "" });
    assert.equal((await Deno.lstat(`${root}/new/deep`)).isDirectory, true);
    // Through a symlink: the real tool's business (null), nothing made outside.
    assert.equal(await run("mkdir -p out/sub"), null);
    assert.equal(await run("mkdir -p inner/sub"), null);
    assert.equal(await run("rm -f out/precious"), null);
    assert.deepEqual([...Deno.readDirSync(outside)].map((e) => e.name), ["precious"]);
    // A link is removed itself.
    assert.deepEqual(await run("rm -f out"), { code: 0, stderr: "" });
    assert.deepEqual(await run("rm -rf inner missing"), { code: 0, stderr: "" });
    await assert.rejects(Deno.lstat(`${root}/out`), Deno.errors.NotFound);
    assert.equal(await Deno.readTextFile(`${outside}/precious`), "precious\n");
    assert.equal((await Deno.lstat(`${root}/a/f`)).isFile, true);
    // A directory: refused without -r, gone with it (moved aside, then removed).
    assert.equal((await run("rm -f a"))?.code, 1);
    assert.deepEqual(await run("rm -rf a"), { code: 0, stderr: "" });
    await assert.rejects(Deno.lstat(`${root}/a`), Deno.errors.NotFound);
    assert.deepEqual([...Deno.readDirSync(tree.privatePath)], []);
  });
});

Deno.test("the master runs a builtin mkdir through a symlink as a local job, not by itself", async () => {
  await withTree(async (root) => {
    const cache = await Deno.makeTempDir({ prefix: "termite-beneath-cache-" });
    const master = await Master.start({
      root,
      secret: await secretFromBytes(crypto.getRandomValues(new Uint8Array(32))),
      cacheDir: cache,
      log: () => {},
    });
    try {
      const io = {
        stdout: () => Promise.resolve(),
        stderr: () => Promise.resolve(),
        stdin: null,
        signal: new AbortController().signal,
      };
      const env = { PATH: "/usr/bin:/bin" };
      assert.equal(
        (await master.run({ argv: ["mkdir", "-p", "x/y"], cwd: root, env }, io)).code,
        0,
      );
      assert.equal(master.stats.jobsBuiltin, 1);
      assert.equal(
        (await master.run({ argv: ["mkdir", "-p", "inner/z"], cwd: root, env }, io)).code,
        0,
      );
      assert.equal(master.stats.jobsBuiltin, 1);
      assert.equal(master.stats.jobsLocal, 1);
      assert.equal((await Deno.lstat(`${root}/a/z`)).isDirectory, true, "as mkdir does it");
    } finally {
      await master.close();
      await Deno.remove(cache, { recursive: true });
    }
  });
});
