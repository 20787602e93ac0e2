/**
 * Builds the native wrapper client (opt-in, `wrapper/native/termite_client.c`)
 * into bin/termite-client, or the path given; needs gcc. Link tools to it
 * instead of bin/termite-wrap to use it (README, "The native client").
 *
 *   deno run -A scripts/build_client.ts [PATH]
 */
import { buildClient, CLIENT_PATH } from "../wrapper/native/build.ts";

try {
  const path = await buildClient(Deno.args[0] ?? CLIENT_PATH);
  console.error(`build_client: ${path}`);
} catch (err) {
  console.error(`build_client: ${(err as Error).message}`);
  Deno.exit(1);
}
