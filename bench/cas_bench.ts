/**
 * Content-addressed store throughput: SHA-256 hashing, putFile(), ensure() with an
 * in-memory fetcher, and the cost of an ensure() hit.
 *
 * Run alone: `deno run -A bench/cas_bench.ts [--quick]`.
 */
import { type BlobSink, hashBytes, hashFile, Store } from "../cas/mod.ts";

export type BenchResult = { name: string; value: number; unit: string; note?: string };

const MIB = 1024 * 1024;
const REPEATS = 3;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function mbPerS(bytes: number, ms: number): number {
  return Math.round(bytes / MIB / (ms / 1000));
}

async function writeRandomFile(path: string, bytes: number): Promise<void> {
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(MIB);
  for (let written = 0; written < bytes; written += chunk.length) {
    for (let i = 0; i < chunk.length; i += 65536) {
      crypto.getRandomValues(chunk.subarray(i, i + 65536));
    }
    let offset = 0;
    while (offset < chunk.length) offset += await file.write(chunk.subarray(offset));
  }
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const fileBytes = (options.quick ? 32 : 256) * MIB;
  const dir = await Deno.makeTempDir({ prefix: "cas_bench_" });
  try {
    // hashBytes on an in-memory buffer.
    const buffer = new Uint8Array(64 * MIB);
    for (let i = 0; i < buffer.length; i += 65536) {
      crypto.getRandomValues(buffer.subarray(i, i + 65536));
    }
    const rounds = options.quick ? 2 : 8;
    hashBytes(buffer.subarray(0, MIB)); // warm-up
    let start = performance.now();
    for (let i = 0; i < rounds; i++) hashBytes(buffer);
    results.push({
      name: "cas hashBytes (64 MiB buffer)",
      value: mbPerS(rounds * buffer.length, performance.now() - start),
      unit: "MB/s",
      note: "node:crypto SHA-256",
    });

    // hashFile on a large file (in the page cache after writing it).
    const source = `${dir}/source.bin`;
    await writeRandomFile(source, fileBytes);
    await hashFile(source); // warm the page cache
    start = performance.now();
    const { hash } = await hashFile(source);
    results.push({
      name: `cas hashFile (${fileBytes / MIB} MiB file)`,
      value: mbPerS(fileBytes, performance.now() - start),
      unit: "MB/s",
      note: "page cache warm, 1 MiB reads",
    });

    // putFile: read + hash + write temp + rename. Median of three runs into fresh stores
    // (writes into the page cache are throttled by writeback, which varies a lot).
    const putMs: number[] = [];
    for (let rep = 0; rep < REPEATS; rep++) {
      const storeDir = `${dir}/put-${rep}`;
      using store = await Store.open({ dir: storeDir, bytesMax: 4 * fileBytes });
      start = performance.now();
      const put = await store.putFile(source);
      putMs.push(performance.now() - start);
      if (put.hash !== hash) throw new Error("Bench putFile hashed differently");
      if (rep === 0) {
        const hits = 1000;
        start = performance.now();
        for (let i = 0; i < hits; i++) await store.putFile(source, { hash });
        results.push({
          name: "cas putFile with known hash present",
          value: Math.round(((performance.now() - start) * 1000) / hits * 100) / 100,
          unit: "µs",
        });
      }
      store.close();
      await Deno.remove(storeDir, { recursive: true });
    }
    results.push({
      name: `cas putFile (${fileBytes / MIB} MiB file)`,
      value: mbPerS(fileBytes, median(putMs)),
      unit: "MB/s",
      note: `copy + hash in one pass, no fsync; median of ${REPEATS}`,
    });

    // ensure() with an in-memory fetcher, at two chunk sizes.
    const blob = buffer.subarray(0, Math.min(fileBytes, buffer.length));
    const blobHash = hashBytes(blob);
    for (const chunkBytes of [MIB, 64 * 1024]) {
      const fetcher = async (_hash: string, sink: BlobSink) => {
        for (let i = 0; i < blob.length; i += chunkBytes) {
          await sink.write(blob.subarray(i, i + chunkBytes));
        }
      };
      const ensureMs: number[] = [];
      for (let rep = 0; rep < REPEATS; rep++) {
        const storeDir = `${dir}/ensure-${rep}`;
        using store = await Store.open({ dir: storeDir, bytesMax: 4 * fileBytes });
        start = performance.now();
        await store.ensure(blobHash, fetcher);
        ensureMs.push(performance.now() - start);
        if (rep === 0 && chunkBytes === MIB) {
          const hits = options.quick ? 10_000 : 100_000;
          start = performance.now();
          for (let i = 0; i < hits; i++) await store.ensure(blobHash, fetcher);
          results.push({
            name: "cas ensure() hit",
            value: Math.round(((performance.now() - start) * 1000) / hits * 1000) / 1000,
            unit: "µs",
          });
        }
        store.close();
        await Deno.remove(storeDir, { recursive: true });
      }
      results.push({
        name: `cas ensure() miss (${blob.length / MIB} MiB, ${chunkBytes / 1024} KiB chunks)`,
        value: mbPerS(blob.length, median(ensureMs)),
        unit: "MB/s",
        note: `in-memory fetcher, hash + write temp + verify + rename; median of ${REPEATS}`,
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return results;
}

if (import.meta.main) {
  const results = await run({ quick: Deno.args.includes("--quick") });
  console.table(results);
}
