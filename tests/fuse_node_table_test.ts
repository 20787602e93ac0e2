/** The node table: the bridge's lookup counts and a file system's nodes by id. */
import assert from "node:assert/strict";
import { LookupCounts, NodeTable, type TableNode } from "../fuse/node_table.ts";
import { FUSE_ROOT_ID } from "../fuse/structs.ts";

Deno.test("LookupCounts.forget() is true once, when the last reference goes", () => {
  const counts = new LookupCounts();
  counts.add(5n);
  counts.add(5);
  counts.add(7n);
  assert.equal(counts.get(5n), 2);
  assert.equal(counts.size, 2);
  assert.equal(counts.forget(5n, 1), false);
  assert.equal(counts.get(5n), 1);
  assert.equal(counts.forget(5n, 3), true);
  assert.equal(counts.get(5n), 0);
  assert.equal(counts.forget(5n, 1), false); // unknown now
  assert.equal(counts.forget(9n, 1), false);
  assert.equal(counts.size, 1);
});

interface TestNode extends TableNode {
  name: string;
  opens: number;
}

Deno.test("NodeTable hands out ids after the root's, never twice", () => {
  const table = new NodeTable<TestNode>();
  table.add({ id: FUSE_ROOT_ID, known: true, name: "/", opens: 0 });
  const ids = [table.nextId(), table.nextId(), table.nextId()];
  assert.deepEqual(ids, [2n, 3n, 4n]);
});

Deno.test("NodeTable.forget() drops a node unless kept, and tells onDrop", () => {
  const dropped: string[] = [];
  const table = new NodeTable<TestNode>({
    keep: (node) => node.id === FUSE_ROOT_ID || node.opens > 0,
    onDrop: (node) => dropped.push(node.name),
  });
  const root = table.add({ id: FUSE_ROOT_ID, known: true, name: "/", opens: 0 });
  const a = table.add({ id: table.nextId(), known: false, name: "a", opens: 0 });
  const b = table.add({ id: table.nextId(), known: false, name: "b", opens: 1 });
  table.remember(a);
  table.remember(b);
  assert.equal(table.forget(root.id), root);
  assert.equal(table.get(root.id), root);
  assert.equal(table.forget(a.id), a);
  assert.equal(table.get(a.id), undefined);
  assert.equal(table.forget(b.id), b);
  assert.equal(table.get(b.id), b, "kept while open");
  b.opens = 0;
  assert.equal(table.dropIfUnused(b), true);
  assert.equal(table.dropIfUnused(b), false);
  assert.equal(table.forget(99n), undefined);
  assert.deepEqual(dropped, ["a", "b"]);
  assert.equal(table.size, 1);
});

Deno.test("NodeTable iterates least recently touched first", () => {
  const table = new NodeTable<TestNode>();
  const nodes = ["x", "y", "z"].map((name) =>
    table.add({ id: table.nextId(), known: true, name, opens: 0 })
  );
  table.touch(nodes[0]);
  assert.deepEqual([...table.values()].map((node) => node.name), ["y", "z", "x"]);
});
