/**
 * TLS around the RPC links (optional; plain TCP is the default), mutual: a
 * server (coordinator, worker) shows its certificate and a client (worker,
 * master) checks it against the farm's CA and the address it dialled; the
 * client shows its own, which the server checks against the same CA
 * (`_node_tls.ts`). The HMAC handshake then runs inside, as on plain TCP:
 * TLS keeps the link private and whole and keeps hosts without a farm
 * certificate out, the secret still decides who is a member.
 *
 * @module
 */

import { createPrivateKey, X509Certificate } from "node:crypto";

/** PEM texts of one member's TLS set-up. */
export interface TlsConfig {
  /** CA certificates a server's certificate must chain to (PEM each). */
  caCerts: string[];
  /** This member's certificate chain (PEM), shown as server and as client. */
  cert?: string;
  /** Its private key (PEM). */
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

/**
 * Checks that `key` is the private key of `cert`'s first certificate (node:tls
 * does not check it before a handshake fails).
 *
 * @throws {TlsConfigError} when either cannot be parsed, or they do not match.
 */
export function checkKeyPair(cert: string, key: string): void {
  let matches: boolean;
  try {
    matches = new X509Certificate(cert).checkPrivateKey(createPrivateKey(key));
  } catch (error) {
    throw new TlsConfigError(
      `Cannot use the TLS certificate and key: ${(error as Error).message}`,
      { cause: error },
    );
  }
  if (!matches) {
    throw new TlsConfigError(
      "Cannot use the TLS certificate and key: the key is not the certificate's",
    );
  }
}
