/**
 * The versioned queue of attribute changes the master pushes to mirrors: each
 * worker connection keeps a cursor, and a job sent to a worker carries the
 * changes it has not seen yet, so one job's output is visible to the next job
 * on any worker. When a cursor falls out of the bounded log, the worker is
 * told to drop its whole cache instead.
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
  #seq = 0;
  #entriesMax: number;

  constructor(options: { entriesMax?: number } = {}) {
    this.#entriesMax = options.entriesMax ?? 200_000;
  }

  get seq(): number {
    return this.#seq;
  }

  push(attrs: Iterable<FileAttr>): void {
    for (const attr of attrs) this.#entries.push({ seq: ++this.#seq, attr });
    if (this.#entries.length > this.#entriesMax) {
      this.#entries.splice(0, this.#entries.length - this.#entriesMax);
    }
  }

  /** Changes after `cursor`, the latest version of each path only. */
  since(cursor: number): Updates {
    if (cursor === this.#seq) return { updates: [], reset: false, cursor };
    const first = this.#entries[0];
    if (cursor > this.#seq || (first !== undefined && first.seq > cursor + 1)) {
      return { updates: [], reset: true, cursor: this.#seq };
    }
    const latest = new Map<string, FileAttr>();
    // Entries are in seq order; a binary search finds the first one after cursor.
    let lo = 0, hi = this.#entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#entries[mid].seq <= cursor) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.#entries.length; i++) {
      const { attr } = this.#entries[i];
      latest.delete(attr.path);
      latest.set(attr.path, attr);
    }
    return { updates: [...latest.values()], reset: false, cursor: this.#seq };
  }
}
