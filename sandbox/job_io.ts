/**
 * The job's pipes: output forwarded to its sinks up to a byte cap, stdin
 * fed from bytes or a stream until the job ends.
 *
 * @module
 */

const encoder = new TextEncoder();

/** Sends `signal` to `child` unless it has exited. */
export function trySignal(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // Already exited.
  }
}

/** Writes `input` to the job's stdin until it is all written or `stop` aborts. */
export async function feedStdin(
  stream: WritableStream<Uint8Array>,
  input: Uint8Array | AsyncIterable<Uint8Array>,
  stop: AbortSignal,
): Promise<void> {
  const writer = stream.getWriter();
  const stopped = new Promise<"stop">((resolve) => {
    if (stop.aborted) resolve("stop");
    stop.addEventListener("abort", () => resolve("stop"), { once: true });
  });
  try {
    if (input instanceof Uint8Array) {
      await Promise.race([writer.write(input), stopped]);
    } else {
      const it = input[Symbol.asyncIterator]();
      try {
        for (;;) {
          // The job may end while its stdin is still open: stop waiting then.
          const next = await Promise.race([it.next(), stopped]);
          if (next === "stop" || next.done) break;
          await Promise.race([writer.write(next.value), stopped]);
          if (stop.aborted) break;
        }
      } finally {
        it.return?.()?.catch?.(() => {});
      }
    }
    if (stop.aborted) await writer.abort().catch(() => {});
    else await writer.close();
  } catch {
    // The job exited without reading everything.
    await writer.abort().catch(() => {});
  }
}

/** Bytes of each buffer a job's output pipe is read into (a pipe holds 64 KiB). */
const READ_BUFFER_BYTES = 64 * 1024;
/** Read buffers kept for the next jobs' pipes, at most. */
const SPARE_BUFFERS_MAX = 16;
/**
 * Buffers of pipes that reached their end, for the next ones: a stream's own
 * reads take a new 64 KiB buffer each, zeroed, two or more per job even when
 * the job writes nothing (0.3 ms of a worker's CPU per job on a VM where page
 * faults are dear).
 */
const spareBuffers: ArrayBuffer[] = [];

/** Forwards one output stream to its sink, up to a byte cap, and drains the rest. */
export class Pump {
  readonly done: Promise<void>;
  note: string | undefined;
  #reader: ReadableStreamBYOBReader;

  /** `stream` must be a byte stream (a child process's pipe is). */
  constructor(
    stream: ReadableStream<Uint8Array>,
    name: string,
    bytesMax: number,
    sink: ((bytes: Uint8Array) => void | Promise<void>) | undefined,
    onSinkError: (err: unknown) => void,
  ) {
    this.#reader = stream.getReader({ mode: "byob" });
    this.done = this.#run(name, bytesMax, sink, onSinkError);
  }

  async #run(
    name: string,
    bytesMax: number,
    sink: ((bytes: Uint8Array) => void | Promise<void>) | undefined,
    onSinkError: (err: unknown) => void,
  ): Promise<void> {
    let bytes = 0;
    let forwarding = sink !== undefined;
    // Each read hands the buffer over and gets it back in the result: the sink
    // gets a copy of what was read, since the next read reuses the buffer.
    let buffer = spareBuffers.pop() ?? new ArrayBuffer(READ_BUFFER_BYTES);
    try {
      for (;;) {
        const { done, value } = await this.#reader.read(new Uint8Array(buffer));
        if (value !== undefined) buffer = value.buffer as ArrayBuffer;
        if (done) {
          // Not one handed to a read that was cancelled: that one is detached (0 bytes).
          if (buffer.byteLength === READ_BUFFER_BYTES && spareBuffers.length < SPARE_BUFFERS_MAX) {
            spareBuffers.push(buffer);
          }
          break;
        }
        if (!forwarding) continue;
        try {
          if (bytes + value.length <= bytesMax) {
            bytes += value.length;
            await sink!(value.slice());
          } else {
            forwarding = false;
            await sink!(value.slice(0, bytesMax - bytes));
            this.note = `${name} truncated after ${bytesMax} bytes`;
            await sink!(encoder.encode(`\n[termite: ${this.note}]\n`));
          }
        } catch (err) {
          forwarding = false;
          onSinkError(err);
        }
      }
    } catch {
      // Cancelled (the buffer went with the read).
    } finally {
      this.#reader.releaseLock();
    }
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}
