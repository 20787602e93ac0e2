/** Path rules of the master: normalisation, containment, exclusions. */

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

/** Joins `name` onto `dir` (both already normalised). */
export function joinPath(dir: string, name: string): string {
  return dir === "/" ? `/${name}` : `${dir}/${name}`;
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Whether `path` is `root` or lies below it. */
export function isInside(path: string, root: string): boolean {
  if (root === "/") return true;
  return path === root || path.startsWith(root + "/");
}

/**
 * Validates a path a worker sent in a result set: absolute, normalised as sent
 * (no `.`/`..` components, no doubled slashes), strictly inside `root`.
 */
export function checkResultPath(path: unknown, root: string): string | null {
  if (typeof path !== "string" || path.length > 4096) return "not a string path";
  const normal = normalizeAbsolute(path);
  if (normal === null) return "not an absolute path";
  if (normal !== path) return "not a normalised path (has '.', '..' or '//')";
  if (path === root || !isInside(path, root)) return "outside the writable root";
  for (const part of path.split("/")) {
    if (part.length > 255) return "a name longer than 255 bytes";
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
