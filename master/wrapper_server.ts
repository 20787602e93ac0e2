/**
 * The master's unix socket (mode 0700) where wrappers hand in commands.
 */
import {
  checkWrapperRequest,
  decodeJson,
  encodeWrapperFrame,
  FrameType,
  type WrapperExit,
  WrapperFrameReader,
  type WrapperRequest,
  writeAll,
} from "../wrapper/protocol.ts";
import type { JobRequest, Master } from "./master.ts";
import { StdinBuffer } from "./stdin_buffer.ts";

export interface WrapperServerOptions {
  path: string;
  master: Master;
  log: (message: string) => void;
  /** Wrapper connections at once. */
  connectionsMax?: number;
}

export class WrapperServerError extends Error {
  override name = "WrapperServerError";
}

/** Why a job's signal aborts once its exit status was sent. */
const JOB_ENDED = new WrapperServerError("The job ended");

/** The job a wrapper's request frame asks for, and whether stdin frames follow; or why not. */
function jobOf(payload: Uint8Array): { request: JobRequest; stdin: boolean } | string {
  let r: WrapperRequest | string;
  try {
    r = checkWrapperRequest(decodeJson(payload));
  } catch {
    return "request is not JSON";
  }
  if (typeof r === "string") return r;
  const request = { argv: r.argv, cwd: r.cwd, env: r.env, shell: r.shell, localPath: r.localPath };
  return { request, stdin: r.stdin };
}

/** Removes a stale socket file, or fails if a master is listening on it. */
async function claimSocket(path: string): Promise<void> {
  try {
    const info = await Deno.lstat(path);
    if (!info.isSocket) throw new WrapperServerError(`Cannot listen on ${path}: not a socket`);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw err;
  }
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
    throw new WrapperServerError(`Cannot listen on ${path}: another master is running there`);
  } catch (err) {
    if (err instanceof WrapperServerError) throw err;
    await Deno.remove(path); // Stale: nobody listens.
  }
}

export class WrapperServer implements AsyncDisposable {
  #listener: Deno.Listener<Deno.UnixConn>;
  #options: WrapperServerOptions;
  #conns = new Set<Deno.UnixConn>();
  #handling = new Set<Promise<void>>();
  #accepting: Promise<void>;

  private constructor(listener: Deno.Listener<Deno.UnixConn>, options: WrapperServerOptions) {
    this.#listener = listener;
    this.#options = options;
    this.#accepting = this.#accept();
  }

  static async listen(options: WrapperServerOptions): Promise<WrapperServer> {
    await claimSocket(options.path);
    const listener = Deno.listen({ transport: "unix", path: options.path });
    await Deno.chmod(options.path, 0o700);
    return new WrapperServer(listener, options);
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        if (this.#conns.size >= (this.#options.connectionsMax ?? 4096)) {
          conn.close();
          continue;
        }
        this.#conns.add(conn);
        const p = this.#handle(conn).catch((err) => {
          this.#options.log(`wrapper connection: ${(err as Error).message}`);
        }).finally(() => {
          this.#conns.delete(conn);
          this.#handling.delete(p);
          try {
            conn.close();
          } catch {
            // Already closed.
          }
        });
        this.#handling.add(p);
      }
    } catch {
      // Listener closed.
    }
  }

  async #handle(conn: Deno.UnixConn): Promise<void> {
    const reader = new WrapperFrameReader(conn);
    const first = await reader.read();
    if (first === null) return;
    const send = async (type: number, payload: Uint8Array | string) => {
      for (let off = 0; off < payload.length || off === 0; off += 512 * 1024) {
        const part = typeof payload === "string"
          ? payload
          : payload.subarray(off, off + 512 * 1024);
        await writeAll(conn, encodeWrapperFrame(type, part));
        if (typeof payload === "string") break;
      }
    };
    const exit = (e: WrapperExit) => send(FrameType.exit, JSON.stringify(e));
    if (first.type === FrameType.slots) {
      await send(FrameType.slots, JSON.stringify(this.#options.master.farmSlots()));
      return;
    }
    if (first.type !== FrameType.request) {
      await exit({ code: 255, error: "protocol error: expected a request" });
      return;
    }
    const job = jobOf(first.payload);
    if (typeof job === "string") {
      await exit({ code: 255, error: `bad request: ${job}` });
      return;
    }
    const request = job.request;
    const stdin = job.stdin ? new StdinBuffer() : null;
    const cancel = new AbortController();
    // Read stdin and cancel frames while the job runs; a vanished wrapper cancels.
    const reading = (async () => {
      try {
        for (;;) {
          const frame = await reader.read();
          if (frame === null) break;
          if (frame.type === FrameType.cancel) cancel.abort();
          else if (frame.type === FrameType.stdin && stdin) {
            if (!stdin.push(frame.payload)) {
              cancel.abort();
              break;
            }
          } else break;
        }
      } catch {
        // Connection broken.
      }
      if (stdin && !stdin.ended) stdin.push(new Uint8Array());
      // Usually aborted already (the job ended): abort() would still build its
      // default reason, a DOMException (~50 µs), before finding it aborted.
      if (!cancel.signal.aborted) cancel.abort();
    })();
    let result: { code: number; error?: string };
    try {
      result = await this.#options.master.run(request, {
        stdout: (b) => send(FrameType.stdout, b),
        stderr: (b) => send(FrameType.stderr, b),
        stdin,
        signal: cancel.signal,
      });
    } catch (err) {
      result = { code: 255, error: `master failed: ${(err as Error).message}` };
    }
    try {
      await exit(result);
    } finally {
      // Whatever still follows the job stops; with a reason of its own, each
      // signal derived from this one is not given a new DOMException (~50 µs).
      cancel.abort(JOB_ENDED);
      try {
        // A promise: a connection closed meanwhile rejects it (no sync throw).
        await conn.closeWrite();
      } catch {
        // Gone.
      }
      await reading;
    }
  }

  async close(): Promise<void> {
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    await this.#accepting;
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await Promise.allSettled([...this.#handling]);
    await Deno.remove(this.#options.path).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
