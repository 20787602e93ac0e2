/**
 * Contents from the worker host's own files (worker/host_files.ts): only
 * public system files are tried; a copy is kept only when it hashes as
 * announced, so a host file that differs, or changes during the copy, is
 * refused and the blob fetched as usual; the memo is bounded. Then through a
 * real FUSE mirror, and a real farm whose compile gets cc1 from the host.
 */
import assert from "node:assert/strict";
import { hashBytes, Store, type StoreSink } from "../cas/mod.ts";
import { FuseSession } from "../fuse/mod.ts";
import { DirLink } from "../worker/_mirror_dir_link.ts";
import { HostFiles } from "../worker/host_files.ts";
import { MirrorFs } from "../worker/mirror_fs.ts";
import { Farm, ROOT, runIn } from "../farm/mod.ts";

const encoder = new TextEncoder();

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let at = 0; at < n; at += 65_536) crypto.getRandomValues(bytes.subarray(at, at + 65_536));
  return bytes;
}

/** Writes `bytes` at `root + path`, making its directories (root-owned, 0755 under umask 022). */
async function put(root: string, path: string, bytes: Uint8Array, mode = 0o644): Promise<void> {
  await Deno.mkdir(root + path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o755 });
  await Deno.writeFile(root + path, bytes);
  await Deno.chmod(root + path, mode);
}

/** A temp dir as a host's "/" (root-owned, 0755). */
async function hostRoot(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  await Deno.chmod(dir, 0o755);
  return dir;
}

Deno.test("HostFiles.open() takes only public system files of the announced size", async () => {
  const root = await hostRoot("host_files_open_");
  try {
    const bytes = encoder.encode("public bytes\n");
    const hash = hashBytes(bytes);
    const ok = "/usr/lib/ok.so";
    await put(root, ok, bytes);
    await put(root, "/var/lib/x.so", bytes);
    await put(root, "/usr/cache/x.so", bytes);
    await put(root, "/usr/lib/private.so", bytes, 0o640);
    await put(root, "/usr/lib/group-writable.so", bytes, 0o664);
    await put(root, "/usr/lib/nobodys.so", bytes);
    await Deno.chown(`${root}/usr/lib/nobodys.so`, 65534, 65534);
    await Deno.symlink("ok.so", `${root}/usr/lib/link.so`);
    await Deno.symlink("lib", `${root}/usr/linked`);
    await put(root, "/usr/shut/x.so", bytes);
    await Deno.chmod(`${root}/usr/shut`, 0o750);
    await put(root, "/usr/open/x.so", bytes);
    await Deno.chmod(`${root}/usr/open`, 0o777);
    await put(root, "/usr/owned/x.so", bytes);
    await Deno.chown(`${root}/usr/owned`, 65534, 65534);
    await new Deno.Command("mkfifo", { args: [`${root}/usr/lib/fifo`] }).output();
    const host = new HostFiles({ root, prefixes: ["/usr", "/opt"], exclude: ["/usr/cache"] });

    const taken = await host.open(ok, hash, bytes.length);
    assert.ok(taken !== undefined, "a public system file is taken");
    taken.file.close();
    const declined: [string, number][] = [
      ["/var/lib/x.so", bytes.length], // not a system prefix
      ["/usr/cache/x.so", bytes.length], // excluded (the worker's own)
      ["/usr/lib/private.so", bytes.length], // not readable by others
      ["/usr/lib/group-writable.so", bytes.length],
      ["/usr/lib/nobodys.so", bytes.length], // not root's
      ["/usr/lib/link.so", bytes.length], // a symlink, even to a good file
      ["/usr/linked/ok.so", bytes.length], // through a symlinked directory
      ["/usr/shut/x.so", bytes.length], // a directory others cannot search
      ["/usr/open/x.so", bytes.length], // a directory others can write
      ["/usr/owned/x.so", bytes.length], // a directory not root's
      ["/usr/lib/fifo", 0], // not a regular file (and opening it does not block)
      [ok, bytes.length + 1], // another size than announced
      ["/usr/lib/../lib/ok.so", bytes.length], // not normalised
      ["/usr//lib/ok.so", bytes.length],
      ["/usr/lib/missing.so", 1],
      ["usr/lib/ok.so", bytes.length],
      ["/usr", 0],
    ];
    for (const [path, size] of declined) {
      assert.equal(await host.open(path, hash, size), undefined, path);
    }
    assert.throws(() => new HostFiles({ prefixes: ["/"] }), /not \//);
    assert.throws(() => new HostFiles({ prefixes: ["/usr/"] }), /normalised/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** A store and a host root for fetcher tests. */
async function withStore(
  fn: (t: { root: string; store: Store }) => Promise<void>,
): Promise<void> {
  const root = await hostRoot("host_files_store_");
  const dir = await Deno.makeTempDir({ prefix: "host_files_cas_" });
  const store = await Store.open({ dir, bytesMax: 64 * 1024 * 1024 });
  try {
    await fn({ root, store });
  } finally {
    store.close();
    await store.settle();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(root, { recursive: true });
  }
}

/** A fallback fetcher sending `bytes` (the master's), counting its calls. */
function masterFetcher(bytes: Uint8Array) {
  const calls = { n: 0 };
  return {
    calls,
    fetcher: async (_hash: string, sink: StoreSink) => {
      calls.n++;
      await sink.write(bytes);
    },
  };
}

Deno.test("a host file that hashes as announced is copied; one that differs is refused and fetched", async () => {
  await withStore(async ({ root, store }) => {
    const master = randomBytes(300_000);
    const hash = hashBytes(master);
    const host = new HostFiles({ root });
    const path = "/usr/lib/x86_64-linux-gnu/libsame.so";
    await put(root, path, master);
    const fallback = masterFetcher(master);
    const copied: number[] = [];
    const fetcher = host.fetcher({ path, size: master.length }, fallback.fetcher, {
      copied: (n) => copied.push(n),
    });
    await store.ensure(hash, fetcher);
    assert.deepEqual(await store.readBytes(hash), master);
    assert.equal(fallback.calls.n, 0, "nothing fetched");
    assert.deepEqual(copied, [master.length]);
    assert.equal(host.stats.blobs, 1);
    assert.equal(host.stats.bytes, master.length);

    // The store holds a copy: the host file changing afterwards changes nothing served.
    await Deno.writeFile(root + path, randomBytes(master.length));
    assert.deepEqual(await store.readBytes(hash), master);

    // Same path, same size, other bytes (a host installed differently): refused, fetched.
    const other = randomBytes(200_000);
    const otherHash = hashBytes(other);
    const differs = "/usr/bin/cc1-differs";
    await put(root, differs, randomBytes(other.length));
    const fallback2 = masterFetcher(other);
    await store.ensure(
      otherHash,
      host.fetcher({ path: differs, size: other.length }, fallback2.fetcher),
    );
    assert.deepEqual(await store.readBytes(otherHash), other, "the master's bytes, not the host's");
    assert.equal(fallback2.calls.n, 1);
    assert.equal(host.stats.mismatched, 1);
    assert.equal(host.stats.blobs, 1);
  });
});

Deno.test("a host file that changes during its copy is refused and the blob fetched as usual", async () => {
  await withStore(async ({ root, store }) => {
    const master = randomBytes(3 * 1024 * 1024 + 5);
    const hash = hashBytes(master);
    const path = "/opt/tool/bin/big";
    await put(root, path, master);
    const host = new HostFiles({ root });
    const fallback = masterFetcher(master);
    const inner = host.fetcher({ path, size: master.length }, fallback.fetcher);
    let writes = 0;
    // After the first chunk has been copied, the file is rewritten in place (same inode, same size).
    const changing = async (h: string, sink: StoreSink, signal: AbortSignal) => {
      const watched: StoreSink = {
        write: async (chunk) => {
          await sink.write(chunk);
          if (++writes === 1 && fallback.calls.n === 0) {
            const file = await Deno.open(root + path, { write: true });
            await file.seek(2 * 1024 * 1024, Deno.SeekMode.Start);
            await file.write(randomBytes(4096));
            file.close();
          }
        },
        digest: () => sink.digest(),
        restart: () => sink.restart(),
      };
      await inner(h, watched, signal);
    };
    await store.ensure(hash, changing);
    assert.ok(writes > 1, "the copy went on after the change");
    assert.equal(fallback.calls.n, 1, "then the master's bytes were fetched");
    assert.deepEqual(await store.readBytes(hash, { bytesMax: master.length }), master);
    assert.equal(host.stats.blobs, 0);
    assert.equal(host.stats.mismatched, 1);
  });
});

Deno.test("the memo skips a host file known to differ, until it changes, and stays under memoMax", async () => {
  await withStore(async ({ root, store }) => {
    const host = new HostFiles({ root, memoMax: 2 });
    const master = randomBytes(10_000);
    const hash = hashBytes(master);
    const path = "/usr/lib/differs.so";
    await put(root, path, randomBytes(master.length));
    const source = { path, size: master.length };
    const fallback = masterFetcher(master);
    await store.ensure(hash, host.fetcher(source, fallback.fetcher));
    assert.equal(host.stats.mismatched, 1);
    assert.equal(await host.open(path, hash, master.length), undefined, "known to differ");
    assert.equal(host.stats.memoSkips, 1);
    // Changed (a new ctime): tried again.
    await Deno.writeFile(root + path, master);
    const again = await host.open(path, hash, master.length);
    assert.ok(again !== undefined, "a changed file is tried again");
    again.file.close();

    const hashes: string[] = [];
    for (let i = 0; i < 4; i++) {
      const bytes = randomBytes(1000 + i);
      hashes.push(hashBytes(bytes));
      await put(root, `/usr/lib/m${i}.so`, randomBytes(bytes.length));
      const source = { path: `/usr/lib/m${i}.so`, size: bytes.length };
      await store.ensure(hashes[i], host.fetcher(source, masterFetcher(bytes).fetcher));
    }
    assert.equal(host.stats.mismatched, 5);
    assert.equal(host.memoSize, 2, "the memo keeps memoMax entries");
    assert.equal(await host.open("/usr/lib/m3.so", hashes[3], 1003), undefined, "remembered");
    const forgotten = await host.open("/usr/lib/m0.so", hashes[0], 1000);
    assert.ok(forgotten !== undefined, "the least recently used entry was forgotten");
    forgotten.file.close();
  });
});

Deno.test("a small host file that grew or shrank after it was opened is refused by its copy", async () => {
  // Small files are read at once, by position on the descriptor opened: its size then counts.
  const root = await hostRoot("host_files_small_");
  const host = new HostFiles({ root });
  try {
    for (const [change, words] of [[+1, "grew past 1000"], [-1, "shrank to 999"]] as const) {
      const path = `/usr/include/h${change > 0 ? "grew" : "shrank"}.h`;
      const bytes = randomBytes(1000);
      await put(root, path, bytes);
      const file = await host.open(path, hashBytes(bytes), bytes.length);
      assert.ok(file !== undefined);
      await Deno.truncate(root + path, bytes.length + change); // same inode
      const written: Uint8Array[] = [];
      const sink = { write: (chunk: Uint8Array) => Promise.resolve(void written.push(chunk)) };
      await assert.rejects(
        host.copy(file, sink, new AbortController().signal).finally(() => file.file.close()),
        (err: Error) => err.name === "CasError" && err.message.includes(words),
      );
      assert.equal(written.length, 0, "nothing written");
      // Unchanged, it is copied whole.
      await Deno.truncate(root + path, bytes.length);
      await Deno.writeFile(root + path, bytes);
      const again = await host.open(path, hashBytes(bytes), bytes.length);
      assert.ok(again !== undefined);
      await host.copy(again, sink, new AbortController().signal).finally(() => again.file.close());
      assert.deepEqual(written, [bytes]);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("copies for reads are not queued behind background copies, which are bounded", async () => {
  const root = await hostRoot("host_files_turns_");
  const host = new HostFiles({ root });
  try {
    const bytes = randomBytes(1000);
    const hash = hashBytes(bytes);
    let release!: () => void;
    const held = new Promise<void>((resolve) => release = resolve);
    const started: string[] = [];
    const copies: Promise<void>[] = [];
    for (let i = 0; i < 5; i++) {
      const path = `/usr/lib/f${i}.so`;
      await put(root, path, bytes);
      const file = await host.open(path, hash, bytes.length);
      assert.ok(file !== undefined);
      const background = i < 4;
      const sink = {
        write: async () => {
          started.push(background ? `bg${i}` : "read");
          if (background) await held;
        },
      };
      copies.push(
        host.copy(file, sink, new AbortController().signal, { background })
          .finally(() => file.file.close()),
      );
    }
    await copies[4];
    assert.deepEqual(started.sort(), ["bg0", "bg1", "read"], "two background copies, and the read");
    release();
    await Promise.all(copies);
    assert.deepEqual(started.sort(), ["bg0", "bg1", "bg2", "bg3", "read"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("through a mounted mirror: a host file that hashes the same is copied, others come from the master", async () => {
  // The master's "/" and the emulated worker host's "/" are two directories.
  const masterRoot = await hostRoot("host_files_master_");
  const workerRoot = await hostRoot("host_files_worker_");
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "host_files_mnt_" });
  await Deno.chmod(dir, 0o755);
  const mnt = `${dir}/mnt`;
  await Deno.mkdir(mnt);
  const store = await Store.open({ dir: `${dir}/store`, bytesMax: 64 * 1024 * 1024 });
  const hostFiles = new HostFiles({ root: workerRoot });
  const link = new DirLink({ root: masterRoot });
  const fs = new MirrorFs({ link, store, hostFiles, writableRoot: "/home/build" });
  let session: FuseSession | undefined;
  try {
    const same = randomBytes(2 * 1024 * 1024);
    const differs = randomBytes(100_000);
    const secret = randomBytes(5000);
    const files: Record<string, Uint8Array> = {
      "/usr/lib/same.so": same,
      "/usr/lib/differs.so": differs,
      "/usr/lib/secret.key": secret,
      "/home/build/a.c": encoder.encode("int a;\n"),
    };
    for (const [path, bytes] of Object.entries(files)) await put(masterRoot, path, bytes);
    await put(workerRoot, "/usr/lib/same.so", same);
    await put(workerRoot, "/usr/lib/differs.so", randomBytes(differs.length));
    await put(workerRoot, "/usr/lib/secret.key", secret, 0o600); // same bytes, not public
    await put(workerRoot, "/home/build/a.c", files["/home/build/a.c"]); // not a system path
    session = await FuseSession.mount(fs, {
      mountpoint: mnt,
      fsName: "host_files_test",
      subtype: "termite",
      allowOther: true,
      defaultPermissions: true,
      readOnly: true,
    });
    fs.attach(session);
    for (const [path, bytes] of Object.entries(files)) {
      assert.deepEqual(await Deno.readFile(mnt + path), bytes, path);
    }
    assert.equal(fs.stats.hostBlobs, 1, "only same.so came from the host");
    assert.equal(fs.stats.hostBytes, same.length);
    assert.equal(hostFiles.stats.mismatched, 1, "differs.so was tried and refused");
    const fromMaster = differs.length + secret.length + files["/home/build/a.c"].length;
    assert.equal(fs.stats.blobBytes, fromMaster, "the rest came from the master");
  } finally {
    await fs.close();
    await session?.close();
    store.close();
    await store.settle();
    for (const d of [dir, masterRoot, workerRoot]) await Deno.remove(d, { recursive: true });
  }
});

Deno.test("e2e: a cold farm compiles with the host's compiler files, the same object, and --no-host-files fetches them", async () => {
  await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "hostfiles-" });
  await Deno.chmod(dir, 0o755);
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree, { recursive: true });
  await Deno.writeTextFile(
    `${tree}/hello.c`,
    '#include <stdio.h>\n#include <stdlib.h>\nint main(void) { puts("hi"); return EXIT_SUCCESS; }\n',
  );
  const local = await runIn(tree, ["gcc", "-O2", "-c", "hello.c", "-o", "local.o"]);
  assert.equal(local.code, 0, local.stderr);
  const expected = await Deno.readFile(`${tree}/local.o`);
  const sent: Record<string, number> = {};
  try {
    for (const [label, workerArgs] of [["on", []], ["off", ["--no-host-files"]]] as const) {
      await using farm = await Farm.start({
        dir: `${dir}/farm-${label}`,
        tree,
        workers: 1,
        slotsPerWorker: 1,
        workerArgs: [...workerArgs],
      });
      await farm.waitForWorkers(1);
      const cc = await runIn(
        tree,
        [`${farm.binDir}/gcc`, "-O2", "-c", "hello.c", "-o", `${label}.o`],
        farm.env,
      );
      assert.equal(cc.code, 0, cc.stderr);
      assert.deepEqual(await Deno.readFile(`${tree}/${label}.o`), expected, `object (${label})`);
      const status = await farm.status();
      assert.equal(status.jobs.jobsRemote, 1);
      const mirror = Object.values(status.jobs.perWorker)[0].mirror ?? {};
      sent[label] = status.files.blobBytes;
      console.log(
        `host files ${label}: master sent ${status.files.blobBytes} bytes, ` +
          `${mirror.hostBlobs} blobs (${mirror.hostBytes} bytes) from the host`,
      );
      if (label === "on") {
        // cc1 alone is tens of MB; the compile's own files are a few KB.
        assert.ok((mirror.hostBytes ?? 0) > 10_000_000, "the compiler came from the host");
      } else {
        assert.equal(mirror.hostBlobs, 0);
      }
    }
    assert.ok(sent.off - sent.on > 10_000_000, `master bytes: ${sent.on} on, ${sent.off} off`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HostFiles.ahead() stores a big public system file under its own hash before any announcement, and nothing else", async () => {
  const root = await hostRoot("host_files_ahead_");
  const dir = await Deno.makeTempDir({ prefix: "host_files_ahead_store_" });
  const store = await Store.open({ dir, bytesMax: 64 * 1024 * 1024 });
  try {
    const big = randomBytes(2 * 1024 * 1024);
    const hash = hashBytes(big);
    await put(root, "/usr/libexec/cc1", big, 0o755);
    await put(root, "/usr/lib/private.so", randomBytes(1024 * 1024 + 1), 0o640);
    await put(root, "/var/lib/x.so", randomBytes(1024 * 1024 + 1));
    await put(root, "/usr/lib/small.so", randomBytes(1000));
    const host = new HostFiles({ root, prefixes: ["/usr"] });

    assert.equal(await host.ahead("/usr/libexec/cc1", big.length, store), hash);
    assert.ok(store.has(hash));
    assert.equal(host.stats.ahead, 1);
    assert.equal(host.stats.aheadBytes, big.length);
    // Announced as it is: taken (the store has it); announced otherwise: declined, not reread.
    const same = await host.open("/usr/libexec/cc1", hash, big.length);
    assert.ok(same !== undefined);
    same.file.close();
    const other = "0".repeat(64);
    assert.equal(await host.open("/usr/libexec/cc1", other, big.length), undefined);
    assert.equal(host.stats.memoSkips, 1);
    // Copied once per version of the file.
    assert.equal(await host.ahead("/usr/libexec/cc1", big.length, store), undefined);

    // Not copied: not a public system file, another size than listed, too small.
    for (
      const [path, size] of [
        ["/usr/lib/private.so", 1024 * 1024 + 1],
        ["/var/lib/x.so", 1024 * 1024 + 1],
        ["/usr/libexec/cc1", big.length + 1],
        ["/usr/lib/small.so", 1000],
        ["/usr/lib/missing.so", 2 * 1024 * 1024],
      ] as const
    ) assert.equal(await host.ahead(path, size, store), undefined, path);
    assert.equal(host.stats.ahead, 1);
    assert.equal(await host.settled("/usr/libexec/cc1"), undefined, "none running");
  } finally {
    store.close();
    await Deno.remove(root, { recursive: true });
    await Deno.remove(dir, { recursive: true });
  }
});
