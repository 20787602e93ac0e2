/**
 * Absolute POSIX paths as every role writes them: normalised ("/",
 * "/usr/include/stdio.h"), never with a trailing slash except the root.
 *
 * @module
 */

/**
 * Normalises an absolute path: drops empty and "." parts, resolves ".."
 * (never above "/"). A relative path is taken from "/".
 */
export function normalizePath(path: string): string {
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return "/" + parts.join("/");
}

/** The directory holding `path` (normalised); "/" for "/" itself. */
export function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

/** The last part of `path` (normalised); "" for "/". */
export function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Joins `name` onto `dir` (normalised). */
export function joinPath(dir: string, name: string): string {
  return dir === "/" ? `/${name}` : `${dir}/${name}`;
}

/** Whether `path` is `root` or lies below it (both normalised). */
export function isInside(path: string, root: string): boolean {
  return root === "/" || path === root || path.startsWith(root + "/");
}
