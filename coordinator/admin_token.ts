/**
 * Tokens for the status page's actions (drain, stop): an HMAC of the action,
 * the worker id and a time stamp under the cluster secret, sent as
 * `Authorization: Termite <ts>:<hex>`.
 *
 * @module
 */

/** Actions the status page relays to a worker. */
export type AdminAction = "drain" | "stop";

/** The actions accepted in `POST /workers/<id>/<action>`. */
export const ADMIN_ACTIONS: readonly AdminAction[] = ["drain", "stop"];

/** How far a token's time stamp may be from the coordinator's clock. */
export const ADMIN_TOKEN_SKEW_S = 60;

const encoder = new TextEncoder();

function message(action: string, id: string, ts: number): Uint8Array<ArrayBuffer> {
  return encoder.encode(`termite-admin:${action}:${id}:${ts}`);
}

function toHex(bytes: Uint8Array): string {
  let hex = "";
  for (const b of bytes) hex += b.toString(16).padStart(2, "0");
  return hex;
}

async function sign(secret: CryptoKey, data: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", secret, data));
}

/**
 * Builds the `Authorization` header value for an action on a worker:
 * `Termite <ts>:<hex HMAC-SHA256(secret, "termite-admin:<action>:<id>:<ts>")>`.
 *
 * @param nowS epoch seconds to stamp; defaults to the current time.
 */
export async function adminToken(
  secret: CryptoKey,
  action: AdminAction,
  id: string,
  nowS: number = Math.floor(Date.now() / 1000),
): Promise<string> {
  const ts = Math.floor(nowS);
  return `Termite ${ts}:${toHex(await sign(secret, message(action, id, ts)))}`;
}

/** What {@linkcode verifyAdminToken} needs besides the header. */
export interface VerifyAdminTokenOptions {
  secret: CryptoKey;
  action: AdminAction;
  id: string;
  nowS: number;
}

const HEADER_PATTERN = /^Termite ([0-9]{1,12}):([0-9a-f]{64})$/;

/**
 * Checks an `Authorization` header value. Returns the token's time stamp
 * when valid, `undefined` otherwise (wrong format, stale or forged).
 */
export async function verifyAdminToken(
  header: string | null,
  options: VerifyAdminTokenOptions,
): Promise<number | undefined> {
  if (header === null || header.length > 100) return undefined;
  const match = HEADER_PATTERN.exec(header);
  if (match === null) return undefined;
  const ts = Number(match[1]);
  if (Math.abs(ts - options.nowS) > ADMIN_TOKEN_SKEW_S) return undefined;
  const want = toHex(await sign(options.secret, message(options.action, options.id, ts)));
  // Constant-time comparison of equal-length hex strings.
  let diff = 0;
  for (let i = 0; i < want.length; i++) diff |= want.charCodeAt(i) ^ match[2].charCodeAt(i);
  return diff === 0 ? ts : undefined;
}
