/**
 * One authenticated connection: calls in both directions, many in flight,
 * with deadlines, cancellation and streamed chunks.
 *
 * @module
 */

import { errorMessage } from "../common/errors.ts";
import { type CallContext, Context } from "./call_context.ts";
import { FrameError, RpcError } from "./errors.ts";
import {
  closeQuietly,
  CODE_LENGTH_MAX,
  decodeMessage,
  encodeFrame,
  type FrameConn,
  FrameReader,
  type Message,
  MessageType,
} from "./frame.ts";
import type { Role } from "./handshake.ts";
import { FrameWriter } from "./writer.ts";

/** Default deadline of a call. */
export const CALL_TIMEOUT_MS = 30_000;
/** Default limit on handlers running for one connection; more get a `LIMIT` error. */
export const HANDLERS_RUNNING_MAX = 1024;
/** Default limit on our calls awaiting a reply on one connection. */
export const CALLS_PENDING_MAX = 65_536;
/** How long `close()` keeps trying to write frames already queued. */
export const CLOSE_FLUSH_TIMEOUT_MS = 2000;
/** Longest error message sent over the wire; longer ones are cut. */
export const ERROR_MESSAGE_LENGTH_MAX = 16 * 1024;

/** Serves one method. Throw an `RpcError` to send its code to the caller. */
// deno-lint-ignore no-explicit-any
export type Handler = (params: any, ctx: CallContext) => unknown | Promise<unknown>;
/** Methods by name. */
export type Handlers = Record<string, Handler>;

/** Options of {@link RpcPeer.call}. */
export interface CallOptions {
  /** Aborting rejects the call with `CANCELLED` and cancels it on the peer. */
  signal?: AbortSignal;
  /** Deadline; default 30 000. On expiry: `TIMEOUT`, and the call is cancelled on the peer. */
  timeoutMs?: number;
  /**
   * Receives streamed chunks in order. The connection's reader waits for a
   * returned promise (backpressure), so keep it short. `Uint8Array` chunks
   * are not copied; they stay valid. If it throws, the call rejects with
   * that error and is cancelled on the peer.
   */
  onChunk?: (chunk: unknown) => void | Promise<void>;
}

/** Options of the {@link RpcPeer} constructor. */
export interface RpcPeerOptions {
  /** An authenticated connection. */
  conn: FrameConn;
  /** The handshake's reader (it may hold frames already received). */
  reader?: FrameReader;
  peerRole: Role;
  /** "host:port" or "unix". */
  remoteAddr: string;
  handlers?: Handlers;
  /** Where dropped connections and failed notifications are reported. Default `console.error`. */
  log?: (message: string) => void;
  /** Default {@link HANDLERS_RUNNING_MAX}. */
  handlersRunningMax?: number;
  /** Default {@link CALLS_PENDING_MAX}. */
  callsPendingMax?: number;
}

interface PendingCall {
  readonly method: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
  readonly onChunk: ((chunk: unknown) => void | Promise<void>) | undefined;
  readonly signal: AbortSignal | undefined;
  /** `performance.now()` after which the call times out. */
  readonly deadline: number;
  readonly timeoutMs: number;
  onAbort: (() => void) | undefined;
}

/**
 * One end of an authenticated connection. Both ends can call and serve.
 * Frames are read and written by one loop each; small frames queued
 * together go out in one write.
 */
export class RpcPeer implements AsyncDisposable {
  /** Authenticated role of the other side. */
  readonly peerRole: Role;
  /** "host:port" or "unix". */
  readonly remoteAddr: string;
  /** Resolves when the connection is gone; never rejects. */
  readonly closed: Promise<void>;

  readonly #conn: FrameConn;
  readonly #reader: FrameReader;
  readonly #writer: FrameWriter;
  readonly #log: (message: string) => void;
  readonly #handlersRunningMax: number;
  readonly #callsPendingMax: number;
  #handlers: Handlers;
  readonly #calls = new Map<number, PendingCall>();
  /** Running handlers of calls (not notifications), by the caller's id. */
  readonly #running = new Map<number, Context>();
  /** Running handlers of notifications. */
  readonly #runningNotifications = new Set<Context>();
  #runningCount = 0;
  #lastCallId = 0;
  #closing = false;
  #connClosed = false;
  #readDone = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * One timer serves every call's deadline: it fires at the earliest deadline
   * it knows of, fails the calls due, and re-arms itself for the rest. Calls
   * with later deadlines than the armed one (the usual case) cost no timer.
   */
  #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  #sweepAt = Infinity;
  readonly #closingSignal: PromiseWithResolvers<void> = Promise.withResolvers();
  readonly #closedSignal: PromiseWithResolvers<void> = Promise.withResolvers();

  constructor(options: RpcPeerOptions) {
    this.#conn = options.conn;
    this.#reader = options.reader ?? new FrameReader(options.conn);
    this.peerRole = options.peerRole;
    this.remoteAddr = options.remoteAddr;
    this.#handlers = options.handlers ?? {};
    this.#log = options.log ?? console.error;
    this.#handlersRunningMax = options.handlersRunningMax ?? HANDLERS_RUNNING_MAX;
    this.#callsPendingMax = options.callsPendingMax ?? CALLS_PENDING_MAX;
    this.#writer = new FrameWriter(this.#conn, (error) => {
      if (!this.#closing) this.#log(`Lost peer ${this.remoteAddr}: ${errorMessage(error)}`);
      this.#closeConn();
      this.close();
    });
    this.closed = this.#closedSignal.promise;
    this.#readLoop();
  }

  /** Replaces the methods this side serves. */
  setHandlers(handlers: Handlers): void {
    this.#handlers = handlers;
  }

  /**
   * Calls `method` on the peer.
   * @throws {RpcError} with the handler's code, or `TIMEOUT`, `CANCELLED`,
   * `CLOSED`, `NO_METHOD`, `LIMIT`, `BAD_REQUEST` (params cannot be encoded).
   */
  call<T = unknown>(method: string, params?: unknown, options?: CallOptions): Promise<T> {
    if (this.#closing) return Promise.reject(this.#closedError());
    const backpressure = this.#writer.backpressure();
    if (backpressure !== undefined) {
      return backpressure.then(() => this.call<T>(method, params, options));
    }
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(cancelledError(method, signal.reason));
    if (this.#calls.size >= this.#callsPendingMax) {
      return Promise.reject(
        new RpcError("LIMIT", `Cannot call ${method}: ${this.#calls.size} calls pending`),
      );
    }
    let id = this.#lastCallId;
    do id = id >= 0xffff_ffff ? 1 : id + 1; while (this.#calls.has(id));
    this.#lastCallId = id;
    let frame: Uint8Array;
    try {
      frame = encodeFrame([MessageType.REQUEST, id, method, params ?? null]);
    } catch (error) {
      const code = error instanceof FrameError ? "LIMIT" : "BAD_REQUEST";
      return Promise.reject(
        new RpcError(code, `Cannot send ${method}: ${errorMessage(error)}`, { cause: error }),
      );
    }
    const timeoutMs = options?.timeoutMs ?? CALL_TIMEOUT_MS;
    return new Promise<T>((resolve, reject) => {
      const pending: PendingCall = {
        method,
        resolve: resolve as (value: unknown) => void,
        reject,
        onChunk: options?.onChunk,
        signal,
        deadline: performance.now() + timeoutMs,
        timeoutMs,
        onAbort: undefined,
      };
      if (pending.deadline < this.#sweepAt) this.#armSweep(pending.deadline);
      if (signal !== undefined) {
        pending.onAbort = () => this.#abandon(id, cancelledError(method, signal.reason));
        signal.addEventListener("abort", pending.onAbort, { once: true });
      }
      this.#calls.set(id, pending);
      try {
        this.#writer.enqueue(frame);
      } catch (error) {
        this.#takeCall(id);
        reject(error);
      }
    });
  }

  /**
   * Sends a one-way message; the peer runs the handler and ignores its
   * result. Resolves once the message was written to the socket.
   */
  async notify(method: string, params?: unknown): Promise<void> {
    if (this.#closing) throw this.#closedError();
    const backpressure = this.#writer.backpressure();
    if (backpressure !== undefined) await backpressure;
    if (this.#closing) throw this.#closedError();
    let frame: Uint8Array;
    try {
      frame = encodeFrame([MessageType.REQUEST, 0, method, params ?? null]);
    } catch (error) {
      const code = error instanceof FrameError ? "LIMIT" : "BAD_REQUEST";
      throw new RpcError(code, `Cannot send ${method}: ${errorMessage(error)}`, { cause: error });
    }
    await this.#writer.written(this.#writer.enqueue(frame));
  }

  /**
   * Closes the connection: pending calls reject with `CLOSED`, running
   * handlers see their signal abort. Frames already queued are still written
   * (for at most {@link CLOSE_FLUSH_TIMEOUT_MS}). Idempotent.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#closingSignal.resolve();
    this.#armSweep(Infinity);
    const error = this.#closedError();
    this.#writer.close(error);
    for (const [id, pending] of this.#calls) {
      this.#calls.delete(id);
      clearPending(pending);
      pending.reject(error);
    }
    for (const [id, ctx] of this.#running) {
      this.#running.delete(id);
      ctx.cancel(error);
    }
    for (const ctx of this.#runningNotifications) ctx.cancel(error);
    this.#runningNotifications.clear();
    if (this.#writer.idle) {
      this.#closeConn();
    } else {
      this.#closeTimer = setTimeout(() => this.#closeConn(), CLOSE_FLUSH_TIMEOUT_MS);
      this.#writer.whenIdle().then(() => this.#closeConn());
    }
  }

  /** Closes and waits until the connection is gone. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.closed;
  }

  #armSweep(deadline: number): void {
    clearTimeout(this.#sweepTimer);
    this.#sweepTimer = undefined;
    this.#sweepAt = deadline;
    if (deadline === Infinity) return;
    const delayMs = Math.max(0, Math.ceil(deadline - performance.now()));
    const timer = setTimeout(() => this.#sweep(), delayMs);
    // Only pending calls need it, and they keep the connection's read alive anyway.
    if (typeof timer === "number") Deno.unrefTimer(timer);
    else (timer as { unref?: () => void }).unref?.();
    this.#sweepTimer = timer;
  }

  #sweep(): void {
    this.#sweepTimer = undefined;
    const now = performance.now();
    let next = Infinity;
    for (const [id, pending] of this.#calls) {
      if (pending.deadline <= now) {
        this.#abandon(
          id,
          new RpcError(
            "TIMEOUT",
            `Call ${pending.method} to ${this.remoteAddr} timed out after ${pending.timeoutMs} ms`,
          ),
        );
      } else if (pending.deadline < next) {
        next = pending.deadline;
      }
    }
    this.#armSweep(next);
  }

  #closedError(): RpcError {
    return new RpcError("CLOSED", `Connection to ${this.remoteAddr} is closed`);
  }

  #closeConn(): void {
    clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    if (this.#connClosed) return;
    this.#connClosed = true;
    closeQuietly(this.#conn);
    this.#writer.whenIdle().then(() => this.#maybeClosed());
  }

  #maybeClosed(): void {
    if (!this.#connClosed || !this.#readDone) return;
    if (this.#writer.idle) this.#closedSignal.resolve();
    else this.#writer.whenIdle().then(() => this.#maybeClosed());
  }

  async #readLoop(): Promise<void> {
    // Start after the constructor's caller had a chance to set handlers.
    await undefined;
    const reader = this.#reader;
    try {
      for (;;) {
        let body: Uint8Array | undefined;
        while ((body = reader.take()) !== undefined) {
          if (this.#closing) break;
          const wait = this.#dispatch(decodeMessage(body));
          if (wait !== undefined) await wait;
        }
        if (!(await reader.fill())) break;
      }
    } catch (error) {
      if (!this.#closing) {
        const reason = error instanceof FrameError
          ? `bad frame: ${error.message}`
          : `read failed: ${errorMessage(error)}`;
        this.#log(`Dropping peer ${this.remoteAddr} (${this.peerRole}): ${reason}`);
        this.#closeConn();
      }
    } finally {
      this.close();
      if (!this.#connClosed) this.#closeConn();
      this.#readDone = true;
      this.#maybeClosed();
    }
  }

  /** Acts on one message; returns a promise the reader must wait for, if any. */
  #dispatch(message: Message): Promise<void> | undefined {
    switch (message[0]) {
      case MessageType.REQUEST:
        this.#serve(message[1], message[2], message[3]);
        return undefined;
      case MessageType.RESPONSE: {
        const pending = this.#takeCall(message[1]);
        pending?.resolve(message[2]);
        return undefined;
      }
      case MessageType.ERROR: {
        const pending = this.#takeCall(message[1]);
        pending?.reject(new RpcError(message[2], message[3]));
        return undefined;
      }
      case MessageType.CHUNK:
        return this.#chunk(message[1], message[2]);
      case MessageType.CANCEL: {
        const ctx = this.#running.get(message[1]);
        if (ctx !== undefined) {
          this.#running.delete(message[1]);
          ctx.cancel(new RpcError("CANCELLED", `Call ${ctx.method} was cancelled by the caller`));
        }
        return undefined;
      }
    }
  }

  #takeCall(id: number): PendingCall | undefined {
    const pending = this.#calls.get(id);
    if (pending === undefined) return undefined; // Timed out or cancelled already.
    this.#calls.delete(id);
    clearPending(pending);
    return pending;
  }

  /** Stops waiting for call `id`: rejects it and tells the peer. */
  #abandon(id: number, error: unknown): void {
    const pending = this.#takeCall(id);
    if (pending === undefined) return;
    pending.reject(error);
    if (!this.#closing) this.#writer.enqueue(encodeFrame([MessageType.CANCEL, id]));
  }

  #chunk(id: number, chunk: unknown): Promise<void> | undefined {
    const pending = this.#calls.get(id);
    if (pending?.onChunk === undefined) return undefined;
    let result: void | Promise<void>;
    try {
      result = pending.onChunk(chunk);
    } catch (error) {
      this.#abandon(id, error);
      return undefined;
    }
    if (!(result instanceof Promise)) return undefined;
    return Promise.race([
      result.then(undefined, (error) => this.#abandon(id, error)),
      this.#closingSignal.promise,
    ]);
  }

  #serve(id: number, method: string, params: unknown): void {
    const handler = Object.hasOwn(this.#handlers, method) ? this.#handlers[method] : undefined;
    if (id !== 0 && this.#running.has(id)) {
      throw new FrameError(`Duplicate request id ${id}`);
    }
    if (typeof handler !== "function") {
      if (id === 0) this.#log(`Notification from ${this.remoteAddr} for unknown method ${method}`);
      else this.#reply(errorFrame(id, "NO_METHOD", `No such method: ${method}`));
      return;
    }
    if (this.#runningCount >= this.#handlersRunningMax) {
      const message =
        `Too many calls in flight: ${this.#runningCount} (max ${this.#handlersRunningMax})`;
      if (id === 0) {
        this.#log(`Dropping notification ${method} from ${this.remoteAddr}: ${message}`);
      } else this.#reply(errorFrame(id, "LIMIT", message));
      return;
    }
    const ctx = new Context(this, this.#writer, id, method);
    this.#runningCount++;
    if (id !== 0) this.#running.set(id, ctx);
    else this.#runningNotifications.add(ctx);
    let result: unknown;
    try {
      result = handler(params, ctx);
    } catch (error) {
      this.#finish(ctx, false, error);
      return;
    }
    if (isThenable(result)) {
      Promise.resolve(result).then(
        (value) => this.#finish(ctx, true, value),
        (error) => this.#finish(ctx, false, error),
      );
    } else {
      this.#finish(ctx, true, result);
    }
  }

  #finish(ctx: Context, ok: boolean, value: unknown): void {
    this.#runningCount--;
    ctx.done = true;
    const id = ctx.id;
    if (id === 0) {
      this.#runningNotifications.delete(ctx);
      if (!ok) {
        this.#log(
          `Notification ${ctx.method} from ${this.remoteAddr} failed: ${errorMessage(value)}`,
        );
      }
      return;
    }
    if (this.#running.get(id) !== ctx) return; // Cancelled: the caller is not listening.
    this.#running.delete(id);
    if (!ok) {
      const [code, message] = toWireError(value);
      this.#reply(errorFrame(id, code, message));
      return;
    }
    let frame: Uint8Array;
    try {
      frame = encodeFrame([MessageType.RESPONSE, id, value ?? null]);
    } catch (error) {
      const code = error instanceof FrameError ? "LIMIT" : "INTERNAL";
      frame = errorFrame(
        id,
        code,
        `Cannot send the result of ${ctx.method}: ${errorMessage(error)}`,
      );
    }
    this.#reply(frame);
  }

  #reply(frame: Uint8Array): void {
    if (this.#closing) return;
    this.#writer.enqueue(frame);
  }

  /** For a handler's {@link Context}: whether frames can still be sent. */
  get isClosing(): boolean {
    return this.#closing;
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value instanceof Promise ||
    (typeof value === "object" && value !== null &&
      typeof (value as { then?: unknown }).then === "function");
}

function clearPending(pending: PendingCall): void {
  if (pending.onAbort !== undefined) pending.signal?.removeEventListener("abort", pending.onAbort);
}

function cancelledError(method: string, reason: unknown): RpcError {
  return new RpcError("CANCELLED", `Call ${method} was cancelled: ${errorMessage(reason)}`, {
    cause: reason,
  });
}

function errorFrame(id: number, code: string, message: string): Uint8Array {
  return encodeFrame([MessageType.ERROR, id, code, message]);
}

/** The `[code, message]` an error crosses the wire as. */
export function toWireError(error: unknown): [string, string] {
  let code = "INTERNAL";
  let message: string;
  if (error instanceof RpcError) {
    code = error.code.slice(0, CODE_LENGTH_MAX);
    message = error.message;
  } else {
    message = errorMessage(error);
  }
  if (message.length > ERROR_MESSAGE_LENGTH_MAX) {
    message = `${message.slice(0, ERROR_MESSAGE_LENGTH_MAX)}…`;
  }
  return [code, message];
}
