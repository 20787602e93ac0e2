/**
 * The C launcher (sandbox/launcher.c), in a root-only cache directory keyed
 * by the source's SHA-256: copied from a launcher built ahead
 * (`sandbox/prebuilt/`, made by `scripts/build_launcher.ts` at bootstrap and
 * by `deno task compile`, which ships it inside the worker's binary) when
 * that was built from this source, its bytes checked against its manifest;
 * else compiled with gcc on first use.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { SandboxError } from "./errors.ts";

/**
 * How gcc is run: warnings are errors, the binary optimised and linked
 * statically. Static, because three processes of it start and end per job (the
 * launcher, the namespace's init and the job before its exec): with no shared
 * libraries mapped, each exec, fork and exit has less to set up and tear down
 * (on the reference VM a /bin/true job's launcher CPU fell from 13.0 to 8.9 ms,
 * BENCHMARKS.md), and a launcher carried to another host (inside a compiled
 * worker) needs nothing of its libc. Where no static libc is installed, the
 * launcher is linked dynamically instead ({@linkcode LAUNCHER_CFLAGS_DYNAMIC}).
 *
 * Against musl first, where `musl-gcc` is installed (bootstrap installs it): a
 * static glibc probes the CPU at start with CPUID instructions, each of which a
 * VM traps; on the reference VM an empty static program's exec cost 420 µs of
 * CPU with glibc and 137 µs with musl (BENCHMARKS.md, session 16).
 */
export const LAUNCHER_CFLAGS: readonly string[] = ["-O2", "-Wall", "-Werror", "-static"];
/** The compilers tried in turn, each with {@linkcode LAUNCHER_CFLAGS} (part of the build's key). */
const LAUNCHER_COMPILERS = "musl-gcc, else gcc";
/** The fallback when a static link fails (no libc.a): the same, dynamically linked. */
export const LAUNCHER_CFLAGS_DYNAMIC: readonly string[] = LAUNCHER_CFLAGS.filter((f) =>
  f !== "-static"
);

const SOURCE_URL = new URL("./launcher.c", import.meta.url);
/** Where a launcher built ahead lies: what `deno compile --include sandbox/prebuilt` carries. */
export const PREBUILT_DIR_URL: URL = new URL("./prebuilt/", import.meta.url);
/** The launcher's file name in a prebuilt directory; its manifest is this plus `.json`. */
export const PREBUILT_NAME = "termite-launcher";
/** Largest launcher binary (or manifest) read from a prebuilt directory. */
const PREBUILT_BYTES_MAX = 16 * 2 ** 20;
const builds = new Map<string, Promise<string>>();

/** What `${PREBUILT_NAME}.json` says of the binary beside it. */
export interface PrebuiltManifest {
  /** {@linkcode launcherSourceHash} of the source it was built from. */
  source: string;
  /** SHA-256 of the binary. */
  sha256: string;
  bytes: number;
}

/** Options of {@linkcode ensureLauncher}. */
export interface EnsureLauncherOptions {
  /** A directory holding a launcher built ahead and its manifest; default {@linkcode PREBUILT_DIR_URL}. */
  prebuiltDir?: string | URL;
}

/**
 * Returns the path of the launcher binary in `cacheDir`: copied from a
 * prebuilt one built from this source (its SHA-256 checked), else compiled
 * with gcc, if this version of the source is not there yet. The launcher
 * runs as root: `cacheDir` must be writable by root only (it is created with
 * mode 0700).
 */
export function ensureLauncher(
  cacheDir: string,
  options: EnsureLauncherOptions = {},
): Promise<string> {
  let build = builds.get(cacheDir);
  if (!build) {
    build = buildLauncher(cacheDir, options.prebuiltDir ?? PREBUILT_DIR_URL);
    builds.set(cacheDir, build);
    build.catch(() => builds.delete(cacheDir));
  }
  return build;
}

async function readSource(): Promise<Uint8Array> {
  try {
    return await Deno.readFile(SOURCE_URL);
  } catch (err) {
    throw new SandboxError(`Cannot read the launcher source: ${SOURCE_URL}`, { cause: err });
  }
}

/** SHA-256 of the launcher's source, compiler flags and compilers: what a build depends on. */
export async function launcherSourceHash(): Promise<string> {
  const source = await readSource();
  return buildKey(source);
}

/** What a build depends on: the source, the flags and the compilers tried. */
function buildKey(source: Uint8Array): string {
  return createHash("sha256").update(source).update(LAUNCHER_CFLAGS.join(" "))
    .update(LAUNCHER_COMPILERS).digest("hex");
}

function dirPath(dir: string | URL): string {
  return (dir instanceof URL ? dir.pathname : dir).replace(/\/*$/, "");
}

/** Reads a regular file of at most PREBUILT_BYTES_MAX bytes; undefined when absent. */
async function readBounded(path: string): Promise<Uint8Array | undefined> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw new SandboxError(`Cannot read the prebuilt launcher: ${path}`, { cause: err });
  }
  if (!info.isFile || info.size > PREBUILT_BYTES_MAX) {
    throw new SandboxError(
      `Cannot use the prebuilt launcher: ${path} is not a regular file of at most ` +
        `${PREBUILT_BYTES_MAX} bytes`,
    );
  }
  return await Deno.readFile(path);
}

/**
 * The prebuilt launcher's bytes when it was built from source `hash` and
 * matches its manifest; undefined when there is none or it is of another
 * source (stale).
 *
 * @throws {SandboxError} when its bytes do not match the manifest (changed
 *   after it was built): never run such a binary as root.
 */
async function readPrebuilt(dir: string, hash: string): Promise<Uint8Array | undefined> {
  const manifestPath = `${dir}/${PREBUILT_NAME}.json`;
  const manifestBytes = await readBounded(manifestPath);
  if (manifestBytes === undefined) return undefined;
  let manifest: PrebuiltManifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  } catch (err) {
    throw new SandboxError(`Cannot parse ${manifestPath}`, { cause: err });
  }
  if (manifest?.source !== hash) return undefined;
  const binaryPath = `${dir}/${PREBUILT_NAME}`;
  const binary = await readBounded(binaryPath);
  if (binary === undefined) {
    throw new SandboxError(`Cannot use the prebuilt launcher: ${binaryPath} is missing`);
  }
  const sha256 = createHash("sha256").update(binary).digest("hex");
  if (sha256 !== manifest.sha256 || binary.length !== manifest.bytes) {
    throw new SandboxError(
      `Refusing the prebuilt launcher ${binaryPath}: SHA-256 ${sha256} (${binary.length} bytes), ` +
        `its manifest says ${manifest.sha256} (${manifest.bytes} bytes); build it again with ` +
        "`deno run -A scripts/build_launcher.ts`",
    );
  }
  return binary;
}

/**
 * Compiles the launcher into `dir` (made if missing) as {@linkcode PREBUILT_NAME}
 * with its manifest, for a worker to use with no compiler; nothing when the
 * one there is of this source and intact. Needs gcc.
 */
export async function buildPrebuiltLauncher(dir: string): Promise<PrebuiltManifest> {
  const hash = await launcherSourceHash();
  const current = await readPrebuilt(dir, hash).catch(() => undefined);
  if (current !== undefined) {
    return JSON.parse(await Deno.readTextFile(`${dir}/${PREBUILT_NAME}.json`));
  }
  const scratch = await Deno.makeTempDir({ prefix: "termite-launcher-" });
  try {
    const built = await ensureLauncher(scratch, { prebuiltDir: `${scratch}/none` });
    const binary = await Deno.readFile(built);
    const manifest: PrebuiltManifest = {
      source: hash,
      sha256: createHash("sha256").update(binary).digest("hex"),
      bytes: binary.length,
    };
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(`${dir}/${PREBUILT_NAME}.tmp`, binary, { mode: 0o755 });
    await Deno.rename(`${dir}/${PREBUILT_NAME}.tmp`, `${dir}/${PREBUILT_NAME}`);
    await Deno.writeTextFile(`${dir}/${PREBUILT_NAME}.json`, JSON.stringify(manifest) + "\n");
    return manifest;
  } finally {
    builds.delete(scratch);
    await Deno.remove(scratch, { recursive: true });
  }
}

async function buildLauncher(cacheDir: string, prebuiltDir: string | URL): Promise<string> {
  const source = await readSource();
  const hash = buildKey(source);
  const path = `${cacheDir}/termite-launcher-${hash.slice(0, 16)}`;
  try {
    if ((await Deno.stat(path)).isFile) return path;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new SandboxError(`Cannot use the launcher cache: ${path}`, { cause: err });
    }
  }
  const prebuilt = await readPrebuilt(dirPath(prebuiltDir), hash);
  const suffix = crypto.randomUUID().slice(0, 8);
  if (prebuilt !== undefined) {
    const binaryTmp = `${path}.${suffix}.tmp`;
    try {
      await Deno.mkdir(cacheDir.replace(/\/+[^/]*\/*$/, "") || "/", { recursive: true });
      await Deno.mkdir(cacheDir, { recursive: true, mode: 0o700 });
      await Deno.chmod(cacheDir, 0o700);
      // The bytes checked above, written with O_EXCL into the root-only directory.
      await Deno.writeFile(binaryTmp, prebuilt, { mode: 0o700, createNew: true });
      await Deno.chmod(binaryTmp, 0o755);
      await Deno.rename(binaryTmp, path);
      return path;
    } catch (err) {
      await Deno.remove(binaryTmp).catch(() => {});
      throw new SandboxError(`Cannot install the prebuilt launcher in ${cacheDir}`, { cause: err });
    }
  }
  const sourceCopy = `${cacheDir}/launcher-${hash.slice(0, 16)}-${suffix}.c`;
  const binaryTmp = `${path}.${suffix}.tmp`;
  try {
    // Only the cache dir itself is root-only: parents made here keep the
    // usual mode (a 0700 .cache hid a test farm's tree from its master).
    await Deno.mkdir(cacheDir.replace(/\/+[^/]*\/*$/, "") || "/", { recursive: true });
    await Deno.mkdir(cacheDir, { recursive: true, mode: 0o700 });
    // Compile exactly the bytes that were hashed.
    await Deno.writeFile(sourceCopy, source, { mode: 0o600 });
    // (async: a compiler missing from PATH rejects, rather than throwing at once)
    const compile = async (compiler: string, flags: readonly string[]) =>
      await new Deno.Command(compiler, {
        args: [...flags, "-o", binaryTmp, sourceCopy],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
    let gcc: Deno.CommandOutput | undefined;
    // musl's own headers hold no kernel ones: the system's, alone in a directory.
    const headersDir = `${cacheDir}/kernel-headers-${suffix}`;
    try {
      if (await linkKernelHeaders(headersDir)) {
        gcc = await compile("musl-gcc", [...LAUNCHER_CFLAGS, "-isystem", headersDir])
          .catch(() => undefined);
      }
    } finally {
      await Deno.remove(headersDir, { recursive: true }).catch(() => {});
    }
    try {
      if (!gcc?.success) gcc = await compile("gcc", LAUNCHER_CFLAGS);
      // No static libc here (libc.a is in libc6-dev): the same code, linked dynamically.
      if (!gcc.success) gcc = await compile("gcc", LAUNCHER_CFLAGS_DYNAMIC);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
      throw new SandboxError(
        "Cannot compile the launcher: no gcc on PATH, and no launcher built ahead for this " +
          `source in ${dirPath(prebuiltDir)} (make one where gcc is: ` +
          "`deno run -A scripts/build_launcher.ts`, or `deno task compile` for a worker binary)",
        { cause: err },
      );
    }
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

/** The kernel's header directories musl-gcc needs (`linux`, `asm`, `asm-generic`). */
const KERNEL_HEADER_DIRS = ["linux", "asm-generic"];

/**
 * Makes `dir` hold links to the system's kernel headers (from linux-libc-dev:
 * `/usr/include/linux`, `asm-generic`, and the architecture's `asm`), for
 * musl-gcc; false when there are no such headers (or no gcc, which musl-gcc runs).
 */
async function linkKernelHeaders(dir: string): Promise<boolean> {
  let multiarch = "";
  try {
    const out = await new Deno.Command("gcc", {
      args: ["-print-multiarch"],
      stdout: "piped",
      stderr: "null",
    }).output();
    multiarch = new TextDecoder().decode(out.stdout).trim();
  } catch {
    return false; // no gcc, which musl-gcc runs
  }
  if (!/^[\w.-]*$/.test(multiarch)) return false;
  const asm = multiarch === ""
    ? ["/usr/include/asm"]
    : [`/usr/include/${multiarch}/asm`, "/usr/include/asm"];
  try {
    await Deno.mkdir(dir, { mode: 0o700 });
    for (const name of KERNEL_HEADER_DIRS) {
      if (!(await Deno.stat(`/usr/include/${name}`)).isDirectory) return false;
      await Deno.symlink(`/usr/include/${name}`, `${dir}/${name}`);
    }
    for (const candidate of asm) {
      if (await Deno.stat(candidate).then((i) => i.isDirectory, () => false)) {
        await Deno.symlink(candidate, `${dir}/asm`);
        return true;
      }
    }
    return false;
  } catch {
    return false;
  }
}
