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

/**
 * The peer answered the handshake with a proof made from another secret: a
 * misconfiguration (or an impostor), never a transient failure.
 */
export class SecretMismatchError extends AuthError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SecretMismatchError";
  }
}

/** Whether `error` or one of its causes is a {@linkcode SecretMismatchError}. */
export function isSecretMismatch(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof SecretMismatchError) return true;
  }
  return false;
}

/** A secret file that is missing, empty or readable by others. */
export class SecretError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SecretError";
  }
}
