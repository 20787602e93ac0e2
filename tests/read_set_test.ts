/** worker/read_set.ts: traced calls folded into a read set, and what makes it incomplete. */
import assert from "node:assert/strict";
import { ReadSetBuilder, type TraceEvent } from "../worker/read_set.ts";
import { traceScript } from "../worker/read_trace_script.ts";

const O_RDONLY = 0;
const O_WRONLY_CREAT_TRUNC = 0o1101;
const O_RDWR_CREAT_TRUNC = 0o1102;
const O_DIRECTORY = 0o200000;

function ev(tgid: number, kind: string, path = "", more: Partial<TraceEvent> = {}): TraceEvent {
  return { tgid, kind, ret: 0, a1: 4294967196, a2: 0, path, ...more };
}

function entries(b: ReadSetBuilder): Record<string, string> {
  const r = b.result();
  assert.ok(r.complete, r.complete ? "" : r.why);
  return Object.fromEntries(r.entries.map(([p, k]) => [p, k.join("")]));
}

Deno.test("ReadSetBuilder resolves relative paths against the cwd, through chdir and fork", () => {
  const b = new ReadSetBuilder("/src");
  b.add(ev(10, "c", "/src/sub")); // the launcher's chdir
  b.add(ev(10, "o", "a.h", { ret: 3, a2: O_RDONLY }));
  b.add(ev(10, "F", "", { a1: 11 }));
  b.add(ev(11, "s", "../b.h"));
  b.add(ev(11, "x", "/usr/bin/cc1"));
  b.add(ev(11, "o", "x.o", { ret: 4, a2: O_RDWR_CREAT_TRUNC }));
  b.add(ev(11, "o", "y.o", { ret: 5, a2: O_WRONLY_CREAT_TRUNC }));
  b.add(ev(11, "o", "missing.h", { ret: -2, a2: O_RDONLY }));
  assert.deepEqual(entries(b), {
    "/src/sub": "s",
    "/src/sub/a.h": "r",
    "/src/sub/../b.h": "s",
    "/usr/bin/cc1": "r",
    "/src/sub/missing.h": "s",
  });
});

Deno.test("ReadSetBuilder follows directory descriptors: getdents lists, openat(dirfd) resolves", () => {
  const b = new ReadSetBuilder("/t");
  b.add(ev(1, "o", "/t/dir", { ret: 3, a2: O_DIRECTORY }));
  b.add(ev(1, "g", "", { a1: 3 }));
  b.add(ev(1, "o", "f", { ret: 4, a1: 3, a2: O_RDONLY }));
  b.add(ev(1, "l", "/t/link"));
  assert.deepEqual(entries(b), {
    "/t/dir": "dr",
    "/t/dir/f": "r",
    "/t/link": "l",
  });
});

Deno.test("ReadSetBuilder: what it cannot follow makes the recording incomplete", () => {
  const cases: [string, TraceEvent[]][] = [
    ["an unknown dirfd", [ev(1, "o", "x", { ret: 3, a1: 7 })]],
    ["a listing of an unknown fd", [ev(1, "g", "", { a1: 9 })]],
    ["a dup'd directory fd", [
      ev(1, "o", "/d", { ret: 3, a2: O_DIRECTORY }),
      ev(1, "f", "", { ret: 3, a1: 5 }),
      ev(1, "g", "", { a1: 3 }),
    ]],
    ["openat2", [ev(1, "X", "")]],
    ["a path too long for the trace", [ev(1, "o", "/" + "a".repeat(198), { ret: 3 })]],
    ["a relative path of a process never seen forking", [ev(1, "c", "/x"), ev(2, "s", "rel")]],
  ];
  for (const [what, events] of cases) {
    const b = new ReadSetBuilder("/t");
    for (const e of events) b.add(e);
    const r = b.result();
    assert.equal(r.complete, false, what);
  }
});

Deno.test("ReadSetBuilder notes reads of stdin, and copies of it", () => {
  const a = new ReadSetBuilder("/");
  a.add(ev(1, "i"));
  const r = a.result();
  assert.ok(r.complete && r.stdin === true);
  const b = new ReadSetBuilder("/");
  b.add(ev(1, "f", "", { ret: 5, a1: 0 }));
  const s = b.result();
  assert.ok(s.complete && s.stdin === true);
  const c = new ReadSetBuilder("/");
  c.add(ev(1, "s", "/x"));
  const t = c.result();
  assert.ok(t.complete && t.stdin === false);
});

Deno.test("traceScript() ends every event line with the token and refuses a bad one", () => {
  const script = traceScript({ pidsIndex: 11, uid: 65534, workerPid: 1, token: "ab".repeat(16) });
  const prints = script.split("\n").filter((l) => l.includes('printf("E '));
  assert.ok(prints.length > 50);
  for (const p of prints) assert.ok(p.includes(` |${"ab".repeat(16)}\\n"`), p);
  assert.throws(() => traceScript({ pidsIndex: 11, uid: 65534, workerPid: 1, token: "x\n" }));
});
