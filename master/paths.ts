/**
 * Path rules of the master: strict normalisation, result paths, exclusions.
 * The plain helpers (joinPath, parentOf, baseName, isInside) are common/paths.ts's.
 */
import { isInside } from "../common/paths.ts";

/** Normalises an absolute POSIX path; null if it is not absolute or climbs above `/`. */
export function normalizeAbsolute(path: string): string | null {
  if (!path.startsWith("/") || path.includes("\0")) return null;
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (parts.length === 0) return null;
      parts.pop();
      continue;
    }
    parts.push(part);
  }
  return "/" + parts.join("/");
}

/** A name the kernel takes, in UTF-8 bytes (NAME_MAX). */
export const NAME_BYTES_MAX = 255;
/** A path (or symlink target) the kernel takes, in UTF-8 bytes (PATH_MAX, less its NUL). */
export const PATH_BYTES_MAX = 4095;

/** Bytes of `s` in UTF-8 (a well-formed string: a surrogate pair counts 4). */
export function utf8Bytes(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/**
 * Validates a path a worker sent in a result set: absolute, normalised as sent
 * (no `.`/`..` components, no doubled slashes), strictly inside `root`, well
 * formed Unicode, and within the kernel's limits counted in UTF-8 bytes.
 */
export function checkResultPath(path: unknown, root: string): string | null {
  if (typeof path !== "string") return "not a string path";
  // A UTF-16 unit is at most 3 bytes in UTF-8: count only long paths.
  if (path.length > PATH_BYTES_MAX / 3 && utf8Bytes(path) > PATH_BYTES_MAX) {
    return `longer than PATH_BYTES_MAX (${PATH_BYTES_MAX} bytes)`;
  }
  if (!path.startsWith("/")) return "not an absolute path";
  if (path.includes("\0")) return "a NUL in the path";
  if (!path.isWellFormed()) return "not valid Unicode (a lone surrogate)";
  const prefix = root === "/" ? "/" : root + "/";
  if (!path.startsWith(prefix) || path.length === prefix.length) {
    return normalizeAbsolute(path) === path
      ? "outside the writable root"
      : "not a normalised path (has '.', '..' or '//')";
  }
  for (const part of path.slice(prefix.length).split("/")) {
    if (part === "" || part === "." || part === "..") {
      return "not a normalised path (has '.', '..' or '//')";
    }
    if (part.length > NAME_BYTES_MAX / 3 && utf8Bytes(part) > NAME_BYTES_MAX) {
      return `a name of ${utf8Bytes(part)} bytes, longer than NAME_BYTES_MAX (${NAME_BYTES_MAX})`;
    }
  }
  return null;
}

/** Exclusions are path prefixes: `/proc` excludes `/proc` and all below it. */
export class Exclusions {
  #prefixes: string[];
  #keep: string;

  /** `keep` (the writable root) and its ancestors are never excluded. */
  constructor(prefixes: string[], keep: string) {
    this.#prefixes = prefixes.map((p) => normalizeAbsolute(p)).filter((p): p is string =>
      p !== null && p !== "/"
    );
    this.#keep = keep;
  }

  get prefixes(): readonly string[] {
    return this.#prefixes;
  }

  excluded(path: string): boolean {
    if (isInside(this.#keep, path)) return false; // an ancestor of the writable root
    if (isInside(path, this.#keep)) return false;
    return this.#prefixes.some((prefix) => isInside(path, prefix));
  }
}

export const DEFAULT_EXCLUSIONS = [
  "/proc",
  "/sys",
  "/dev",
  "/run",
  "/var/run",
  "/tmp",
  "/lost+found",
];
