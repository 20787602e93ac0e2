/**
 * Builds the C launcher (sandbox/launcher.c) on first use, into a cache
 * directory keyed by the source's SHA-256.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { SandboxError } from "./errors.ts";

/** How gcc is run: warnings are errors, the binary optimised. */
export const LAUNCHER_CFLAGS: readonly string[] = ["-O2", "-Wall", "-Werror"];

const SOURCE_URL = new URL("./launcher.c", import.meta.url);
const builds = new Map<string, Promise<string>>();

/**
 * Returns the path of the launcher binary in `cacheDir`, compiling it with gcc
 * if this version of the source has not been built there yet. The launcher
 * runs as root: `cacheDir` must be writable by root only (it is created with
 * mode 0700).
 */
export function ensureLauncher(cacheDir: string): Promise<string> {
  let build = builds.get(cacheDir);
  if (!build) {
    build = buildLauncher(cacheDir);
    builds.set(cacheDir, build);
    build.catch(() => builds.delete(cacheDir));
  }
  return build;
}

async function buildLauncher(cacheDir: string): Promise<string> {
  let source: Uint8Array;
  try {
    source = await Deno.readFile(SOURCE_URL);
  } catch (err) {
    throw new SandboxError(`Cannot read the launcher source: ${SOURCE_URL}`, { cause: err });
  }
  const hash = createHash("sha256").update(source).update(LAUNCHER_CFLAGS.join(" ")).digest(
    "hex",
  );
  const path = `${cacheDir}/termite-launcher-${hash.slice(0, 16)}`;
  try {
    if ((await Deno.stat(path)).isFile) return path;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new SandboxError(`Cannot use the launcher cache: ${path}`, { cause: err });
    }
  }
  const suffix = crypto.randomUUID().slice(0, 8);
  const sourceCopy = `${cacheDir}/launcher-${hash.slice(0, 16)}-${suffix}.c`;
  const binaryTmp = `${path}.${suffix}.tmp`;
  try {
    // Only the cache dir itself is root-only: parents made here keep the
    // usual mode (a 0700 .cache hid a test farm's tree from its master).
    await Deno.mkdir(cacheDir.replace(/\/+[^/]*\/*$/, "") || "/", { recursive: true });
    await Deno.mkdir(cacheDir, { recursive: true, mode: 0o700 });
    // Compile exactly the bytes that were hashed.
    await Deno.writeFile(sourceCopy, source, { mode: 0o600 });
    const gcc = await new Deno.Command("gcc", {
      args: [...LAUNCHER_CFLAGS, "-o", binaryTmp, sourceCopy],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!gcc.success) {
      const stderr = new TextDecoder().decode(gcc.stderr).slice(0, 4000);
      throw new SandboxError(`Cannot compile the launcher: gcc exited with ${gcc.code}: ${stderr}`);
    }
    await Deno.chmod(binaryTmp, 0o755);
    await Deno.rename(binaryTmp, path);
    return path;
  } catch (err) {
    await Deno.remove(binaryTmp).catch(() => {});
    if (err instanceof SandboxError) throw err;
    throw new SandboxError(`Cannot build the launcher in ${cacheDir}`, { cause: err });
  } finally {
    await Deno.remove(sourceCopy).catch(() => {});
  }
}
