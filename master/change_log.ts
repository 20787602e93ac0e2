/**
 * The versioned queue of attribute changes the master pushes to mirrors: each
 * worker connection keeps a cursor, and a job sent to a worker carries the
 * changes it has not seen yet, so one job's output is visible to the next job
 * on any worker. When a cursor falls out of the bounded log, the worker is
 * told to drop its whole cache instead.
 *
 * Only the latest version of a path matters to any cursor, so older versions
 * are compacted away: the log holds at most about one entry per changed path
 * (a directory changed by every job would otherwise pile up a copy of its
 * whole listing per job).
 *
 * A directory's listing is not sent again where the mirror can work it out:
 * every name its listing changed in since the cursor was also pushed as a
 * path of its own (a job's object added, a file removed), and the mirror
 * applies those to the listing it holds. The directory then goes without
 * `children`, with the listing's fingerprint (`listingPrint`) instead, which
 * the mirror checks. In a directory of n files, a job's updates so carry
 * its own changes, not n names.
 */
import { listingPrint } from "../common/listing_print.ts";
import { baseName, joinPath, parentOf } from "../common/paths.ts";
import type { FileAttr } from "../common/types.ts";

export interface Updates {
  updates: FileAttr[];
  /** The worker must drop every cached attribute (its cursor fell out of the log). */
  reset: boolean;
  cursor: number;
}

interface Entry {
  seq: number;
  attr: FileAttr;
  /** The attr without its listing, with the listing's fingerprint (made once, when first sent). */
  slim?: FileAttr;
}

export class ChangeLog {
  #entries: Entry[] = [];
  /** Path → seq of its latest entry. */
  #latest = new Map<string, number>();
  #seq = 0;
  /** Highest seq dropped for room (not superseded): cursors below it must reset. */
  #lostSeq = 0;
  #entriesMax: number;
  /** Directory → name → seq of the last listing pushed that changed that name. */
  #nameChanges = new Map<string, Map<string, number>>();
  #nameChangeCount = 0;
  /** Directory → seq of its last listing pushed with no earlier one logged to compare it with. */
  #unexplained = new Map<string, number>();
  /** Cursors below it always get listings whole (the bookkeeping above was dropped for room). */
  #listingLostSeq = 0;

  constructor(options: { entriesMax?: number } = {}) {
    this.#entriesMax = options.entriesMax ?? 200_000;
  }

  get seq(): number {
    return this.#seq;
  }

  /** Entries held now (for tests and the status page). */
  get size(): number {
    return this.#entries.length;
  }

  push(attrs: Iterable<FileAttr>): void {
    for (const attr of attrs) {
      const seq = ++this.#seq;
      if (attr.kind === "dir" && attr.children !== undefined) this.#noteListing(attr, seq);
      this.#entries.push({ seq, attr });
      this.#latest.set(attr.path, seq);
    }
    // Superseded versions: drop them once they are half the log.
    if (this.#entries.length > 2 * this.#latest.size + 1024) {
      this.#entries = this.#entries.filter((e) => this.#latest.get(e.attr.path) === e.seq);
    }
    if (this.#entries.length > this.#entriesMax) {
      const dropped = this.#entries.splice(0, this.#entries.length - this.#entriesMax);
      for (const e of dropped) {
        if (this.#latest.get(e.attr.path) === e.seq) {
          this.#latest.delete(e.attr.path);
          this.#lostSeq = Math.max(this.#lostSeq, e.seq);
        }
      }
    }
  }

  /** Changes after `cursor`, the latest version of each path only. */
  since(cursor: number): Updates {
    if (cursor === this.#seq) return { updates: [], reset: false, cursor };
    if (cursor > this.#seq || cursor < this.#lostSeq) {
      return { updates: [], reset: true, cursor: this.#seq };
    }
    // Entries are in seq order; a binary search finds the first one after cursor.
    let lo = 0, hi = this.#entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#entries[mid].seq <= cursor) lo = mid + 1;
      else hi = mid;
    }
    const entries: Entry[] = [];
    let listings = 0;
    for (let i = lo; i < this.#entries.length; i++) {
      const entry = this.#entries[i];
      if (this.#latest.get(entry.attr.path) !== entry.seq) continue;
      entries.push(entry);
      if (entry.attr.children !== undefined) listings++;
    }
    const updates = entries.map((e) => e.attr);
    if (listings === 0) return { updates, reset: false, cursor: this.#seq };
    // The paths of this batch by directory: what the mirror applies to its listings.
    const byDir = new Map<string, FileAttr[]>();
    for (const attr of updates) {
      if (attr.path === "/") continue;
      const dir = parentOf(attr.path);
      const list = byDir.get(dir);
      if (list === undefined) byDir.set(dir, [attr]);
      else list.push(attr);
    }
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i];
      if (entry.attr.children === undefined) continue;
      if (!this.#workedOut(entry.attr, cursor, byDir.get(entry.attr.path) ?? [])) continue;
      entry.slim ??= slimmed(entry.attr);
      updates[i] = entry.slim;
    }
    return { updates, reset: false, cursor: this.#seq };
  }

  /**
   * Whether a mirror whose cursor is `cursor` gets `dir`'s listing right
   * from the listing it holds and the batch's paths in it (`inBatch`): each
   * name the listings pushed since changed is in the batch, and each path of
   * the batch in it agrees with the listing.
   */
  #workedOut(dir: FileAttr, cursor: number, inBatch: FileAttr[]): boolean {
    if (cursor < this.#listingLostSeq) return false;
    if ((this.#unexplained.get(dir.path) ?? 0) > cursor) return false;
    const children = dir.children!;
    for (const [name, seq] of this.#nameChanges.get(dir.path) ?? []) {
      if (seq <= cursor) continue;
      const pushed = this.#latest.get(joinPath(dir.path, name));
      if (pushed === undefined || pushed <= cursor) return false;
    }
    for (const attr of inBatch) {
      const name = baseName(attr.path);
      const listed = Object.hasOwn(children, name) ? children[name] : null;
      if (attr.kind !== listed) return false;
    }
    return true;
  }

  /** Notes which names a directory's new listing changed against its last one logged. */
  #noteListing(attr: FileAttr, seq: number): void {
    const prevSeq = this.#latest.get(attr.path);
    const prev = prevSeq === undefined ? undefined : this.#entryAt(prevSeq)?.attr;
    if (prev?.kind !== "dir" || prev.children === undefined) {
      this.#unexplained.set(attr.path, seq);
    } else {
      const before = prev.children, after = attr.children!;
      let changes = this.#nameChanges.get(attr.path);
      const note = (name: string) => {
        if (changes === undefined) this.#nameChanges.set(attr.path, changes = new Map());
        if (!changes.has(name)) this.#nameChangeCount++;
        changes.set(name, seq);
      };
      for (const name of Object.keys(before)) {
        if (!Object.hasOwn(after, name) || after[name] !== before[name]) note(name);
      }
      for (const name of Object.keys(after)) if (!Object.hasOwn(before, name)) note(name);
    }
    if (this.#nameChangeCount + this.#unexplained.size > this.#entriesMax) {
      this.#nameChanges.clear();
      this.#unexplained.clear();
      this.#nameChangeCount = 0;
      this.#listingLostSeq = seq;
    }
  }

  /** The entry of `seq`, if still held. */
  #entryAt(seq: number): Entry | undefined {
    let lo = 0, hi = this.#entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#entries[mid].seq < seq) lo = mid + 1;
      else hi = mid;
    }
    const entry = this.#entries[lo];
    return entry?.seq === seq ? entry : undefined;
  }
}

/** A directory's attr with its listing's fingerprint in place of the listing. */
function slimmed(attr: FileAttr): FileAttr {
  const { children, ...rest } = attr;
  return { ...rest, listingPrint: listingPrint(Object.entries(children!)) };
}
