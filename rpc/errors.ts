/**
 * Error classes of the RPC layer.
 *
 * @module
 */

/**
 * A failed call. `code` crosses the wire together with the message: a
 * handler throwing `new RpcError("ENOENT", ...)` makes the caller's promise
 * reject with an `RpcError` of the same code and message.
 *
 * Codes used by the RPC layer itself: `TIMEOUT`, `CANCELLED`, `CLOSED`,
 * `NO_METHOD`, `BAD_REQUEST`, `INTERNAL`, `LIMIT`, `UNAVAILABLE` (cannot
 * connect).
 */
export class RpcError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RpcError";
    this.code = code;
  }
}

/** A malformed, oversize or truncated frame; the connection is dropped. */
export class FrameError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "FrameError";
  }
}

/**
 * A failed handshake: wrong secret, protocol version mismatch, timeout,
 * reflected or replayed challenge, malformed handshake message.
 */
export class AuthError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AuthError";
  }
}

/** A secret file that is missing, empty or readable by others. */
export class SecretError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SecretError";
  }
}

/** The message of any thrown value. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
