/**
 * Builds the native wrapper client (`termite_client.c`, opt-in) with gcc into
 * `bin/termite-client`, beside `bin/termite-wrap`, which it execs for every
 * path it leaves to Deno. A manifest beside the binary names the source hash
 * it was built from, so a changed source is built again and an unchanged one
 * is not.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** How gcc is run: C11, every warning an error, optimised. */
export const CLIENT_CFLAGS: readonly string[] = [
  "-std=c11",
  "-O2",
  "-Wall",
  "-Wextra",
  "-Werror",
];
const SOURCE_URL = new URL("./termite_client.c", import.meta.url);
/** Where the client is built: beside the Deno wrapper it falls back to. */
export const CLIENT_PATH: string = decodeURIComponent(
  new URL("../../bin/termite-client", import.meta.url).pathname,
);

export class ClientBuildError extends Error {
  override name = "ClientBuildError";
}

/** SHA-256 of the source and the flags: what a build depends on. */
async function sourceHash(): Promise<string> {
  const source = await Deno.readFile(SOURCE_URL);
  return createHash("sha256").update(source).update(CLIENT_CFLAGS.join(" ")).digest("hex");
}

/**
 * Builds the client at `out` (default {@linkcode CLIENT_PATH}) unless the one
 * there was built from this source; returns its path. Needs gcc.
 */
export async function buildClient(out: string = CLIENT_PATH): Promise<string> {
  const hash = await sourceHash();
  const manifest = `${out}.json`;
  try {
    const built = JSON.parse(await Deno.readTextFile(manifest)) as { source?: string };
    if (built.source === hash && (await Deno.stat(out)).isFile) return out;
  } catch {
    // Absent or damaged: build.
  }
  const tmp = `${out}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    const gcc = await new Deno.Command("gcc", {
      args: [...CLIENT_CFLAGS, "-o", tmp, decodeURIComponent(SOURCE_URL.pathname)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!gcc.success) {
      throw new ClientBuildError(
        `Cannot build the native client: gcc: ${new TextDecoder().decode(gcc.stderr)}`,
      );
    }
    await Deno.chmod(tmp, 0o755);
    await Deno.rename(tmp, out);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    if (err instanceof ClientBuildError) throw err;
    throw new ClientBuildError(`Cannot build the native client at ${out}`, { cause: err });
  }
  await Deno.writeTextFile(manifest, JSON.stringify({ source: hash }) + "\n");
  return out;
}
