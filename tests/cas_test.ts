import assert from "node:assert/strict";
import {
  type BlobSink,
  CasError,
  type Fetcher,
  hashBuffer,
  hashBytes,
  hashFile,
  hashReader,
  hashReaderSync,
  isHash,
  Store,
} from "../cas/mod.ts";
import { openRegularSync } from "../common/regular_file.ts";

const ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

async function withStore(
  options: { bytesMax?: number; blobBytesMax?: number },
  fn: (store: Store, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cas_test_" });
  const store = await Store.open({ dir, bytesMax: options.bytesMax ?? 1 << 30, ...options });
  try {
    await fn(store, dir);
  } finally {
    store.close();
    await store.settle();
    await Deno.remove(dir, { recursive: true });
  }
}

function randomBytes(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

/** A fetcher serving `bytes` in chunks of `chunkBytes`, yielding to the event loop. */
function bytesFetcher(
  bytes: Uint8Array,
  options: { chunkBytes?: number; calls?: { n: number } } = {},
): Fetcher {
  const chunkBytes = options.chunkBytes ?? 100_000;
  return async (_hash: string, sink: BlobSink, signal: AbortSignal) => {
    if (options.calls) options.calls.n++;
    for (let i = 0; i < bytes.length; i += chunkBytes) {
      signal.throwIfAborted();
      await sink.write(bytes.subarray(i, i + chunkBytes));
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  };
}

async function listTmp(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(`${dir}/tmp`)) names.push(entry.name);
  return names;
}

/** Waits (bounded) until the store's tmp dir is empty; a fetch aborted by all its waiters
 * cleans up after its fetcher returns, which no caller awaits. */
async function waitTmpEmpty(dir: string): Promise<string[]> {
  let names = await listTmp(dir);
  for (let i = 0; i < 200 && names.length > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    names = await listTmp(dir);
  }
  return names;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function assertCasError(
  promise: Promise<unknown>,
  code: CasError["code"],
  pattern?: RegExp,
): Promise<CasError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof CasError, `expected CasError, got ${error}`);
    assert.equal(error.code, code, error.message);
    if (pattern) assert.match(error.message, pattern);
    return error;
  }
  assert.fail(`expected CasError ${code}`);
}

Deno.test("isHash() accepts only 64 lowercase hex chars", () => {
  assert.ok(isHash(ABC_SHA256));
  assert.ok(!isHash(ABC_SHA256.toUpperCase()));
  assert.ok(!isHash(ABC_SHA256.slice(1)));
  assert.ok(!isHash(ABC_SHA256 + "0"));
  assert.ok(!isHash(ABC_SHA256.slice(1) + "g"));
  assert.ok(!isHash(`../${ABC_SHA256.slice(3)}`));
});

Deno.test("hashBytes() matches the SHA-256 test vector", () => {
  assert.equal(hashBytes(new TextEncoder().encode("abc")), ABC_SHA256);
  assert.equal(
    hashBytes(new Uint8Array()),
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  );
});

Deno.test("hashFile() of a multi-MiB file equals hashBytes() of its content", async () => {
  const path = await Deno.makeTempFile();
  try {
    const bytes = randomBytes(5 * 1024 * 1024 + 12345);
    await Deno.writeFile(path, bytes);
    assert.deepEqual(await hashFile(path), { hash: hashBytes(bytes), size: bytes.length });
    await Deno.writeFile(path, new Uint8Array());
    assert.deepEqual(await hashFile(path), { hash: hashBytes(new Uint8Array()), size: 0 });
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("hashReader() and hashReaderSync() hash the whole file whatever the size hint says", async () => {
  const path = await Deno.makeTempFile();
  try {
    for (const size of [0, 1, 4095, 64 * 1024, 3 * 1024 * 1024 + 7]) {
      const bytes = randomBytes(size);
      await Deno.writeFile(path, bytes);
      const want = { hash: hashBytes(bytes), size };
      // The right size, a file grown since (hint too small), shrunk (too large), none.
      for (const hint of [size, 0, Math.max(0, size - 100), size + 5000, undefined]) {
        {
          using file = await Deno.open(path);
          assert.deepEqual(
            await hashReader(file, hint),
            want,
            `async, ${size} bytes, hint ${hint}`,
          );
        }
        using regular = openRegularSync(path);
        assert.deepEqual(hashReaderSync(regular, hint), want, `sync, ${size} bytes, hint ${hint}`);
      }
      // Bounded: a file larger than bytesMax is given up, one of bytesMax read.
      for (const [bytesMax, result] of [[size - 1, undefined], [size, want]] as const) {
        if (bytesMax < 0) continue;
        using regular = openRegularSync(path);
        assert.deepEqual(
          hashReaderSync(regular, 0, bytesMax),
          result,
          `${size} bytes, max ${bytesMax}`,
        );
      }
    }
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("hashBuffer() is one byte more than the hint, at least 1, at most 1 MiB", () => {
  assert.equal(hashBuffer(0).length, 1);
  assert.equal(hashBuffer(4096).length, 4097);
  assert.equal(hashBuffer(1 << 30).length, 1 << 20);
  assert.equal(hashBuffer(undefined).length, 1 << 20);
  assert.equal(hashBuffer(NaN).length, 1 << 20);
  assert.equal(hashBuffer(-1).length, 1 << 20);
});

Deno.test("pathOf() fans out by the first two hex chars and rejects non-hashes", async () => {
  await withStore({}, (store, dir) => {
    assert.equal(store.pathOf(ABC_SHA256), `${dir}/ba/${ABC_SHA256}`);
    assert.throws(() => store.pathOf("../../etc/passwd"), TypeError);
    assert.throws(() => store.pathOf(ABC_SHA256.toUpperCase()), TypeError);
    return Promise.resolve();
  });
});

Deno.test("putBytes(), putFile() and readBytes() store and return content", async () => {
  await withStore({}, async (store, dir) => {
    const bytes = randomBytes(3 * 1024 * 1024 + 7);
    const hash = await store.putBytes(bytes);
    assert.equal(hash, hashBytes(bytes));
    assert.ok(store.has(hash));
    assert.equal(store.bytes, bytes.length);
    assert.deepEqual(await Deno.readFile(store.pathOf(hash)), bytes);
    assert.deepEqual(await store.readBytes(hash), bytes);
    // The same content again is not counted twice.
    assert.equal(await store.putBytes(bytes), hash);
    assert.equal(store.bytes, bytes.length);
    assert.equal(store.count, 1);

    const source = `${dir}/source.bin`;
    const other = randomBytes(2 * 1024 * 1024 + 99);
    await Deno.writeFile(source, other);
    const put = await store.putFile(source);
    assert.deepEqual(put, { hash: hashBytes(other), size: other.length });
    assert.deepEqual(await Deno.readFile(store.pathOf(put.hash)), other);
    assert.equal(store.bytes, bytes.length + other.length);
    assert.equal(store.sizeOf(put.hash), other.length);

    // Known hash already present: nothing is read (the path need not exist).
    assert.deepEqual(await store.putFile(`${dir}/no-such-file`, { hash: put.hash }), put);

    // Empty blob.
    const empty = await store.putBytes(new Uint8Array());
    assert.deepEqual(await store.readBytes(empty), new Uint8Array());
    assert.deepEqual(await listTmp(dir), []);
  });
});

Deno.test("putFile() with a wrong expected hash throws CORRUPT and stores nothing", async () => {
  await withStore({}, async (store, dir) => {
    const source = `${dir}/source.bin`;
    await Deno.writeFile(source, new TextEncoder().encode("abc"));
    const wrong = hashBytes(new TextEncoder().encode("abd"));
    await assertCasError(store.putFile(source, { hash: wrong }), "CORRUPT", /abc|ba7816bf/);
    assert.ok(!store.has(wrong));
    assert.ok(!store.has(ABC_SHA256));
    assert.equal(store.bytes, 0);
    assert.deepEqual(await listTmp(dir), []);
    await assertCasError(store.putFile(`${dir}/missing`), "IO", /missing/);
    assert.deepEqual(await listTmp(dir), []);
  });
});

Deno.test("readBytes() throws MISSING for an absent blob and LIMIT above bytesMax", async () => {
  await withStore({}, async (store) => {
    await assertCasError(store.readBytes(ABC_SHA256), "MISSING");
    const hash = await store.putBytes(new Uint8Array(1000));
    await assertCasError(store.readBytes(hash, { bytesMax: 999 }), "LIMIT", /1000/);
    assert.equal((await store.readBytes(hash, { bytesMax: 1000 })).length, 1000);
  });
});

Deno.test("ensure() fetches, verifies and stores a blob, then serves it without fetching", async () => {
  await withStore({}, async (store, dir) => {
    const bytes = randomBytes(1_234_567);
    const hash = hashBytes(bytes);
    const calls = { n: 0 };
    const path = await store.ensure(hash, bytesFetcher(bytes, { chunkBytes: 10_000, calls }));
    assert.equal(path, store.pathOf(hash));
    assert.deepEqual(await Deno.readFile(path), bytes);
    assert.equal(store.bytes, bytes.length);
    assert.equal(await store.ensure(hash, bytesFetcher(bytes, { calls })), path);
    assert.equal(calls.n, 1);
    assert.ok(await store.verify(hash));
    assert.deepEqual(await listTmp(dir), []);
  });
});

Deno.test("ensure() stores every byte of blobs written in chunks of any size", async () => {
  // The temp file's write buffer starts small and grows: every size around its steps.
  await withStore({}, async (store) => {
    for (const chunkBytes of [1, 999, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 70_000, 300_000]) {
      for (const size of [0, 5, 16 * 1024, 100_000, 600_001]) {
        if (chunkBytes === 1 && size > 100) continue;
        const bytes = randomBytes(size);
        const path = await store.ensure(hashBytes(bytes), bytesFetcher(bytes, { chunkBytes }));
        assert.deepEqual(await Deno.readFile(path), bytes, `${size} bytes in ${chunkBytes}`);
      }
    }
  });
});

Deno.test("ensure() with wrong bytes throws CORRUPT, stores nothing, and a later fetch works", async () => {
  await withStore({}, async (store, dir) => {
    const bytes = randomBytes(300_000);
    const bad = bytes.slice();
    bad[123_456] ^= 1;
    const hash = hashBytes(bytes);
    const error = await assertCasError(store.ensure(hash, bytesFetcher(bad)), "CORRUPT");
    assert.ok(error.message.includes(hash), error.message);
    assert.ok(error.message.includes(hashBytes(bad)), error.message);
    assert.ok(!store.has(hash));
    assert.equal(store.bytes, 0);
    assert.ok(!(await exists(store.pathOf(hash))));
    assert.deepEqual(await listTmp(dir), []);

    const path = await store.ensure(hash, bytesFetcher(bytes));
    assert.deepEqual(await Deno.readFile(path), bytes);
    assert.ok(store.has(hash));
  });
});

Deno.test("a fetcher's sink tells the hash so far and starts over: only the bytes after restart() are stored", async () => {
  await withStore({}, async (store) => {
    const good = randomBytes(600_000);
    const hash = hashBytes(good);
    const wrong = randomBytes(700_000);
    const digests: string[] = [];
    await store.ensure(hash, async (_hash, sink) => {
      await sink.write(wrong.subarray(0, 100_000));
      await sink.write(wrong.subarray(100_000));
      digests.push(sink.digest());
      await sink.restart();
      await sink.write(good.subarray(0, 300_000));
      digests.push(sink.digest());
      await sink.write(good.subarray(300_000));
    });
    assert.deepEqual(digests, [hashBytes(wrong), hashBytes(good.subarray(0, 300_000))]);
    assert.deepEqual(await store.readBytes(hash), good);
    assert.equal(store.sizeOf(hash), good.length);
  });
});

Deno.test("ensure() called 50 times concurrently calls the fetcher once", async () => {
  await withStore({}, async (store, dir) => {
    const bytes = randomBytes(2_000_000);
    const hash = hashBytes(bytes);
    const calls = { n: 0 };
    const fetcher = bytesFetcher(bytes, { chunkBytes: 50_000, calls });
    const paths = await Promise.all(
      Array.from({ length: 50 }, () => store.ensure(hash, fetcher)),
    );
    assert.equal(calls.n, 1);
    assert.ok(paths.every((path) => path === store.pathOf(hash)));
    assert.equal(store.bytes, bytes.length);
    assert.deepEqual(await Deno.readFile(paths[0]), bytes);
    assert.deepEqual(await listTmp(dir), []);
  });
});

Deno.test("ensure() shares a failed fetch with all waiters, and a later call retries", async () => {
  await withStore({}, async (store) => {
    const bytes = randomBytes(10_000);
    const hash = hashBytes(bytes);
    let calls = 0;
    const failing: Fetcher = async (_hash, sink) => {
      calls++;
      await sink.write(bytes.subarray(0, 10));
      await new Promise((resolve) => setTimeout(resolve, 0));
      throw new Error("peer gone");
    };
    const results = await Promise.allSettled(
      Array.from({ length: 5 }, () => store.ensure(hash, failing)),
    );
    assert.equal(calls, 1);
    for (const result of results) {
      assert.equal(result.status, "rejected");
      assert.match(String((result as PromiseRejectedResult).reason), /peer gone/);
    }
    await store.ensure(hash, bytesFetcher(bytes));
    assert.ok(store.has(hash));
  });
});

Deno.test("ensure() with a throwing fetcher leaves no temp file and stores nothing", async () => {
  await withStore({}, async (store, dir) => {
    const hash = hashBytes(new TextEncoder().encode("never"));
    const failing: Fetcher = async (_hash, sink) => {
      await sink.write(new Uint8Array(500_000)); // beyond the write buffer: on disk
      await sink.write(new Uint8Array(10)); // buffered
      throw new Error("connection reset");
    };
    await assert.rejects(store.ensure(hash, failing), /connection reset/);
    assert.ok(!store.has(hash));
    assert.equal(store.bytes, 0);
    assert.deepEqual(await listTmp(dir), []);
  });
});

Deno.test("ensure() aborted by its only caller aborts the fetcher and leaves no temp file", async () => {
  await withStore({}, async (store, dir) => {
    const bytes = randomBytes(100_000);
    const hash = hashBytes(bytes);
    let fetcherSignal: AbortSignal | undefined;
    let started!: () => void;
    const startedPromise = new Promise<void>((resolve) => started = resolve);
    const hanging: Fetcher = async (_hash, sink, signal) => {
      fetcherSignal = signal;
      await sink.write(bytes.subarray(0, 1000));
      started();
      await new Promise<void>((_resolve, reject) => {
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
    };
    const controller = new AbortController();
    const pending = store.ensure(hash, hanging, { signal: controller.signal });
    await startedPromise;
    assert.equal((await listTmp(dir)).length, 1);
    controller.abort();
    await assert.rejects(pending, (error: Error) => error.name === "AbortError");
    assert.ok(fetcherSignal?.aborted);
    assert.deepEqual(await waitTmpEmpty(dir), []);
    assert.ok(!store.has(hash));
    // A new ensure() starts a fresh fetch.
    await store.ensure(hash, bytesFetcher(bytes));
    assert.ok(store.has(hash));
  });
});

Deno.test("ensure() aborted by one of two callers keeps fetching for the other", async () => {
  await withStore({}, async (store) => {
    const bytes = randomBytes(200_000);
    const hash = hashBytes(bytes);
    const calls = { n: 0 };
    const controller = new AbortController();
    const fetcher = bytesFetcher(bytes, { chunkBytes: 10_000, calls });
    const aborted = store.ensure(hash, fetcher, { signal: controller.signal });
    const kept = store.ensure(hash, fetcher);
    controller.abort();
    await assert.rejects(aborted, (error: Error) => error.name === "AbortError");
    assert.equal(await kept, store.pathOf(hash));
    assert.equal(calls.n, 1);
    assert.deepEqual(await Deno.readFile(store.pathOf(hash)), bytes);
  });
});

Deno.test("ensure() of a blob above blobBytesMax throws LIMIT", async () => {
  await withStore({ blobBytesMax: 1000 }, async (store, dir) => {
    const bytes = randomBytes(1001);
    await assertCasError(store.ensure(hashBytes(bytes), bytesFetcher(bytes)), "LIMIT");
    await assertCasError(store.putBytes(bytes), "LIMIT");
    assert.equal(store.bytes, 0);
    assert.deepEqual(await listTmp(dir), []);
  });
});

Deno.test("verify() detects a corrupted or missing blob on disk and removes it", async () => {
  await withStore({}, async (store) => {
    const good = await store.putBytes(randomBytes(100_000));
    const bad = await store.putBytes(randomBytes(100_000));
    const gone = await store.putBytes(randomBytes(100_000));
    assert.ok(await store.verify(good));
    assert.ok(await store.verify(bad));

    // Flip one byte in place (same size), as bit rot would.
    using file = await Deno.open(store.pathOf(bad), { read: true, write: true });
    await file.seek(5000, Deno.SeekMode.Start);
    const byte = new Uint8Array(1);
    await file.read(byte);
    await file.seek(5000, Deno.SeekMode.Start);
    byte[0] ^= 0xff;
    await file.write(byte);

    await Deno.remove(store.pathOf(gone));

    assert.equal(await store.verify(bad), false);
    assert.ok(!store.has(bad));
    assert.ok(!(await exists(store.pathOf(bad))));
    assert.equal(await store.verify(gone), false);
    assert.ok(!store.has(gone));
    assert.ok(await store.verify(good));
    assert.equal(store.bytes, 100_000);
    assert.equal(await store.verify(ABC_SHA256), false);
  });
});

Deno.test("eviction under bytesMax follows LRU order and spares pinned blobs", async () => {
  await withStore({ bytesMax: 3000 }, async (store) => {
    const blobs = Array.from({ length: 6 }, () => randomBytes(1000));
    const [a, b, c, d, e, f] = blobs.map(hashBytes);
    await store.putBytes(blobs[0]);
    await store.putBytes(blobs[1]);
    await store.putBytes(blobs[2]);
    assert.equal(store.bytes, 3000);
    const present = () => [a, b, c, d, e, f].map((hash) => store.sizeOf(hash) !== undefined);

    assert.ok(store.has(a)); // LRU order now b, c, a
    await store.putBytes(blobs[3]); // evicts b
    assert.deepEqual(present(), [true, false, true, true, false, false]);
    assert.ok(!(await exists(store.pathOf(b))));

    await store.ensure(c, () => Promise.reject(new Error("present, never fetched")));
    // LRU order now a, d, c
    store.pin(a);
    await store.putBytes(blobs[4]); // a pinned: evicts d
    assert.deepEqual(present(), [true, false, true, false, true, false]);
    assert.equal(store.bytes, 3000);

    store.unpin(a);
    await store.putBytes(blobs[5]); // order a, c, e, f: evicts a
    assert.deepEqual(present(), [false, false, true, false, true, true]);
    assert.equal(store.bytes, 3000);
  });
});

Deno.test("pins are refcounted and a blob above the cap survives its own put", async () => {
  await withStore({ bytesMax: 1000, blobBytesMax: 4000 }, async (store) => {
    const small = await store.putBytes(randomBytes(600));
    store.pin(small);
    store.pin(small);
    const big = randomBytes(1500);
    const bigHash = hashBytes(big);
    await store.ensure(bigHash, bytesFetcher(big), { pin: true });
    assert.ok(store.has(small));
    assert.ok(store.has(bigHash));
    assert.equal(store.bytes, 2100);
    store.unpin(small);
    await store.evict();
    assert.ok(store.has(small), "still pinned once");
    store.unpin(small);
    await store.evict(); // small is least recently used
    assert.ok(!store.has(small));
    assert.ok(store.has(bigHash));
    store.unpin(bigHash);
    await store.evict();
    assert.ok(!store.has(bigHash));
    assert.equal(store.bytes, 0);
    assert.throws(() => store.unpin(bigHash), /not pinned/);
  });
});

Deno.test("putFile() of the same content concurrently stores it once", async () => {
  await withStore({}, async (store, dir) => {
    const bytes = randomBytes(3_000_000);
    const paths = Array.from({ length: 8 }, (_, i) => `${dir}/source${i}.bin`);
    await Promise.all(paths.map((path) => Deno.writeFile(path, bytes)));
    const results = await Promise.all(paths.map((path) => store.putFile(path)));
    const hash = hashBytes(bytes);
    for (const result of results) assert.deepEqual(result, { hash, size: bytes.length });
    assert.equal(store.count, 1);
    assert.equal(store.bytes, bytes.length);
    assert.deepEqual(await Deno.readFile(store.pathOf(hash)), bytes);
    assert.deepEqual(await listTmp(dir), []);
  });
});

Deno.test("Store.open() sees blobs of a previous run in LRU order and removes temp files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cas_test_" });
  try {
    const blobs = Array.from({ length: 4 }, () => randomBytes(1000));
    const hashes: string[] = [];
    {
      using store = await Store.open({ dir, bytesMax: 1 << 20 });
      for (const bytes of blobs) hashes.push(await store.putBytes(bytes));
    }
    // Last use times: blob 2 oldest, then 0, 3, 1.
    const base = Date.now() / 1000 - 10_000;
    const ages = [1, 3, 0, 2];
    for (let i = 0; i < 4; i++) {
      await Deno.utime(`${dir}/${hashes[i].slice(0, 2)}/${hashes[i]}`, base + ages[i], base);
    }
    // A crash left temp files behind, and a stray non-blob file sits in a fan-out dir.
    await Deno.writeFile(`${dir}/tmp/leftover`, new Uint8Array(5000));
    await Deno.writeFile(`${dir}/ab/not-a-blob`, new Uint8Array(10));

    using store = await Store.open({ dir, bytesMax: 1 << 20 });
    assert.equal(store.count, 4);
    assert.equal(store.bytes, 4000);
    assert.deepEqual(await listTmp(dir), []);
    store.close(); // (reading blobs here would touch them and change the order on disk)

    // Reopened with a smaller cap: the two least recently used go.
    using small = await Store.open({ dir, bytesMax: 2000 });
    assert.deepEqual(
      hashes.map((hash) => small.sizeOf(hash) !== undefined),
      [false, true, false, true],
    );
    assert.ok(!(await exists(`${dir}/${hashes[2].slice(0, 2)}/${hashes[2]}`)));
    assert.deepEqual(await small.readBytes(hashes[1]), blobs[1]);
    assert.deepEqual(await small.readBytes(hashes[3]), blobs[3]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("close() is idempotent and later calls throw IO", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cas_test_" });
  try {
    const store = await Store.open({ dir, bytesMax: 1 << 20 });
    const hash = await store.putBytes(new Uint8Array(10));
    store.close();
    store.close();
    assert.throws(() => store.has(hash), CasError);
    await assertCasError(store.putBytes(new Uint8Array(1)), "IO", /closed/);
    await assertCasError(store.ensure(hash, bytesFetcher(new Uint8Array(10))), "IO", /closed/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("close() aborts an in-flight fetch", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cas_test_" });
  try {
    const store = await Store.open({ dir, bytesMax: 1 << 20 });
    let started!: () => void;
    const startedPromise = new Promise<void>((resolve) => started = resolve);
    const hanging: Fetcher = async (_hash, sink, signal) => {
      await sink.write(new Uint8Array(10));
      started();
      await new Promise<void>((_resolve, reject) => {
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
    };
    const pending = store.ensure(ABC_SHA256, hanging);
    await startedPromise;
    store.close();
    await assertCasError(pending, "IO", /closed/);
    assert.deepEqual(await waitTmpEmpty(dir), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function run(args: string[]): Promise<boolean> {
  const { success } = await new Deno.Command(args[0], {
    args: args.slice(1),
    stdout: "null",
    stderr: "null",
  }).output();
  return success;
}

Deno.test("a full disk (ENOSPC) throws IO, removes the temp file, and the store keeps working", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cas_test_enospc_" });
  try {
    if (!(await run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir]))) {
      console.warn("skipped: cannot mount a tmpfs (needs root)");
      return;
    }
    try {
      const store = await Store.open({ dir, bytesMax: 64 << 20 });
      try {
        const big = randomBytes(2 << 20);
        await assertCasError(store.putBytes(big), "IO", /no space left on device/);
        assert.deepEqual(await listTmp(dir), []);
        await assertCasError(
          store.ensure(hashBytes(big), bytesFetcher(big, { chunkBytes: 300_000 })),
          "IO",
          /no space left on device/,
        );
        assert.deepEqual(await listTmp(dir), []);
        const source = await Deno.makeTempFile();
        try {
          await Deno.writeFile(source, big);
          await assertCasError(store.putFile(source), "IO", /no space left on device/);
        } finally {
          await Deno.remove(source);
        }
        assert.deepEqual(await listTmp(dir), []);
        assert.equal(store.bytes, 0);

        const small = randomBytes(100_000);
        const hash = await store.putBytes(small);
        assert.deepEqual(await store.readBytes(hash), small);
        const other = randomBytes(100_000);
        await store.ensure(hashBytes(other), bytesFetcher(other));
        assert.equal(store.bytes, 200_000);
      } finally {
        store.close();
      }
    } finally {
      assert.ok(await run(["umount", dir]), "umount failed");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("settle() waits until a fetch its caller gave up on has cleaned up its temp file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cas_test_" });
  const store = await Store.open({ dir, bytesMax: 1 << 30 });
  const bytes = randomBytes(4 << 20);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  // A fetcher that has written half when its caller gives up, and only notices later.
  const fetcher: Fetcher = async (_hash, sink) => {
    await sink.write(bytes.subarray(0, 2 << 20));
    await gate;
    await sink.write(bytes.subarray(2 << 20)).catch(() => {});
  };
  const caller = new AbortController();
  const ensured = store.ensure(hashBytes(bytes), fetcher, { signal: caller.signal });
  await new Promise((resolve) => setTimeout(resolve, 50));
  caller.abort(new Error("gave up"));
  await assert.rejects(ensured, /gave up/);
  store.close();
  let settled = false;
  const settling = store.settle().then(() => settled = true);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(settled, false, "the fetch is still running");
  release();
  await settling;
  // Nothing is left, and nothing writes any more: the directory can go.
  const left = [...Deno.readDirSync(`${dir}/tmp`)].map((e) => e.name);
  assert.deepEqual(left, []);
  await Deno.remove(dir, { recursive: true });
});
