/**
 * Jobs' stdin as it arrives in `job.stdin` notifications (which may come
 * before the job itself), streamed to the sandbox while the job runs.
 *
 * @module
 */

import { RpcError } from "../rpc/mod.ts";

/** Bytes of stdin kept per job at most; more is dropped. */
const STDIN_BYTES_MAX = 64 * 2 ** 20;
/** Jobs whose stdin is kept at once. */
const STDIN_JOBS_MAX = 1024;

/** A job's stdin as it arrives. */
interface StdinEntry {
  chunks: Uint8Array[];
  bytes: number;
  ended: boolean;
  wake?: () => void;
}

export class JobStdin {
  readonly #entries = new Map<string, StdinEntry>();

  /** Takes a `job.stdin` notification (`JobStdinParams`; empty data ends the input). */
  push(params: { jobId: string; data: Uint8Array }): void {
    if (typeof params?.jobId !== "string" || !(params.data instanceof Uint8Array)) return;
    const s = this.#entry(params.jobId);
    if (!s || s.ended) return;
    if (params.data.length === 0) s.ended = true;
    else if (s.bytes + params.data.length <= STDIN_BYTES_MAX) {
      s.chunks.push(params.data);
      s.bytes += params.data.length;
    }
    s.wake?.();
  }

  /** The job's stdin, until it ends or `signal` aborts. */
  async *stream(jobId: string, signal: AbortSignal): AsyncGenerator<Uint8Array> {
    const entry = this.#entry(jobId);
    if (!entry) throw new RpcError("LIMIT", "Too many jobs waiting for stdin");
    let sent = 0;
    for (;;) {
      while (sent < entry.chunks.length) {
        const chunk = entry.chunks[sent];
        entry.chunks[sent++] = new Uint8Array(); // Delivered: let it go.
        yield chunk;
      }
      if (entry.ended || signal.aborted) return;
      await new Promise<void>((resolve) => {
        entry.wake = resolve;
        signal.addEventListener("abort", () => resolve(), { once: true });
      });
    }
  }

  /** Forgets a job's stdin (the job is over). */
  delete(jobId: string): void {
    this.#entries.delete(jobId);
  }

  #entry(jobId: string): StdinEntry | undefined {
    let entry = this.#entries.get(jobId);
    if (!entry && this.#entries.size < STDIN_JOBS_MAX) {
      entry = { chunks: [], bytes: 0, ended: false };
      this.#entries.set(jobId, entry);
    }
    return entry;
  }
}
