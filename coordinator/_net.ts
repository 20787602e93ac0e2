/**
 * Small helpers shared by the coordinator's client side: address parsing and
 * reconnect backoff.
 *
 * @module
 */

/** A parsed "host:port" address. */
export interface HostPort {
  hostname: string;
  port: number;
}

/** The longest "host:port" string accepted. */
export const ADDRESS_CHARS_MAX = 262;

/** Error for a malformed "host:port" string. */
export class AddressError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AddressError";
  }
}

/**
 * Parses "host:port", "[v6]:port" or "v4:port". The port must be 1..65535.
 *
 * @throws {AddressError} when the string is not of that form.
 */
export function parseHostPort(address: string): HostPort {
  if (address.length === 0 || address.length > ADDRESS_CHARS_MAX) {
    throw new AddressError(`Cannot parse address: length ${address.length}`);
  }
  let hostname: string;
  let portText: string;
  if (address.startsWith("[")) {
    const end = address.indexOf("]");
    if (end < 0 || address[end + 1] !== ":") {
      throw new AddressError(`Cannot parse address: ${JSON.stringify(address)}`);
    }
    hostname = address.slice(1, end);
    portText = address.slice(end + 2);
  } else {
    const colon = address.lastIndexOf(":");
    if (colon <= 0 || address.indexOf(":") !== colon) {
      throw new AddressError(`Cannot parse address: ${JSON.stringify(address)}`);
    }
    hostname = address.slice(0, colon);
    portText = address.slice(colon + 1);
  }
  if (!/^[0-9]{1,5}$/.test(portText)) {
    throw new AddressError(`Cannot parse address: bad port in ${JSON.stringify(address)}`);
  }
  const port = Number(portText);
  if (port < 1 || port > 65535 || hostname.length === 0 || /[\s/]/.test(hostname)) {
    throw new AddressError(`Cannot parse address: ${JSON.stringify(address)}`);
  }
  return { hostname, port };
}

/** Exponential backoff with jitter, for reconnect loops. */
export class Backoff {
  readonly #minMs: number;
  readonly #maxMs: number;
  #nextMs: number;

  constructor(minMs: number, maxMs: number) {
    this.#minMs = Math.max(1, minMs);
    this.#maxMs = Math.max(this.#minMs, maxMs);
    this.#nextMs = this.#minMs;
  }

  /** The delay before the next attempt; each call doubles the following one. */
  next(): number {
    const baseMs = this.#nextMs;
    this.#nextMs = Math.min(this.#maxMs, this.#nextMs * 2);
    // ±20 % jitter so that many clients do not reconnect in lockstep.
    return Math.round(baseMs * (0.8 + 0.4 * Math.random()));
  }

  /** Starts over from the shortest delay, after a success. */
  reset(): void {
    this.#nextMs = this.#minMs;
  }
}

/**
 * Resolves after `ms`, or at once when `signal` aborts. Never rejects, and
 * leaves no timer behind.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A message for an unknown thrown value. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === "string" ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
