import assert from "node:assert/strict";
import {
  type CommandFinder,
  commandFinder,
  directCommand,
  SHELL_WORDS,
} from "../master/shell_fast_path.ts";

/** A file system where exactly `files` are executable. */
function finder(...files: string[]): CommandFinder & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    executable: (path) => {
      asked.push(path);
      return Promise.resolve(files.includes(path));
    },
  };
}

const ENV = { PATH: "/usr/local/bin:/usr/bin:/bin", HOME: "/home/u" };
const sh = (script: string) => ["/bin/sh", "-c", script];

Deno.test("directCommand(): plain words found on PATH run without the shell, PWD as sh sets it", async () => {
  const fs = finder("/usr/bin/gcc");
  const direct = await directCommand(sh("gcc  -O2 -c lapi.c -o lapi.o"), "/src/lua", ENV, fs);
  assert.deepEqual(direct, {
    argv: ["gcc", "-O2", "-c", "lapi.c", "-o", "lapi.o"],
    env: { ...ENV, PWD: "/src/lua" },
  });
  // Searched in PATH's order, up to the first hit.
  assert.deepEqual(fs.asked, ["/usr/local/bin/gcc", "/usr/bin/gcc"]);
});

Deno.test("directCommand(): a path with a slash, and PATH's empty and relative entries, from the cwd", async () => {
  assert.ok(await directCommand(sh("./tool x"), "/t", ENV, finder("/t/./tool")));
  assert.ok(await directCommand(sh("bin/tool"), "/t", ENV, finder("/t/bin/tool")));
  assert.ok(await directCommand(sh("/opt/x/tool"), "/t", ENV, finder("/opt/x/tool")));
  const empty = finder("/t/./tool");
  assert.ok(await directCommand(sh("tool"), "/t", { PATH: "/usr/bin::/bin" }, empty));
  assert.deepEqual(empty.asked, ["/usr/bin/tool", "/t/./tool"]);
  assert.ok(await directCommand(sh("tool"), "/t", { PATH: "scripts" }, finder("/t/scripts/tool")));
  assert.ok(await directCommand(sh("tool"), "/", { PATH: "s/" }, finder("/s/tool")));
});

Deno.test("directCommand(): anything a shell could change keeps the shell", async () => {
  const fs = finder("/usr/bin/gcc", "/usr/bin/echo", "/usr/bin/test", "/usr/bin/kill", "/t/-x");
  const keeps = [
    "gcc -c 'a b.c'", // quoting
    'gcc -c "a.c"',
    "gcc -c $SRC", // expansion
    "gcc -c *.c", // a glob
    "gcc -c a.c > log", // redirection
    "gcc -c a.c; gcc -c b.c", // a list
    "gcc -c a.c && true",
    "gcc -c a.c\tb.c", // a tab
    "gcc -c a.c\n", // a newline
    "gcc -c ~/a.c", // tilde
    "CC=gcc gcc -c a.c", // an assignment first
    "echo hi", // builtins, though a binary of that name exists
    "test -f x",
    "kill 1",
    "cd /tmp",
    "exec gcc -c a.c",
    "-x", // an option as the command
    "",
    "   ",
    "nosuch -c a.c", // not found: the shell's "not found", exit 127
  ];
  for (const script of keeps) {
    assert.equal(await directCommand(sh(script), "/t", ENV, fs), null, JSON.stringify(script));
  }
  // Not `sh -c SCRIPT` alone: positional parameters after the script.
  assert.equal(await directCommand(["/bin/sh", "-c", "gcc -c a.c", "x"], "/t", ENV, fs), null);
  assert.equal(await directCommand(["/bin/sh", "a.sh"], "/t", ENV, fs), null);
  // No PATH: nothing is found by name.
  assert.equal(await directCommand(sh("gcc -c a.c"), "/t", {}, fs), null);
  // Every keyword and builtin of dash is in the set.
  for (const w of ["if", "for", "while", "case", "return", "set", "export", "umask", "printf"]) {
    assert.ok(SHELL_WORDS.has(w), w);
  }
});

Deno.test("commandFinder(): only looks; a FIFO, a directory, a file others may not run, a loop or an excluded path is no command", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-fastpath-" }));
  try {
    const bin = `${dir}/bin`;
    await Deno.mkdir(bin);
    await Deno.writeTextFile(`${bin}/tool`, "#!/bin/sh\n");
    await Deno.chmod(`${bin}/tool`, 0o755);
    await Deno.writeTextFile(`${bin}/private`, "#!/bin/sh\n");
    await Deno.chmod(`${bin}/private`, 0o750); // the job's user (nobody) may not run it
    await Deno.symlink("tool", `${bin}/linked`);
    await Deno.symlink("loop", `${bin}/loop`);
    await Deno.mkdir(`${bin}/adir`);
    const mkfifo = await new Deno.Command("mkfifo", { args: [`${bin}/fifo`] }).output();
    assert.ok(mkfifo.success);
    const finder = commandFinder((p) => p === `${dir}/hidden` || p.startsWith(`${dir}/hidden/`));
    const env = { PATH: bin };
    const run = (script: string) => directCommand(["/bin/sh", "-c", script], dir, env, finder);
    assert.deepEqual((await run("tool x"))?.argv, ["tool", "x"]);
    assert.deepEqual((await run("linked"))?.argv, ["linked"], "a symlink to a command is followed");
    // Opening the FIFO would wait for a writer for ever: it is only looked at.
    for (const name of ["fifo", "adir", "private", "loop", "nosuch"]) {
      assert.equal(await run(name), null, name);
    }
    // Under an excluded prefix (the workers do not see it), by PATH or by path.
    await Deno.mkdir(`${dir}/hidden`);
    await Deno.copyFile(`${bin}/tool`, `${dir}/hidden/tool`);
    await Deno.chmod(`${dir}/hidden/tool`, 0o755);
    assert.equal(
      await directCommand(["/bin/sh", "-c", "tool"], dir, { PATH: `${dir}/hidden` }, finder),
      null,
    );
    assert.equal(await run("hidden/tool"), null);
    assert.equal(await run("./bin/../hidden/tool"), null, "judged by the normalised path");
    assert.ok(await run("./bin/tool"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
