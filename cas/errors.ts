import { errorMessage } from "../common/errors.ts";

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

/** Wraps a file system error as `CasError("IO")`, naming a full disk plainly. */
export function ioError(action: string, error: unknown): CasError {
  if (error instanceof CasError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  let detail: string;
  if (code === "ENOSPC") detail = "no space left on device (ENOSPC)";
  else if (code === "EDQUOT") detail = "disk quota exceeded (EDQUOT)";
  else detail = errorMessage(error);
  return new CasError("IO", `${action}: ${detail}`, { cause: error });
}
