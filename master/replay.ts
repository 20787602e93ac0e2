/**
 * Replaying a cached run: when the action cache holds a run of the command
 * whose every input is unchanged, its result set is applied to the tree from
 * the cache's contents and its output and exit status are given back, with
 * no worker.
 *
 * @module
 */
import type { ActionCache } from "./action_cache.ts";
import { applyResultSet, type ControlPaths } from "./apply.ts";
import type { Beneath } from "./beneath.ts";
import type { HashCache } from "./hash_cache.ts";
import type { JobIo, MasterStats } from "./master_types.ts";

export interface ActionReplayOptions {
  actions: ActionCache;
  root: string;
  tree: Beneath;
  control: ControlPaths;
  hashCache: HashCache;
  entriesMax?: number;
  /** Tells the mirrors of what the replay changed. */
  flush(touched: Iterable<string>, hashes: Map<string, string>): Promise<void>;
  stats: MasterStats;
  log(message: string): void;
}

/**
 * Contents up to this size are read at once, synchronously (a few µs from
 * the cache's own directory, against ~0.1 ms for an asynchronous open and a
 * stream); larger ones are streamed.
 */
const READ_AT_ONCE_BYTES_MAX = 1 * 2 ** 20;

/** Replays cached runs into the master's tree. */
export class ActionReplay {
  readonly #o: ActionReplayOptions;

  constructor(options: ActionReplayOptions) {
    this.#o = options;
  }

  /** Replays a cached run of the command when its inputs are unchanged; null: run it. */
  async replay(key: string, io: JobIo): Promise<number | null> {
    const { actions } = this.#o;
    const hit = await actions.lookup(key, io.stdin !== null);
    if (hit === null) return null;
    const small = new Set<string>();
    for (const f of hit.resultSet.files) if (f.size <= READ_AT_ONCE_BYTES_MAX) small.add(f.hash);
    try {
      const outcome = await applyResultSet(hit.resultSet, {
        writableRoot: this.#o.root,
        tree: this.#o.tree,
        control: this.#o.control,
        hashCache: this.#o.hashCache,
        entriesMax: this.#o.entriesMax,
        // Verified as a fetched one would be; unreadable: fetched after all.
        inline: (hash) => {
          if (!small.has(hash)) return undefined;
          try {
            return Deno.readFileSync(actions.blobPath(hash));
          } catch {
            return undefined;
          }
        },
        fetchBlob: async (hash, sink) => {
          using file = await Deno.open(actions.blobPath(hash));
          for await (const chunk of file.readable) await sink.write(chunk);
        },
      });
      await this.#o.flush(outcome.touched, outcome.hashes);
    } catch (err) {
      // A missing or corrupt content fails the whole set: nothing was changed.
      this.#o.log(`cannot replay a cached result: ${(err as Error).message}`);
      return null;
    }
    if (hit.stdout.length > 0) await io.stdout(hit.stdout);
    if (hit.stderr.length > 0) await io.stderr(hit.stderr);
    this.#o.stats.jobsCached++;
    return hit.exitCode;
  }
}
