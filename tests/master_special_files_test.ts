/**
 * Special files in the build tree, from the attacker's side: a FIFO, a socket
 * and device nodes made in the tree while the master (its real entry point,
 * as a process) serves it. Its tree watcher, its hash cache and its file
 * server must never open them: a FIFO opened for reading blocks until a
 * writer comes, a device may do anything when opened or read.
 */
import assert from "node:assert/strict";
import { closeSync, constants, openSync } from "node:fs";
import { NotRegularFileError } from "../common/regular_file.ts";
import { HashCache } from "../master/hash_cache.ts";

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  assert.ok(out.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

/** Lets any reader stuck on the FIFO go (the code before the fix). */
function releaseFifo(path: string): void {
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
  } catch {
    // Nobody was waiting.
  }
}

async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("HashCache: a FIFO, a device or a symlink put where a regular file was is never read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-hc-special-" });
  try {
    const path = `${dir}/a.c`;
    await Deno.writeTextFile(`${dir}/secret`, "not for the mirrors\n");
    for (const swap of ["fifo", "device", "symlink"]) {
      await Deno.writeTextFile(path, "int a;\n");
      const seen = await Deno.lstat(path); // what the file server saw
      await Deno.remove(path);
      if (swap === "fifo") await run("mkfifo", [path]);
      else if (swap === "device") await run("mknod", [path, "c", "1", "3"]);
      else await Deno.symlink(`${dir}/secret`, path);
      const cache = await HashCache.open();
      try {
        await within(
          5_000,
          `hashing a ${swap}`,
          assert.rejects(cache.hash(path, seen), NotRegularFileError),
        );
        assert.equal(cache.stats.bytesHashed, 0);
      } finally {
        if (swap === "fifo") releaseFifo(path);
        await cache.close();
        await Deno.remove(path);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
