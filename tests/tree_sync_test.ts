/**
 * TreeSync: flushes run one after another, so that a job whose flush starts
 * while an earlier one is still reading what changed does not start before
 * those changes are known (the earlier flush took them from the dirty set).
 */
import assert from "node:assert/strict";
import type { FileServer } from "../master/file_server.ts";
import { TreeSync } from "../master/tree_sync.ts";

/** A file server whose refreshes are recorded and end when the test says. */
function slowFiles() {
  const calls: { paths: string[]; done: () => void; fail: (e: Error) => void }[] = [];
  const files = {
    refresh(paths: Set<string>) {
      const { promise, resolve, reject } = Promise.withResolvers<void>();
      calls.push({ paths: [...paths].sort(), done: resolve, fail: reject });
      return promise;
    },
    youngPaths: () => [],
    servedUnder: () => [],
  } as unknown as FileServer;
  return { files, calls };
}

Deno.test("TreeSync.flush: a later flush ends only after an earlier one has read its changes", async () => {
  const { files, calls } = slowFiles();
  const sync = new TreeSync("/tree", files, () => {});
  const ended: string[] = [];
  const first = sync.flush(["/tree/a/x.o"]).then(() => ended.push("first"));
  const second = sync.flush(["/tree/b/y.o"]).then(() => ended.push("second"));
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.length, 1, "the second waits for the first");
  assert.deepEqual(calls[0].paths, ["/tree/a", "/tree/a/x.o"]);
  calls[0].done();
  await first;
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.length, 2);
  assert.deepEqual(ended, ["first"], "the second has not ended before its own refresh");
  calls[1].done();
  await second;
  assert.deepEqual(ended, ["first", "second"]);
  // A failed flush fails its own caller only; the next one still runs.
  const third = sync.flush(["/tree/c"]);
  const fourth = sync.flush(["/tree/d"]);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.length, 3);
  calls[2].fail(new Error("disk gone"));
  await assert.rejects(third, /disk gone/);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.length, 4);
  calls[3].done();
  await fourth;
});
