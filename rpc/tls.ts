/**
 * TLS around the RPC links (optional; plain TCP is the default). A server
 * (coordinator, worker) shows a certificate; a client (worker, master)
 * verifies it against the farm's CA and the address it dialled. The HMAC
 * handshake then runs inside, as on plain TCP: TLS keeps the link private
 * and whole, the secret still decides who is a member.
 *
 * Deno's `listenTls` cannot ask a client for a certificate, so clients are
 * authenticated by the secret alone.
 *
 * @module
 */

/** PEM texts of one member's TLS set-up. */
export interface TlsConfig {
  /** CA certificates a server's certificate must chain to (PEM each). */
  caCerts: string[];
  /** This member's certificate chain (PEM), when it listens. */
  cert?: string;
  /** Its private key (PEM), when it listens. */
  key?: string;
}

/** Largest certificate or key file read. */
export const TLS_FILE_BYTES_MAX = 1 << 20;

/** A TLS file that cannot be used; the message names the file (and the caller, its flag). */
export class TlsConfigError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TlsConfigError";
  }
}

/**
 * Reads a PEM file holding at least one block of `kind` ("CERTIFICATE",
 * "PRIVATE KEY"). A private key must not be readable by group or others.
 *
 * @throws {TlsConfigError} naming the file.
 */
export async function readPemFile(
  path: string,
  kind: "CERTIFICATE" | "PRIVATE KEY",
): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (error) {
    throw new TlsConfigError(`Cannot read ${path}: ${(error as Error).message}`, { cause: error });
  }
  if (!info.isFile) throw new TlsConfigError(`Cannot use ${path}: not a regular file`);
  if (info.size > TLS_FILE_BYTES_MAX) {
    throw new TlsConfigError(`Cannot use ${path}: larger than ${TLS_FILE_BYTES_MAX} bytes`);
  }
  if (kind === "PRIVATE KEY" && info.mode !== null && (info.mode & 0o077) !== 0) {
    throw new TlsConfigError(
      `Cannot use private key ${path}: others may read it (mode ` +
        `${(info.mode & 0o777).toString(8).padStart(4, "0")}); \`chmod 600 ${path}\``,
    );
  }
  const text = await Deno.readTextFile(path);
  // "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY".
  const block = kind === "CERTIFICATE"
    ? /-----BEGIN CERTIFICATE-----/
    : /-----BEGIN (?:RSA |EC )?PRIVATE KEY-----/;
  if (!block.test(text)) {
    throw new TlsConfigError(`Cannot use ${path}: no PEM ${kind.toLowerCase()} in it`);
  }
  return text;
}

/** Connection options of `Deno.listenTls` from a config with a certificate and key. */
export function tlsListenOptions(tls: TlsConfig): { cert: string; key: string } {
  if (tls.cert === undefined || tls.key === undefined) {
    throw new TypeError("A TLS listener needs a certificate and a key");
  }
  return { cert: tls.cert, key: tls.key };
}
