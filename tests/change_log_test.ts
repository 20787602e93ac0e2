/**
 * The master's change log: what a cursor gets back is the latest version of
 * each path changed after it, in order, or a reset once the log lost entries
 * it needed; superseded versions are compacted away, so a directory changed
 * by every job does not pile up copies of its listing.
 */
import assert from "node:assert/strict";
import type { FileAttr } from "../common/types.ts";
import { ChangeLog } from "../master/change_log.ts";
import { listingPrint } from "../common/listing_print.ts";
import { AttrCache } from "../worker/mirror_cache.ts";
import { MirrorUpdates, type UpdateCounters } from "../worker/mirror_updates.ts";

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

/** A directory attr with `names` (all files). */
function dirAttr(path: string, names: Iterable<string>, mtimeMs: number): FileAttr {
  const children: Record<string, "file"> = {};
  for (const n of names) children[n] = "file";
  return { path, kind: "dir", mode: 0o755, size: 4096, mtimeMs, children };
}

/** A mirror's cache (the worker's own classes) that has `/t` listed as `names`. */
function mirrorWith(names: Iterable<string>, mtimeMs: number) {
  const cache = new AttrCache({
    writableRoot: "/t",
    mountPoints: [],
    entriesMax: 100_000,
    entryTimeoutS: 1,
    attrTimeoutS: 1,
    negativeTimeoutS: 1,
    busy: () => false,
  });
  const stats: UpdateCounters = { replayed: 0, listingsForgotten: 0 };
  const updates = new MirrorUpdates(cache, stats);
  updates.apply([{
    path: "/",
    kind: "dir",
    mode: 0o755,
    size: 4096,
    mtimeMs: 0,
    children: { t: "dir" },
  }]);
  updates.apply([dirAttr("/t", names, mtimeMs)]);
  return {
    stats,
    apply: (batch: FileAttr[]) => updates.apply(batch),
    listing: () => {
      const l = cache.find("/t")?.listing;
      return l === undefined ? undefined : [...l.keys()].sort();
    },
  };
}

Deno.test("ChangeLog.since(): a listing left out is worked out right by a mirror from the batch's paths", () => {
  let seed = 11;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let run = 0; run < 40; run++) {
    const log = new ChangeLog();
    const present = new Set<string>(["a.c", "b.c"]);
    let mtime = 1;
    // Listings as pushed, by seq, to start mirrors from (what a mirror held at its cursor).
    const stateAt: Set<string>[] = [new Set(present)];
    const push = (batch: FileAttr[]) => {
      log.push(batch);
      for (let i = 0; i < batch.length; i++) stateAt.push(new Set(present));
    };
    let slim = 0, whole = 0, forgotten = 0;
    for (let step = 0; step < 60; step++) {
      // Names that are also Object.prototype's keys, and beyond ASCII.
      const name = [
        ...Array.from({ length: 9 }, (_, i) => `f${i}.o`),
        "constructor",
        "toString",
        "ü😀.o",
      ][Math.floor(random() * 12)];
      const adding = !present.has(name);
      if (adding) present.add(name);
      else present.delete(name);
      mtime++;
      const child: FileAttr = adding
        ? { path: `/t/${name}`, kind: "file", mode: 0o644, size: mtime, mtimeMs: mtime }
        : { path: `/t/${name}`, kind: null, mode: 0, size: 0, mtimeMs: 0 };
      const r = random();
      if (r < 0.45) push([child, dirAttr("/t", present, mtime)]); // a job's result, in order
      else if (r < 0.8) push([dirAttr("/t", present, mtime), child]); // the other order
      else if (r < 0.9) push([dirAttr("/t", present, mtime)]); // a change no path explains
      else push([child]); // the path alone (its directory read later)
      // A mirror at every 7th cursor: after the batch, its listing is the master's.
      for (let cursor = 0; cursor < stateAt.length; cursor += 7) {
        const mirror = mirrorWith(stateAt[cursor], cursor);
        const got = log.since(cursor);
        assert.equal(got.reset, false);
        const dir = got.updates.find((u) => u.path === "/t");
        if (dir?.children !== undefined) whole++;
        if (dir?.listingPrint !== undefined) slim++;
        mirror.apply(got.updates);
        forgotten += mirror.stats.listingsForgotten;
        const listing = mirror.listing();
        // A listing the batch did not bring is either right or forgotten, never wrong.
        if (listing !== undefined) {
          assert.deepEqual(
            listing,
            [...present].sort(),
            `run ${run} step ${step} cursor ${cursor}`,
          );
        }
      }
    }
    assert.ok(slim > 0 && whole > 0, `both kinds sent (${slim} left out, ${whole} whole)`);
    assert.equal(forgotten, 0, "the log never leaves out a listing the mirror cannot work out");
  }
});

Deno.test("a mirror forgets a listing that does not match the master's fingerprint", () => {
  const mirror = mirrorWith(["a.c", "b.c"], 1);
  // The master says /t holds a.c and c.c, but the batch names no path of it.
  const { children: _, ...rest } = dirAttr("/t", ["a.c", "c.c"], 2);
  mirror.apply([{ ...rest, listingPrint: listingPrint([["a.c", "file"], ["c.c", "file"]]) }]);
  assert.equal(mirror.listing(), undefined);
  assert.equal(mirror.stats.listingsForgotten, 1);
  // One that matches is kept, with the batch's paths applied.
  const kept = mirrorWith(["a.c", "b.c"], 1);
  kept.apply([
    { ...rest, listingPrint: listingPrint([["a.c", "file"], ["c.c", "file"]]) },
    { path: "/t/b.c", kind: null, mode: 0, size: 0, mtimeMs: 0 },
    { path: "/t/c.c", kind: "file", mode: 0o644, size: 1, mtimeMs: 2 },
  ]);
  assert.deepEqual(kept.listing(), ["a.c", "c.c"]);
  assert.equal(kept.stats.listingsForgotten, 0);
});

Deno.test("a listing's fingerprint: order does not matter, a name or kind does", () => {
  const a = listingPrint([["x", "file"], ["y", "dir"]]);
  assert.equal(a, listingPrint([["y", "dir"], ["x", "file"]]));
  assert.notEqual(a, listingPrint([["x", "file"], ["y", "file"]]));
  assert.notEqual(a, listingPrint([["x", "file"]]));
  assert.notEqual(a, listingPrint([["x", "file"], ["z", "dir"]]));
});
