/** common/read_set_parts.ts: a large read set split by the worker and put together by the master. */
import assert from "node:assert/strict";
import type { ReadKind, ReadSet } from "../common/protocol.ts";
import {
  READ_SET_PART_BYTES,
  readEntryBytes,
  ReadSetParts,
  splitReadSet,
} from "../common/read_set_parts.ts";
import { encodeFrame, FRAME_BYTES_MAX } from "../rpc/frame.ts";

/** A complete read set of `n` paths of about `chars` characters, every third with a hash. */
function readSet(n: number, chars = 120): ReadSet & { complete: true } {
  const entries: [string, ReadKind[]][] = [];
  const hashes: Record<string, string> = {};
  for (let i = 0; i < n; i++) {
    const path = `/src/${"d".repeat(chars - 20)}/f${String(i).padStart(8, "0")}.h`;
    entries.push([path, i % 2 ? ["r"] : ["l", "s"]]);
    if (i % 3 === 0) hashes[path] = "ab".repeat(32);
  }
  return { complete: true, entries, hashes, stdin: false };
}

function roundTrip(reads: ReadSet & { complete: true }, partBytes?: number) {
  const { parts, reply } = splitReadSet(reads, partBytes);
  const master = new ReadSetParts();
  for (const p of parts) master.add(structuredClone(p));
  return { parts, reply, merged: master.merge(structuredClone(reply)) };
}

Deno.test("splitReadSet() leaves a small read set in the reply", () => {
  const reads = readSet(10);
  const { parts, reply, merged } = roundTrip(reads);
  assert.equal(parts.length, 0);
  assert.equal(reply, reads);
  assert.deepEqual(merged, reads);
});

Deno.test("a read set beyond one part goes in parts, each below a frame, and comes back whole", () => {
  // 20,000 paths of 120 characters: about 6.6 MB by the estimate, 26 parts.
  const reads = readSet(20_000);
  const { parts, reply, merged } = roundTrip(reads);
  assert.ok(parts.length > 20, `${parts.length} parts`);
  assert.deepEqual(reply, { complete: true, entries: [], hashes: {}, stdin: false, parts: 26 });
  for (const p of parts) {
    const bytes = p.reads.reduce((a, [path]) => a + readEntryBytes(path), 0);
    assert.ok(bytes <= READ_SET_PART_BYTES);
    assert.ok(encodeFrame([2, 1, p]).length < FRAME_BYTES_MAX);
  }
  assert.ok(merged?.complete);
  assert.deepEqual(merged.entries, reads.entries);
  assert.deepEqual({ ...merged.hashes }, reads.hashes);
  assert.equal(merged.stdin, false);
});

Deno.test("a part of paths in three-byte characters still fits a frame", () => {
  const entries: [string, ReadKind[]][] = [];
  for (let i = 0; i < 5_000; i++) entries.push([`/src/${"語".repeat(150)}${i}`, ["r"]]);
  const { parts } = splitReadSet({ complete: true, entries });
  assert.ok(parts.length > 1);
  for (const p of parts) assert.ok(encodeFrame([2, 1, p]).length < FRAME_BYTES_MAX);
});

Deno.test("a read set beyond READ_SET_BYTES_MAX is incomplete, with why", () => {
  const { parts, reply } = splitReadSet(readSet(1_000), 4096, 64 * 1024);
  assert.equal(parts.length, 0);
  assert.equal(reply.complete, false);
  assert.match(!reply.complete ? reply.why : "", /read set too large \(\d+ bytes, at most 65536\)/);
});

Deno.test("ReadSetParts: a missing, extra, malformed or excess part makes the read set incomplete", () => {
  const { parts, reply } = splitReadSet(readSet(3_000), 64 * 1024);
  assert.ok(parts.length >= 3);
  const incomplete = (add: (m: ReadSetParts) => void, r: ReadSet | undefined = reply) => {
    const m = new ReadSetParts(2_000_000);
    add(m);
    const merged = m.merge(r);
    assert.equal(merged?.complete, false, JSON.stringify(merged).slice(0, 200));
    return merged?.complete === false ? merged.why : "";
  };
  assert.match(incomplete((m) => parts.slice(1).forEach((p) => m.add(p))), /came, the reply says/);
  assert.match(incomplete((m) => [...parts, parts[0]].forEach((p) => m.add(p))), /came/);
  assert.match(incomplete((m) => m.add({ reads: "x", hashes: {} })), /malformed/);
  assert.match(incomplete((m) => m.add({ reads: [[1, ["r"]]], hashes: {} })), /malformed/);
  assert.match(incomplete((m) => m.add({ reads: [], hashes: { "/a": 5 } })), /malformed/);
  // Hashes alone (paths the reads do not name) count against the limit too.
  const flood: Record<string, string> = {};
  for (let i = 0; i < 40_000; i++) flood[`/h/${i}`] = "ab".repeat(32);
  assert.match(incomplete((m) => m.add({ reads: [], hashes: flood })), /beyond 2000000 bytes/);
  assert.match(
    incomplete((m) => parts.forEach((p) => m.add(p)), { complete: true, entries: [] }),
    /came, the reply says 0/,
  );
  const orphan = new ReadSetParts();
  orphan.add(parts[0]);
  assert.deepEqual(orphan.merge(undefined), {
    complete: false,
    why: "read set parts without a read set",
  });
  // Beyond the master's own cap, whatever the worker says.
  const small = new ReadSetParts(10_000);
  for (const p of parts) small.add(p);
  const merged = small.merge(reply);
  assert.equal(merged?.complete, false);
  assert.match(merged?.complete === false ? merged.why : "", /beyond 10000 bytes/);
  // An incomplete reply stays as it is.
  const why = { complete: false as const, why: "too many paths" };
  assert.deepEqual(new ReadSetParts().merge(why), why);
});

Deno.test("ReadSetParts: a path named __proto__ is a hash key like another", () => {
  const m = new ReadSetParts();
  m.add(JSON.parse('{"reads": [["/x", ["r"]]], "hashes": {"__proto__": "aa", "/x": "bb"}}'));
  const merged = m.merge({ complete: true, entries: [], parts: 1 });
  assert.ok(merged?.complete);
  assert.equal(Object.getPrototypeOf(merged.hashes), Object.prototype);
  assert.equal(Object.hasOwn(merged.hashes!, "__proto__"), true);
  assert.equal(merged.hashes!["/x"], "bb");
});
