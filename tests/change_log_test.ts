/**
 * The master's change log: what a cursor gets back is the latest version of
 * each path changed after it, in order, or a reset once the log lost entries
 * it needed; superseded versions are compacted away, so a directory changed
 * by every job does not pile up copies of its listing.
 */
import assert from "node:assert/strict";
import type { FileAttr } from "../common/types.ts";
import { ChangeLog } from "../master/change_log.ts";

function attr(path: string, size: number): FileAttr {
  return { path, kind: "file", mode: 0o644, size, mtimeMs: size };
}

/** What since() must return: the naive model over the full history. */
function naive(history: FileAttr[], cursor: number): FileAttr[] {
  const latest = new Map<string, FileAttr>();
  for (const a of history.slice(cursor)) {
    latest.delete(a.path);
    latest.set(a.path, a);
  }
  return [...latest.values()];
}

Deno.test("ChangeLog.since() matches the full history for every cursor, with compaction", () => {
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const log = new ChangeLog();
  const history: FileAttr[] = [];
  for (let round = 0; round < 200; round++) {
    const batch = Array.from(
      { length: 1 + Math.floor(random() * 40) },
      () => attr(`/t/f${Math.floor(random() * 30)}`, history.length + Math.floor(random() * 1e6)),
    );
    log.push(batch);
    history.push(...batch);
    for (const cursor of [0, Math.floor(random() * history.length), history.length - 1]) {
      const got = log.since(cursor);
      assert.equal(got.reset, false);
      assert.equal(got.cursor, history.length);
      assert.deepEqual(got.updates, naive(history, cursor), `cursor ${cursor}`);
    }
  }
  // 30 paths changed thousands of times: the log holds about one entry each.
  assert.ok(history.length > 4000);
  assert.ok(log.size <= 2 * 30 + 1024 + 40, `${log.size} entries`);
});

Deno.test("ChangeLog.since() resets a cursor whose changes were dropped for room", () => {
  const log = new ChangeLog({ entriesMax: 10 });
  log.push(Array.from({ length: 25 }, (_, i) => attr(`/t/f${i}`, i)));
  assert.equal(log.since(25).updates.length, 0);
  assert.deepEqual(
    log.since(20).updates.map((a) => a.path),
    [20, 21, 22, 23, 24].map((i) => `/t/f${i}`),
  );
  assert.equal(log.since(15).reset, false);
  assert.equal(log.since(14).reset, true);
  assert.equal(log.since(0).reset, true);
  assert.equal(log.since(26).reset, true, "a cursor from another log");
  assert.equal(log.since(0).cursor, 25);
});
