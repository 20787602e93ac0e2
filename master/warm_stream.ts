/**
 * `fs.warm`: a tool's learned warm set streamed to a mirror (read now, as a
 * lazy fetch would read it), with a cap on the streams running per worker
 * connection and in all.
 *
 * @module
 */
import type { CallContext } from "../rpc/mod.ts";
import { RpcError } from "../rpc/mod.ts";
import type { FileServer } from "./file_server.ts";
import { DEBUG_TIMINGS, describe } from "./remote_run.ts";
import { streamWarmSet, WARM_TOOL_KEY_MAX, type WarmSets } from "./warm_set.ts";

/** Warm-set streams at once, per worker connection and in all. */
export const WARM_STREAMS_PER_PEER_MAX = 4;
export const WARM_STREAMS_MAX = 16;

export interface WarmStreamsOptions {
  sets: WarmSets;
  files: FileServer;
  log(message: string): void;
}

/** What a warm stream sent. */
export interface WarmSent {
  dirs: number;
  files: number;
  bytes: number;
}

/** The master's side of `fs.warm`. */
export class WarmStreams {
  readonly #o: WarmStreamsOptions;
  /** Streams running, per worker connection. */
  readonly #running = new Map<unknown, number>();

  constructor(options: WarmStreamsOptions) {
    this.#o = options;
  }

  /** Streams `tool`'s learned warm set over `ctx`; refused while too many run. */
  async stream(tool: unknown, ctx: CallContext): Promise<WarmSent> {
    if (typeof tool !== "string" || tool.length > WARM_TOOL_KEY_MAX) {
      throw new RpcError("BAD_REQUEST", `Bad tool key: ${describe(tool)}`);
    }
    let all = 0;
    for (const n of this.#running.values()) all += n;
    const mine = this.#running.get(ctx.peer) ?? 0;
    if (mine >= WARM_STREAMS_PER_PEER_MAX || all >= WARM_STREAMS_MAX) {
      throw new RpcError("LIMIT", `Cannot stream a warm set: ${all} streams running`);
    }
    this.#running.set(ctx.peer, mine + 1);
    const files = this.#o.files;
    try {
      const sent = await streamWarmSet({
        set: this.#o.sets.setFor(tool),
        dir: (path) => files.dir(path),
        attr: (path) => files.attr(path, { withHash: true }),
        send: (chunk) => ctx.sendChunk(chunk),
        signal: ctx.signal,
      });
      if (DEBUG_TIMINGS) {
        this.#o.log(
          `warm set of ${JSON.stringify(tool)} sent: ${sent.dirs} directories, ${sent.files} ` +
            `files (${(sent.bytes / 2 ** 20).toFixed(1)} MiB of contents)`,
        );
      }
      return sent;
    } finally {
      const n = (this.#running.get(ctx.peer) ?? 1) - 1;
      if (n <= 0) this.#running.delete(ctx.peer);
      else this.#running.set(ctx.peer, n);
    }
  }
}
