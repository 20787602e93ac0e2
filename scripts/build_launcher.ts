/**
 * Builds the sandbox launcher ahead, into sandbox/prebuilt/ (or the directory
 * given), with its manifest: a worker then needs no compiler on its host.
 * Run by scripts/bootstrap.sh and scripts/compile.sh; needs gcc.
 *
 *   deno run -A scripts/build_launcher.ts [DIR]
 */
import { buildPrebuiltLauncher, PREBUILT_DIR_URL, PREBUILT_NAME } from "../sandbox/launcher.ts";

const dir = Deno.args[0] ?? PREBUILT_DIR_URL.pathname.replace(/\/$/, "");
try {
  const manifest = await buildPrebuiltLauncher(dir);
  console.error(
    `build_launcher: ${dir}/${PREBUILT_NAME} (${manifest.bytes} bytes, sha256 ` +
      `${manifest.sha256.slice(0, 16)}...)`,
  );
} catch (err) {
  console.error(`build_launcher: ${(err as Error).message}`);
  Deno.exit(1);
}
