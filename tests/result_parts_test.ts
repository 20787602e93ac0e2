/**
 * Large result sets travel as parts ahead of the job's reply: the worker's
 * splitting (every part fits a frame) and the master's collecting (bounded).
 */
import assert from "node:assert/strict";
import { encodeFrame, FRAME_BYTES_MAX } from "../rpc/mod.ts";
import { ResultParts, ResultSetError } from "../master/apply.ts";
import { sendResultParts } from "../worker/result_parts.ts";
import { RESULT_ENTRIES_MAX, type ResultSet } from "../common/types.ts";

function bigSet(n: number): { set: ResultSet; inline: Record<string, Uint8Array> } {
  const set: ResultSet = { deletions: [], dirs: [], files: [], symlinks: [] };
  const inline: Record<string, Uint8Array> = {};
  for (let i = 0; i < n; i++) {
    const dir = `/build/tree/with/a/rather/long/path/éé/${"d".repeat(i % 200)}/${i}`;
    set.dirs.push({ path: dir, mode: 0o755 });
    const hash = i.toString(16).padStart(64, "0");
    set.files.push({ path: `${dir}/out.o`, hash, size: 300, mode: 0o644, mtimeMs: i });
    set.symlinks.push({ path: `${dir}/link`, target: "x".repeat(i % 3000) });
    set.deletions.push(`${dir}/old.o`);
    if (i < 1500) inline[hash] = new Uint8Array(300).fill(i & 255);
  }
  return { set, inline };
}

Deno.test("sendResultParts() keeps a small result set in the reply", async () => {
  const { set, inline } = bigSet(3);
  const sent: unknown[] = [];
  const rest = await sendResultParts(set, inline, (c) => {
    sent.push(c);
    return Promise.resolve();
  });
  assert.equal(sent.length, 0);
  assert.equal(rest.resultSet, set);
  assert.equal(rest.inline, inline);
});

Deno.test("sendResultParts() splits a large one into parts that each fit a frame, and ResultParts puts it back", async () => {
  const { set, inline } = bigSet(20_000);
  const parts = new ResultParts(100_000);
  let chunks = 0;
  const rest = await sendResultParts(set, inline, (chunk) => {
    chunks++;
    // Every part is a frame of its own, with room to spare.
    assert.ok(encodeFrame([3, 1, chunk]).length < FRAME_BYTES_MAX / 2);
    if ("rs" in chunk) parts.addEntries(chunk.rs);
    else parts.addBlobs(chunk.blobs);
    return Promise.resolve();
  });
  assert.ok(chunks > 20, `${chunks} chunks`);
  assert.ok(encodeFrame([2, 1, { resultSet: rest.resultSet, inline: rest.inline }]).length < 1024);
  assert.deepEqual(parts.merge(rest.resultSet), set);
  for (const [hash, bytes] of Object.entries(inline)) assert.deepEqual(parts.blob(hash), bytes);
});

Deno.test("ResultParts refuses malformed and oversized parts", () => {
  const parts = new ResultParts(10);
  assert.throws(() => parts.addEntries("x"), ResultSetError);
  assert.throws(() => parts.addEntries({ files: "not a list" }), ResultSetError);
  assert.throws(() => parts.addBlobs({ abc: "not bytes" }), ResultSetError);
  parts.addEntries({ deletions: Array(6).fill("/a") });
  assert.throws(
    () => parts.addEntries({ dirs: Array(5).fill({ path: "/b", mode: 0o755 }) }),
    /more than 10/,
  );
  const blobs = new ResultParts();
  const mib = new Uint8Array(2 ** 20);
  for (let i = 0; i < 8; i++) blobs.addBlobs({ [`h${i}`]: mib });
  assert.throws(() => blobs.addBlobs({ h9: mib }), /inline contents/);
  // A reply that is not an object is passed on as is, for applyResultSet to refuse.
  assert.equal(new ResultParts().merge(null), null);
});

Deno.test("ResultParts takes RESULT_ENTRIES_MAX entries by default and refuses one more by name", () => {
  const parts = new ResultParts();
  parts.addEntries({ deletions: Array(RESULT_ENTRIES_MAX - 1).fill("/a") });
  parts.addEntries({ dirs: [{ path: "/b", mode: 0o755 }] });
  assert.throws(
    () => parts.addEntries({ symlinks: [{ path: "/c", target: "x" }] }),
    /more than 200000 result entries \(RESULT_ENTRIES_MAX\)/,
  );
});
