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

Deno.test("PathStat.list: the entries Deno.readDirSync gives, with their kinds, in several reads; null where it cannot list", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-pathlist-" }));
  using lstat = new PathStat();
  const kinds = (
    entries: { name: string; isFile: boolean; isDirectory: boolean; isSymlink: boolean }[],
  ) =>
    entries.map((e) =>
      `${e.name}:${e.isFile ? "f" : ""}${e.isDirectory ? "d" : ""}${e.isSymlink ? "l" : ""}`
    )
      .sort();
  try {
    // Names a parser could get wrong: dots, long, non-ASCII; every kind.
    await Deno.writeTextFile(`${dir}/f`, "x");
    await Deno.writeTextFile(`${dir}/.hidden`, "x");
    await Deno.writeTextFile(`${dir}/..x`, "x");
    await Deno.writeTextFile(`${dir}/...`, "x");
    await Deno.writeTextFile(`${dir}/${"n".repeat(255)}`, "x");
    await Deno.writeTextFile(`${dir}/é—名`, "x");
    await Deno.mkdir(`${dir}/d`);
    await Deno.symlink("d", `${dir}/l`);
    await Deno.symlink("missing", `${dir}/dangling`);
    const fifo = await new Deno.Command("mkfifo", { args: [`${dir}/fifo`] }).output();
    assert.ok(fifo.success);
    // Enough names that getdents64 takes several reads of its 32 KiB buffer.
    await Deno.mkdir(`${dir}/d/many`);
    for (let i = 0; i < 3000; i++) Deno.writeTextFileSync(`${dir}/d/many/entry-number-${i}`, "");

    for (const path of [dir, `${dir}/d/many`, `${dir}/l`]) {
      const listed = lstat.list(path);
      assert.ok(listed !== null, path);
      assert.deepEqual(kinds(listed), kinds([...Deno.readDirSync(path)]), path);
    }
    assert.equal(lstat.list(`${dir}/d/many`)!.length, 3000);
    assert.equal(lstat.list(`${dir}/d/many`, 10)!.length, 10, "at most max");
    const fifoEntry = lstat.list(dir)!.find((e) => e.name === "fifo")!;
    assert.ok(
      !fifoEntry.isFile && !fifoEntry.isDirectory && !fifoEntry.isSymlink,
      "a FIFO is none",
    );
    assert.equal(lstat.list(`${dir}/nothing`), null);
    assert.equal(lstat.list(`${dir}/f`), null, "not a directory");
    assert.equal(lstat.list(`${dir}/dangling`), null);
    assert.equal(lstat.list(`${dir}/f\0x`), null, "a NUL in the path");
    // After close, the same through Deno.
    lstat.close();
    assert.deepEqual(kinds(lstat.list(dir)!), kinds([...Deno.readDirSync(dir)]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
