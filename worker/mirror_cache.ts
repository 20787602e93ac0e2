/**
 * The mirror's attribute cache: what it knows of the master's tree. Nodes by
 * path (a tree from the root) and by id (the fuse {@link NodeTable}), each
 * with the master's attributes, a directory's listing, and the names
 * answered "no such file" (negative entries the kernel may cache). Sandbox
 * mount points are shown as empty directories. Bounded: unreferenced nodes
 * go least recently used first.
 *
 * Nothing here talks to the master or the kernel: fetches fill the cache
 * (`mirror_fetch.ts`), pushed updates change it (`mirror_updates.ts`).
 *
 * @module
 */

import { baseName, isInside, joinPath, normalizePath, parentOf } from "../common/paths.ts";
import type { FileAttr, FileKind } from "../common/types.ts";
import { ENOENT } from "../fuse/errno.ts";
import { NodeTable, type TableNode } from "../fuse/node_table.ts";
import { FUSE_ROOT_ID, S_IFDIR, S_IFLNK, S_IFREG } from "../fuse/structs.ts";
import type { Attr, Entry, Errno } from "../fuse/types.ts";
import type { Invalidations } from "./mirror_updates.ts";

/** The uid and gid of the job user, owner of the master's writable root in the mirror. */
export const JOB_UID = 65534;
export const JOB_GID = 65534;
/** Permission bits of others, and the one to enter a directory. */
const OTHERS_ALL = 0o007;
const OTHERS_SEARCH = 0o001;
export const NAME_BYTES_MAX = 255;
/** Names answered negatively and remembered (to invalidate them later), per directory. */
const NEGATIVES_PER_DIR_MAX = 4096;
/** The same, in all. Beyond either, a missing name is answered ENOENT (not cached). */
const NEGATIVES_MAX = 1_000_000;
/** Evict down to this fraction of entriesMax, so eviction runs rarely. */
const EVICT_TARGET_FRACTION = 0.9;

/** A path the mirror knows about; its id is the kernel's node id. */
export interface MirrorNode extends TableNode {
  readonly path: string;
  readonly name: string;
  readonly parent: MirrorNode | undefined;
  /** The master's attributes, or undefined when not known (yet, or since reset). */
  attr: FileAttr | undefined;
  /** For directories: names and kinds of the children, when known. */
  listing: Map<string, FileKind> | undefined;
  /** Whether every child in the listing had its attrs fetched (by a `dir` call). */
  complete: boolean;
  /** Cached child nodes (a subset of the listing). */
  readonly kids: Map<string, MirrorNode>;
  /** Open handles. */
  opens: number;
  /** No longer reachable by path (deleted or replaced); kept while the kernel or a handle holds it. */
  detached: boolean;
  /** A sandbox mount point: an empty directory, whatever the master says. */
  readonly synthetic: boolean;
  /** Names answered "no such file" (negative entries the kernel may cache). */
  negatives: Set<string> | undefined;
  /** The listing as readdir rows, built when first listed; dropped when the listing changes. */
  rows: DirRow[] | undefined;
}

/** One row of a directory listing; `node` gives d_ino when cached. */
export interface DirRow {
  name: string;
  kind: FileKind;
  node: MirrorNode | undefined;
}

/** Options of {@linkcode AttrCache}. */
export interface AttrCacheOptions {
  /** Paths at or under it are owned by the job user; the rest by root. */
  writableRoot: string;
  /** Shown as empty directories (paths, normalised here). */
  mountPoints: readonly string[];
  /** Cached paths kept at most; unreferenced ones are dropped, LRU. */
  entriesMax: number;
  entryTimeoutS: number;
  attrTimeoutS: number;
  negativeTimeoutS: number;
  /** A node that must not be evicted now (a fetch for it is in flight). */
  busy(node: MirrorNode): boolean;
}

export class AttrCache {
  /** Every node the kernel may name, see {@link NodeTable}; detached ones while held. */
  readonly nodes: NodeTable<MirrorNode> = new NodeTable<MirrorNode>({
    keep: (node) => !node.detached || node.opens > 0,
  });
  readonly root: MirrorNode;
  readonly #writableRoot: string;
  readonly #mountPoints: ReadonlyMap<string, readonly string[]>;
  readonly #mountPointSet: ReadonlySet<string>;
  readonly #entriesMax: number;
  readonly #entryTimeoutS: number;
  readonly #attrTimeoutS: number;
  readonly #negativeTimeoutS: number;
  readonly #busy: (node: MirrorNode) => boolean;
  #attached = 0;
  #evictAbove: number;
  #negativeCount = 0;

  constructor(options: AttrCacheOptions) {
    this.#writableRoot = normalizePath(options.writableRoot);
    this.#entriesMax = options.entriesMax;
    this.#evictAbove = this.#entriesMax;
    this.#entryTimeoutS = options.entryTimeoutS;
    this.#attrTimeoutS = options.attrTimeoutS;
    this.#negativeTimeoutS = options.negativeTimeoutS;
    this.#busy = options.busy;
    const mountPoints = new Map<string, string[]>();
    const mountPointSet = new Set<string>();
    for (const raw of options.mountPoints) {
      const path = normalizePath(raw);
      if (path === "/") continue;
      mountPointSet.add(path);
      const parent = parentOf(path);
      mountPoints.set(parent, [...(mountPoints.get(parent) ?? []), baseName(path)]);
    }
    this.#mountPoints = mountPoints;
    this.#mountPointSet = mountPointSet;
    this.root = this.#newNode(undefined, "", "/", false);
  }

  /** Paths cached now (attached nodes). */
  get attached(): number {
    return this.#attached;
  }

  get attrTimeoutS(): number {
    return this.#attrTimeoutS;
  }

  /** The attached node of `path`, if cached. */
  find(path: string): MirrorNode | undefined {
    if (path === "/") return this.root;
    let node: MirrorNode | undefined = this.root;
    for (const part of path.slice(1).split("/")) {
      node = node.kids.get(part);
      if (node === undefined) return undefined;
    }
    return node;
  }

  isUnderMountPoint(path: string): boolean {
    for (const mountPoint of this.#mountPointSet) {
      if (isInside(path, mountPoint)) return true;
    }
    return false;
  }

  // ---- attributes and listings ----

  /** Stores fetched attrs of one path into the tree (no kernel invalidation). */
  absorb(attr: FileAttr): MirrorNode | undefined {
    const path = normalizePath(attr.path);
    if (this.isUnderMountPoint(path) || path === "/") return undefined;
    const parent = this.find(parentOf(path));
    if (parent === undefined || parent.synthetic) return undefined;
    const name = baseName(path);
    if (attr.kind === null) {
      if (parent.listing?.delete(name)) parent.rows = undefined;
      const node = parent.kids.get(name);
      if (node) this.detach(node);
      return undefined;
    }
    if (parent.listing !== undefined && parent.listing.get(name) !== attr.kind) {
      parent.listing.set(name, attr.kind);
      parent.rows = undefined;
      this.forgetNegative(parent, name);
    }
    return this.learnChild(parent, name, attr);
  }

  /** Creates or updates the child node `name` of `parent` with `attr`. */
  learnChild(parent: MirrorNode, name: string, attr: FileAttr): MirrorNode | undefined {
    if (parent.synthetic || !validName(name)) return undefined;
    let child = parent.kids.get(name);
    if (child?.synthetic) return child;
    if (child?.attr !== undefined && child.attr.kind !== attr.kind) {
      this.detach(child);
      child = undefined;
    }
    child ??= this.#newNode(parent, name, joinPath(parent.path, name), false);
    this.setAttr(child, attr);
    return child;
  }

  setAttr(node: MirrorNode, attr: FileAttr): void {
    const old = node.attr;
    const next: FileAttr = { ...attr, path: node.path };
    if (
      next.hash === undefined && old?.hash !== undefined && old.kind === "file" &&
      next.kind === "file" && old.size === next.size && old.mtimeMs === next.mtimeMs
    ) {
      next.hash = old.hash;
    }
    const children = next.children;
    delete next.children;
    delete next.listingPrint;
    node.attr = next;
    if (next.kind === "dir" && children !== undefined) {
      // Names only: a listing new from here lacks its children's attrs.
      if (node.listing === undefined) node.complete = false;
      this.setListing(node, mapOf(children));
    }
  }

  /** Replaces a directory's listing; drops cached children no longer in it. */
  setListing(node: MirrorNode, listing: Map<string, FileKind>): void {
    for (const name of this.#mountPoints.get(node.path) ?? []) {
      listing.set(name, "dir");
      if (!node.kids.get(name)?.synthetic) {
        const old = node.kids.get(name);
        if (old) this.detach(old);
        const child = this.#newNode(node, name, joinPath(node.path, name), true);
        child.attr = {
          path: child.path,
          kind: "dir",
          mode: child.path === "/tmp" ? 0o1777 : 0o755,
          size: 0,
          mtimeMs: Date.now(),
        };
        child.listing = new Map();
        child.complete = true;
      }
    }
    for (const [name, kid] of [...node.kids]) {
      const kind = listing.get(name);
      if (kind === undefined || (kid.attr !== undefined && kid.attr.kind !== kind)) {
        this.detach(kid);
      }
    }
    if (node.negatives) {
      for (const name of listing.keys()) this.forgetNegative(node, name);
    }
    node.listing = listing;
    node.rows = undefined;
  }

  /**
   * Forgets a directory's listing and negative entries (its children's nodes
   * stay): names it holds are looked up on the master again. The kernel drops
   * its cached listing, the negative entries and the entries of names that
   * are not directories; never a directory's entry (that would detach the
   * sandboxes' mounts on it, as in {@linkcode forgetAll}).
   */
  forgetListing(node: MirrorNode, invalidations: Invalidations): void {
    if (node.negatives) {
      for (const name of node.negatives) invalidations.entry(node.id, name);
      this.#negativeCount -= node.negatives.size;
      node.negatives = undefined;
    }
    for (const [name, kind] of node.listing ?? []) {
      if (kind !== "dir") invalidations.entry(node.id, name);
    }
    if (node.known) invalidations.inode(node.id, 0);
    node.listing = undefined;
    node.rows = undefined;
    node.complete = false;
  }

  /**
   * Drops every attribute, listing and negative entry (nodes the kernel or a
   * handle holds stay, with their ids) and collects what the kernel must
   * drop of its caches.
   */
  forgetAll(invalidations: Invalidations): void {
    const visit = (node: MirrorNode): void => {
      for (const kid of [...node.kids.values()]) visit(kid);
      if (node.negatives) {
        for (const name of node.negatives) invalidations.entry(node.id, name);
        this.#negativeCount -= node.negatives.size;
        node.negatives = undefined;
      }
      if (node.synthetic) return;
      if (node.known) {
        invalidations.inode(node.id, 0);
        // Not a directory's entry: that would detach the sandboxes' mounts on it.
        if (node.parent && node.attr?.kind !== "dir") {
          invalidations.entry(node.parent.id, node.name);
        }
      }
      node.attr = undefined;
      node.listing = undefined;
      node.rows = undefined;
      node.complete = false;
      if (node !== this.root && !node.known && node.opens === 0 && node.kids.size === 0) {
        this.detach(node);
      }
    };
    visit(this.root);
  }

  // ---- negative entries ----

  /** The answer for `name` missing from `parent`'s listing. */
  negative(parent: MirrorNode, name: string): Entry | Errno {
    if (parent.negatives?.has(name)) {
      return { ino: 0, entryTimeoutS: this.#negativeTimeoutS, attrTimeoutS: 0 };
    }
    if (
      this.#negativeCount >= NEGATIVES_MAX || (parent.negatives?.size ?? 0) >= NEGATIVES_PER_DIR_MAX
    ) {
      return ENOENT; // not cached by the kernel, so nothing to invalidate later
    }
    parent.negatives ??= new Set();
    parent.negatives.add(name);
    this.#negativeCount++;
    return { ino: 0, entryTimeoutS: this.#negativeTimeoutS, attrTimeoutS: 0 };
  }

  forgetNegative(parent: MirrorNode, name: string): void {
    if (parent.negatives?.delete(name)) this.#negativeCount--;
  }

  // ---- what the kernel sees ----

  /**
   * Whether `node` is a directory outside the writable root that others may
   * not enter at all (a private home, say). The master serves none of its
   * children, and neither does the mirror: every name in it is absent. It is
   * shown as one that others may enter (not list): a job's lookup there, such
   * as a PATH entry under the home, then ends in the kernel's cache of absent
   * names, where a permission failure would end in a request to this file
   * system each time (the kernel asks for the inode's attributes again after
   * every EACCES: 22 such requests per lua compile with root's PATH, ~2 ms of
   * a worker's CPU; BENCHMARKS.md, session 17). The job finds no such name,
   * as the user whose home it is would, where it met "Permission denied".
   */
  closed(node: MirrorNode): boolean {
    const attr = node.attr;
    // Never the root, the writable root or a directory on the way to it (the
    // sandboxes' mount points, which a master would not serve in there anyway).
    return attr !== undefined && attr.kind === "dir" && (attr.mode & OTHERS_ALL) === 0 &&
      node !== this.root && !isInside(node.path, this.#writableRoot) &&
      !isInside(this.#writableRoot, node.path);
  }

  /**
   * Forgets everything under a directory that was {@linkcode closed} and is
   * no longer, or the other way round: its listing, its cached children and
   * its negative entries, with the kernel's entries of every one of those
   * names (no mount point of a sandbox is in there: see `closed`). A directory
   * newly closed then shows nothing it showed, even to a job that knew the
   * names; a newly open one looks its names up on the master again.
   */
  forgetChildren(node: MirrorNode, invalidations: Invalidations): void {
    const names = new Set([...node.listing?.keys() ?? [], ...node.kids.keys()]);
    for (const name of node.negatives ?? []) names.add(name);
    for (const name of names) invalidations.entry(node.id, name);
    for (const kid of [...node.kids.values()]) this.detach(kid);
    if (node.negatives) {
      this.#negativeCount -= node.negatives.size;
      node.negatives = undefined;
    }
    node.listing = undefined;
    node.rows = undefined;
    node.complete = false;
  }

  toAttr(node: MirrorNode): Attr {
    const attr = node.attr!;
    const owner = isInside(node.path, this.#writableRoot) ? JOB_UID : 0;
    const size = attr.kind === "symlink" && attr.target !== undefined
      ? byteLength(attr.target)
      : attr.size;
    let mode = attr.mode & 0o7777;
    if (this.closed(node)) mode |= OTHERS_SEARCH;
    return {
      ino: node.id,
      mode: typeBits(attr.kind ?? "file") | mode,
      nlink: 1,
      uid: owner,
      gid: owner === 0 ? 0 : JOB_GID,
      size,
      mtimeMs: attr.mtimeMs,
      ctimeMs: attr.mtimeMs,
      atimeMs: attr.mtimeMs,
      blksize: 4096,
    };
  }

  entryOf(node: MirrorNode): Entry & { attr: Attr } {
    return {
      ino: node.id,
      attr: this.toAttr(node),
      entryTimeoutS: this.#entryTimeoutS,
      attrTimeoutS: this.#attrTimeoutS,
    };
  }

  // ---- nodes ----

  #newNode(
    parent: MirrorNode | undefined,
    name: string,
    path: string,
    synthetic: boolean,
  ): MirrorNode {
    const id = parent === undefined ? FUSE_ROOT_ID : this.nodes.nextId();
    const node: MirrorNode = {
      id,
      path,
      name,
      parent,
      attr: undefined,
      listing: undefined,
      complete: false,
      kids: new Map(),
      known: parent === undefined,
      opens: 0,
      detached: false,
      synthetic,
      negatives: undefined,
      rows: undefined,
    };
    parent?.kids.set(name, node);
    this.nodes.add(node);
    this.#attached++;
    return node;
  }

  /** Removes a node and its subtree from the tree; kept by id while still in use. */
  detach(node: MirrorNode): void {
    if (node.detached || node === this.root) return;
    for (const kid of [...node.kids.values()]) this.detach(kid);
    if (node.parent?.kids.get(node.name) === node) node.parent.kids.delete(node.name);
    node.detached = true;
    node.listing = undefined;
    node.rows = undefined;
    if (node.negatives) {
      this.#negativeCount -= node.negatives.size;
      node.negatives = undefined;
    }
    this.#attached--;
    this.nodes.dropIfUnused(node);
  }

  /** Drops least recently used nodes nobody holds, when above the cap. */
  evictIfNeeded(): void {
    if (this.#attached <= this.#evictAbove) return;
    const target = Math.floor(this.#entriesMax * EVICT_TARGET_FRACTION);
    for (const node of this.nodes.values()) {
      if (this.#attached <= target) break;
      if (
        node === this.root || node.detached || node.known || node.opens > 0 ||
        node.kids.size > 0 || node.synthetic || this.#busy(node)
      ) {
        continue;
      }
      this.detach(node);
    }
    // When most nodes are held, scan again only after some growth.
    this.#evictAbove = Math.max(
      this.#entriesMax,
      this.#attached + Math.ceil(this.#entriesMax * (1 - EVICT_TARGET_FRACTION)),
    );
  }
}

/** The name of `path` in `dir` if it is a direct child, else undefined. */
export function childName(dir: string, path: string): string | undefined {
  const normalized = normalizePath(path);
  if (normalized === "/" || parentOf(normalized) !== dir) return undefined;
  const name = baseName(normalized);
  return validName(name) ? name : undefined;
}

function validName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") &&
    !name.includes("\0") && byteLength(name) <= NAME_BYTES_MAX;
}

/** A listing from a directory attr's `children` (invalid names left out). */
export function mapOf(children: Record<string, FileKind>): Map<string, FileKind> {
  const map = new Map<string, FileKind>();
  for (const [name, kind] of Object.entries(children)) {
    if (validName(name)) map.set(name, kind);
  }
  return map;
}

/** The file type bits of `st_mode` for a kind. */
export function typeBits(kind: FileKind): number {
  return kind === "dir" ? S_IFDIR : kind === "symlink" ? S_IFLNK : S_IFREG;
}

/** The rows of a listing ("." and ".." first), to keep in `node.rows`. */
export function buildRows(node: MirrorNode): DirRow[] {
  const rows: DirRow[] = [
    { name: ".", kind: "dir", node },
    { name: "..", kind: "dir", node: node.parent ?? node },
  ];
  for (const [name, kind] of node.listing ?? []) {
    rows.push({ name, kind, node: node.kids.get(name) });
  }
  return rows;
}

const encoder = new TextEncoder();

export function byteLength(text: string): number {
  return encoder.encode(text).length;
}
