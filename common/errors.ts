/**
 * Helpers for errors of any origin.
 *
 * @module
 */

/** The message of any thrown value. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
