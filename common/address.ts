/**
 * "host:port" addresses as flags, registrations and worker lists carry them:
 * one parser, one formatter, and what to do with a wildcard host.
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

/** "host:port", with an IPv6 host in brackets: what {@linkcode parseHostPort} reads. */
export function formatHostPort(hostname: string, port: number): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

/** A wildcard host ("0.0.0.0", "::"): a listener bound to every address, no address to dial. */
export function isUnspecifiedHost(hostname: string): boolean {
  return hostname === "0.0.0.0" || (hostname.includes(":") && /^[0:]+$/.test(hostname));
}

/** A loopback host: reachable from this host only. */
export function isLoopbackHost(hostname: string): boolean {
  return /^127\./.test(hostname) || hostname === "::1" || hostname === "localhost";
}

/** "::ffff:10.0.0.2" (an IPv4 peer of a dual-stack listener) as "10.0.0.2"; others unchanged. */
export function unmapIpv4(hostname: string): string {
  const m = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(hostname);
  return m ? m[1] : hostname;
}

/**
 * The address to dial a listener at: `announced` as is, unless its host is a
 * wildcard ("0.0.0.0:1232", "[::]:1232"), then the host `remoteAddr` (the
 * listener's own connection to us, "10.0.0.2:41234") came from, with the
 * announced port. An unparseable `remoteAddr` leaves `announced` as is.
 */
export function reachableAddress(announced: string, remoteAddr: string): string {
  const { hostname, port } = parseHostPort(announced);
  if (!isUnspecifiedHost(hostname)) return announced;
  let peer: HostPort;
  try {
    peer = parseHostPort(remoteAddr);
  } catch {
    return announced;
  }
  return formatHostPort(unmapIpv4(peer.hostname), port);
}

/** A listener could not bind; the message names the address, what it was for and why. */
export class ListenError extends Error {
  readonly hostname: string;
  readonly port: number;

  constructor(what: string, hostname: string, port: number, options: { cause: unknown }) {
    const cause = options.cause;
    const reason = cause instanceof Deno.errors.AddrInUse
      ? `port ${port} is in use`
      : cause instanceof Error
      ? cause.message
      : String(cause);
    super(`Cannot listen on ${formatHostPort(hostname, port)} (${what}): ${reason}`, options);
    this.name = "ListenError";
    this.hostname = hostname;
    this.port = port;
  }
}
