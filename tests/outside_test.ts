/**
 * Commands naming paths the workers cannot see or write run on the master:
 * never a success whose output vanished on a worker.
 */
import assert from "node:assert/strict";
import { outsideReason } from "../master/outside.ts";
import { DEFAULT_EXCLUSIONS, Exclusions } from "../master/paths.ts";

const root = "/home/u/proj";
const exclusions = new Exclusions(DEFAULT_EXCLUSIONS, root);
const check = { root, excluded: (p: string) => exclusions.excluded(p) };
const reason = (argv: string[], cwd = `${root}/src`) => outsideReason(argv, cwd, check);
const script = (s: string, cwd = `${root}/src`) => outsideReason(["sh", "-c", s], cwd, check, true);

Deno.test("outsideReason() keeps ordinary compiles, links and scripts on the workers", () => {
  for (
    const argv of [
      ["gcc", "-c", "lapi.c", "-o", "lapi.o"],
      ["gcc", "-O2", "-I../include", "-I/usr/include/x", "-c", "a.c", "-o", "../obj/a.o"],
      ["gcc", "-o", "lua", "lua.o", "liblua.a", "-L/usr/lib/x86_64-linux-gnu", "-lm"],
      ["gcc", "-MD", "-MF", "obj/a.d", "-c", "a.c", "-o/home/u/proj/obj/a.o"],
      ["gcc", "-c", "t.c", "-o", "/dev/null"],
      ["cat", "/proc/cpuinfo", "/sys/kernel/mm/transparent_hugepage/enabled"],
      ["ar", "rcs", "liblua.a", "a.o", "b.o"],
      ["gcc", "-Wl,-rpath,/opt/lib", "--sysroot=/", "x.c"],
    ]
  ) assert.equal(reason(argv), null, argv.join(" "));
  assert.equal(script("cd src && gcc -c x.c -o x.o 2>/dev/null"), null);
  assert.equal(script("echo done > ../stamp"), null);
});

Deno.test("outsideReason() sends outputs outside the tree and hidden inputs to the master", () => {
  assert.match(reason(["gcc", "-c", "lapi.c", "-o", "/tmp/out.o"])!, /\/tmp\/out\.o/);
  assert.match(reason(["gcc", "-c", "lapi.c", "-o/var/tmp/out.o"])!, /writes \/var\/tmp\/out\.o/);
  assert.match(reason(["gcc", "-c", "lapi.c", "-o", "../../../out.o"])!, /writes \/home\/out\.o/);
  assert.match(reason(["gcc", "-I/tmp/inc", "-c", "a.c"])!, /\/tmp\/inc.*do not see/);
  assert.match(reason(["gcc", "-I", "/tmp/inc", "-c", "a.c"])!, /\/tmp\/inc/);
  assert.match(reason(["gcc", "-MF", "/var/tmp/a.d", "-c", "a.c"])!, /writes \/var\/tmp\/a\.d/);
  assert.match(reason(["cp", "x", "/run/user/1/x"])!, /\/run\/user\/1\/x/);
  assert.match(reason(["gcc", "-c", "a.c"], "/tmp/elsewhere")!, /outside the build tree/);
  assert.match(script("gcc -c a.c -o x.o && cp x.o /tmp/keep.o")!, /\/tmp\/keep\.o/);
  assert.match(script("echo hi > /var/tmp/log")!, /writes \/var\/tmp\/log/);
  assert.match(script("echo hi >>/var/tmp/log")!, /writes \/var\/tmp\/log/);
  assert.match(script("sort < /tmp/list")!, /\/tmp\/list/);
});
