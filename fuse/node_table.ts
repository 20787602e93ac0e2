/**
 * The node table of the FUSE layer, kept as go-fuse's bridge keeps it: node
 * ids (the inode numbers the kernel names nodes by), the kernel's lookup
 * counts, and forget. One half for each side of the bridge:
 *
 * - {@link LookupCounts}, kept by the bridge: every entry the kernel took
 *   (lookup replies, readdirplus entries) counts, every forget subtracts, so
 *   that a file system sees one `forget(ino)` when the count reaches 0.
 * - {@link NodeTable}, kept by a file system: its nodes by id, ids handed out
 *   from FUSE_ROOT_ID + 1 and never reused, whether the kernel holds a node,
 *   and when a node may go (forgotten, and not kept for the file system's own
 *   reasons: open handles, a place in a tree).
 *
 * @module
 */

import { FUSE_ROOT_ID } from "./structs.ts";

/** The kernel's references per node id, as the bridge counts them. */
export class LookupCounts {
  readonly #counts = new Map<bigint, number>();

  /** Node ids the kernel holds now. */
  get size(): number {
    return this.#counts.size;
  }

  /** The kernel's lookup count of `ino` (0 if unknown). */
  get(ino: bigint): number {
    return this.#counts.get(ino) ?? 0;
  }

  /** The kernel took one more entry naming `ino`. */
  add(ino: bigint | number): void {
    const key = BigInt(ino);
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
  }

  /**
   * The kernel let go of `nlookup` references to `ino`: true when it holds
   * none any more (then the count is dropped); false too for an unknown id.
   */
  forget(ino: bigint, nlookup: number): boolean {
    const count = this.#counts.get(ino);
    if (count === undefined) return false;
    if (count > nlookup) {
      this.#counts.set(ino, count - nlookup);
      return false;
    }
    this.#counts.delete(ino);
    return true;
  }
}

/** What a {@link NodeTable} keeps of a node. */
export interface TableNode {
  readonly id: bigint;
  /** The kernel holds references: an answer named it, and it was not forgotten since. */
  known: boolean;
}

/** Options of {@link NodeTable}. */
export interface NodeTableOptions<N extends TableNode> {
  /** Whether a node the kernel does not hold is still needed (default: only the root). */
  keep?: (node: N) => boolean;
  /** Called for each node dropped, to free what it holds. */
  onDrop?: (node: N) => void;
}

/**
 * A file system's nodes by id. Iteration is least recently used first
 * (see {@link NodeTable.touch}), for file systems that evict.
 */
export class NodeTable<N extends TableNode> {
  readonly #nodes = new Map<bigint, N>();
  readonly #keep: (node: N) => boolean;
  readonly #onDrop: ((node: N) => void) | undefined;
  #nextId = FUSE_ROOT_ID + 1n;

  constructor(options: NodeTableOptions<N> = {}) {
    this.#keep = options.keep ?? ((node) => node.id === FUSE_ROOT_ID);
    this.#onDrop = options.onDrop;
  }

  /** An id for a new node: never the root's, never one given before. */
  nextId(): bigint {
    return this.#nextId++;
  }

  /** Adds `node` (with an id from {@link nextId}, or FUSE_ROOT_ID) as the most recently used. */
  add(node: N): N {
    this.#nodes.set(node.id, node);
    return node;
  }

  get(id: bigint): N | undefined {
    return this.#nodes.get(id);
  }

  /** Nodes in the table (the kernel's, and those kept). */
  get size(): number {
    return this.#nodes.size;
  }

  /** The nodes, least recently used first. */
  values(): MapIterator<N> {
    return this.#nodes.values();
  }

  /** Makes `node` the most recently used. */
  touch(node: N): void {
    this.#nodes.delete(node.id);
    this.#nodes.set(node.id, node);
  }

  /** An answer names `node`: the kernel holds it until it forgets it. */
  remember(node: N): void {
    node.known = true;
  }

  /**
   * The kernel holds no more references to `id` (the bridge's count reached
   * 0): the node is dropped unless kept. Returns it, or undefined if unknown.
   */
  forget(id: bigint): N | undefined {
    const node = this.#nodes.get(id);
    if (node === undefined) return undefined;
    node.known = false;
    this.dropIfUnused(node);
    return node;
  }

  /** Drops `node` if the kernel does not hold it and it is not kept; true if dropped. */
  dropIfUnused(node: N): boolean {
    if (node.known || this.#keep(node) || this.#nodes.get(node.id) !== node) return false;
    this.#nodes.delete(node.id);
    this.#onDrop?.(node);
    return true;
  }
}
