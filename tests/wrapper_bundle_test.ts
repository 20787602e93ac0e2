/**
 * `bin/termite-wrap` is generated from the wrapper's sources: it must be what
 * `deno task bundle-wrapper` writes now, and run as the tool it is linked as.
 */
import assert from "node:assert/strict";
import { bundleWrapper, SHIM_PATH } from "../scripts/bundle_wrapper.ts";

Deno.test("bin/termite-wrap is the bundle of the wrapper's current sources", async () => {
  const committed = await Deno.readTextFile(SHIM_PATH);
  const fresh = await bundleWrapper();
  assert.ok(
    committed === fresh,
    "bin/termite-wrap differs from the wrapper's sources: run `deno task bundle-wrapper`",
  );
  assert.ok(committed.startsWith("#!/usr/bin/env -S deno run "), "its shebang");
  assert.equal((await Deno.stat(SHIM_PATH)).mode! & 0o111, 0o111, "executable");
});

Deno.test("the bundled shim runs as the name it is linked as: termite (a launcher), termite-sh (a builtin)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "termite-shim-" });
  try {
    // A link named after no tool in particular: `termite` is the compiler launcher.
    await Deno.symlink(SHIM_PATH, `${dir}/termite`);
    const usage = await new Deno.Command(`${dir}/termite`, {
      env: { PATH: "/usr/bin:/bin" },
      clearEnv: true,
      cwd: dir,
    }).output();
    assert.equal(usage.code, 2);
    assert.match(new TextDecoder().decode(usage.stderr), /usage: termite COMMAND/);
    // Linked as termite-sh: a builtin line answered without a master.
    await Deno.symlink(SHIM_PATH, `${dir}/termite-sh`);
    const echo = await new Deno.Command(`${dir}/termite-sh`, {
      args: ["-c", "echo a  b"],
      env: { PATH: "/usr/bin:/bin" },
      clearEnv: true,
      cwd: dir,
    }).output();
    assert.equal(echo.code, 0);
    assert.equal(new TextDecoder().decode(echo.stdout), "a b\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
