/**
 * MirrorFs: logic tests calling the handlers directly with a link served from a
 * temp directory, then mount tests through the kernel.
 */
import assert from "node:assert/strict";
import { hashBytes, Store } from "../cas/mod.ts";
import { EIO, ENOENT, ENOSYS, EROFS } from "../fuse/errno.ts";
import { openLibc } from "../fuse/libc.ts";
import { FuseSession, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from "../fuse/mod.ts";
import type {
  DirEntry,
  Entry,
  FdSlice,
  MountedSession,
  OpenReply,
  RequestContext,
} from "../fuse/types.ts";
import { DirLink } from "../worker/_mirror_dir_link.ts";
import { JOB_UID } from "../worker/mirror_cache.ts";
import { MirrorFs, type MirrorOptions } from "../worker/mirror_fs.ts";

const CTX: RequestContext = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
const ROOT = 1n;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A master tree: /src (a.c, b.h, sub/c.h, link -> a.c), /data/big.bin, /tmp/junk. */
async function makeTree(root: string): Promise<Record<string, Uint8Array>> {
  const big = new Uint8Array(3 * 1024 * 1024 + 123);
  for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
  const files: Record<string, Uint8Array> = {
    "/src/a.c": encoder.encode('#include "b.h"\nint main(void) { return B; }\n'),
    "/src/b.h": encoder.encode("#define B 42\n"),
    "/src/sub/c.h": encoder.encode("/* c */\n"),
    "/src/empty.txt": new Uint8Array(0),
    "/data/big.bin": big,
    "/tmp/junk": encoder.encode("hidden by the /tmp mount point\n"),
  };
  for (const [path, bytes] of Object.entries(files)) {
    await Deno.mkdir(root + path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeFile(root + path, bytes);
  }
  for (let i = 0; i < 30; i++) await Deno.writeTextFile(`${root}/src/gen${i}.h`, `// ${i}\n`);
  await Deno.symlink("a.c", `${root}/src/link`);
  return files;
}

interface Fixture extends AsyncDisposable {
  dir: string;
  tree: string;
  files: Record<string, Uint8Array>;
  link: DirLink;
  store: Store;
  fs: MirrorFs;
  newFs(options?: Partial<MirrorOptions>): MirrorFs;
}

async function fixture(options: Partial<MirrorOptions> = {}): Promise<Fixture> {
  const dir = await Deno.makeTempDir({ prefix: "mirror_fs_test_" });
  const tree = `${dir}/tree`;
  const files = await makeTree(tree);
  const link = new DirLink({ root: tree });
  const store = await Store.open({ dir: `${dir}/store`, bytesMax: 256 * 1024 * 1024 });
  const all: MirrorFs[] = [];
  const newFs = (more: Partial<MirrorOptions> = {}) => {
    const fs = new MirrorFs({ link, store, writableRoot: "/src", ...options, ...more });
    all.push(fs);
    return fs;
  };
  const fs = newFs();
  return {
    dir,
    tree,
    files,
    link,
    store,
    fs,
    newFs,
    async [Symbol.asyncDispose]() {
      for (const each of all) await each.close();
      store.close();
      await store.settle();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

async function lookup(fs: MirrorFs, parent: bigint, name: string): Promise<Entry> {
  const entry = await fs.lookup(parent, name, CTX);
  if (typeof entry === "number") throw new Error(`lookup ${name}: errno ${entry}`);
  return entry;
}

/** Looks up every component of an absolute path; returns the last entry. */
async function resolve(fs: MirrorFs, path: string): Promise<Entry> {
  let entry: Entry = { ino: ROOT, entryTimeoutS: 0, attrTimeoutS: 0 };
  for (const name of path.split("/").filter((part) => part !== "")) {
    entry = await lookup(fs, BigInt(entry.ino), name);
    if (entry.ino === 0 || entry.ino === 0n) return entry;
  }
  return entry;
}

/** Opens a file; without open requests (ENOSYS, as the kernel takes it) reads use fh 0. */
async function open(fs: MirrorFs, ino: bigint): Promise<OpenReply> {
  const reply = await fs.open!(ino, 0, CTX);
  if (reply === ENOSYS) return { fh: 0 };
  if (typeof reply === "number") throw new Error(`open: errno ${reply}`);
  return reply;
}

/** Reads a whole file through open/read/release, following FdSlice replies with pread. */
async function readFile(fs: MirrorFs, ino: bigint): Promise<Uint8Array> {
  const { fh } = await open(fs, ino);
  const libc = openLibc();
  const chunks: Uint8Array[] = [];
  let offset = 0;
  try {
    while (true) {
      const reply = await fs.read!(ino, fh!, 128 * 1024, offset, CTX);
      if (typeof reply === "number") throw new Error(`read: errno ${reply}`);
      const slice = reply as FdSlice;
      const buffer = new Uint8Array(slice.size);
      const n = Number(
        libc.symbols.pread(slice.fd, buffer, BigInt(slice.size), BigInt(slice.offset)),
      );
      assert.ok(n >= 0, "pread failed");
      if (n === 0) break;
      chunks.push(buffer.subarray(0, n));
      offset += n;
    }
  } finally {
    if (fh !== 0) fs.release!(ino, fh!);
    libc.close();
  }
  const out = new Uint8Array(offset);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

async function getattrOf(fs: MirrorFs, ino: bigint) {
  const reply = await fs.getattr(ino, CTX);
  if (typeof reply === "number") throw new Error(`getattr: errno ${reply}`);
  return reply.attr;
}

async function listDir(fs: MirrorFs, ino: bigint): Promise<DirEntry[]> {
  const reply = await fs.opendir!(ino, 0, CTX);
  if (typeof reply === "number" && reply !== ENOSYS) throw new Error(`opendir: errno ${reply}`);
  const fh = typeof reply === "number" ? 0 : reply.fh!;
  const entries: DirEntry[] = [];
  while (true) {
    const batch = await fs.readdir!(ino, fh, entries.length, 4096, CTX);
    if (typeof batch === "number") throw new Error(`readdir: errno ${batch}`);
    if (batch.length === 0) break;
    entries.push(...batch);
  }
  if (fh !== 0) fs.releasedir!(ino, fh);
  return entries;
}

/** A session that records invalidations instead of talking to a kernel. */
function recordingSession(): MountedSession & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    mountpoint: "/nonexistent",
    closed: Promise.resolve(),
    stats: { requests: 0, asyncReplies: 0, pending: 0, failures: 0, threadWaits: 0, inodes: 0 },
    notifyInvalEntry(parent: bigint, name: string) {
      calls.push(`entry ${parent} ${name}`);
      return Promise.resolve(0);
    },
    notifyInvalInode(ino: bigint, offset = 0, length = 0) {
      calls.push(`inode ${ino} ${offset} ${length}`);
      return Promise.resolve(0);
    },
    closeOnSignals() {},
    close: () => Promise.resolve(),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

// ---------------------------------------------------------------- logic

Deno.test("lookup() answers a name missing from a fetched directory locally", async () => {
  await using f = await fixture();
  const { fs, link } = f;
  const src = await lookup(fs, ROOT, "src");
  assert.equal(src.attr!.mode & S_IFMT, S_IFDIR);
  const a = await lookup(fs, BigInt(src.ino), "a.c"); // fetches /src whole
  assert.equal(a.attr!.mode & S_IFMT, S_IFREG);
  assert.equal(a.attr!.size, f.files["/src/a.c"].length);
  const dirCalls = link.calls.dir;
  const attrCalls = link.calls.attr;

  const missing = fs.lookup(BigInt(src.ino), "missing.h", CTX);
  assert.ok(!(missing instanceof Promise), "answered without waiting");
  assert.deepEqual(missing, { ino: 0, entryTimeoutS: 3600, attrTimeoutS: 0 });
  const present = fs.lookup(BigInt(src.ino), "b.h", CTX);
  assert.ok(!(present instanceof Promise), "a fetched sibling is answered without waiting");
  assert.equal((present as Entry).attr!.size, f.files["/src/b.h"].length);
  assert.equal(link.calls.dir, dirCalls);
  assert.equal(link.calls.attr, attrCalls);
  assert.equal(fs.stats.negativeLocal, 1);
  assert.equal(fs.stats.lookupsWaited, 2); // "src" in / and "a.c" in /src
});

Deno.test("a directory others may not enter is shown enterable, with every name in it absent", async () => {
  await using f = await fixture();
  const { fs, link, tree } = f;
  const session = recordingSession();
  fs.attach(session);
  // /home 0750 (nothing for others), /data 0705 (others may enter), /src/private
  // 0700 inside the writable root (the job's own): only /home is closed.
  await Deno.mkdir(`${tree}/home/.cargo/bin`, { recursive: true });
  await Deno.writeTextFile(`${tree}/home/.cargo/bin/gcc`, "#!/bin/sh\n");
  await Deno.chmod(`${tree}/home`, 0o750);
  await Deno.chmod(`${tree}/data`, 0o705);
  await Deno.mkdir(`${tree}/src/private`, { mode: 0o700 });
  await Deno.chmod(`${tree}/src/private`, 0o700);
  const home = await lookup(fs, ROOT, "home");
  assert.equal(home.attr!.mode & 0o7777, 0o751, "others may enter, not list");
  assert.equal(home.attr!.uid, 0);
  assert.equal((await getattrOf(fs, BigInt(home.ino))).mode & 0o7777, 0o751);
  assert.equal((await lookup(fs, ROOT, "data")).attr!.mode & 0o7777, 0o705);
  const src = await lookup(fs, ROOT, "src");
  const privateDir = await lookup(fs, BigInt(src.ino), "private");
  assert.equal(privateDir.attr!.mode & 0o7777, 0o700);
  assert.equal(privateDir.attr!.uid, JOB_UID);

  // Whatever the link would list in it (a master lists nothing there): absent,
  // answered at once, and cached by the kernel as absent.
  const calls = { ...link.calls };
  const negativeBefore = fs.stats.negativeLocal;
  for (const name of [".cargo", "gcc", ".cargo"]) {
    const missing = fs.lookup(BigInt(home.ino), name, CTX);
    assert.ok(!(missing instanceof Promise), "answered without waiting");
    assert.deepEqual(missing, { ino: 0, entryTimeoutS: 3600, attrTimeoutS: 0 }, name);
  }
  assert.deepEqual(link.calls, calls, "no call to the master");
  assert.equal(fs.stats.negativeLocal - negativeBefore, 3);

  // Opened to others, it is an ordinary directory again: the kernel forgets
  // the names it held absent there.
  await Deno.chmod(`${tree}/home`, 0o755);
  await fs.applyUpdates([await link.attr("/home", { withHash: false })]);
  assert.ok(session.calls.includes(`entry ${home.ino} .cargo`), session.calls.join("; "));
  assert.ok(session.calls.includes(`entry ${home.ino} gcc`), session.calls.join("; "));
  const reopened = await lookup(fs, ROOT, "home");
  assert.equal(reopened.attr!.mode & 0o7777, 0o755);
  const cargo = await lookup(fs, BigInt(reopened.ino), ".cargo");
  assert.notEqual(cargo.ino, 0);

  // Closed again: what a job could reach there is forgotten, by the kernel too.
  session.calls.length = 0;
  await Deno.chmod(`${tree}/home`, 0o700);
  await fs.applyUpdates([await link.attr("/home", { withHash: false })]);
  assert.ok(session.calls.includes(`entry ${home.ino} .cargo`), session.calls.join("; "));
  assert.equal((await lookup(fs, BigInt(home.ino), ".cargo")).ino, 0);
  assert.equal((await getattrOf(fs, BigInt(home.ino))).mode & 0o7777, 0o701);
});

Deno.test("20 concurrent lookups in one uncached directory fetch it once", async () => {
  await using f = await fixture();
  const { fs, link } = f;
  const src = await lookup(fs, ROOT, "src");
  const before = link.calls.dir;
  const names = [...Array.from({ length: 16 }, (_, i) => `gen${i}.h`), "a", "b", "c", "d"];
  const entries = await Promise.all(names.map((name) => lookup(fs, BigInt(src.ino), name)));
  assert.equal(link.calls.dir - before, 1);
  assert.equal(entries.filter((entry) => entry.ino !== 0).length, 16);
  assert.equal(entries.filter((entry) => entry.ino === 0).length, 4);
  assert.equal(new Set(entries.map((entry) => entry.ino)).size, 17); // 16 ids and 0
});

for (const zeroOpen of [true, false]) {
  Deno.test(`open() and read() return exact bytes; getattr, readlink and readdir match (zeroOpen ${zeroOpen})`, async () => {
    await using f = await fixture({ zeroOpen });
    const { fs } = f;
    for (const path of ["/src/a.c", "/src/empty.txt", "/data/big.bin", "/src/sub/c.h"]) {
      const entry = await resolve(fs, path);
      assert.ok(entry.ino !== 0, path);
      assert.deepEqual(await readFile(fs, BigInt(entry.ino)), f.files[path], path);
      const attr = await getattrOf(fs, BigInt(entry.ino));
      const info = await Deno.stat(f.tree + path);
      assert.equal(attr.size, info.size);
      assert.equal(attr.mode & 0o7777, info.mode! & 0o7777);
      assert.equal(Math.floor(attr.mtimeMs), info.mtime!.getTime());
      assert.equal(attr.uid, path.startsWith("/src/") ? JOB_UID : 0);
    }
    const link = await resolve(fs, "/src/link");
    assert.equal(link.attr!.mode & S_IFMT, S_IFLNK);
    assert.equal(await fs.readlink!(BigInt(link.ino), CTX), "a.c");
    const src = await resolve(fs, "/src");
    const names = (await listDir(fs, BigInt(src.ino))).map((entry) => entry.name).sort();
    const expected = [".", ".."];
    for await (const entry of Deno.readDir(`${f.tree}/src`)) expected.push(entry.name);
    assert.deepEqual(names, expected.sort());
    const a = await resolve(fs, "/src/a.c");
    assert.equal(await fs.open!(BigInt(a.ino), 1, /* O_WRONLY */ CTX), EROFS);
  });
}

Deno.test("readdirplus() answers lookups for what fits, with the ids lookup() gives", async () => {
  await using f = await fixture();
  const { fs } = f;
  const src = await resolve(fs, "/src");
  const sizeMax = 4096;
  const first = await fs.readdirplus!(BigInt(src.ino), 0, 0, sizeMax, CTX);
  assert.ok(typeof first !== "number");
  // 152 bytes per entry plus the name rounded up to 8.
  const bytes = first.reduce((sum, { name }) => sum + 152 + ((name.length + 7) & ~7), 0);
  assert.ok(bytes <= sizeMax && bytes + 160 > sizeMax, `${first.length} entries, ${bytes} bytes`);
  assert.deepEqual(first.slice(0, 2).map(({ name, entry }) => [name, entry.ino]), [
    [".", 0],
    ["..", 0],
  ]);
  const rest = await fs.readdirplus!(BigInt(src.ino), 0, first.length, 1 << 20, CTX);
  assert.ok(typeof rest !== "number");
  const all = [...first, ...rest];
  assert.equal(all.length, 2 + 35);
  for (const { name, entry } of all.slice(2)) {
    const looked = await lookup(fs, BigInt(src.ino), name);
    assert.equal(entry.ino, looked.ino, name);
    assert.deepEqual(entry.attr, looked.attr, name);
  }
  assert.equal(fs.getxattr!(BigInt(src.ino), "user.x", CTX), ENOSYS);
  assert.deepEqual(fs.listxattr!(BigInt(src.ino), CTX), []);
});

Deno.test("without open requests, blob descriptors stay under blobFdsMax and unpin", async () => {
  await using f = await fixture({ blobFdsMax: 2, prefetchBytesMax: 0 });
  const { fs, store } = f;
  const paths = ["/src/a.c", "/src/b.h", "/src/sub/c.h", "/data/big.bin"];
  for (const path of paths) {
    const entry = await resolve(fs, path);
    assert.deepEqual(await readFile(fs, BigInt(entry.ino)), f.files[path]);
  }
  await new Promise((resolve) => setTimeout(resolve, 0)); // closes run after the replies
  assert.equal(fs.stats.handles, 2);
  const pinned = paths.filter((path) => store.isPinned(hashBytes(f.files[path])));
  assert.deepEqual(pinned, ["/src/sub/c.h", "/data/big.bin"]);
  // A file whose descriptor was dropped is opened again.
  const a = await resolve(fs, "/src/a.c");
  assert.deepEqual(await readFile(fs, BigInt(a.ino)), f.files["/src/a.c"]);
  assert.equal(f.link.calls.blob, 4);
});

Deno.test("mount points are empty directories whatever the master has there", async () => {
  await using f = await fixture();
  const { fs } = f;
  const root = (await listDir(fs, ROOT)).map((entry) => entry.name).sort();
  assert.deepEqual(root, [".", "..", "data", "dev", "proc", "src", "sys", "tmp"]);
  const tmp = await lookup(fs, ROOT, "tmp");
  assert.equal(tmp.attr!.mode, S_IFDIR | 0o1777);
  assert.deepEqual((await listDir(fs, BigInt(tmp.ino))).map((entry) => entry.name), [".", ".."]);
  assert.equal((await lookup(fs, BigInt(tmp.ino), "junk")).ino, 0);
});

for (const zeroOpen of [true, false]) {
  Deno.test(`a blob is fetched once across two opens and two mirrors sharing a store (zeroOpen ${zeroOpen})`, async () => {
    await using f = await fixture({ prefetchBytesMax: 0, zeroOpen });
    const first = await resolve(f.fs, "/data/big.bin");
    await readFile(f.fs, BigInt(first.ino));
    await readFile(f.fs, BigInt(first.ino));
    assert.equal(f.link.calls.blob, 1);
    const other = f.newFs({ prefetchBytesMax: 0 });
    const second = await resolve(other, "/data/big.bin");
    assert.deepEqual(await readFile(other, BigInt(second.ino)), f.files["/data/big.bin"]);
    assert.equal(f.link.calls.blob, 1);
    assert.equal(f.fs.stats.blobFetches + other.stats.blobFetches, 1);
    assert.equal(f.fs.stats.blobBytes, f.files["/data/big.bin"].length);
    const hash = hashBytes(f.files["/data/big.bin"]);
    if (zeroOpen) {
      assert.equal(f.store.isPinned(hash), true, "pinned while its descriptor is cached");
      f.fs.forget(BigInt(first.ino));
      other.forget(BigInt(second.ino));
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    assert.equal(f.store.isPinned(hash), false);
  });
}

Deno.test("a lookup starts fetching the content in the background", async () => {
  await using f = await fixture();
  const hash = hashBytes(f.files["/src/b.h"]);
  const entry = await resolve(f.fs, "/src/b.h");
  for (let i = 0; i < 500 && f.store.sizeOf(hash) === undefined; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(f.store.sizeOf(hash), f.files["/src/b.h"].length);
  assert.equal(f.link.calls.blob, 1);
  assert.deepEqual(await readFile(f.fs, BigInt(entry.ino)), f.files["/src/b.h"]);
  assert.equal(f.link.calls.blob, 1);
  assert.equal(f.fs.stats.prefetches, 1);
});

Deno.test("close() stops prefetches and link calls in flight; later requests answer EIO", async () => {
  await using f = await fixture();
  const src = await resolve(f.fs, "/src");
  await lookup(f.fs, BigInt(src.ino), "a.c"); // starts a prefetch
  const local = f.fs.lookup(BigInt(src.ino), "zzz", CTX);
  assert.equal((local as Entry).ino, 0);
  const data = await lookup(f.fs, ROOT, "data");
  const waiting = f.fs.lookup(BigInt(data.ino), "big.bin", CTX);
  assert.ok(waiting instanceof Promise);
  await f.fs.close();
  assert.equal(await waiting, EIO);
  assert.equal(f.fs.lookup(ROOT, "src", CTX), EIO);
});

Deno.test("applyUpdates() changes what getattr returns and invalidates the kernel's caches", async () => {
  await using f = await fixture();
  const { fs, link } = f;
  const session = recordingSession();
  fs.attach(session);
  const src = await resolve(fs, "/src");
  const b = await resolve(fs, "/src/b.h");
  assert.equal(decoder.decode(await readFile(fs, BigInt(b.ino))), "#define B 42\n");
  assert.equal((await lookup(fs, BigInt(src.ino), "new.h")).ino, 0);

  // Changed content.
  await Deno.writeTextFile(`${f.tree}/src/b.h`, "#define B 4242\n");
  // A new file, and the directory listing that has it.
  await Deno.writeTextFile(`${f.tree}/src/new.h`, "new\n");
  const updates = await Promise.all(
    ["/src/b.h", "/src/new.h", "/src"].map((path) => link.attr(path, { withHash: false })),
  );
  const calls = link.calls.attr + link.calls.dir;
  await fs.applyUpdates(updates);
  const attr = await getattrOf(fs, BigInt(b.ino));
  assert.equal(attr.size, "#define B 4242\n".length);
  assert.ok(session.calls.includes(`inode ${b.ino} 0 0`), session.calls.join("; "));
  assert.ok(session.calls.includes(`entry ${src.ino} b.h`), session.calls.join("; "));
  assert.ok(session.calls.includes(`entry ${src.ino} new.h`), session.calls.join("; "));
  const added = fs.lookup(BigInt(src.ino), "new.h", CTX);
  assert.ok(!(added instanceof Promise) && typeof added !== "number" && added.ino !== 0);
  assert.equal(link.calls.attr + link.calls.dir, calls, "no fetch after the push");
  assert.equal(decoder.decode(await readFile(fs, BigInt(b.ino))), "#define B 4242\n");

  // Deletion of a directory: gone with its subtree, answered locally.
  session.calls.length = 0;
  const sub = await resolve(fs, "/src/sub");
  await resolve(fs, "/src/sub/c.h");
  await fs.applyUpdates([{ path: "/src/sub", kind: null, mode: 0, size: 0, mtimeMs: 0 }]);
  assert.deepEqual(session.calls, [`entry ${src.ino} sub`]);
  assert.deepEqual(fs.lookup(BigInt(src.ino), "sub", CTX), {
    ino: 0,
    entryTimeoutS: 3600,
    attrTimeoutS: 0,
  });
  // The kernel may still hold the deleted directory: its attrs stay, its children are gone.
  assert.equal((await getattrOf(fs, BigInt(sub.ino))).mode & S_IFMT, S_IFDIR);
  assert.equal(fs.lookup(BigInt(sub.ino), "c.h", CTX), ENOENT);

  // Mode change only: attributes invalidated, not data.
  session.calls.length = 0;
  const a = await resolve(fs, "/src/a.c");
  const aAttr = await link.attr("/src/a.c", { withHash: false });
  await fs.applyUpdates([{ ...aAttr, mode: 0o600 }]);
  assert.deepEqual(session.calls, [`inode ${a.ino} -1 0`]);
  assert.equal((await getattrOf(fs, BigInt(a.ino))).mode, S_IFREG | 0o600);
});

Deno.test("a listing read before an update but received after it does not undo the update", async () => {
  await using f = await fixture({ prefetchBytesMax: 0 });
  const { fs, link } = f;
  fs.attach(recordingSession());
  // The master reads / (with /src's listing), then, before its answer
  // arrives, makes new.h, removes b.h and pushes that: the late answer must
  // not put back the old listing.
  const dir = link.dir.bind(link);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  let read!: () => void;
  const wasRead = new Promise<void>((resolve) => read = resolve);
  let gated = false;
  link.dir = async (path, options) => {
    const attrs = await dir(path, options);
    if (path === "/" && !gated) {
      gated = true;
      read();
      await gate;
    }
    return attrs;
  };
  const answer = resolve(fs, "/src/new.h");
  await wasRead;
  await Deno.writeTextFile(`${f.tree}/src/new.h`, "new\n");
  await Deno.remove(`${f.tree}/src/b.h`);
  const updates = await Promise.all(
    ["/src/new.h", "/src/b.h", "/src"].map((path) => link.attr(path, { withHash: false })),
  );
  await fs.applyUpdates(updates);
  release();
  const entry = await answer;
  assert.ok(entry.ino !== 0, "new.h is there");
  const src = await resolve(fs, "/src");
  const names = (await listDir(fs, BigInt(src.ino))).map((e) => e.name);
  assert.ok(names.includes("new.h"), names.join(" "));
  assert.ok(!names.includes("b.h"), names.join(" "));
  const gone = await fs.lookup(BigInt(src.ino), "b.h", CTX);
  assert.ok(typeof gone === "number" || gone.ino === 0);
  assert.ok(fs.stats.replayed >= 3);
});

Deno.test("reset() drops cached attributes and invalidates what the kernel holds", async () => {
  await using f = await fixture({ prefetchBytesMax: 0 });
  const { fs, link } = f;
  const session = recordingSession();
  fs.attach(session);
  const src = await resolve(fs, "/src");
  const a = await resolve(fs, "/src/a.c");
  assert.equal((await lookup(fs, BigInt(src.ino), "nope")).ino, 0);
  await Deno.writeTextFile(`${f.tree}/src/a.c`, "changed while the log overflowed\n");
  await fs.reset();
  assert.ok(session.calls.includes(`inode ${a.ino} 0 0`));
  assert.ok(session.calls.includes(`entry ${src.ino} a.c`));
  assert.ok(session.calls.includes(`entry ${src.ino} nope`));
  const attrCalls = link.calls.attr;
  const attr = await getattrOf(fs, BigInt(a.ino));
  assert.equal(link.calls.attr, attrCalls + 1);
  assert.equal(attr.size, "changed while the log overflowed\n".length);
  const again = await lookup(fs, BigInt(src.ino), "a.c");
  assert.equal(again.ino, a.ino, "node ids the kernel holds stay valid");
  assert.equal(
    decoder.decode(await readFile(fs, BigInt(a.ino))),
    "changed while the log overflowed\n",
  );
});

for (const zeroOpen of [true, false]) {
  Deno.test(`a corrupt blob answers EIO, and works once the link is fixed (zeroOpen ${zeroOpen})`, async () => {
    await using f = await fixture({ prefetchBytesMax: 0, zeroOpen });
    const { fs, link } = f;
    const entry = await resolve(fs, "/src/a.c");
    link.corrupt = true;
    const failed = zeroOpen
      ? await fs.read!(BigInt(entry.ino), 0, 4096, 0, CTX) // the first read fetches
      : await fs.open!(BigInt(entry.ino), 0, CTX);
    assert.equal(failed, EIO);
    assert.equal(fs.stats.errors, 1);
    assert.equal(f.store.sizeOf(hashBytes(f.files["/src/a.c"])), undefined);
    link.corrupt = false;
    assert.deepEqual(await readFile(fs, BigInt(entry.ino)), f.files["/src/a.c"]);
  });
}

Deno.test("link failures answer EIO and are retried on the next request", async () => {
  await using f = await fixture();
  const { fs, link } = f;
  link.broken = true;
  assert.equal(await fs.lookup(ROOT, "src", CTX), EIO);
  assert.equal(await fs.getattr(ROOT, CTX), EIO);
  link.broken = false;
  const src = await lookup(fs, ROOT, "src");
  assert.equal(src.attr!.mode & S_IFMT, S_IFDIR);
});

Deno.test("the attribute cache stays under entriesMax, dropping unreferenced entries", async () => {
  await using f = await fixture({ entriesMax: 20 });
  const { fs } = f;
  const src = await resolve(fs, "/src"); // /src has 35 entries
  await lookup(fs, BigInt(src.ino), "a.c");
  assert.ok(fs.stats.entries <= 20 + 7, `entries ${fs.stats.entries}`);
  for (let i = 0; i < 30; i++) {
    const entry = await lookup(fs, BigInt(src.ino), `gen${i}.h`);
    assert.ok(entry.ino !== 0, `gen${i}.h`);
    fs.forget(BigInt(entry.ino)); // the kernel lets go at once
  }
  assert.ok(fs.stats.entries <= 40, `entries ${fs.stats.entries}`);
  assert.equal((await lookup(fs, BigInt(src.ino), "nothere")).ino, 0);
});

// ---------------------------------------------------------------- mounted

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[]): Promise<Run> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

async function ok(cmd: string, ...args: string[]): Promise<string> {
  const result = await run(cmd, args);
  assert.equal(result.code, 0, `${cmd} ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

const MOUNT_CONFIGS: { label: string; options: Partial<MirrorOptions> }[] = [
  { label: "defaults", options: {} },
  { label: "open requests, no readdirplus", options: { zeroOpen: false, readdirPlus: false } },
];

for (const { label, options } of MOUNT_CONFIGS) {
  Deno.test(`MirrorFs mounted (${label}): cat, ls, stat, readlink, updates, nobody, gcc`, async (t) => {
    // The source tree lives outside /tmp (a mount point of the mirror); the mount inside it.
    const tree = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "mirror_fs_src_" });
    const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "mirror_fs_mnt_" });
    await Deno.chmod(tree, 0o755);
    await Deno.chmod(dir, 0o755);
    const mnt = `${dir}/mnt`;
    await Deno.mkdir(mnt);
    const store = await Store.open({ dir: `${dir}/store`, bytesMax: 512 * 1024 * 1024 });
    const link = new DirLink({ root: "/", excludes: [dir, "/proc", "/sys", "/dev"] });
    const fs = new MirrorFs({ link, store, writableRoot: `${tree}/out`, ...options });
    let session: FuseSession | undefined;
    try {
      const files = await makeTree(tree);
      await Deno.chmod(`${tree}/src/b.h`, 0o600);
      await Deno.mkdir(`${tree}/out`);
      await Deno.writeTextFile(`${tree}/out/o.txt`, "out\n");
      session = await FuseSession.mount(fs, {
        mountpoint: mnt,
        fsName: "mirror_test",
        subtype: "termite",
        allowOther: true,
        defaultPermissions: true,
        readOnly: true,
      });
      fs.attach(session);
      const m = (path: string) => `${mnt}${path}`;

      await t.step("cat gives the source bytes", async () => {
        for (const path of ["/src/a.c", "/src/b.h", "/data/big.bin", "/src/empty.txt"]) {
          assert.deepEqual(await Deno.readFile(m(tree + path)), files[path], path);
        }
      });

      await t.step("ls -lA, stat and readlink match the source", async () => {
        const strip = (text: string) =>
          text.split("\n").filter((line) => line !== "" && !line.startsWith("total")).map((line) =>
            line.split(/\s+/).filter((_, i) => i !== 1).join(" ") // nlink differs
          ).join("\n");
        for (const sub of ["/src", "/data"]) {
          const local = await ok("ls", "-lA", "--time-style=+%s", tree + sub);
          const mirrored = await ok("ls", "-lA", "--time-style=+%s", m(tree + sub));
          assert.equal(strip(mirrored), strip(local), sub);
        }
        const format = "%F %a %s %Y %u %g";
        for (const path of ["/src/a.c", "/src/link", "/src/sub", "/data/big.bin"]) {
          const local = await ok("stat", "-c", format, tree + path);
          assert.equal(await ok("stat", "-c", format, m(tree + path)), local, path);
        }
        assert.equal(await ok("readlink", m(`${tree}/src/link`)), "a.c\n");
        assert.equal(await ok("stat", "-c", "%u:%g", m(`${tree}/out/o.txt`)), "65534:65534\n");
        assert.equal(await ok("ls", "-A", m("/proc")), "");
        assert.equal((await run("ls", [m(`${tree}/src/nothere.h`)])).code, 2);
      });

      await t.step("a change pushed with applyUpdates shows despite long timeouts", async () => {
        const path = `${tree}/src/a.c`;
        assert.equal(await Deno.readTextFile(m(path)), decoder.decode(files["/src/a.c"]));
        const newer = "int main(void) { return 7; } /* longer than before */\n";
        await Deno.writeTextFile(path, newer);
        await Deno.writeTextFile(`${tree}/src/added.h`, "added\n");
        assert.equal((await run("cat", [m(`${tree}/src/added.h`)])).code, 1, "negative cached");
        const updates = await Promise.all(
          [path, `${tree}/src/added.h`, `${tree}/src`].map((p) =>
            link.attr(p, { withHash: false })
          ),
        );
        await fs.applyUpdates(updates);
        assert.equal(await Deno.readTextFile(m(path)), newer);
        assert.equal((await Deno.stat(m(path))).size, newer.length);
        assert.equal(await Deno.readTextFile(m(`${tree}/src/added.h`)), "added\n");
        await Deno.remove(`${tree}/src/added.h`);
        await fs.applyUpdates([await link.attr(`${tree}/src/added.h`, { withHash: false })]);
        assert.equal((await run("cat", [m(`${tree}/src/added.h`)])).code, 1, "deleted");
      });

      await t.step("user nobody reads world-readable files and not private ones", async () => {
        const as = ["--reuid=65534", "--regid=65534", "--clear-groups", "cat"];
        const world = await run("setpriv", [...as, m(`${tree}/src/sub/c.h`)]);
        assert.equal(world.code, 0, world.stderr);
        assert.equal(world.stdout, "/* c */\n");
        const secret = await run("setpriv", [...as, m(`${tree}/src/b.h`)]);
        assert.notEqual(secret.code, 0);
        assert.match(secret.stderr, /Permission denied/);
      });

      await t.step("nobody finds no name in a closed directory, and asks once", async () => {
        await Deno.mkdir(`${tree}/home/.local/bin`, { recursive: true });
        await Deno.writeTextFile(`${tree}/home/.local/bin/tool`, "#!/bin/sh\n", { mode: 0o755 });
        await Deno.chmod(`${tree}/home`, 0o700);
        await fs.applyUpdates(
          await Promise.all([tree, `${tree}/home`].map((p) => link.attr(p, { withHash: false }))),
        );
        const as = ["--reuid=65534", "--regid=65534", "--clear-groups"];
        const probe = () => run("setpriv", [...as, "stat", m(`${tree}/home/.local/bin/tool`)]);
        const first = await probe();
        assert.equal(first.code, 1);
        assert.match(first.stderr, /No such file or directory/);
        const requests = session!.stats.requests;
        for (let i = 0; i < 3; i++) assert.match((await probe()).stderr, /No such file/);
        assert.equal(session!.stats.requests, requests, "answered from the kernel's cache");
        assert.match(await ok("stat", "-c", "%a", m(`${tree}/home`)), /^701\n$/);
        const list = await run("setpriv", [...as, "ls", m(`${tree}/home`)]);
        assert.match(list.stderr, /Permission denied/, "others may still not list it");
      });

      await t.step(
        "gcc compiles with headers from the mirror, same object as locally",
        async () => {
          const source = `${dir}/hello.c`;
          await Deno.writeTextFile(
            source,
            "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <stddef.h>\n" +
              'int main(int argc, char **argv) { printf("%zu\\n", strlen(argv[0]) + offsetof(struct { int a; long b; }, b)); return EXIT_SUCCESS; }\n',
          );
          const gccInclude = (await ok("gcc", "-print-file-name=include")).trim();
          const includes = (prefix: string) =>
            [gccInclude, "/usr/include/x86_64-linux-gnu", "/usr/include"].flatMap((path) => [
              "-isystem",
              prefix + path,
            ]);
          await ok(
            "gcc",
            "-c",
            "-O2",
            "-nostdinc",
            ...includes(""),
            source,
            "-o",
            `${dir}/local.o`,
          );
          await ok(
            "gcc",
            "-c",
            "-O2",
            "-nostdinc",
            ...includes(mnt),
            source,
            "-o",
            `${dir}/mirror.o`,
          );
          const deps = await ok("gcc", "-M", "-nostdinc", ...includes(mnt), source);
          assert.ok(deps.includes(`${mnt}/usr/include/stdio.h`), "headers came through the mirror");
          assert.deepEqual(
            await Deno.readFile(`${dir}/mirror.o`),
            await Deno.readFile(`${dir}/local.o`),
          );
        },
      );
      await t.step("an overlay over the mirror takes writes and shows the mirror", async () => {
        const [upper, work, merged] = ["upper", "work", "merged"].map((name) => `${dir}/${name}`);
        for (const path of [upper, work, merged]) await Deno.mkdir(path);
        const lower = m(tree);
        await ok(
          "mount",
          "-t",
          "overlay",
          "overlay",
          "-o",
          `lowerdir=${lower},upperdir=${upper},workdir=${work}`,
          merged,
        );
        try {
          assert.deepEqual(await Deno.readFile(`${merged}/src/sub/c.h`), files["/src/sub/c.h"]);
          await Deno.writeTextFile(`${merged}/src/sub/c.h`, "written\n");
          await Deno.writeTextFile(`${merged}/out/new.txt`, "new\n");
          assert.equal(await Deno.readTextFile(`${upper}/src/sub/c.h`), "written\n");
          assert.equal(await Deno.readTextFile(`${merged}/out/new.txt`), "new\n");
          assert.deepEqual(await Deno.readFile(`${lower}/src/sub/c.h`), files["/src/sub/c.h"]);
        } finally {
          await ok("umount", merged);
        }
      });
      assert.ok(fs.stats.lookupsWaited < fs.stats.lookups);
    } finally {
      await session?.close();
      await fs.close();
      store.close();
      await store.settle();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(tree, { recursive: true });
    }
  });
}
