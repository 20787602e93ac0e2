/** The bridge without a mount: a recording sink stands in for libfuse. */
import assert from "node:assert/strict";
import { Bridge, type ReplySink } from "../fuse/bridge.ts";
import { EIO, ENODATA, ENOENT, ERANGE } from "../fuse/errno.ts";
import { S_IFREG } from "../fuse/structs.ts";
import type { Attr, DirEntryPlus, Entry, FileSystem, RequestContext } from "../fuse/types.ts";

interface Req {
  id: number;
  replies: Array<[string, unknown]>;
}

function request(id = 1): Req {
  return { id, replies: [] };
}

/** Records every reply; `readdirplus` packs `fit` entries. */
function recordingSink(fit = Infinity): ReplySink<Req> {
  const ctx: RequestContext = { uid: 1000, gid: 100, pid: 42, umask: 0o22 };
  const record = (req: Req, kind: string, value: unknown) => req.replies.push([kind, value]);
  return {
    context: () => ctx,
    err: (req, errno) => record(req, "err", errno),
    none: (req) => record(req, "none", undefined),
    entry: (req, entry) => (record(req, "entry", entry), 0),
    attr: (req, reply) => record(req, "attr", reply),
    readlink: (req, target) => record(req, "readlink", target),
    open: (req, _fi, reply) => record(req, "open", reply),
    buf: (req, data) => record(req, "buf", data),
    data: (req, slice) => record(req, "data", slice),
    statfs: (req, st) => record(req, "statfs", st),
    xattrSize: (req, size) => record(req, "xattrSize", size),
    readdir: (req, entries) => record(req, "readdir", entries),
    readdirplus: (req, entries) => {
      const packed = Math.min(fit, entries.length);
      record(req, "readdirplus", entries.slice(0, packed));
      return packed;
    },
  };
}

const ATTR: Attr = { ino: 5, mode: S_IFREG | 0o644, nlink: 1, uid: 0, gid: 0, size: 3, mtimeMs: 0 };
const ENTRY: Entry = { ino: 5n, attr: ATTR, entryTimeoutS: 1, attrTimeoutS: 1 };

function fsWith(overrides: Partial<FileSystem>): FileSystem {
  return {
    lookup: () => ENTRY,
    getattr: () => ({ attr: ATTR, attrTimeoutS: 1 }),
    ...overrides,
  };
}

function tick(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

Deno.test("Bridge answers a synchronous value once", () => {
  const bridge = new Bridge(fsWith({}), recordingSink());
  const req = request();
  bridge.lookup(req, 1n, "a");
  assert.deepEqual(req.replies, [["entry", ENTRY]]);
  assert.equal(bridge.lookupCount(5n), 1);
});

Deno.test("Bridge answers an errno number as an error", () => {
  const bridge = new Bridge(fsWith({ lookup: () => ENOENT }), recordingSink());
  const req = request();
  bridge.lookup(req, 1n, "a");
  assert.deepEqual(req.replies, [["err", ENOENT]]);
  assert.equal(bridge.stats.inodes, 0);
});

Deno.test("Bridge turns a thrown exception into EIO, once, and reports it", () => {
  const failures: string[] = [];
  const bridge = new Bridge(
    fsWith({
      getattr: () => {
        throw new Error("boom");
      },
    }),
    recordingSink(),
    { onError: (f) => failures.push(`${f.op}: ${(f.error as Error).message}`) },
  );
  const req = request();
  bridge.getattr(req, 1n);
  assert.deepEqual(req.replies, [["err", EIO]]);
  assert.deepEqual(failures, ["getattr: boom"]);
  assert.equal(bridge.stats.failures, 1);
});

Deno.test("Bridge answers a resolved promise later, once", async () => {
  let resolve!: (entry: Entry) => void;
  const bridge = new Bridge(
    fsWith({ lookup: () => new Promise<Entry>((r) => resolve = r) }),
    recordingSink(),
  );
  const req = request();
  bridge.lookup(req, 1n, "a");
  assert.deepEqual(req.replies, []);
  assert.equal(bridge.pendingCount, 1);
  resolve(ENTRY);
  await tick();
  assert.deepEqual(req.replies, [["entry", ENTRY]]);
  assert.equal(bridge.pendingCount, 0);
  assert.equal(bridge.stats.asyncReplies, 1);
});

Deno.test("Bridge turns a rejected promise into EIO, once", async () => {
  const bridge = new Bridge(
    fsWith({ read: () => Promise.reject(new Error("network down")) }),
    recordingSink(),
    { onError: () => {} },
  );
  const req = request();
  bridge.read(req, 5n, 0, 4096, 0);
  await tick();
  assert.deepEqual(req.replies, [["err", EIO]]);
});

Deno.test("Bridge answers a resolved errno as an error", async () => {
  const bridge = new Bridge(fsWith({ lookup: () => Promise.resolve(ENOENT) }), recordingSink());
  const req = request();
  bridge.lookup(req, 1n, "a");
  await tick();
  assert.deepEqual(req.replies, [["err", ENOENT]]);
});

Deno.test("Bridge.abortPending() answers EIO and ignores later results", async () => {
  let resolve!: (entry: Entry) => void;
  const bridge = new Bridge(
    fsWith({ lookup: () => new Promise<Entry>((r) => resolve = r) }),
    recordingSink(),
  );
  const req = request();
  bridge.lookup(req, 1n, "a");
  bridge.abortPending();
  resolve(ENTRY);
  await tick();
  assert.deepEqual(req.replies, [["err", EIO]]);
  assert.equal(bridge.lookupCount(5n), 0);
});

Deno.test("Bridge calls forget once when the lookup count reaches zero", () => {
  const forgotten: bigint[] = [];
  const bridge = new Bridge(fsWith({ forget: (ino) => forgotten.push(ino) }), recordingSink());
  bridge.lookup(request(1), 1n, "a");
  bridge.lookup(request(2), 1n, "a");
  assert.equal(bridge.lookupCount(5n), 2);
  bridge.forget(5n, 1);
  assert.deepEqual(forgotten, []);
  bridge.forget(5n, 1);
  assert.deepEqual(forgotten, [5n]);
  bridge.forget(5n, 1); // unknown now: ignored
  assert.deepEqual(forgotten, [5n]);
});

Deno.test("Bridge does not count negative entries", () => {
  const bridge = new Bridge(
    fsWith({ lookup: () => ({ ino: 0, entryTimeoutS: 10, attrTimeoutS: 0 }) }),
    recordingSink(),
  );
  const req = request();
  bridge.lookup(req, 1n, "missing");
  assert.equal(req.replies[0][0], "entry");
  assert.equal(bridge.stats.inodes, 0);
});

Deno.test("Bridge counts only packed readdirplus entries, never . and ..", () => {
  const plus = (name: string, ino: bigint): DirEntryPlus => ({
    name,
    entry: { ino, attr: { ...ATTR, ino }, entryTimeoutS: 1, attrTimeoutS: 1 },
  });
  const entries = [plus(".", 1n), plus("..", 1n), plus("a", 7n), plus("b", 8n)];
  const bridge = new Bridge(fsWith({ readdirplus: () => entries }), recordingSink(3));
  const req = request();
  bridge.readdirplus(req, 1n, 0, 0, 4096);
  assert.equal(bridge.lookupCount(1n), 0);
  assert.equal(bridge.lookupCount(7n), 1);
  assert.equal(bridge.lookupCount(8n), 0);
});

Deno.test("Bridge answers xattr requests by default: ENODATA and an empty list", () => {
  const bridge = new Bridge(fsWith({}), recordingSink());
  const a = request();
  bridge.getxattr(a, 1n, "user.x", 0);
  assert.deepEqual(a.replies, [["err", ENODATA]]);
  const b = request();
  bridge.listxattr(b, 1n, 0);
  assert.deepEqual(b.replies, [["xattrSize", 0]]);
});

Deno.test("Bridge handles the xattr size probe and ERANGE", () => {
  const value = new Uint8Array([1, 2, 3, 4]);
  const bridge = new Bridge(fsWith({ getxattr: () => value }), recordingSink());
  const probe = request();
  bridge.getxattr(probe, 1n, "user.x", 0);
  assert.deepEqual(probe.replies, [["xattrSize", 4]]);
  const small = request();
  bridge.getxattr(small, 1n, "user.x", 2);
  assert.deepEqual(small.replies, [["err", ERANGE]]);
  const fits = request();
  bridge.getxattr(fits, 1n, "user.x", 10);
  assert.deepEqual(fits.replies, [["buf", value]]);
});

Deno.test("Bridge answers access 0 as success and release even when the handler throws", () => {
  const bridge = new Bridge(
    fsWith({
      access: () => 0,
      release: () => {
        throw new Error("x");
      },
    }),
    recordingSink(),
    { onError: () => {} },
  );
  const a = request();
  bridge.access(a, 1n, 4);
  assert.deepEqual(a.replies, [["err", 0]]);
  const r = request();
  bridge.release(r, 5n, 3, false);
  assert.deepEqual(r.replies, [["err", 0]]);
});

Deno.test("Bridge trims a read answer to the requested size", () => {
  const bridge = new Bridge(
    fsWith({ read: () => new Uint8Array(100) }),
    recordingSink(),
  );
  const req = request();
  bridge.read(req, 5n, 0, 10, 0);
  assert.equal((req.replies[0][1] as Uint8Array).length, 10);
});

Deno.test("Bridge answers EIO when encoding the reply throws", () => {
  const sink = recordingSink();
  sink.attr = () => {
    throw new RangeError("bad attr");
  };
  const bridge = new Bridge(fsWith({}), sink, { onError: () => {} });
  const req = request();
  bridge.getattr(req, 1n);
  assert.deepEqual(req.replies, [["err", EIO]]);
});
