/**
 * `lstat` through libc (the master's file server): what `Deno.lstatSync`
 * reports, null where it throws, never through a final symlink.
 */
import assert from "node:assert/strict";
import { denoLstat, PathStat } from "../master/path_stat.ts";

const FIELDS = [
  "isFile",
  "isDirectory",
  "isSymlink",
  "size",
  "dev",
  "ino",
  "mode",
  "nlink",
  "uid",
  "gid",
] as const;

function same(a: Deno.FileInfo, b: Deno.FileInfo): void {
  for (const f of FIELDS) assert.equal(a[f], b[f], f);
  assert.equal(a.mtime?.getTime(), b.mtime?.getTime(), "mtime");
  assert.equal(a.ctime?.getTime(), b.ctime?.getTime(), "ctime");
}

Deno.test("PathStat: as Deno.lstatSync for files, directories, symlinks; null for nothing", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-pathstat-" }));
  using lstat = new PathStat();
  try {
    await Deno.writeTextFile(`${dir}/f`, "12345");
    await Deno.chmod(`${dir}/f`, 0o640);
    await Deno.mkdir(`${dir}/d`, { mode: 0o711 });
    await Deno.symlink(`${dir}/d`, `${dir}/l`);
    await Deno.symlink(`${dir}/missing`, `${dir}/dangling`);
    for (const name of ["f", "d", "l", "dangling", ""]) {
      const path = name === "" ? dir : `${dir}/${name}`;
      const info = lstat.info(path);
      assert.ok(info !== null, path);
      same(info, Deno.lstatSync(path));
      assert.equal(lstat.mode(path), Deno.lstatSync(path).mode, path);
    }
    // The link itself, not its directory.
    assert.equal(lstat.info(`${dir}/l`)!.isSymlink, true);
    assert.equal(lstat.info(`${dir}/f`)!.size, 5);
    for (const path of [`${dir}/missing`, `${dir}/f/below`, `${dir}/f\0`, `${dir}/d\0/../f`]) {
      assert.equal(lstat.info(path), null, JSON.stringify(path));
      assert.equal(lstat.mode(path), null, JSON.stringify(path));
      assert.equal(denoLstat.info(path), null, JSON.stringify(path));
    }
    // Closed: the same answers, through Deno.
    lstat.close();
    same(lstat.info(`${dir}/f`)!, Deno.lstatSync(`${dir}/f`));
    assert.equal(lstat.mode(`${dir}/missing`), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
