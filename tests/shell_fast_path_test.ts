import assert from "node:assert/strict";
import { type CommandFinder, directCommand, SHELL_WORDS } from "../master/shell_fast_path.ts";

/** A file system where exactly `files` are executable. */
function finder(...files: string[]): CommandFinder & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    executable: (path) => {
      asked.push(path);
      return files.includes(path);
    },
  };
}

const ENV = { PATH: "/usr/local/bin:/usr/bin:/bin", HOME: "/home/u" };
const sh = (script: string) => ["/bin/sh", "-c", script];

Deno.test("directCommand(): plain words found on PATH run without the shell, PWD as sh sets it", () => {
  const fs = finder("/usr/bin/gcc");
  const direct = directCommand(sh("gcc  -O2 -c lapi.c -o lapi.o"), "/src/lua", ENV, fs);
  assert.deepEqual(direct, {
    argv: ["gcc", "-O2", "-c", "lapi.c", "-o", "lapi.o"],
    env: { ...ENV, PWD: "/src/lua" },
  });
  // Searched in PATH's order, up to the first hit.
  assert.deepEqual(fs.asked, ["/usr/local/bin/gcc", "/usr/bin/gcc"]);
});

Deno.test("directCommand(): a path with a slash, and PATH's empty and relative entries, from the cwd", () => {
  assert.ok(directCommand(sh("./tool x"), "/t", ENV, finder("/t/./tool")));
  assert.ok(directCommand(sh("bin/tool"), "/t", ENV, finder("/t/bin/tool")));
  assert.ok(directCommand(sh("/opt/x/tool"), "/t", ENV, finder("/opt/x/tool")));
  const empty = finder("/t/./tool");
  assert.ok(directCommand(sh("tool"), "/t", { PATH: "/usr/bin::/bin" }, empty));
  assert.deepEqual(empty.asked, ["/usr/bin/tool", "/t/./tool"]);
  assert.ok(directCommand(sh("tool"), "/t", { PATH: "scripts" }, finder("/t/scripts/tool")));
  assert.ok(directCommand(sh("tool"), "/", { PATH: "s/" }, finder("/s/tool")));
});

Deno.test("directCommand(): anything a shell could change keeps the shell", () => {
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
    assert.equal(directCommand(sh(script), "/t", ENV, fs), null, JSON.stringify(script));
  }
  // Not `sh -c SCRIPT` alone: positional parameters after the script.
  assert.equal(directCommand(["/bin/sh", "-c", "gcc -c a.c", "x"], "/t", ENV, fs), null);
  assert.equal(directCommand(["/bin/sh", "a.sh"], "/t", ENV, fs), null);
  // No PATH: nothing is found by name.
  assert.equal(directCommand(sh("gcc -c a.c"), "/t", {}, fs), null);
  // Every keyword and builtin of dash is in the set.
  for (const w of ["if", "for", "while", "case", "return", "set", "export", "umask", "printf"]) {
    assert.ok(SHELL_WORDS.has(w), w);
  }
});
