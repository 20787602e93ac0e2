/** Error codes of {@linkcode CasError}. */
export type CasErrorCode = "CORRUPT" | "MISSING" | "IO" | "LIMIT";

/**
 * An operating error of the content-addressed store.
 *
 * - `CORRUPT`: content does not match its SHA-256 name.
 * - `MISSING`: the blob is not in the store.
 * - `IO`: the file system failed (disk full, permissions, store closed).
 * - `LIMIT`: a size limit was exceeded.
 */
export class CasError extends Error {
  readonly code: CasErrorCode;

  constructor(code: CasErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CasError";
    this.code = code;
  }
}
