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
 */
import type { FileAttr } from "../common/types.ts";

export interface Updates {
  updates: FileAttr[];
  /** The worker must drop every cached attribute (its cursor fell out of the log). */
  reset: boolean;
  cursor: number;
}

export class ChangeLog {
  #entries: { seq: number; attr: FileAttr }[] = [];
  /** Path → seq of its latest entry. */
  #latest = new Map<string, number>();
  #seq = 0;
  /** Highest seq dropped for room (not superseded): cursors below it must reset. */
  #lostSeq = 0;
  #entriesMax: number;

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
      this.#entries.push({ seq: ++this.#seq, attr });
      this.#latest.set(attr.path, this.#seq);
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
    const updates: FileAttr[] = [];
    for (let i = lo; i < this.#entries.length; i++) {
      const { seq, attr } = this.#entries[i];
      if (this.#latest.get(attr.path) === seq) updates.push(attr);
    }
    return { updates, reset: false, cursor: this.#seq };
  }
}
